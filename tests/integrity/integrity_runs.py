"""Fixtures of the integrity suite: one finished smoke run (all six stages, in-process, ~10 s), copied
for each test that damages it, and an in-process stand-in for the runner's papermill execution.

Not a conftest.py: the e2e tests import the top-level ``conftest`` by name, which a second
conftest module would shadow. Test modules import these fixtures explicitly.
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
from pathlib import Path

import pytest

from ezsd_core import artefacts, config, pipeline

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params/smoke.yaml"
STAGES = [s for s in artefacts.STAGE_NUMBERS if s in config.read_params(PARAMS)]


_FINISHED: dict[Path, Path] = {}  # world -> run_root: built once per process, whichever module asks first


def run_in_process(world: Path, run_root: Path, stages: list[str], extra: tuple[str, ...] = ()) -> None:
    """Run smoke stages through their ``run()`` (no papermill), every shard of sharded ones."""
    doc = config.read_params(PARAMS)
    for stage in stages:
        module = importlib.import_module(f"ezsd_core.stages.{stage}")
        for shard in range(doc[stage].get("num_shards", 1)):
            sets = [*overrides(world, run_root), *extra]
            if "num_shards" in doc[stage]:
                sets.append(f"{stage}.shard_index={shard}")
            module.run(config.stage_config(doc, stage, source="smoke", overrides=sets))


@pytest.fixture(scope="session")
def finished_run(smoke_world: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(world, run_root) of a complete smoke run; never modify it, copy it (``run_copy``)."""
    if smoke_world not in _FINISHED:
        run_root = tmp_path_factory.mktemp("integrity") / "smoke"
        run_in_process(smoke_world, run_root, STAGES)
        _FINISHED[smoke_world] = run_root
    return smoke_world, _FINISHED[smoke_world]


@pytest.fixture
def run_copy(finished_run, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the finished run (modification times kept, so the fast path holds)."""
    world, run_root = finished_run
    copy = tmp_path / "smoke"
    shutil.copytree(run_root, copy, copy_function=shutil.copy2)
    return world, copy


@pytest.fixture
def in_process_runner(monkeypatch) -> list[tuple[str, int]]:
    """Make ``pipeline.run`` execute stages in this process instead of through papermill.

    Returns the list of (stage, shard) executions, appended to as the runner calls them.
    """
    calls: list[tuple[str, int]] = []

    def execute(cfg, stage, shard_index, *, verbose=False):
        calls.append((stage, shard_index))
        if hasattr(cfg, "shard_index"):
            cfg = dataclasses.replace(cfg, shard_index=shard_index)
        try:
            importlib.import_module(f"ezsd_core.stages.{stage}").run(cfg)
        except Exception as e:  # what papermill reports for a raising notebook
            raise pipeline.StageFailed(f"stage {stage} failed ({type(e).__name__}: {e})") from e
        return artefacts.stage_dir(cfg.run_root, stage) / "notebooks" / f"shard-{shard_index:05d}.ipynb"

    monkeypatch.setattr(pipeline, "execute", execute)
    return calls


def overrides(world: Path, run_root: Path) -> list[str]:
    """The ``--set`` overrides that point the smoke params at a world and a run folder."""
    return [f"common.data_root={world}", f"common.run_root={run_root}"]
