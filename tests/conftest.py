"""Session setup shared by every test: offline, headless, CPU-only, small thread count, temp FiftyOne."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub / fiftyone / matplotlib (the notebooks papermill starts
# inherit this environment too).
_TMP = Path(tempfile.mkdtemp(prefix="ezsd-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(_TMP / "fiftyone-db"))
os.environ.setdefault("FIFTYONE_CONFIG_DIR", str(_TMP / "fiftyone-config"))
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory) -> Path:
    """A tiny toy world (8 train / 4 val scenes of 64 px, 96 iconic pairs), written once per session."""
    from ezsd_core import toyworld

    return toyworld.generate(tmp_path_factory.mktemp("world") / "smoke", toyworld.SMOKE_SPEC)


def run_stages_in_process(world: Path, run_root: Path, stages: list[str], extra: tuple[str, ...] = ()) -> None:
    """Run smoke stages through their ``run()`` (no papermill), every shard of sharded ones."""
    import importlib

    from ezsd_core import config

    doc = config.read_params(REPO / "params/smoke.yaml")
    for stage in stages:
        module = importlib.import_module(f"ezsd_core.stages.{stage}")
        for shard in range(doc[stage].get("num_shards", 1)):
            overrides = [f"common.data_root={world}", f"common.run_root={run_root}", *extra]
            if "num_shards" in doc[stage]:
                overrides.append(f"{stage}.shard_index={shard}")
            module.run(config.stage_config(doc, stage, source="smoke", overrides=overrides))


@pytest.fixture(scope="session")
def smoke_stages(smoke_world: Path, tmp_path_factory) -> tuple[Path, Path]:
    """Stages 00-03 of the smoke split run once in-process: (world, run_root)."""
    run_root = tmp_path_factory.mktemp("stages") / "smoke"
    run_stages_in_process(smoke_world, run_root, ["pretrain_clip", "finetune_clip", "propose_regions",
                                                  "extract_features"])
    return smoke_world, run_root


@pytest.fixture(scope="session")
def smoke_pipeline_run(smoke_world: Path, tmp_path_factory) -> tuple[Path, list[str], list]:
    """The whole smoke pipeline run once through papermill (``pipeline.run``), shared by the e2e tests and
    the cluster test that compares a SLURM run with it: (run_root, overrides, outcomes)."""
    from ezsd_core import pipeline

    run_root = tmp_path_factory.mktemp("runs") / "smoke"
    overrides = [f"common.data_root={smoke_world}", f"common.run_root={run_root}"]
    outcomes = pipeline.run(REPO / "params/smoke.yaml", overrides=overrides, echo=print)
    return run_root, overrides, outcomes
