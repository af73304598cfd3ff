from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ezsd_core import artefacts, config
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
    plan = st.batch_plan(10, np.ones(10), batch_size=4, max_steps=7, seed=3)
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
    sched = st.schedule(cfg, np.ones(7))
    assert sched == st.Schedule(max_steps=40, lr_steps=(20, 30), warmup_steps=10, images_per_epoch=0)
    assert math.isclose(st.lr_factor(0, sched, "step"), 0.001) and st.lr_factor(10, sched, "step") == 1.0
    assert math.isclose(st.lr_factor(25, sched, "step"), 0.1) and math.isclose(st.lr_factor(35, sched, "step"), 0.01)


def _cfg(**changes) -> config.TrainDetectorConfig:
    doc = config.read_params("params/smoke.yaml")
    return config.stage_config({"common": doc["common"], "train_detector": {**doc["train_detector"], **changes}},
                               "train_detector", source="t")


def test_epochs_convert_with_the_images_an_epoch_draws_after_repeat_factor_sampling() -> None:
    """E = round(sum r_i) images an epoch (10 images, one repeated 3.4 times: 12.4 -> 12); with B = 4,
    12 epochs are ceil(12 * 12 / 4) = 36 steps and the drops at epochs 8 and 11 at steps 24 and 33."""
    cfg = _cfg(epochs=12, max_steps=None, lr_steps=[8, 11], batch_size=4, warmup_steps=5)
    factors = np.ones(10)
    factors[3] = 3.4
    assert st.schedule(cfg, factors) == st.Schedule(max_steps=36, lr_steps=(24, 33), warmup_steps=5,
                                                    images_per_epoch=12)
    assert st.schedule(cfg, np.ones(9)) == st.Schedule(27, (18, 25), 5, 9)  # 9 images kept by the reader
    with pytest.raises(ValueError, match="lr_steps: 13 is after the last of epochs=12"):
        st.schedule(_cfg(epochs=12, max_steps=None, lr_steps=[8, 13]), np.ones(9))
    with pytest.raises(ValueError, match="no image with a base box"):
        st.schedule(cfg, np.ones(0))


@pytest.mark.parametrize("stage", ["train_detector", "finetune_clip"])
def test_epochs_and_max_steps_are_never_both_given(stage: str) -> None:
    doc = config.read_params("params/smoke.yaml")
    for epochs, steps, said in ((3, 4, "both are set"), (None, None, "both are null")):
        bad = {"common": doc["common"], stage: {**doc[stage], "epochs": epochs, "max_steps": steps}}
        with pytest.raises(config.ConfigError, match=f"{stage}.epochs: give exactly one of epochs and max_steps "
                                                     f"\\({said}"):
            config.stage_config(bad, stage, source="t")


def test_real_settings_train_for_the_reference_epochs() -> None:
    """Spec §5.4: 12 epochs (drops 8, 11) COCO 48/17; 18 (14, 16) COCO 60/20; 48 (32, 44) LVIS; stage 01
    12 epochs on COCO and 18 on LVIS; the toy and smoke files keep their measured step budgets."""
    want = {"coco_48_17": (12, [8, 11], 12), "coco_60_20": (18, [14, 16], 12),
            "lvis_866_337": (48, [32, 44], 18), "lvis_405_798": (48, [32, 44], 18)}
    for name, (epochs, drops, clip_epochs) in want.items():
        doc = config.read_params(f"params/{name}.yaml")
        td, ft = doc["train_detector"], doc["finetune_clip"]
        assert (td["epochs"], td["lr_steps"], td["max_steps"]) == (epochs, drops, None), name
        assert (ft["epochs"], ft["max_steps"]) == (clip_epochs, None), name
    for name, steps in (("smoke", 4), ("toy_coco", 3600), ("toy_lvis", 1200)):
        td = config.read_params(f"params/{name}.yaml")["train_detector"]
        assert (td["epochs"], td["max_steps"]) == (None, steps), name


def test_replicates_draw_independent_training_streams_on_fixed_upstream_artefacts() -> None:
    """replicate 0 is the seed itself and hashes as configs recorded before the knob; k > 0 draws a
    different batch order (and init, flips, region samples), a different stage-04 hash, same upstream."""
    r0, r1, r2 = _cfg(), _cfg(replicate=1), _cfg(replicate=2)
    assert st.training_seed(r0) == r0.seed
    assert len({st.training_seed(r0), st.training_seed(r1), st.training_seed(r2)}) == 3
    assert st.training_seed(r1) == st.training_seed(_cfg(replicate=1)), "a replicate is reproducible"
    plans = [st.batch_plan(50, np.ones(50), 4, 5, st.training_seed(c)) for c in (r0, r1)]
    assert plans[0] != plans[1]
    without_knob = {k: v for k, v in config.config_dict(r0).items()
                    if k not in type(r0).RUNTIME_FIELDS and k != "replicate"}
    assert config.config_hash(r0) == artefacts.hash_json(without_knob), "recorded runs stay up to date"
    assert len({config.config_hash(r0), config.config_hash(r1), config.config_hash(r2)}) == 3
    assert r1.upstream_stages() == r0.upstream_stages()
    with pytest.raises(config.ConfigError, match="replicate"):
        _cfg(replicate=-1)
