from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from ezsd_core import evaluation
from ezsd_core.splits import CategorySplit
from ezsd_core.structures import ImageRecord, RegionSet

SPLIT = CategorySplit(name="t", style="coco", category_ids=(1, 2), names=("a", "b"), roles=("base", "novel"),
                      in_proposal=(True, True))


def _gt(path: Path) -> Path:
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}]
    path.write_text(json.dumps({"images": [{"id": 1, "width": 50, "height": 50}, {"id": 2, "width": 50, "height": 50}],
                                "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return path


def test_perfect_detections_give_ap_one(tmp_path: Path) -> None:
    gt = _gt(tmp_path / "gt.json")
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in json.loads(gt.read_text())["annotations"]]
    m = evaluation.coco_metrics(gt, dets, SPLIT, iou_types=("bbox",), max_dets=(100,))
    assert m["bbox/AP_all"] == pytest.approx(1.0) and m["bbox/AP50_novel"] == pytest.approx(1.0)


def test_hand_computed_case_and_base_novel_split(tmp_path: Path) -> None:
    """Base: one of two GT found first (score 0.9), then a false positive: 51 of COCO's 101 recall
    points have precision 1, so AP50 = 51 / 101. Novel: nothing detected: 0."""
    gt = _gt(tmp_path / "gt.json")
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [40, 40, 5, 5], "score": 0.8}]
    m = evaluation.coco_metrics(gt, dets, SPLIT, iou_types=("bbox",), max_dets=(100, 300))
    assert m["bbox/AP50_base"] == pytest.approx(51 / 101, abs=1e-6)
    assert m["bbox/AP50_novel"] == 0.0 and m["bbox/AP50_base@100"] == pytest.approx(51 / 101, abs=1e-6)
    assert m["bbox/AP50_all"] == pytest.approx((51 / 101 + 0.0) / 2, abs=1e-6)
    assert evaluation.coco_metrics(gt, [], SPLIT, iou_types=("bbox",), max_dets=(100,))["bbox/AP_base"] == 0.0


def test_lvis_metrics_run_with_the_numpy_shim(smoke_world: Path) -> None:
    gt = smoke_world / "lvis/annotations/lvis_v1_val.json"
    doc = json.loads(gt.read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in doc["annotations"]]
    m = evaluation.lvis_metrics(gt, dets, iou_types=("bbox",), max_dets=300)
    assert m["bbox/AP"] == pytest.approx(1.0) and isinstance(m["bbox/APr"], float)


def test_region_recall_counts_gt_covered_by_the_top_k() -> None:
    rec = ImageRecord(image_id=1, file_name="x", height=50, width=50,
                      gt_boxes=torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), gt_category_ids=torch.tensor([1, 2]))
    regions = RegionSet(image_id=1, region_boxes=torch.tensor([[40.0, 40, 45, 45], [20, 20, 30, 31], [0, 0, 10, 10]]),
                        region_scores=torch.tensor([3.0, 2, 1]), region_category_ids=torch.tensor([1, 1, 1]),
                        region_probs=torch.ones(3))
    r = evaluation.region_recall([rec], [regions], SPLIT, ks=(1, 2, 3))
    assert (r["recall@1_all"], r["recall@2_novel"], r["recall@2_base"], r["recall@3_all"]) == (0.0, 1.0, 0.0, 1.0)
    assert (r["background@1"], r["background@2"], r["background@3"]) == (1.0, 0.5, pytest.approx(1 / 3))
    empty = ImageRecord(image_id=2, file_name="y", height=50, width=50, gt_boxes=torch.zeros(0, 4),
                        gt_category_ids=torch.zeros(0, dtype=torch.int64))
    r = evaluation.region_recall([empty], [dataclasses.replace(regions, image_id=2)], SPLIT, ks=(2,))
    assert r["background@2"] == 1.0 and math.isnan(r["recall@2_all"])


# ---------------------------------------------------------------------------------------------
# bootstrap intervals

def test_coco_metrics_reports_ap_at_the_largest_max_dets(tmp_path: Path) -> None:
    """COCOeval.summarize reads AP@[.5:.95] at maxDets=100 only; at 300 it used to give -1."""
    gt = _gt(tmp_path / "gt.json")
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in json.loads(gt.read_text())["annotations"]]
    m = evaluation.coco_metrics(gt, dets, SPLIT, iou_types=("bbox",), max_dets=(100, 300))
    assert m["bbox/AP_novel"] == pytest.approx(1.0) and m["bbox/AP_all@100"] == pytest.approx(1.0)


def test_ap_and_ap50_are_read_at_100_and_at_300_detections(tmp_path: Path) -> None:
    """One GT box (novel, image 2) found exactly, but only by the 150th-ranked detection of its image:
    AP and AP50 are 0 at 100 detections per image and 1/150 at 300 (recall 1 first reached at
    precision 1/150, at every IoU threshold)."""
    gt = _gt(tmp_path / "gt.json")
    decoys = [{"image_id": 2, "category_id": 2, "bbox": [30 + i % 10, 30, 5, 5], "score": 0.9 - i * 1e-4}
              for i in range(149)]
    found = {"image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "score": 0.5}
    m = evaluation.coco_metrics(gt, [*decoys, found], SPLIT, iou_types=("bbox",), max_dets=(100, 300))
    assert m["bbox/AP50_novel@100"] == 0.0 and m["bbox/AP_novel@100"] == 0.0
    assert m["bbox/AP50_novel"] == pytest.approx(1 / 150, abs=1e-6)  # at 300, never -1
    assert m["bbox/AP_novel"] == pytest.approx(1 / 150, abs=1e-6)


def test_image_ids_restrict_the_images_scored(tmp_path: Path) -> None:
    """A false positive on an image outside ``image_ids`` costs nothing (COCO 48/17 scores only the
    val images that hold a box of its 65 classes)."""
    gt = _gt(tmp_path / "gt.json")
    doc = json.loads(gt.read_text())
    doc["images"].append({"id": 3, "width": 50, "height": 50})  # no box of the split
    gt.write_text(json.dumps(doc))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
            for a in doc["annotations"]]
    dets.append({"image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9})
    every = evaluation.coco_metrics(gt, dets, SPLIT, iou_types=("bbox",), max_dets=(100,))
    scored = evaluation.coco_metrics(gt, dets, SPLIT, iou_types=("bbox",), max_dets=(100,), image_ids=[1, 2])
    assert every["bbox/AP50_base"] < 1.0 and scored["bbox/AP50_base"] == pytest.approx(1.0)


def test_metrics_of_a_results_file_equal_those_of_the_list(tmp_path: Path, smoke_world: Path) -> None:
    gt = _gt(tmp_path / "gt.json")
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [40, 40, 5, 5], "score": 0.8},
            {"image_id": 2, "category_id": 2, "bbox": [6, 5, 20, 20], "score": 0.7}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    as_list = evaluation.coco_metrics(gt, [dict(d) for d in dets], SPLIT, iou_types=("bbox",), max_dets=(100, 300))
    from_file = evaluation.coco_metrics(gt, tmp_path / "dets.json", SPLIT, iou_types=("bbox",), max_dets=(100, 300))
    assert from_file == as_list
    lvis_gt = smoke_world / "lvis/annotations/lvis_v1_val.json"
    lvis_dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
                 for a in json.loads(lvis_gt.read_text())["annotations"]][::2]
    (tmp_path / "lvis.json").write_text(json.dumps(lvis_dets))
    assert evaluation.lvis_metrics(lvis_gt, tmp_path / "lvis.json", iou_types=("bbox",)) == \
        evaluation.lvis_metrics(lvis_gt, lvis_dets, iou_types=("bbox",))
