"""The smoke split end to end through papermill: every pipeline notebook that exists runs, writes a
complete manifest, is skipped when run again, and a failing notebook is reported with its copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ezsd_core import artefacts, config, pipeline

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params/smoke.yaml"


@pytest.fixture(scope="module")
def smoke_run(smoke_pipeline_run) -> tuple[Path, list[str], list[pipeline.Outcome]]:
    return smoke_pipeline_run  # one local run per session (the cluster test compares against it too)


def _stages() -> list[str]:
    return [s for s in artefacts.STAGE_NUMBERS if s in config.read_params(PARAMS)]


def test_every_stage_completes_with_its_outputs(smoke_run) -> None:
    run_root, _, outcomes = smoke_run
    assert [o.stage for o in outcomes] == _stages() and not any(o.skipped for o in outcomes)
    for stage in _stages():
        folder = artefacts.stage_dir(run_root, stage)
        m = artefacts.require_complete(run_root, stage)
        assert m["status"] == "complete" and m["command"].startswith("ezsd run")
        assert (folder / "notebooks" / "shard-00000.ipynb").exists(), "the executed notebook is kept"
        for o in m["outputs"]:
            assert artefacts.sha256_file(folder / o["path"]) == o["sha256"]
    metrics = json.loads((artefacts.stage_dir(run_root, "pretrain_clip") / "metrics.json").read_text())
    assert 0.0 <= metrics["iconic/top1"] <= 1.0 and 0.0 <= metrics["scene_crop/top1"] <= 1.0
    final = json.loads((artefacts.stage_dir(run_root, "evaluate") / "metrics.json").read_text())
    for subset in ("base", "novel", "all"):
        assert 0.0 <= final[f"bbox/AP50_{subset}"] <= 1.0 or final[f"bbox/AP50_{subset}"] == -1.0
        assert f"segm/AP_{subset}" in final


def test_running_again_skips_everything_and_touches_nothing(smoke_run) -> None:
    run_root, overrides, _ = smoke_run
    before = {p: p.stat().st_mtime_ns for p in run_root.rglob("*") if p.is_file()}
    outcomes = pipeline.run(PARAMS, overrides=overrides, echo=print)
    assert all(o.skipped for o in outcomes)
    assert {p: p.stat().st_mtime_ns for p in run_root.rglob("*") if p.is_file()} == before


def test_a_failing_notebook_keeps_its_executed_copy_and_is_named(smoke_run, tmp_path: Path) -> None:
    _, overrides, _ = smoke_run
    bad = [*overrides, f"common.run_root={tmp_path / 'bad'}", f"common.data_root={tmp_path / 'no-world'}"]
    with pytest.raises(pipeline.StageFailed, match=r"stage pretrain_clip failed \(FileNotFoundError") as e:
        pipeline.run(PARAMS, stage="pretrain_clip", overrides=bad, echo=print)
    copy = tmp_path / "bad/00_pretrain_clip/notebooks/shard-00000.ipynb"
    assert str(copy) in str(e.value)
    cells = json.loads(copy.read_text())["cells"]
    assert any(o.get("output_type") == "error" for c in cells for o in c.get("outputs", []))
    assert artefacts.read_manifest(copy.parent.parent) is None, "a failed stage writes no manifest"


def test_a_deleted_shard_is_recomputed_alone(smoke_run) -> None:
    run_root, overrides, _ = smoke_run
    folder = artefacts.stage_dir(run_root, "propose_regions")
    old = artefacts.read_manifest(folder)
    shard_files = sorted((folder / "regions").glob("shard-*.safetensors"))
    assert len(shard_files) == 2, "smoke runs propose_regions in two shards"
    kept = shard_files[0].stat().st_mtime_ns
    shard_files[1].unlink()
    outcomes = {o.stage: o for o in pipeline.run(PARAMS, overrides=overrides, echo=print)}
    assert not outcomes["propose_regions"].skipped and shard_files[1].exists()
    assert shard_files[0].stat().st_mtime_ns == kept, "the intact shard was not recomputed"
    new = artefacts.read_manifest(folder)
    assert new["artefact_hash"] == old["artefact_hash"], "the recomputed shard is bit-identical"
    later = [s for s in _stages() if artefacts.STAGE_NUMBERS[s] > artefacts.STAGE_NUMBERS["propose_regions"]]
    assert all(outcomes[s].skipped for s in later), "unchanged upstream content: downstream stays valid"
    earlier = [s for s in _stages() if artefacts.STAGE_NUMBERS[s] < artefacts.STAGE_NUMBERS["propose_regions"]]
    assert all(outcomes[s].skipped for s in earlier)
