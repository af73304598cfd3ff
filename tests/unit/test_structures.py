from __future__ import annotations

import pytest
import torch

from ezsd_core import structures
from ezsd_core.splits import CategorySplit
from ezsd_core.structures import Detections, ImageRecord, RegionSet


def _split() -> CategorySplit:
    return CategorySplit(name="t", style="coco", category_ids=(3, 7, 9), names=("a", "b", "c"),
                         roles=("base", "novel", "base"), in_proposal=(True, True, True))


def test_box_conversions_round_trip() -> None:
    xywh = torch.tensor([[10.0, 20.0, 5.0, 8.0], [0.0, 0.0, 1.0, 1.0]])
    xyxy = structures.xywh_to_xyxy(xywh)
    assert xyxy.tolist() == [[10.0, 20.0, 15.0, 28.0], [0.0, 0.0, 1.0, 1.0]]
    assert torch.equal(structures.xyxy_to_xywh(xyxy), xywh)


def test_subset_filters_every_row_field_including_lists() -> None:
    r = ImageRecord(image_id=1, file_name="x", height=10, width=10, gt_boxes=torch.rand(3, 4),
                    gt_category_ids=torch.tensor([3, 7, 9]), gt_masks=[{"m": 0}, {"m": 1}, {"m": 2}])
    s = r.subset(torch.tensor([True, False, True]))
    assert s.gt_category_ids.tolist() == [3, 9] and s.gt_masks == [{"m": 0}, {"m": 2}]
    assert r.subset(torch.tensor([], dtype=torch.int64)).gt_boxes.shape == (0, 4)
    rs = RegionSet(image_id=1, region_boxes=torch.rand(2, 4), region_scores=torch.tensor([1.0, 2.0]),
                   region_category_ids=torch.tensor([3, 9]), region_probs=torch.tensor([0.5, 0.9]),
                   region_embeds=torch.rand(2, 8).half())
    assert rs.subset(torch.tensor([1])).region_embeds.shape == (1, 8)


def test_row_count_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="disagree on the number of rows"):
        Detections(image_id=1, pred_boxes=torch.zeros(2, 4), pred_scores=torch.zeros(3),
                   pred_category_ids=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"must be \(M, 4\) XYXY"):
        Detections(image_id=1, pred_boxes=torch.zeros(2, 5), pred_scores=torch.zeros(2),
                   pred_category_ids=torch.zeros(2, dtype=torch.int64))


def test_torchvision_edges_map_ids_and_labels() -> None:
    r = ImageRecord(image_id=1, file_name="x", height=10, width=10, gt_boxes=torch.rand(2, 4),
                    gt_category_ids=torch.tensor([9, 3]))
    assert structures.to_tv_target(r, _split())["labels"].tolist() == [2, 1]  # base vocab: 3 -> 1, 9 -> 2
    out = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.7])}
    d = structures.from_tv_output(out, 5, _split().ids("all"))
    assert d.pred_category_ids.tolist() == [7] and d.image_id == 5


def test_coco_results_are_xywh() -> None:
    d = Detections(image_id=4, pred_boxes=torch.tensor([[1.0, 2.0, 4.0, 6.0]]), pred_scores=torch.tensor([0.5]),
                   pred_category_ids=torch.tensor([7]))
    assert structures.to_coco_results(d) == [{"image_id": 4, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 4.0],
                                              "score": 0.5}]
