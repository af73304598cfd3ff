"""Every bad input is answered in one line that names the file, parameter or value (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path

import integrity_runs
import numpy as np
import pytest
from integrity_runs import PARAMS
from PIL import Image

from ezsd_core import artefacts, cli, data, lineage, predict

finished_run = integrity_runs.finished_run  # a fixture (see integrity_runs)
run_copy = integrity_runs.run_copy  # a fixture (see integrity_runs)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_backwards_stage_range_is_an_error_not_a_silent_success(capsys) -> None:
    assert cli.main(["run", str(PARAMS), "--from", "evaluate", "--to", "finetune_clip"]) == 2
    err = _one_error_line(capsys)
    assert "--from evaluate --to finetune_clip" in err and "empty range" in err


def test_a_name_given_twice_is_an_error_naming_it(capsys, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="names: 'heart' is given twice"):
        predict.vocabulary(["heart", "heart", "star"])
    with pytest.raises(ValueError, match="names: 'Heart' is given twice"):
        predict.vocabulary(["heart", " Heart ", "star"])  # CLIP's tokenizer lowercases: the same class
    assert predict.vocabulary([" heart ", "", "sea  star"]) == ["heart", "sea star"]
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    code = cli.main(["predict", "--run", str(tmp_path / "no-run"), "--images", str(tmp_path / "a.png"),
                     "--names", "heart,heart,star"])
    assert code == 2 and "'heart' is given twice" in _one_error_line(capsys), "checked before the run is loaded"


@pytest.mark.parametrize("command", ["predict", "export"])
@pytest.mark.parametrize(("old", "new"), [("--score-thresh", "--box-score-thresh"),
                                          ("--nms-thresh", "--box-nms-thresh"),
                                          ("--max-detections", "--box-detections-per-img")])
def test_a_first_release_detection_flag_says_its_new_name_in_one_line(capsys, command: str, old: str,
                                                                      new: str) -> None:
    args = [command, "--run", "runs/none", "--names", "heart"] + (["--images", "a.png"] if command == "predict" else [])
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args([*args, old, "1"])
    assert e.value.code == 2
    expected = f"ezsd {command}: error: {old} is now called {new} (stage 05's knob of the same name)"
    assert _one_error_line(capsys) == expected
    parsed = cli.build_parser().parse_args([*args, new, "1"])  # the new name is stage 05's knob, read as its type
    assert getattr(parsed, new[2:].replace("-", "_")) == 1


def test_a_truncated_image_is_named(tmp_path: Path) -> None:
    path = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=rf"image {path}: cannot read it"):
        data.read_image(path)
    with pytest.raises(ValueError, match=rf"image {tmp_path / 'missing.png'}: cannot read it"):
        data.read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("text", ['{"status": "complete", "stage": ', "[]", '{"status": "complete"}'])
def test_an_invalid_manifest_is_named_and_makes_its_stage_run_again(tmp_path: Path, text: str) -> None:
    folder = artefacts.stage_dir(tmp_path, "pretrain_clip")
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(text)
    with pytest.raises(artefacts.ManifestError, match=rf"{folder / 'manifest.json'}: invalid manifest"):
        artefacts.read_manifest(folder)
    with pytest.raises(artefacts.MissingArtefactError, match=rf"'pretrain_clip'.*{folder / 'manifest.json'}"):
        artefacts.require_complete(tmp_path, "pretrain_clip")
    # the stage itself is stale (and is recomputed, --force or not) instead of dying on its own manifest
    reason = lineage.staleness(folder, config_hash="sha256:c", upstream={})
    assert reason.startswith("its manifest is invalid") and str(folder / "manifest.json") in reason


def test_verify_reports_damaged_missing_and_unlisted_files(run_copy, capsys) -> None:
    _, run_root = run_copy
    assert cli.main(["verify", str(run_root)]) == 0
    assert "0 damaged" in capsys.readouterr().out
    shard = artefacts.stage_dir(run_root, "propose_regions") / "regions" / artefacts.shard_name(1, 2)
    data_bytes = bytearray(shard.read_bytes())
    data_bytes[-3] ^= 0xFF
    shard.write_bytes(bytes(data_bytes))
    (artefacts.stage_dir(run_root, "evaluate") / "metrics.json").unlink()
    stale = shard.with_name(artefacts.shard_name(0, 4))
    stale.write_bytes(b"left over")
    assert cli.main(["verify", str(run_root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"damaged: {shard} (content changed (sha256 differs))" in lines
    assert any(line.startswith(f"missing: {artefacts.stage_dir(run_root, 'evaluate') / 'metrics.json'}")
               for line in lines)
    assert any(line.startswith(f"unlisted: {stale}") for line in lines)
    assert lines[-1].endswith("2 damaged, missing or invalid, 1 files no manifest lists")
    assert json.loads((shard.parent.parent / "manifest.json").read_text())["status"] == "complete", "read only"
