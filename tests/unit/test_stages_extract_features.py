from __future__ import annotations

import torch

from ezsd_core import clip, config
from ezsd_core.stages import extract_features as st
from ezsd_core.structures import RegionSet


def _regions(boxes: list[list[float]]) -> RegionSet:
    n = len(boxes)
    return RegionSet(image_id=7, region_boxes=torch.tensor(boxes).reshape(-1, 4),
                     region_scores=torch.arange(n, 0, -1.0), region_category_ids=torch.zeros(n, dtype=torch.int64),
                     region_probs=torch.ones(n))


def test_overlap_filter_drops_regions_on_gt() -> None:
    rs = _regions([[0, 0, 10, 10], [0, 0, 10, 12], [50, 50, 60, 60]])
    kept = st.overlap_filter(rs, torch.tensor([[0.0, 0, 10, 10]]), 0.3)
    assert kept.region_boxes.tolist() == [[50, 50, 60, 60]]
    assert st.overlap_filter(rs, torch.zeros(0, 4), 0.3) is rs


def test_random_subset_is_seeded_per_image_and_without_replacement() -> None:
    a = st.random_subset(100, 10, seed=0, image_id=3)
    assert len(set(a.tolist())) == 10 and torch.equal(a, st.random_subset(100, 10, seed=0, image_id=3))
    assert not torch.equal(a, st.random_subset(100, 10, seed=0, image_id=4))
    assert st.random_subset(4, 10, seed=0, image_id=3).tolist() == [0, 1, 2, 3]


def test_classify_uses_cosine_softmax() -> None:
    text = torch.eye(3)
    arg, prob = st.classify(torch.tensor([[0.0, 5.0, 0.0], [2.0, 0.0, 0.1]]), text, 100.0)
    assert arg.tolist() == [1, 0] and (prob > 0.99).all()


def _cfg(rule: str, **kw) -> config.ExtractFeaturesConfig:
    base = dict(split="smoke", data_root="d", train_annotations="a", val_annotations="b", train_images="t",
                val_images="v", run_root="r", seed=0, region_source="clip_regions", iou_filter_gt="base",
                iou_thresh=0.3, subset_rule=rule,
                num_candidates=6, max_regions=3, crop_scale=1.2, crops_per_batch=4)
    return config.ExtractFeaturesConfig(**{**base, **kw})


def test_select_and_embed_drop_base_keeps_only_non_base_categories() -> None:
    torch.manual_seed(0)
    model = clip.build_clip("ezsd-tiny-cnn", None, allow_random_init=True)
    text = clip.encode_texts(model, ["circle", "star", "ring", "heart"], ["a photo of a {}"])
    ids = torch.tensor([1, 2, 3, 4])
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    boxes = [[x, y, x + 16.0, y + 16.0] for x in (0, 20, 40) for y in (0, 20, 40)]
    for rule, base in (("drop_base", {1, 2}), ("random", {1, 2})):
        rs = st.select_and_embed(image, _regions(boxes), torch.tensor([[0.0, 0, 16, 16]]), model, text, ids, base,
                                 _cfg(rule))
        assert len(rs.region_boxes) <= 3 and rs.region_embeds.dtype == torch.float16
        assert rs.region_embeds.shape == (len(rs.region_boxes), 64) and not (rs.region_embeds == 0).all(1).any()
        assert [0.0, 0, 16, 16] not in rs.region_boxes.tolist(), "the region on the GT box was filtered"
        if rule == "drop_base":
            assert not set(rs.region_category_ids.tolist()) & base


def test_random_regions_are_seeded_and_inside_the_image() -> None:
    a = st.random_regions(5, 30, 48, 64, seed=0)
    assert torch.equal(a.region_boxes, st.random_regions(5, 30, 48, 64, seed=0).region_boxes)
    assert not torch.equal(a.region_boxes, st.random_regions(6, 30, 48, 64, seed=0).region_boxes)
    b = a.region_boxes
    assert len(b) == 30 and b[:, 0].min() >= 0 and b[:, 2].max() <= 64 and b[:, 3].max() <= 48
