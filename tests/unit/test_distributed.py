"""``ezsd submit`` planning without a cluster: time limits, the jobs a params file becomes, a batch the
processes cannot share refused before submitting, the requeue hook of a training task."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from ezsd_core import artefacts, distributed
from ezsd_core.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params/smoke.yaml"


@pytest.mark.parametrize("text,minutes", [("90", 90), ("1:30:00", 90), ("2-00:00:00", 2880), ("10:30", 11)])
def test_time_limits_in_slurm_forms(text: str, minutes: int) -> None:
    assert distributed.parse_time(text) == minutes


def test_a_bad_time_limit_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"--time: got 'two hours'; allowed"):
        distributed.parse_time("two hours")


def test_the_smoke_pipeline_becomes_chained_jobs(tmp_path: Path) -> None:
    lines: list[str] = []
    jobs = distributed.submit(PARAMS, overrides=[f"common.run_root={tmp_path}"], dry_run=True, echo=lines.append)
    assert [(j.stage, j.kind, j.shards) for j in jobs] == [
        ("pretrain_clip", "job", [0]), ("finetune_clip", "job", [0]), ("propose_regions", "array", [0, 1]),
        ("extract_features", "array", [0, 1]), ("train_detector", "job", [0]), ("evaluate", "job", [0])]
    assert jobs[3].after == ["finetune_clip", "propose_regions"]
    text = "\n".join(lines)
    assert "02_propose_regions: array job of 2 tasks (shards 0-1)" in text and "--array=0-1%2" in text
    assert "--set propose_regions.shard_index=<task>" in text and "afterok:<job of 02_propose_regions>" in text
    assert not (tmp_path / "jobs").exists(), "a dry run submits and records nothing"


def test_complete_stages_and_shards_are_not_submitted(smoke_stages, tmp_path: Path) -> None:
    world, src = smoke_stages
    run_root = tmp_path / "smoke"
    shutil.copytree(src, run_root)
    (artefacts.stage_dir(run_root, "extract_features") / "feats/shard-00001-of-00002.safetensors").unlink()
    jobs = distributed.plan(PARAMS, last="extract_features", overrides=[f"common.data_root={world}",
                                                                       f"common.run_root={run_root}"], echo=print)
    assert [(j.stage, j.shards) for j in jobs] == [("extract_features", [1])]


def test_a_training_batch_the_gpus_cannot_share_is_refused_before_submitting(smoke_stages, tmp_path: Path) -> None:
    world, src = smoke_stages
    with pytest.raises(ConfigError, match="cannot be split evenly over 8 processes"):
        distributed.plan(PARAMS, stage="train_detector", resources=distributed.Resources(gpus_per_node=8),
                         overrides=[f"common.data_root={world}", f"common.run_root={src}"])
    jobs = distributed.plan(PARAMS, stage="train_detector", resources=distributed.Resources(gpus_per_node=2),
                            overrides=[f"common.data_root={world}", f"common.run_root={src}"])
    assert [(j.kind, j.world) for j in jobs] == [("torchrun", 2)] and "--nproc_per_node 2" in jobs[0].command


def test_a_training_task_asks_for_a_checkpoint_then_requeues_itself(tmp_path: Path) -> None:
    task = distributed.StageTask(str(PARAMS), "train_detector", [f"common.run_root={tmp_path}"], "ezsd submit",
                                 procs_per_node=2)
    again = pickle.loads(pickle.dumps(task))  # what submitit stores and the requeued job loads
    delayed = again.checkpoint(None)
    assert (artefacts.stage_dir(tmp_path, "train_detector") / artefacts.PREEMPT_FILE).exists()
    assert delayed.function is again and delayed.args == (None,)
