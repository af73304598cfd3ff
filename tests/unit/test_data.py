from __future__ import annotations

import json
from pathlib import Path

import torch
from realformat import coco_id, lvis_id, write_coco, write_lvis

from ezsd_core import data


def test_coco_train_keeps_only_clean_base_boxes_and_drops_images_without_one(tmp_path: Path) -> None:
    ann = write_coco(tmp_path / "instances_train2017.json")
    split, recs = data.read_records(ann, tmp_path / "train2017", "coco_48_17", subset="train", with_masks=True,
                                   check_files=False)
    assert [r.image_id for r in recs] == [1, 4], "image 2 (empty) and 3 (novel only) have no base box"
    r = recs[0]
    assert r.gt_category_ids.tolist() == [coco_id("person")], "crowd, degenerate, novel and 'other' are dropped"
    assert r.gt_boxes.tolist() == [[10.0, 5.0, 30.0, 15.0]], "XYWH -> XYXY absolute"
    assert r.file_name == str(tmp_path / "train2017" / "000000000001.jpg")
    assert r.gt_masks[0]["size"] == [40, 60] and isinstance(r.gt_masks[0]["counts"], str)
    assert recs[1].gt_masks[0]["counts"], "RLE segmentations pass through"


def test_coco_val_keeps_base_and_novel_and_empty_images(tmp_path: Path) -> None:
    ann = write_coco(tmp_path / "instances_val2017.json")
    _, recs = data.read_records(ann, tmp_path, "coco_48_17", subset="val", check_files=False)
    by_id = {r.image_id: r for r in recs}
    assert sorted(by_id) == [1, 2, 3, 4]
    assert sorted(by_id[1].gt_category_ids.tolist()) == sorted([coco_id("person"), coco_id("dog")])
    assert by_id[2].gt_boxes.shape == (0, 4) and by_id[2].gt_category_ids.dtype == torch.int64


def test_lvis_reader_resolves_coco_url_and_filters_neg_ids_to_the_vocabulary(tmp_path: Path) -> None:
    ann = write_lvis(tmp_path / "lvis_v1_train.json")
    split, recs = data.read_records(ann, tmp_path / "coco" / "train2017", "lvis_866_337", subset="train",
                                   check_files=False)
    assert [r.image_id for r in recs] == [11], "image 12 has only a rare box, 13 none"
    r = recs[0]
    assert lvis_id("applesauce") not in r.gt_category_ids.tolist()
    assert sorted(r.gt_category_ids.tolist()) == sorted(
        [lvis_id("person"), lvis_id("speaker_(stero_equipment)"), r.gt_category_ids.tolist()[-1]])
    assert all(split.role_of(c) == "base" for c in r.neg_category_ids + r.not_exhaustive_category_ids)
    assert lvis_id("applesauce") not in r.neg_category_ids and lvis_id("person") in r.not_exhaustive_category_ids
    assert r.file_name == str(tmp_path / "coco" / "train2017" / "000000000011.jpg")
    _, val = data.read_records(ann, tmp_path / "coco" / "val2017", "lvis_866_337", subset="val", check_files=False)
    assert {v.image_id: v.file_name for v in val}[12].endswith("coco/val2017/000000000012.jpg")
    assert lvis_id("applesauce") in {v.image_id: v for v in val}[11].neg_category_ids


def test_training_reader_never_yields_a_novel_annotation(smoke_world: Path, tmp_path: Path) -> None:
    """Strict zero-shot at the source: on the toy world and on the real-format files."""
    cases = [(smoke_world / "coco/annotations/instances_train.json", "toy_coco"),
             (write_coco(tmp_path / "c.json"), "coco_48_17"), (write_lvis(tmp_path / "l.json"), "lvis_866_337")]
    for ann, name in cases:
        split, recs = data.read_records(ann, tmp_path, name, subset="train", check_files=False)
        novel = set(split.ids("novel"))
        doc = json.loads(Path(ann).read_text())
        assert any(a["category_id"] in novel for a in doc["annotations"]), "the file does hold novel boxes"
        seen = {c for r in recs for c in r.gt_category_ids.tolist() + list(r.neg_category_ids)}
        assert seen and not seen & novel, name
