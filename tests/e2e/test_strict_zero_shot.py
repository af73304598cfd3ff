"""Strict zero-shot: deleting every novel annotation from the training JSON leaves the outputs of
stages 01-03 bit-identical under the default settings (tensors, metrics). Runs the stages in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ezsd_core import artefacts, config, splits
from ezsd_core.stages import extract_features, finetune_clip, pretrain_clip, propose_regions

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
STAGES = {"pretrain_clip": pretrain_clip, "finetune_clip": finetune_clip, "propose_regions": propose_regions,
          "extract_features": extract_features}


def _run_all(world: Path, run_root: Path) -> None:
    doc = config.read_params(ROOT / "params/smoke.yaml")
    for stage, module in STAGES.items():
        for shard in range(doc[stage].get("num_shards", 1)):
            overrides = [f"common.data_root={world}", f"common.run_root={run_root}"]
            if "num_shards" in doc[stage]:
                overrides.append(f"{stage}.shard_index={shard}")
            module.run(config.stage_config(doc, stage, source="smoke", overrides=overrides))


def _outputs(run_root: Path, stage: str) -> dict:
    folder = artefacts.stage_dir(run_root, stage)
    out = {}
    for o in artefacts.read_manifest(folder)["outputs"]:
        p = folder / o["path"]
        out[o["path"]] = load_file(str(p)) if p.suffix == ".safetensors" else p.read_bytes()
    return out


def test_novel_training_annotations_do_not_change_stages_01_to_03(smoke_world: Path, tmp_path: Path) -> None:
    stripped = tmp_path / "world-without-novel"
    shutil.copytree(smoke_world, stripped)
    ann = stripped / "coco/annotations/instances_train.json"
    doc = json.loads(ann.read_text())
    novel = set(splits.split_from_categories("smoke", doc["categories"]).ids("novel"))
    before = len(doc["annotations"])
    doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] not in novel]
    assert len(doc["annotations"]) < before, "the smoke world must have novel training boxes to delete"
    ann.write_text(json.dumps(doc))
    _run_all(smoke_world, tmp_path / "with")
    _run_all(stripped, tmp_path / "without")
    for stage in ("finetune_clip", "propose_regions", "extract_features"):
        a, b = _outputs(tmp_path / "with", stage), _outputs(tmp_path / "without", stage)
        assert a.keys() == b.keys()
        for name in a:
            if isinstance(a[name], dict):
                assert a[name].keys() == b[name].keys()
                for key in a[name]:
                    assert a[name][key].equal(b[name][key]), f"{stage}/{name}:{key} differs"
            elif name == "metrics.json":  # everything but timings (NaN-safe: compared as JSON text)
                strip = lambda raw: json.dumps({k: v for k, v in json.loads(raw).items() if "second" not in k},
                                               sort_keys=True)
                assert strip(a[name]) == strip(b[name]), f"{stage}/metrics.json differs"
            else:
                assert a[name] == b[name], f"{stage}/{name} differs"
