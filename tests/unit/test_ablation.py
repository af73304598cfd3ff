"""``ezsd ablate --intervals-only`` on variant runs faked on disk (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ezsd_core import ablation, artefacts, cli, evaluation, splits

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params/smoke.yaml"
CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "star"}]  # star: novel


def _val_file(data: Path, num_images: int) -> list[dict]:
    rng = np.random.default_rng(0)
    anns = []
    for image_id in range(1, num_images + 1):
        for cat in rng.integers(1, 4, size=int(rng.integers(1, 4))):
            x, y = (float(v) for v in rng.uniform(0, 40, 2))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(cat),
                         "bbox": [x, y, 16.0, 16.0], "area": 256.0, "iscrowd": 0})
    path = data / "coco/annotations/instances_val.json"
    path.parent.mkdir(parents=True)
    (data / "coco/val").mkdir(parents=True)  # the metric's ground truth keeps only images that exist (as stage 05)
    images = [{"id": i, "width": 64, "height": 64, "file_name": f"{i:06d}.png"} for i in range(1, num_images + 1)]
    for img in images:
        Image.new("RGB", (64, 64)).save(data / "coco/val" / img["file_name"])
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return anns


def _fake_run(root: Path, gt: Path, anns: list[dict], miss: float, seed: int) -> None:
    """A complete 05_evaluate of a detector that finds each box with probability 1 - ``miss`` and scores
    its 30 false positives below every box found."""
    rng = np.random.default_rng(seed)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.5 + float(rng.random()) / 2} for a in anns if rng.random() > miss]
    dets += [{"image_id": int(i), "category_id": int(rng.integers(1, 4)), "bbox": [40.0, 40.0, 20.0, 20.0],
              "score": float(rng.random()) / 2} for i in rng.integers(1, 41, size=30)]
    split = splits.split_from_categories("smoke", CATEGORIES)
    metrics = {k: round(v, 4) for k, v in evaluation.coco_metrics(gt, dets, split, iou_types=("bbox",),
                                                                  max_dets=(100,)).items()}
    out = artefacts.stage_dir(root, "evaluate")
    out.mkdir(parents=True)
    artefacts.atomic_write_json(out / "detections.json", dets)
    artefacts.atomic_write_json(out / "metrics.json", metrics)
    artefacts.write_manifest(out, stage="evaluate", split="smoke", config={}, config_hash="fake", upstream={},
                             outputs=["detections.json", "metrics.json"], summary={}, started_at=artefacts.utc_now())


@pytest.fixture()
def fake_ablation(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    data, base_root = tmp_path / "data", tmp_path / "runs/smoke"
    anns = _val_file(data, num_images=40)
    gt = data / "coco/annotations/instances_val.json"
    for n, name in enumerate(ablation.VARIANTS):
        miss = 0.0 if name == ablation.REFERENCE else 0.5
        _fake_run(ablation.variant_root(base_root, name), gt, anns, miss, seed=n)
    return base_root, (f"common.run_root={base_root}", f"common.data_root={data}")


def test_intervals_only_adds_intervals_to_the_existing_runs(fake_ablation) -> None:
    base_root, overrides = fake_ablation
    echoed: list[str] = []
    table = ablation.ablate(PARAMS, overrides=overrides, intervals_only=True, num_resamples=200, echo=echoed.append)
    assert json.loads((base_root / "ablation.json").read_text()) == table
    assert (base_root / "ablation.png").stat().st_size > 0
    assert table["bootstrap"] | {"val_annotations": None} == {
        "num_resamples": 200, "seed": 0, "num_images": 40, "level": 0.95, "iou_type": "bbox", "max_detections": 100,
        "reference": "d_full", "replicates": 1, "val_annotations": None}
    for name in ablation.VARIANTS:
        row = table[name]
        assert row["label"] == ablation.VARIANTS[name][0] and set(row["ci"]) == set(ablation.INTERVAL_KEYS)
        for key, (lo, hi) in row["ci"].items():
            assert lo <= row[key] + 1e-4 and row[key] <= hi + 1e-4, (name, key)
    assert table["d_full"]["ci"]["bbox/AP50_novel"] == [pytest.approx(1.0), pytest.approx(1.0)]  # finds every box
    assert set(table["differences"]) == {f"d_full - {n}" for n in ablation.VARIANTS if n != "d_full"}
    d = table["differences"]["d_full - a_no_distillation"]["bbox/AP50_all"]
    assert d["delta"] == pytest.approx(table["d_full"]["bbox/AP50_all"] - table["a_no_distillation"]["bbox/AP50_all"],
                                       abs=2e-4)
    assert 0 < d["lo"] <= d["delta"] <= d["hi"] and d["p_le_0"] == 0.0  # half the boxes missed: clearly worse
    assert "| (d) full EZSD − (a) no distillation |" in echoed[-1] and "[1.000, 1.000]" in echoed[-1]


def test_intervals_only_names_the_missing_variant_run(fake_ablation, capsys) -> None:
    base_root, overrides = fake_ablation
    artefacts.remove_tree(ablation.variant_root(base_root, "c_random_boxes"))
    argv = ["ablate", str(PARAMS), "--intervals-only", *(a for o in overrides for a in ("--set", o))]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c_random_boxes" in err and "smoke-ablation-c_random_boxes" in err
    assert not (base_root / "ablation.json").exists()


def test_intervals_use_the_ground_truth_stage_05_scores_on(fake_ablation, tmp_path: Path) -> None:
    """The bootstrap reads the val file under the input rules, as stage 05 does: an image whose file is
    missing is not a val image (before, the raw JSON counted it and its boxes as missed)."""
    base_root, overrides = fake_ablation
    (tmp_path / "data/coco/val/000007.png").unlink()
    for name in ablation.VARIANTS:  # stage 05 never detects on an image it could not read
        out = artefacts.stage_dir(ablation.variant_root(base_root, name), "evaluate")
        dets = [d for d in json.loads((out / "detections.json").read_text()) if d["image_id"] != 7]
        artefacts.atomic_write_json(out / "detections.json", dets)
        artefacts.write_manifest(out, stage="evaluate", split="smoke", config={}, config_hash="fake", upstream={},
                                 outputs=["detections.json", "metrics.json"], summary={},
                                 started_at=artefacts.utc_now())
    table = ablation.ablate(PARAMS, overrides=overrides, intervals_only=True, num_resamples=20, echo=lambda _: None)
    assert table["bootstrap"]["num_images"] == 39


def test_replicates_are_averaged_paired_and_their_spread_reported(fake_ablation, tmp_path: Path) -> None:
    """With --replicates 2 every variant needs its ``-r1`` run; rows give the replicates' mean, their sd,
    and the intervals of the mean (d's replicate finds every box: its mean interval is still [1, 1])."""
    base_root, overrides = fake_ablation
    with pytest.raises(ValueError, match="smoke-ablation-a_no_distillation-r1"):
        ablation.ablate(PARAMS, overrides=overrides, intervals_only=True, num_resamples=20, replicates=2,
                        echo=lambda _: None)
    anns = json.loads((tmp_path / "data/coco/annotations/instances_val.json").read_text())["annotations"]
    gt = tmp_path / "data/coco/annotations/instances_val.json"
    for n, name in enumerate(ablation.VARIANTS):
        miss = 0.0 if name == ablation.REFERENCE else 0.3
        _fake_run(ablation.replicate_roots(base_root, name, 2)[1], gt, anns, miss, seed=10 + n)
    echoed: list[str] = []
    table = ablation.ablate(PARAMS, overrides=overrides, intervals_only=True, num_resamples=100, replicates=2,
                            echo=echoed.append)
    row = table["a_no_distillation"]
    reps = [r["bbox/AP50_all"] for r in row["replicates"]]
    assert [r["run_root"] for r in row["replicates"]] == [str(p) for p in
                                                           ablation.replicate_roots(base_root, "a_no_distillation", 2)]
    assert row["bbox/AP50_all"] == pytest.approx(sum(reps) / 2) and reps[0] != reps[1]
    assert row["replicate_sd"]["bbox/AP50_all"] == pytest.approx(abs(reps[0] - reps[1]) / 2 ** 0.5)
    lo, hi = row["ci"]["bbox/AP50_all"]
    assert lo <= row["bbox/AP50_all"] + 1e-4 <= hi + 2e-4
    assert table["d_full"]["ci"]["bbox/AP50_novel"] == [pytest.approx(1.0), pytest.approx(1.0)]
    d = table["differences"]["d_full - a_no_distillation"]["bbox/AP50_all"]
    assert d["delta"] == pytest.approx(table["d_full"]["bbox/AP50_all"] - row["bbox/AP50_all"], abs=2e-4)
    assert table["bootstrap"]["replicates"] == 2
    assert "| training replicates: sd (n) |" in echoed[-1] and "| (a) no distillation (2) |" in echoed[-1]
    with pytest.raises(ValueError, match="replicates must be >= 1"):
        ablation.ablate(PARAMS, overrides=overrides, intervals_only=True, replicates=0, echo=lambda _: None)


def test_replicate_runs_reuse_their_variant_upstream_and_change_only_the_training_draw(tmp_path: Path,
                                                                                         monkeypatch) -> None:
    """Each variant's replicate k runs with its own overrides plus train_detector.replicate=k in
    ``<variant run>-r<k>``, with stages 00-03 hard-linked from that variant's run (not from (d)'s)."""
    base_root = tmp_path / "runs/toy"
    calls: list[list[str]] = []

    def fake_run(params, overrides, echo):
        calls.append(list(overrides))
        root = Path([o for o in overrides if o.startswith("common.run_root=")][-1].split("=", 1)[1])  # last wins
        for stage in ablation.UPSTREAM_OF_TRAINING:
            out = artefacts.stage_dir(root, stage)
            if not out.exists():
                out.mkdir(parents=True)
                (out / "made_by.txt").write_text(str(root))

    monkeypatch.setattr(ablation.pipeline, "run", fake_run)
    ablation._run_variants(PARAMS, base_root, (f"common.run_root={base_root}",), lambda _: None, replicates=3)
    for name, (_, changes, _) in ablation.VARIANTS.items():
        own = ablation.variant_root(base_root, name)
        for k, root in enumerate(ablation.replicate_roots(base_root, name, 3)[1:], start=1):
            assert [f"common.run_root={base_root}", f"common.run_root={root}", *changes,
                    f"train_detector.replicate={k}"] in calls
            made_by = artefacts.stage_dir(root, "propose_regions") / "made_by.txt"
            assert made_by.stat().st_ino == (artefacts.stage_dir(own, "propose_regions") / "made_by.txt").stat().st_ino
    assert len(calls) == len(ablation.VARIANTS) * 3
