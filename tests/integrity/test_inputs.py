"""One set of input rules for training, the metric's ground truth and the FiftyOne views, with what
they dropped counted in the stage's metrics and said in one warning line (issue 9)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from integrity_runs import STAGES, run_in_process

from ezsd_core import artefacts, data, evaluation
from ezsd_core.config import EvaluateConfig, load_config
from ezsd_core.stages import evaluate

ANN = "coco/annotations/instances_{}.json"


@pytest.fixture
def dirty_world(smoke_world: Path, tmp_path: Path) -> Path:
    """The smoke world with one of each input problem in train and in val, and one val image deleted."""
    world = tmp_path / "world"
    shutil.copytree(smoke_world, world)
    for subset in ("train", "val"):
        path = world / ANN.format(subset)
        doc = json.loads(path.read_text())
        base = set(data.read_split(path, "smoke").ids("base"))
        first = next(a for a in doc["annotations"] if a["category_id"] in base)
        img = next(i for i in doc["images"] if i["id"] == first["image_id"])
        new_id = max(a["id"] for a in doc["annotations"]) + 1
        doc["annotations"] += [
            {**first, "id": new_id, "bbox": [-20.0, 2.0, 30.0, 20.0]},  # sticks out on the left: clipped
            {**first, "id": new_id + 1, "bbox": [5.0, 5.0, 0.0, 9.0]},  # zero width
            {**first, "id": new_id + 2, "bbox": [img["width"] + 3.0, 1.0, 9.0, 9.0]},  # wholly outside
            {**first, "id": new_id + 3, "category_id": 999}]  # a category the file does not declare
        path.write_text(json.dumps(doc))
    val = json.loads((world / ANN.format("val")).read_text())
    (world / "coco/val" / val["images"][-1]["file_name"]).unlink()
    return world


def _counts(world: Path, subset: str) -> tuple[list, dict[str, int]]:
    counts: dict[str, int] = {}
    _, records = data.read_records(world / ANN.format(subset), world / f"coco/{subset}", "smoke", subset=subset,
                                   counts=counts)
    return records, counts


def test_the_reader_clips_rejects_and_counts_and_warns_once(dirty_world: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="ezsd_core.data")
    for subset in ("train", "val"):
        records, counts = _counts(dirty_world, subset)
        assert counts == {"unknown_category": 1, "degenerate_box": 1, "outside_image": 1, "clipped_box": 1,
                          "missing_image": int(subset == "val")}, subset
        for r in records:
            assert (r.gt_boxes[:, :2] >= 0).all() and (r.gt_boxes[:, 2] <= r.width).all()
            assert (r.gt_boxes[:, 3] <= r.height).all() and (r.gt_boxes[:, 2:] - r.gt_boxes[:, :2] >= 1).all()
            assert 999 not in r.gt_category_ids.tolist()
        _counts(dirty_world, subset)  # read again (as stages do): no second line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("input rules fired" in line for line in lines), lines
    assert "1 missing_image" in lines[1] and str(dirty_world / "coco/val") in lines[1]


def test_the_metric_counts_the_boxes_the_reader_kept(dirty_world: Path, tmp_path: Path) -> None:
    """Perfect detections of every box the reader kept score AP50 = 1: a zero-width box, a box outside
    the image and a deleted image no longer count as missed ground truth."""
    records, _ = _counts(dirty_world, "val")
    split = data.read_split(dirty_world / ANN.format("val"), "smoke")
    results = [{"image_id": r.image_id, "category_id": int(c), "score": 1.0,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
               for r in records for b, c in zip(r.gt_boxes.tolist(), r.gt_category_ids.tolist())]
    cfg = load_config(EvaluateConfig, {
        "split": "smoke", "split_style": None, "base_names": None, "novel_names": None,
        "data_root": dirty_world, "train_annotations": ANN.format("train"),
        "val_annotations": ANN.format("val"), "train_images": "coco/train", "val_images": "coco/val",
        "run_root": tmp_path, "seed": 0, "device": "cpu", "num_workers": 0, "force": False, "batch_size": 8,
        "vocabulary": "all", "box_score_thresh": 0.0, "box_nms_thresh": 0.5,
        "box_detections_per_img": 100, "image_set": "all"})
    with evaluate.ground_truth(cfg) as gt:
        metrics = evaluation.coco_metrics(gt, results, split, iou_types=("bbox",), max_dets=[100])
    assert metrics["bbox/AP50_all"] == pytest.approx(1.0)


def test_every_stage_runs_on_the_dirty_world_and_reports_what_was_dropped(dirty_world: Path, tmp_path: Path) -> None:
    run_root = tmp_path / "run"
    run_in_process(dirty_world, run_root, STAGES)
    trained = artefacts.read_manifest(artefacts.stage_dir(run_root, "train_detector"))["summary"]
    assert {k: v for k, v in trained.items() if k.startswith("input/")} == {
        "input/unknown_category": 1, "input/degenerate_box": 1, "input/outside_image": 1, "input/clipped_box": 1}
    assert trained["loss_rpn_box_reg"] < 10, "no box outside the image reaches the RPN"
    metrics = json.loads((artefacts.stage_dir(run_root, "evaluate") / "metrics.json").read_text())
    assert metrics["input/missing_image"] == 1 and metrics["input/clipped_box"] == 1
    read = lambda stage, name: json.loads((artefacts.stage_dir(run_root, stage) / name).read_text())
    tuned, regions = read("finetune_clip", "metrics.json"), read("propose_regions", "metrics.json")
    features = read("extract_features", "manifest.json")["summary"]
    for counts in (tuned, regions):  # stages 01 and 02 read both subsets
        assert {k: v for k, v in counts.items() if k.startswith("input/train/")} == {
            k.replace("input/", "input/train/"): v for k, v in trained.items() if k.startswith("input/")}
        assert counts["input/val/missing_image"] == 1 and counts["input/val/clipped_box"] == 1
    assert {k: v for k, v in features.items() if k.startswith("input/")} == {
        k: v for k, v in trained.items() if k.startswith("input/")}
