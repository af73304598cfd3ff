from __future__ import annotations

import math

import numpy as np
import torch

from ezsd_core import config
from ezsd_core.stages import train_detector as st
from ezsd_core.structures import ImageRecord


def test_distill_targets_put_gt_first_and_renormalise_weights() -> None:
    gt_b, gt_e = torch.tensor([[0.0, 0, 5, 5]]), torch.ones(1, 4)
    reg_b = torch.tensor([[1.0, 1, 2, 2], [3, 3, 9, 9]])
    reg_e, reg_p = torch.full((2, 4), 2.0), torch.tensor([0.2, 0.6])
    t = st.distill_targets(gt_b, gt_e, reg_b, reg_e, reg_p, 5, np.random.default_rng(0))
    assert t["boxes"].shape == (6, 4) and torch.equal(t["boxes"][0], gt_b[0]) and torch.equal(t["embeds"][0], gt_e[0])
    assert math.isclose(t["weights"].mean().item(), 1.0, rel_tol=1e-6)
    raw = torch.cat([torch.ones(1), torch.where((t["boxes"][1:] == reg_b[0]).all(1), 0.2, 0.6)])
    assert torch.allclose(t["weights"], raw * 6 / raw.sum())
    none = st.distill_targets(gt_b, gt_e, torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0), 5,
                              np.random.default_rng(0))
    assert none["boxes"].shape == (1, 4) and none["weights"].tolist() == [1.0]


def _rec(i: int, cats: list[int]) -> ImageRecord:
    return ImageRecord(image_id=i, file_name="x", height=8, width=8, gt_boxes=torch.zeros(len(cats), 4),
                       gt_category_ids=torch.tensor(cats, dtype=torch.int64))


def test_repeat_factors_follow_the_lvis_formula() -> None:
    records = [_rec(0, [1]), _rec(1, [1]), _rec(2, [1, 2]), _rec(3, [1])]  # category 2 in 1/4 of images
    f = st.repeat_factors(records, thresh=1.0)
    assert f[0] == 1.0 and math.isclose(f[2], math.sqrt(1.0 / 0.25))
    assert (st.repeat_factors(records, 0.0) == 1).all()


def test_batch_plan_is_deterministic_and_repeats_rare_images() -> None:
    plan = st.batch_plan(10, np.ones(10), batch_size=4, num_steps=7, seed=3)
    assert len(plan) == 7 and all(len(b) == 4 for b in plan) and plan == st.batch_plan(10, np.ones(10), 4, 7, 3)
    assert sorted(i for e, i in sum(plan, []) if e == 0) == list(range(10)), "an epoch visits every image once"
    factors = np.ones(10)
    factors[0] = 3.0
    first_epoch = [i for e, i in sum(st.batch_plan(10, factors, 4, 4, 0), []) if e == 0]
    assert first_epoch.count(0) == 3


def test_learning_rate_warms_up_then_follows_the_schedule() -> None:
    base = dict(config.read_params("params/smoke.yaml")["train_detector"])
    cfg = config.stage_config({"common": config.read_params("params/smoke.yaml")["common"],
                               "train_detector": {**base, "warmup_steps": 10, "lr_schedule": "step",
                                                  "lr_steps": [20, 30], "max_steps": 40}}, "train_detector", source="t")
    assert math.isclose(st.lr_factor(0, cfg), 0.001) and st.lr_factor(10, cfg) == 1.0
    assert math.isclose(st.lr_factor(25, cfg), 0.1) and math.isclose(st.lr_factor(35, cfg), 0.01)
