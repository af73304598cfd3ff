"""Stages on a cluster: ``ezsd submit`` (SLURM or local processes, through submitit) and ``ezsd status``.

Role: scheduling only (issue 10). A sharded stage (02, 03) becomes one array job, one task per
pending shard, each running the stage notebook through ``pipeline.run`` with its ``shard_index``;
a single-process stage one job; ``train_detector`` over several processes one job per node running
``torchrun``. The stages of one submission chain with ``afterok`` (the local executor waits for each
stage instead); complete stages and shards are skipped. Logs and the submission records live under
``<run_root>/jobs/`` (``<NN_stage>/<job>_<task>_log.out``, ``submissions.json``); executed notebooks
under ``<NN_stage>/notebooks/shard-XXXXX.<job>_<task>.ipynb``. On SLURM's signal before the time
limit (``--signal``) a task is requeued (submitit checkpointing) and continues from its finished
parts (shards) or last checkpoint (training).
Layer 4: imports layer 0 and pipeline; submitit is imported only when something is submitted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ezsd_core import artefacts, config, lineage, pipeline
from ezsd_core.config import CommonConfig, ConfigError

RECORDS = "submissions.json"
EXECUTORS = ("slurm", "local")
FAILED_STATES = ("CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                 "DEADLINE", "INTERRUPTED", "NO PROCESS AND NO RESULT")
PENDING_STATES = ("PENDING", "REQUEUED", "CONFIGURING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED")
RUNNING_STATES = ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING")


@dataclass(frozen=True)
class Resources:
    """What every job asks for. ``time_min``: the time limit in minutes; ``signal_s``: seconds before it at
    which SLURM sends the requeue signal; ``nodes`` and ``procs_per_node`` apply to ``train_detector``
    only (``procs_per_node`` defaults to ``gpus_per_node``, else 1: gloo processes on CPUs)."""

    partition: str | None = None
    account: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str | None = None
    time_min: int = 60
    array_parallelism: int = 256
    nodes: int = 1
    procs_per_node: int | None = None
    signal_s: int = 120

    def train_procs(self) -> int:
        """Training processes per node."""
        return self.procs_per_node or self.gpus_per_node or 1

    def flags(self, stage: str) -> str:
        """The sbatch flags of a job of ``stage``, as ``--dry-run`` prints them."""
        train = stage == "train_detector"
        items = [("partition", self.partition), ("account", self.account),
                 ("nodes", self.nodes if train else 1), ("ntasks-per-node", 1),
                 ("gpus-per-node", self.gpus_per_node or None), ("cpus-per-task", self.cpus_per_task),
                 ("mem", self.mem), ("time", self.time_min), ("signal", f"USR2@{self.signal_s}")]
        return " ".join(f"--{k}={v}" for k, v in items if v is not None)


def parse_time(text: str) -> int:
    """``--time`` as minutes: ``90``, ``HH:MM:SS``, ``MM:SS`` or ``D-HH:MM:SS`` (SLURM's forms).

    Raises:
        ConfigError: another form (one line naming the allowed ones).
    """
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ConfigError(f"--time: got {text!r}; allowed: minutes (90), HH:MM:SS, D-HH:MM:SS")
    days, a, b, c = (int(x) if x else 0 for x in m.groups())
    if m.group(3) is None:  # minutes (or D-HH)
        return days * 1440 + (a * 60 if m.group(1) else a)
    h, mi, s = (a, b, c) if m.group(4) is not None else (0, a, b)
    return max(1, days * 1440 + h * 60 + mi + (1 if s else 0))


@dataclass
class JobPlan:
    """One job to submit: ``kind`` ``array`` (a sharded stage; ``shards`` its tasks), ``job`` (one
    process) or ``torchrun`` (train_detector over ``world`` processes); ``after``: the stages whose jobs
    it waits for (afterok)."""

    stage: str
    kind: str
    shards: list[int]
    command: str
    after: list[str] = field(default_factory=list)
    world: int = 1

    def describe(self, resources: Resources, executor: str, job_ids: dict[str, str] | None = None) -> str:
        """The ``--dry-run`` lines of this job."""
        what = {"array": f"array job of {len(self.shards)} tasks (shards {_ranges(self.shards)})",
                "job": "one job", "torchrun": f"one job per node, torchrun over {self.world} processes"}[self.kind]
        array = f" --array={_ranges(self.shards, ',')}%{min(len(self.shards), resources.array_parallelism)}" \
            if self.kind == "array" else ""
        after = ", ".join(f"afterok:{(job_ids or {}).get(s, f'<job of {artefacts.stage_dirname(s)}>')}"
                          for s in self.after) or "none"
        waits = " (the local executor runs it after them)" if executor == "local" and self.after else ""
        return (f"{artefacts.stage_dirname(self.stage)}: {what} on {executor}\n"
                f"    resources: {resources.flags(self.stage)}{array}\n"
                f"    command: {self.command}\n"
                f"    dependency: {after}{waits}")


def _ranges(values: Sequence[int], sep: str = ", ") -> str:
    out, i = [], 0
    values = sorted(values)
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(f"{values[i]}-{values[j]}" if j > i else str(values[i]))
        i = j + 1
    return sep.join(out)


# ---------------------------------------------------------------------------------------------
# what to run


def _configs(params: Path | str, overrides: Sequence[str], names: Sequence[str]) -> dict[str, CommonConfig]:
    doc = config.read_params(params)
    return {s: config.stage_config(doc, s, source=str(params), overrides=overrides) for s in names}


def _upstream(cfg: CommonConfig) -> dict[str, str] | None:
    try:
        return lineage.upstream_hashes(cfg)
    except artefacts.MissingArtefactError:
        return None


def _command(params: Path | str, stage: str, overrides: Sequence[str], shard: str | None) -> str:
    parts = ["ezsd run", str(params), "--stage", stage, *(f"--set {o}" for o in overrides)]
    return " ".join(parts + ([f"--set {stage}.shard_index={shard}"] if shard is not None else []))


def plan(params: Path | str, *, stage: str | None = None, first: str | None = None, last: str | None = None,
         overrides: Sequence[str] = (), resources: Resources = Resources(),
         echo: Callable[[str], None] = print) -> list[JobPlan]:
    """The jobs that bring the selected stages up to date, in pipeline order.

    A complete stage is skipped (and says so); a sharded stage whose upstream is complete gets a task
    per missing or stale shard only (shard 0 alone when every shard is current: it finalises);
    a stage waits (afterok) for the jobs of the selected stages it reads.

    Raises:
        ConfigError: a params problem, or a ``train_detector`` batch its processes cannot share.
        MissingArtefactError: an upstream stage outside the selection is not complete.
    """
    doc = config.read_params(params)
    names = pipeline.select_stages(doc, stage=stage, first=first, last=last, source=str(params))
    cfgs = _configs(params, overrides, names)
    jobs: list[JobPlan] = []
    planned: set[str] = set()
    for s in names:
        cfg = cfgs[s]
        after = [u for u in cfg.upstream_stages() if u in planned]
        upstream = None if after else lineage.upstream_hashes(cfg)  # raises when an unselected one is missing
        if upstream is not None and not cfg.force and lineage.staleness(
                artefacts.stage_dir(cfg.run_root, s), config_hash=config.config_hash(cfg), upstream=upstream) is None:
            echo(f"{artefacts.stage_dirname(s)}: complete, skipped")
            continue
        if hasattr(cfg, "num_shards"):
            shards = list(range(cfg.num_shards)) if upstream is None or cfg.force else \
                (lineage.pending_shards(cfg, s, upstream) or [0])
            jobs.append(JobPlan(s, "array", shards, _command(params, s, overrides, "<task>"), after))
        elif s == "train_detector" and resources.nodes * resources.train_procs() > 1:
            world = resources.nodes * resources.train_procs()
            config.train_batch(cfg, world)  # a batch the processes cannot share is refused before submitting
            cmd = (f"torchrun --nnodes {resources.nodes} --nproc_per_node {resources.train_procs()} "
                   f"-m ezsd_core.stages.train_detector {params}" + "".join(f" --set {o}" for o in overrides))
            jobs.append(JobPlan(s, "torchrun", [0], cmd, after, world))
        else:
            jobs.append(JobPlan(s, "job", [0], _command(params, s, overrides, None), after))
        planned.add(s)
    return jobs


# ---------------------------------------------------------------------------------------------
# the task that runs on the cluster


class StageTask:
    """The callable a job runs: one shard (or the whole stage) through ``pipeline.run``, or torchrun.

    It is submitit-checkpointable: on the requeue signal it is resubmitted with the same arguments,
    and the rerun continues from the shard's finished parts or the training checkpoint.
    """

    def __init__(self, params: str, stage: str, overrides: Sequence[str], command: str, procs_per_node: int = 1,
                 signal_s: int = 120):
        self.params, self.stage, self.overrides = params, stage, list(overrides)
        self.command, self.procs_per_node, self.signal_s = command, procs_per_node, signal_s
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_proc": None}

    def __call__(self, shard: int | None) -> str:
        import submitit

        env = submitit.JobEnvironment()
        os.environ["EZSD_TASK_TAG"] = env.job_id  # executed notebooks named by job and task id
        if self.stage == "train_detector" and self.procs_per_node * env.num_nodes > 1:
            return self._torchrun(env)
        extra = [f"{self.stage}.shard_index={shard}"] if shard is not None else []
        pipeline.run(self.params, stage=self.stage, overrides=[*self.overrides, *extra], command=self.command)
        return f"{self.stage} shard {shard}: done" if shard is not None else f"{self.stage}: done"

    def _torchrun(self, env: Any) -> str:
        port = 20000 + int(re.sub(r"\D", "", env.job_id.split("_")[0]) or 0) % 20000
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={env.num_nodes}",
               f"--node_rank={env.node}", f"--nproc_per_node={self.procs_per_node}",
               f"--master_addr={env.hostnames[0]}", f"--master_port={port}",
               "-m", "ezsd_core.stages.train_detector", self.params, *(a for o in self.overrides for a in ("--set", o))]
        print(" ".join(cmd), flush=True)
        self._proc = subprocess.Popen(cmd, env={**os.environ, "EZSD_COMMAND": self.command})
        code = self._proc.wait()
        if code:
            raise RuntimeError(f"torchrun of train_detector exited with {code}; see this log")
        return "train_detector: done"

    def checkpoint(self, shard: int | None) -> Any:
        """Requeue with the same arguments (submitit calls this on the signal before the time limit).

        Training is first asked to checkpoint and stop (``checkpoints/PREEMPT``, which every rank reads
        at each step); this waits for torchrun to exit, up to ``signal_s`` - 30 s.
        """
        import submitit

        if self.stage == "train_detector":
            cfg = config.stage_config(config.read_params(self.params), self.stage, source=self.params,
                                      overrides=self.overrides)
            stop = artefacts.stage_dir(cfg.run_root, self.stage) / artefacts.PREEMPT_FILE
            stop.parent.mkdir(parents=True, exist_ok=True)
            stop.touch()
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=max(5, self.signal_s - 30))
                except subprocess.TimeoutExpired:
                    pass
        return submitit.helpers.DelayedSubmission(self, shard)


# ---------------------------------------------------------------------------------------------
# submitting


def jobs_dir(run_root: Path | str) -> Path:
    """``<run_root>/jobs``: logs (per stage folder) and the submission records."""
    return Path(run_root) / "jobs"


def read_records(run_root: Path | str) -> dict[str, Any]:
    """The submission records of a run: stage -> its latest submission (executor, job id, tasks)."""
    p = jobs_dir(run_root) / RECORDS
    import json

    return json.loads(p.read_text()) if p.exists() else {}


def _executor(kind: str, folder: Path, resources: Resources, plan_: JobPlan, dependency: str | None):
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster=kind)
    train = plan_.kind == "torchrun"
    params: dict[str, Any] = {"timeout_min": resources.time_min, "cpus_per_task": resources.cpus_per_task,
                              "nodes": resources.nodes if train else 1, "tasks_per_node": 1,
                              "name": f"ezsd-{artefacts.stage_dirname(plan_.stage)}"}
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    if kind == "slurm":
        params.update(slurm_signal_delay_s=resources.signal_s, slurm_array_parallelism=resources.array_parallelism)
        params.update({f"slurm_{k}": v for k, v in (("partition", resources.partition), ("account", resources.account),
                                                     ("mem", resources.mem)) if v})
        if dependency:
            params["slurm_additional_parameters"] = {"dependency": dependency, "kill-on-invalid-dep": "yes"}
    ex.update_parameters(**params)
    return ex


def submit(params: Path | str, *, stage: str | None = None, first: str | None = None, last: str | None = None,
           overrides: Sequence[str] = (), resources: Resources = Resources(), executor: str = "slurm",
           dry_run: bool = False, resubmit_failed: bool = False, command: str | None = None,
           echo: Callable[[str], None] = print) -> list[JobPlan]:
    """Submit the jobs of ``plan`` (or, with ``resubmit_failed``, only the failed or cancelled tasks of
    the selected stages' last submission); record them in ``<run_root>/jobs/submissions.json``.

    The local executor runs the jobs as processes of this machine and waits for each stage before the
    next (SLURM chains them with ``afterok`` and returns at once).

    Returns:
        The jobs submitted (or, with ``dry_run``, that would be).

    Raises:
        ConfigError: a params or option problem; MissingArtefactError: an unselected upstream is missing;
        RuntimeError: a stage's local jobs failed (naming their logs).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: got {executor!r}; allowed: {', '.join(EXECUTORS)}")
    jobs = _failed_plan(params, stage, first, last, overrides, echo) if resubmit_failed else \
        plan(params, stage=stage, first=first, last=last, overrides=overrides, resources=resources, echo=echo)
    if dry_run or not jobs:
        for n, j in enumerate(jobs, 1):
            echo(f"[{n}/{len(jobs)}] " + j.describe(resources, executor))
        if not jobs:
            echo("nothing to submit")
        return jobs
    cfg0 = _configs(params, overrides, [jobs[0].stage])[jobs[0].stage]
    records = read_records(cfg0.run_root)
    command = command or " ".join(["ezsd submit", str(params), *(f"--set {o}" for o in overrides)])
    ids: dict[str, str] = {}
    for n, j in enumerate(jobs, 1):
        folder = jobs_dir(cfg0.run_root) / artefacts.stage_dirname(j.stage)
        dependency = ",".join(f"afterok:{ids[s]}" for s in j.after if s in ids) or None
        ex = _executor(executor, folder, resources, j, dependency)
        task = StageTask(str(params), j.stage, overrides, command, resources.train_procs(), resources.signal_s)
        if j.kind == "array":
            with ex.batch():
                submitted = [ex.submit(task, i) for i in j.shards]
        else:
            submitted = [ex.submit(task, None)]
        ids[j.stage] = submitted[0].job_id.split("_")[0]
        _record(records, j, executor, submitted, dependency, resubmit_failed)
        artefacts.atomic_write_json(jobs_dir(cfg0.run_root) / RECORDS, records)
        echo(f"[{n}/{len(jobs)}] {artefacts.stage_dirname(j.stage)}: submitted job {ids[j.stage]}"
             + (f" ({len(j.shards)} tasks)" if j.kind == "array" else "") + (f", after {dependency}" if dependency
                                                                             else "") + f"; logs in {folder}")
        if executor == "local":
            _wait_local(j, submitted)
    return jobs


def _record(records: dict, j: JobPlan, executor: str, jobs: list, dependency: str | None, merge: bool) -> None:
    old = records.get(j.stage, {}) if merge else {}
    tasks = dict(old.get("tasks", {}))
    for shard, job in zip(j.shards, jobs, strict=True):
        tasks[str(shard)] = {"job_id": job.job_id, "log": str(job.paths.stdout)}
    records[j.stage] = {"executor": executor, "kind": j.kind, "job_id": jobs[0].job_id.split("_")[0],
                        "folder": str(jobs[0].paths.folder), "dependency": dependency, "tasks": tasks,
                        "submitted_at": artefacts.utc_now(),
                        "history": old.get("history", []) + ([{k: old[k] for k in ("job_id", "submitted_at")}]
                                                             if old else [])}


def _wait_local(j: JobPlan, jobs: list) -> None:
    failed = []
    for shard, job in zip(j.shards, jobs, strict=True):
        try:
            job.result()
        except Exception:  # the task's traceback is in its log
            failed.append(f"shard {shard}: {job.paths.stderr}" if j.kind == "array" else str(job.paths.stderr))
    if failed:
        raise RuntimeError(f"stage {j.stage}: {len(failed)} local job(s) failed; see {'; '.join(failed)}")


# ---------------------------------------------------------------------------------------------
# status


@dataclass(frozen=True)
class TaskStatus:
    """One shard (or the one job of a stage): ``state`` done / running / pending / failed / stale /
    unknown; the scheduler's own word in ``detail``."""

    shard: int
    state: str
    job_id: str
    log: str
    detail: str = ""


@dataclass(frozen=True)
class StageStatus:
    """A stage: ``state`` complete / stale / missing (with the reason) and its tasks' states."""

    stage: str
    state: str
    reason: str
    tasks: list[TaskStatus]
    executor: str | None = None


def _scheduler_state(executor: str, folder: str, job_id: str) -> str:
    """The scheduler's state of one job or array task (SLURM: sacct/squeue through submitit)."""
    import submitit

    if executor == "slurm":
        state = submitit.SlurmJob(folder=folder, job_id=job_id).state
        if state != "UNKNOWN":
            return state
        # sacct has no record of an array task cancelled before it started; squeue knows every queued one
        queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60)
        if queued.returncode == 0 and queued.stdout.strip():
            return queued.stdout.split()[0]
        return "CANCELLED (gone before it started: neither squeue nor sacct knows it)" \
            if queued.returncode == 0 else state
    from submitit.core import utils

    job = submitit.local.local.LocalJob(folder=folder, job_id=job_id, tasks=(0,))
    if job.paths.result_pickle.exists():
        outcome = utils.pickle_load(job.paths.result_pickle)[0]
        return "COMPLETED" if outcome == "success" else "FAILED"
    try:
        os.kill(int(job_id.split("_")[0]), 0)
        return "RUNNING"
    except (OSError, ValueError):
        return "NO PROCESS AND NO RESULT"


def _task_state(scheduler: str, done: bool) -> str:
    if done:
        return "done"
    word = scheduler.split()[0] if scheduler else "UNKNOWN"
    if word in RUNNING_STATES:
        return "running"
    if word in PENDING_STATES:
        return "pending"
    if scheduler.startswith(FAILED_STATES):
        return "failed"
    if word == "COMPLETED":
        return "stale"  # it finished, but its output is not current any more
    return "pending" if word == "UNKNOWN" else "unknown"  # accounting lags a second behind sbatch


def status(params: Path | str, *, overrides: Sequence[str] = ()) -> list[StageStatus]:
    """Every stage of a params file: complete / stale / missing, and for a submitted one each task's
    state (done when its shard is current on disk, else the scheduler's word) with its job id and log."""
    doc = config.read_params(params)
    names = [s for s in artefacts.STAGE_NUMBERS if s in doc]
    cfgs = _configs(params, overrides, names)
    out = []
    for s in names:
        cfg = cfgs[s]
        folder = artefacts.stage_dir(cfg.run_root, s)
        upstream = _upstream(cfg)
        if upstream is None:
            state, reason = "missing", "an upstream stage is not complete"
        else:
            reason = lineage.staleness(folder, config_hash=config.config_hash(cfg), upstream=upstream)
            state = "complete" if reason is None else "missing" if reason == "not run yet" and not \
                (folder / artefacts.MANIFEST).exists() else "stale"
        record = read_records(cfg.run_root).get(s)
        tasks = []
        if record:
            key = lineage.shard_key(config.config_hash(cfg), upstream) if upstream is not None else None
            for shard, t in sorted(record["tasks"].items(), key=lambda kv: int(kv[0])):
                if hasattr(cfg, "num_shards"):
                    rel = f"{type(cfg).SHARD_DIR}/{artefacts.shard_name(int(shard), cfg.num_shards)}"
                    done = key is not None and lineage.shard_current(folder, rel, key)
                else:
                    done = state == "complete"
                word = "" if done else _scheduler_state(record["executor"], record["folder"], t["job_id"])
                tasks.append(TaskStatus(int(shard), _task_state(word, done), t["job_id"], t["log"], word))
        out.append(StageStatus(s, state, reason or "", tasks, record["executor"] if record else None))
    return out


def format_status(stages: list[StageStatus]) -> str:
    """The lines ``ezsd status`` prints."""
    lines = []
    for st in stages:
        lines.append(f"{artefacts.stage_dirname(st.stage)}: {st.state}"
                     + (f" ({st.reason})" if st.state != "complete" and st.reason else "")
                     + (f"  [{st.executor}]" if st.executor else ""))
        for t in st.tasks:
            detail = f" ({t.detail})" if t.detail and t.state not in ("running", "pending") else ""
            lines.append(f"    shard {t.shard}: {t.state:<8} job {t.job_id:<12} {t.log}{detail}")
    return "\n".join(lines)


def _failed_plan(params, stage, first, last, overrides, echo) -> list[JobPlan]:
    """The jobs of ``--resubmit-failed``: per selected stage the failed, cancelled or stale tasks of its last
    submission; a stage after one with resubmitted tasks gets its pending tasks cancelled (they wait on
    a job that can no longer succeed) and submitted again behind the new jobs."""
    doc = config.read_params(params)
    names = pipeline.select_stages(doc, stage=stage, first=first, last=last, source=str(params))
    by_stage = {st.stage: st for st in status(params, overrides=overrides)}
    jobs, planned = [], set()
    for s in names:
        st = by_stage[s]
        cfg = _configs(params, overrides, [s])[s]
        after = [u for u in cfg.upstream_stages() if u in planned]
        redo = [t for t in st.tasks if t.state in ("failed", "stale") or (after and t.state == "pending")]
        if st.state == "complete" or not redo:
            echo(f"{artefacts.stage_dirname(s)}: {st.state}, nothing failed" if st.state != "complete" else
                 f"{artefacts.stage_dirname(s)}: complete, skipped")
            continue
        for t in redo:
            if t.state == "pending":
                _cancel(read_records(cfg.run_root)[s], t.job_id)
        sharded = hasattr(cfg, "num_shards")
        kind = "array" if sharded else "job"
        jobs.append(JobPlan(s, kind, [t.shard for t in redo],
                            _command(params, s, overrides, "<task>" if sharded else None), after))
        planned.add(s)
    return jobs


def _cancel(record: dict, job_id: str) -> None:
    import submitit

    if record["executor"] == "slurm":
        submitit.SlurmJob(folder=record["folder"], job_id=job_id).cancel(check=False)
