"""Open-vocabulary prediction on a trained smoke run (Python API and CLI) and the FiftyOne views."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ezsd_core import artefacts, cli, predict

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained(smoke_stages, tmp_path_factory) -> tuple[Path, Path]:
    from conftest import run_stages_in_process

    world, stages_root = smoke_stages
    run_root = tmp_path_factory.mktemp("trained") / "smoke"
    for stage in ("pretrain_clip", "finetune_clip", "propose_regions", "extract_features"):
        shutil.copytree(artefacts.stage_dir(stages_root, stage), artefacts.stage_dir(run_root, stage))
    run_stages_in_process(world, run_root, ["train_detector", "evaluate"])
    return world, run_root


def test_predictor_detects_any_names(trained) -> None:
    world, run_root = trained
    images = predict.image_paths([world / "coco/val"])
    predictor = predict.Predictor.from_run(run_root, box_score_thresh=0.0, box_detections_per_img=5, masks=True)
    results = predictor(images[:2], ["heart", "star", "kite"])
    assert len(results) == 2 and all(len(r.names) <= 5 for r in results)
    assert {n for r in results for n in r.names} <= {"heart", "star", "kite"}
    assert results[0].boxes.shape[1] == 4 and results[0].masks.shape[1:] == (64, 64)
    assert json.loads(json.dumps(results[0].to_json()))["image"] == str(images[0])


def test_predictor_explains_bad_input(trained, tmp_path: Path) -> None:
    world, run_root = trained
    predictor = predict.Predictor.from_run(run_root)
    with pytest.raises(ValueError, match="give at least one category name"):
        predictor([world / "coco/val/000001.png"], [" ", ""])
    (tmp_path / "broken.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*broken.png"):
        predictor([tmp_path / "broken.png"], ["heart"])
    with pytest.raises(ValueError, match="does not exist"):
        predict.image_paths([tmp_path / "missing"])
    with pytest.raises(artefacts.MissingArtefactError, match="train_detector"):
        predict.Predictor.from_run(tmp_path)


def test_cli_predict_writes_json(trained, tmp_path: Path, capsys) -> None:
    world, run_root = trained
    out = tmp_path / "results.json"
    rc = cli.main(["predict", "--run", str(run_root), "--images", str(world / "coco/val"), "--names", "heart,ring",
                   "--out", str(out), "--box-score-thresh", "0.0"])
    assert rc == 0 and len(json.loads(out.read_text())) == 4
    assert cli.main(["predict", "--run", str(run_root), "--images", str(world / "coco/val"), "--names", ","]) == 2
    assert "give at least one category name" in capsys.readouterr().err


def test_fiftyone_detections_view_has_per_class_ap_by_role(trained) -> None:
    pytest.importorskip("fiftyone")
    from ezsd_core import viz

    _, run_root = trained
    ds, table = viz.detections_dataset(run_root, max_samples=4, min_score=0.0)
    assert len(ds) == 4 and ds.has_sample_field("detections") and "eval_tp" in ds.get_field_schema()
    assert table and {row["role"] for row in table} <= {"base", "novel"}
    assert all(0.0 <= row["AP"] <= 1.0 or row["AP"] == -1 for row in table)
