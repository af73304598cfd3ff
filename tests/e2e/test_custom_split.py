"""A split of its own, end to end through the notebooks: ``params/examples/photos_4_2.yaml`` declares a
COCO-format dataset's base names inline and its novel names in a file, and ``ezsd run`` runs stages
01-05 on the dataset ``realformat.write_custom_dataset`` writes (tiny random-init CLIP, random ResNet-18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from realformat import CUSTOM_NAMES, CUSTOM_NOVEL, write_custom_dataset
from safetensors.torch import load_file

from ezsd_core import artefacts, cli

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params/examples/photos_4_2.yaml"


def test_a_declared_split_runs_end_to_end(tmp_path: Path, capsys) -> None:
    data = write_custom_dataset(tmp_path / "photos")
    run_root = tmp_path / "runs" / "photos_4_2"
    code = cli.main(["run", str(PARAMS), "--set", f"common.data_root={data}", "--set", f"common.run_root={run_root}"])
    assert code == 0, capsys.readouterr().err
    for stage in ("finetune_clip", "propose_regions", "extract_features", "train_detector", "evaluate"):
        assert artefacts.require_complete(run_root, stage)["split"] == "photos_4_2"
    text = load_file(str(artefacts.stage_dir(run_root, "finetune_clip") / "text_embeds.safetensors"))
    ids = {n: 11 + k for k, n in enumerate(CUSTOM_NAMES)}
    assert text["novel_category_ids"].tolist() == [ids[n] for n in CUSTOM_NOVEL]
    assert text["base_category_ids"].tolist() == [ids[n] for n in CUSTOM_NAMES if n not in CUSTOM_NOVEL]
    state = load_file(str(artefacts.stage_dir(run_root, "train_detector") / "model.safetensors"))
    assert state["roi_heads.box_predictor.text_embeds"].shape[0] == 4, "trained on the four base names"
    metrics = json.loads((artefacts.stage_dir(run_root, "evaluate") / "metrics.json").read_text())
    assert all(0.0 <= metrics[f"bbox/AP50_{s}"] <= 1.0 for s in ("base", "novel", "all"))


def test_a_declared_name_missing_from_the_json_stops_the_run_in_one_line(tmp_path: Path, capsys) -> None:
    data = write_custom_dataset(tmp_path / "photos")
    (data / "novel.txt").write_text("flag\nzebra\n")
    code = cli.main(["run", str(PARAMS), "--stage", "finetune_clip", "--set", f"common.data_root={data}",
                     "--set", f"common.run_root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and any("novel_names: 'zebra' not among the 6 category names" in line for line in err)
