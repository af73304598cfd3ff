from __future__ import annotations

import math

import pytest
import torch

from ezsd_core import clip
from ezsd_core.stages import propose_regions as st

SPEC = dict(stride=32, sides=(32, 64, 128, 256, 512), ratios=(0.5, 1.0, 2.0))


def test_anchor_grid_reproduces_the_spec_counts() -> None:
    assert len(st.anchor_grid(800, 1333, **SPEC)) == 42 * 25 * 15 == 15_750
    s = st.resize_scale(480, 640, 800, 1333)
    assert (round(480 * s), round(640 * s)) == (800, 1067)
    assert len(st.anchor_grid(800, 1067, **SPEC)) == 34 * 25 * 15 == 12_750


def test_anchor_shapes_follow_side_and_ratio() -> None:
    a = st.anchor_grid(64, 64, stride=32, sides=(32,), ratios=(0.5, 1.0, 2.0))[:3]  # first centre (0, 0)
    wh = a[:, 2:] - a[:, :2]
    assert torch.allclose(wh, torch.tensor([[32 / math.sqrt(0.5), 32 * math.sqrt(0.5)], [32.0, 32.0],
                                            [32 / math.sqrt(2), 32 * math.sqrt(2)]]))
    assert torch.allclose((a[:, :2] + a[:, 2:]) / 2, torch.zeros(3, 2))


def test_candidate_boxes_are_clipped_deduplicated_and_in_original_pixels() -> None:
    key = (800, 1333, 32, (32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
    boxes = st.candidate_boxes(480, 640, key)
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 640 and boxes[:, 3].max() <= 480
    assert len(torch.unique(boxes, dim=0)) == len(boxes) < 12_750
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()


def test_entropy_score_is_ln_c_minus_entropy() -> None:
    scores, arg, prob = st.entropy_scores(torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]))
    assert scores[0].item() == pytest.approx(0.0, abs=1e-6)
    assert scores[1].item() == pytest.approx(math.log(4), abs=1e-3)
    assert arg.tolist() == [0, 0] and prob[1].item() == pytest.approx(1.0)


def test_select_regions_suppresses_overlaps_and_keeps_top_k() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.7])
    assert st.select_regions(boxes, scores, nms_thresh=0.7, max_regions=10).tolist() == [1, 3, 2]
    assert st.select_regions(boxes, scores, nms_thresh=0.7, max_regions=2).tolist() == [1, 3]


def test_propose_for_image_returns_sorted_regions_inside_the_image() -> None:
    torch.manual_seed(0)
    model = clip.build_clip("ezsd-tiny-cnn", None, allow_random_init=True)
    text = clip.encode_texts(model, ["circle", "star", "ring"], ["a photo of a {}"])
    image = torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8)
    boxes = st.candidate_boxes(48, 64, (48, 64, 16, (16, 32), (1.0,)))
    rs = st.propose_for_image(image, model, text, torch.tensor([5, 7, 9]), boxes, crop_scale=1.0, nms_thresh=0.7,
                              max_regions=5, crops_per_batch=7)
    assert len(rs.region_boxes) == 5 and (rs.region_scores[:-1] >= rs.region_scores[1:]).all()
    assert set(rs.region_category_ids.tolist()) <= {5, 7, 9} and (rs.region_probs <= 1).all()
    assert rs.region_boxes[:, 2].max() <= 64 and rs.region_boxes[:, 3].max() <= 48
