"""``ezsd submit`` / ``ezsd status`` on a real one-node SLURM cluster, every job through ``sbatch``
(issue 10 §3): the smoke pipeline ends complete and byte-identical to a local run; a cancelled array
task shows as failed and ``--resubmit-failed`` completes the stage; a task killed mid-way resumes
from its finished parts; two gloo processes of train_detector under torchrun finish a run."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ezsd_core import artefacts, distributed

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params/smoke.yaml"
RES = distributed.Resources(cpus_per_task=1, time_min=20, mem="1G")


def _states(overrides: list[str]) -> dict[str, distributed.StageStatus]:
    return {s.stage: s for s in distributed.status(PARAMS, overrides=overrides)}


def _wait(overrides: list[str], done, what: str, timeout: float = 300) -> dict[str, distributed.StageStatus]:
    """Poll ``ezsd status`` until ``done(states)``; fail naming ``what`` and the last status."""
    end = time.monotonic() + timeout
    while True:
        states = _states(overrides)
        if done(states):
            return states
        if time.monotonic() > end:
            pytest.fail(f"{what} not reached in {timeout:.0f} s:\n{distributed.format_status(list(states.values()))}")
        time.sleep(1)


def _logs(run_root: Path) -> str:
    out = []
    for p in sorted((run_root / "jobs").rglob("*_log.*")):
        out.append(f"== {p}\n{p.read_text()[-1500:]}")
    return "\n".join(out)


def _copy(src: Path, dst: Path, stages: tuple[str, ...]) -> Path:
    for s in stages:
        shutil.copytree(artefacts.stage_dir(src, s), artefacts.stage_dir(dst, s))
    return dst


def test_smoke_pipeline_through_sbatch_is_complete_and_byte_identical_to_a_local_run(
        slurm_cluster, smoke_pipeline_run, smoke_world: Path, tmp_path: Path, capsys) -> None:
    local, _, _ = smoke_pipeline_run
    run_root = tmp_path / "smoke"
    overrides = [f"common.data_root={smoke_world}", f"common.run_root={run_root}"]
    jobs = distributed.submit(PARAMS, overrides=overrides, resources=RES, executor="slurm")
    assert [j.kind for j in jobs] == ["job", "job", "array", "array", "job", "job"]
    final = _wait(overrides, lambda st: all(s.state == "complete" for s in st.values())
                  or any(t.state == "failed" for s in st.values() for t in s.tasks), "every stage complete")
    assert all(s.state == "complete" for s in final.values()), _logs(run_root)
    for stage in final:
        ours, theirs = artefacts.require_complete(run_root, stage), artefacts.require_complete(local, stage)
        assert {o["path"]: o["sha256"] for o in ours["outputs"]} == \
            {o["path"]: o["sha256"] for o in theirs["outputs"]}, f"{stage}: outputs differ from the local run"
        assert ours["artefact_hash"] == theirs["artefact_hash"]
    records = distributed.read_records(run_root)
    tasks = records["propose_regions"]["tasks"]
    assert sorted(tasks) == ["0", "1"] and all(Path(t["log"]).exists() for t in tasks.values())
    assert records["extract_features"]["dependency"].startswith("afterok:")
    notebooks = sorted(p.name for p in (artefacts.stage_dir(run_root, "propose_regions") / "notebooks").iterdir())
    assert notebooks == [f"shard-0000{i}.{tasks[str(i)]['job_id']}.ipynb" for i in (0, 1)]
    text = distributed.format_status(list(final.values()))
    assert text.count("done") == 8 and "failed" not in text  # 4 single jobs + 2 x 2 shards
    again = distributed.submit(PARAMS, overrides=overrides, resources=RES, executor="slurm")
    assert again == [], "complete stages are skipped"


def _submit_propose(run_root: Path, world: Path, extra: list[str], parallel: int) -> tuple[list[str], str]:
    overrides = [f"common.data_root={world}", f"common.run_root={run_root}", *extra]
    res = distributed.Resources(cpus_per_task=1, time_min=20, mem="1G", array_parallelism=parallel)
    distributed.submit(PARAMS, stage="propose_regions", overrides=overrides, resources=res, executor="slurm")
    return overrides, distributed.read_records(run_root)["propose_regions"]["job_id"]


def test_a_cancelled_array_task_shows_failed_and_resubmit_failed_completes_the_stage(
        slurm_cluster, smoke_stages, tmp_path: Path) -> None:
    world, src = smoke_stages
    run_root = _copy(src, tmp_path / "smoke", ("pretrain_clip", "finetune_clip"))
    overrides, job = _submit_propose(run_root, world, [], parallel=1)  # task 1 waits behind task 0
    subprocess.run(["scancel", f"{job}_1"], check=True)
    st = _wait(overrides, lambda s: {t.shard: t.state for t in s["propose_regions"].tasks} == {0: "done", 1: "failed"},
               "shard 0 done, shard 1 failed")
    text = distributed.format_status([st["propose_regions"]])
    assert "shard 1: failed" in text and f"{job}_1" in text and "CANCELLED" in text
    assert st["propose_regions"].state != "complete"
    distributed.submit(PARAMS, stage="propose_regions", overrides=overrides, resources=RES, executor="slurm",
                       resubmit_failed=True)
    record = distributed.read_records(run_root)["propose_regions"]
    assert record["tasks"]["0"]["job_id"] == f"{job}_0", "the done shard was not resubmitted"
    assert record["tasks"]["1"]["job_id"] != f"{job}_1"
    st = _wait(overrides, lambda s: s["propose_regions"].state == "complete"
               or any(t.state == "failed" for t in s["propose_regions"].tasks), "propose_regions complete")
    assert st["propose_regions"].state == "complete", _logs(run_root)
    m = artefacts.require_complete(run_root, "propose_regions")
    assert m["artefact_hash"] == artefacts.read_manifest(artefacts.stage_dir(src, "propose_regions"))["artefact_hash"]


def test_a_task_killed_mid_way_resumes_from_its_finished_parts(slurm_cluster, smoke_stages, tmp_path: Path) -> None:
    """One image per part and a dense anchor grid (seconds per image): the task is cancelled once a
    part exists; then the images of the finished parts are overwritten with bytes no decoder reads, so
    the resubmitted task can only succeed by keeping those parts."""
    world0, src = smoke_stages
    world = tmp_path / "world"
    shutil.copytree(world0, world)
    run_root = _copy(src, tmp_path / "smoke", ("pretrain_clip", "finetune_clip"))
    slow = ["propose_regions.images_per_part=1", "propose_regions.region_anchor_stride=2",
            "propose_regions.num_shards=1"]
    overrides, job = _submit_propose(run_root, world, slow, parallel=1)
    parts = artefacts.stage_dir(run_root, "propose_regions") / "regions/.parts/shard-00000-of-00001"
    end = time.monotonic() + 300
    while not list(parts.glob("part-*.safetensors")):
        assert time.monotonic() < end, _logs(run_root)
        time.sleep(0.1)
    task = distributed.read_records(run_root)["propose_regions"]["tasks"]["0"]["job_id"]  # one task: no array
    subprocess.run(["scancel", task], check=True)
    st = _wait(overrides, lambda s: s["propose_regions"].tasks[0].state == "failed", "the task cancelled")
    finished = sorted(parts.glob("part-*.safetensors"))
    from ezsd_core import config
    from ezsd_core.stages import propose_regions

    cfg = config.stage_config(config.read_params(PARAMS), "propose_regions", source="smoke", overrides=overrides)
    files = {r.image_id: Path(r.file_name) for r, _ in propose_regions.work_items(cfg)}
    total = len(files)  # the train images, then the val images of the recall metrics: one part each
    assert 1 <= len(finished) < total, "the kill did not land mid-way"
    from ezsd_core import shards

    done_ids = {int(i) for p in finished for i in shards.RaggedShard(p).image_ids}
    for image_id in done_ids:  # whatever decoded these images again (recomputed their part) would now fail
        files[image_id].write_bytes(b"not an image any more")
    distributed.submit(PARAMS, stage="propose_regions", overrides=overrides, resources=RES, executor="slurm",
                       resubmit_failed=True)
    st = _wait(overrides, lambda s: s["propose_regions"].state == "complete"
               or s["propose_regions"].tasks[0].state == "failed", "the resumed stage complete")
    assert st["propose_regions"].state == "complete", _logs(run_root)
    folder = artefacts.stage_dir(run_root, "propose_regions")
    shard = shards.RaggedShard(folder / "regions/shard-00000-of-00001.safetensors")
    assert len(shard) == total and done_ids <= {int(i) for i in shard.image_ids}


def test_two_gloo_processes_of_train_detector_finish_under_the_cluster(slurm_cluster, smoke_stages,
                                                                       tmp_path: Path) -> None:
    world, src = smoke_stages
    run_root = _copy(src, tmp_path / "smoke", ("pretrain_clip", "finetune_clip", "propose_regions",
                                               "extract_features"))
    overrides = [f"common.data_root={world}", f"common.run_root={run_root}", "train_detector.max_steps=4",
                 "train_detector.batch_size_per_gpu=1"]
    res = distributed.Resources(cpus_per_task=1, time_min=20, mem="2G", procs_per_node=2)
    jobs = distributed.submit(PARAMS, stage="train_detector", overrides=overrides, resources=res, executor="slurm")
    assert [(j.kind, j.world) for j in jobs] == [("torchrun", 2)]
    st = _wait(overrides, lambda s: s["train_detector"].state == "complete"
               or s["train_detector"].tasks[0].state == "failed", "train_detector complete")
    assert st["train_detector"].state == "complete", _logs(run_root)
    m = artefacts.require_complete(run_root, "train_detector")
    assert m["summary"]["processes"] == 2 and m["summary"]["images_per_step"] == 2
