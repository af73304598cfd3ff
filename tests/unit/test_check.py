"""``ezsd check`` on the real-format fixture: a ready layout, its plan, and each problem named in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from realformat import write_custom_dataset, write_real_dataset

from ezsd_core import check, cli

ROOT = Path(__file__).resolve().parents[2]
RANDOM_CLIP = ["finetune_clip.clip_pretrained=null", "finetune_clip.allow_random_init=true"]


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return write_real_dataset(tmp_path_factory.mktemp("check") / "coco", num_train=4, num_val=2)


@pytest.mark.parametrize("split,base,novel,proposal", [("coco_48_17", 48, 17, 80), ("lvis_405_798", 405, 798, 866)])
def test_a_ready_layout_and_its_plan(real: Path, split: str, base: int, novel: int, proposal: int) -> None:
    report = check.check(ROOT / f"params/{split}.yaml", data_root=real, measure=False)
    assert report.ok, report.problems
    text = report.text()
    assert f"{base} base, {novel} novel, {proposal} proposal names" in text and text.endswith("ready")
    rows = {r["stage"]: r for r in report.plan}
    assert list(rows) == ["01_finetune_clip", "02_propose_regions", "03_extract_features", "04_train_detector",
                          "05_evaluate"]
    assert rows["02_propose_regions"]["images"] == 4 + 2  # every train image has a base box; 2 recall images
    # 64-px photos resized to 800 / 1333: ceil(h/32) * ceil(w/32) centres x 5 sides x 3 ratios each
    assert rows["02_propose_regions"]["crops"] > 6 * 15 and rows["02_propose_regions"]["shards"] == 16
    assert rows["05_evaluate"]["images"] == 2 and all(r["hours"] is None for r in report.plan)


def test_measured_rates_give_hours(tmp_path: Path) -> None:
    data = write_custom_dataset(tmp_path / "photos")
    report = check.check(ROOT / "params/examples/photos_4_2.yaml", data_root=data, seconds=0.2)
    assert report.ok, report.problems
    assert "crops/s" in report.text() and "prompts/s" in report.text()
    hours = {r["stage"]: r["hours"] for r in report.plan}
    assert hours["01_finetune_clip"] > 0 and hours["02_propose_regions"] > 0 and hours["04_train_detector"] is None


def _broken(real: Path, tmp_path: Path, how: str) -> Path:
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(real, root)
    ann = root / "annotations/instances_val2017.json"
    if how == "missing_image":
        (root / "val2017/000000000101.jpg").unlink()
    elif how == "bad_json":
        ann.write_text("{not json")
    elif how == "truncated_image":
        p = root / "val2017/000000000102.jpg"
        p.write_bytes(p.read_bytes()[:200])
    elif how == "names":
        doc = json.loads(ann.read_text())
        doc["categories"] = [c for c in doc["categories"] if c["name"] != "dog"]
        ann.write_text(json.dumps(doc))
    return root


@pytest.mark.parametrize("how,fragment", [
    ("missing_image", "val: 1 of 2 image files missing (e.g. "),
    ("bad_json", "does not parse as JSON"),
    ("truncated_image", "val: 1 sampled image(s) do not decode"),
    ("names", "val_annotations: split coco_48_17 needs the 80 COCO categories; the annotation file differs "
              "(e.g. missing ['dog'])"),
])
def test_each_problem_is_one_line_and_the_cli_exits_1(real: Path, tmp_path: Path, how: str, fragment: str,
                                                       capsys) -> None:
    root = _broken(real, tmp_path, how)
    code = cli.main(["check", str(ROOT / "params/coco_48_17.yaml"), "--data-root", str(root), "--no-measure"])
    out = capsys.readouterr().out.splitlines()
    problems = [line for line in out if line.startswith("problem: ")]
    assert code == 1 and len(problems) == 1 and fragment in problems[0], out
    assert out[-1] == "not ready: 1 problem(s)"
