"""Nothing a failed run can break: a forced run that fails leaves the complete stage as it was (issue 9)."""

from __future__ import annotations

import shutil
from pathlib import Path

import integrity_runs
import pytest
from integrity_runs import PARAMS, overrides

from ezsd_core import artefacts, lineage, pipeline

finished_run = integrity_runs.finished_run  # a fixture (see integrity_runs)
in_process_runner = integrity_runs.in_process_runner  # a fixture (see integrity_runs)
run_copy = integrity_runs.run_copy  # a fixture (see integrity_runs)


def test_a_forced_stage_that_fails_at_once_keeps_the_complete_outputs(run_copy, in_process_runner,
                                                                      tmp_path: Path) -> None:
    world, run_root = run_copy
    bad_world = tmp_path / "world"
    shutil.copytree(world, bad_world)
    folder = artefacts.stage_dir(run_root, "train_detector")
    (folder / "notebooks").mkdir(exist_ok=True)
    (folder / "notebooks/shard-00000.ipynb").write_text("{}")  # the executed notebook of the complete run
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for image in (bad_world / "coco/train").iterdir():
        image.write_bytes(image.read_bytes()[:100])  # bad images: stage 04 dies on the first
    with pytest.raises(pipeline.StageFailed, match=rf"image {bad_world / 'coco/train'}/.*: cannot read it"):
        pipeline.run(PARAMS, stage="train_detector", force=True, overrides=overrides(bad_world, run_root),
                     echo=print)
    assert artefacts.require_complete(run_root, "train_detector"), "the run is still usable (ezsd predict)"
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.parts[0] != "notebooks"} == \
        {k: v for k, v in before.items() if k.parts[0] != "notebooks"}, "train_log.jsonl and the rest are back"
    assert after[Path("notebooks/previous/shard-00000.ipynb")] == b"{}", "the previous notebook is kept"
    assert not (folder / lineage.PREVIOUS).exists()


def test_a_forced_stage_that_completes_replaces_the_outputs(run_copy, in_process_runner) -> None:
    world, run_root = run_copy
    folder = artefacts.stage_dir(run_root, "evaluate")
    old = artefacts.read_manifest(folder)
    pipeline.run(PARAMS, stage="evaluate", force=True, overrides=overrides(world, run_root), echo=print)
    new = artefacts.read_manifest(folder)
    assert in_process_runner == [("evaluate", 0)] and new["finished_at"] >= old["finished_at"]
    assert new["artefact_hash"] == old["artefact_hash"] and not (folder / lineage.PREVIOUS).exists()
