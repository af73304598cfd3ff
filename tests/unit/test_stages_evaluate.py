"""Stage 05's pure parts: which val images are scored, and the protocol stored next to the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ezsd_core import config
from ezsd_core.stages import evaluate
from ezsd_core.structures import ImageRecord

PARAMS = Path(__file__).resolve().parents[2] / "params"


def _record(image_id: int, n: int) -> ImageRecord:
    return ImageRecord(image_id=image_id, file_name=f"{image_id}.png", height=10, width=10,
                       gt_boxes=torch.tensor([[0.0, 0, 5, 5]] * n).reshape(n, 4),
                       gt_category_ids=torch.ones(n, dtype=torch.int64))


def test_with_gt_scores_only_images_holding_a_box_of_the_split() -> None:
    records = [_record(1, 2), _record(2, 0), _record(3, 1)]
    assert [r.image_id for r in evaluate.scored_records(records, "with_gt")] == [1, 3]
    assert [r.image_id for r in evaluate.scored_records(records, "all")] == [1, 2, 3]
    with pytest.raises(ValueError, match="image_set: got 'some'; allowed: all, with_gt"):
        evaluate.scored_records(records, "some")


@pytest.mark.parametrize("name,image_set", [("coco_48_17", "with_gt"), ("coco_60_20", "all"),
                                            ("lvis_866_337", "with_gt"), ("lvis_405_798", "with_gt"),
                                            ("toy_coco", "all"), ("toy_lvis", "all"), ("smoke", "all")])
def test_each_setting_scores_the_val_images_of_the_method_spec(name: str, image_set: str) -> None:
    """Spec §6: COCO 48/17 on instances_val2017_65cates (val2017 images with >= 1 box of the 65
    classes), COCO 60/20 on full val2017, LVIS with eval_filter_empty_gt; the toy worlds keep every image."""
    assert yaml.safe_load((PARAMS / f"{name}.yaml").read_text())["evaluate"]["image_set"] == image_set


def test_protocol_names_vocabulary_max_dets_threshold_and_images() -> None:
    doc = config.read_params(PARAMS / "coco_48_17.yaml")
    cfg = config.stage_config(doc, "evaluate", source="coco_48_17")
    p = evaluate.protocol(cfg, "coco", num_names=65, num_scored=4952, num_val=5000)
    assert p["vocabulary"] == "all (65 names)" and p["max_dets"].startswith("100,300")
    assert p["box_score_thresh"] == 0.0 and p["box_nms_thresh"] == 0.5
    assert p["image_set"] == "with_gt: 4952 of 5000 val images"
    assert evaluate.protocol(cfg, "lvis", 1203, 10, 12)["max_dets"] == "300"


class _Chunk(list):
    """A list that can be weak-referenced, to see whether the writer keeps earlier chunks alive."""


def _results(n: int, start: int = 0) -> list[dict]:
    return [{"image_id": start + i // 3, "category_id": 1 + i % 5, "score": 0.123456789 * (i + 1) % 1,
             "bbox": [1.5 * i, 2.25, 10.0 + i / 7, 3.0],
             "segmentation": {"size": [64, 48], "counts": f"a1b2\\\\c{i}\"q"}} for i in range(n)]


def test_detections_are_streamed_compactly_with_the_old_writers_content(tmp_path: Path) -> None:
    import json
    import weakref

    from ezsd_core import artefacts

    chunks = [_results(7, 0), [], _results(5, 10), _results(1, 20)]
    everything = [r for c in chunks for r in c]
    artefacts.atomic_write_json(tmp_path / "old.json", everything)  # the writer stage 05 used before
    alive: list = []

    def stream():
        for c in chunks:
            chunk = _Chunk(c)
            alive.append(weakref.ref(chunk))
            yield chunk
            del chunk
            assert sum(r() is not None for r in alive) <= 1, "the writer holds on to earlier chunks"

    chunks_copy = [list(c) for c in chunks]
    n = evaluate.write_detections(tmp_path / "detections.json", stream())
    text = (tmp_path / "detections.json").read_text()
    assert n == len(everything) == 13
    assert json.loads(text) == json.loads((tmp_path / "old.json").read_text()) == everything
    assert text == json.dumps(everything, separators=(",", ":")) + "\n"  # compact: no indent, no spaces
    assert text.count("\n") == 1 and chunks == chunks_copy
    assert evaluate.write_detections(tmp_path / "empty.json", iter([[], []])) == 0
    assert json.loads((tmp_path / "empty.json").read_text()) == []
    assert not list(tmp_path.glob("*.tmp-*")), "written atomically"
