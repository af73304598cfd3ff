"""The runner: params YAML -> validated configs -> one papermill execution per stage (and shard).

Role: ``ezsd run`` (DESIGN.md II.6). Every selected stage's config is validated before anything
runs; a stage whose manifest matches its config hash, its upstream artefact hashes and its outputs
is skipped and says so; a sharded stage runs only the shards that are missing or stale (one after
another unless a ``shard_index`` is given). Each execution is kept as
``runs/<split>/<NN_stage>/notebooks/shard-XXXXX.ipynb``; a failing one keeps its error cell.
Layer 4: imports only layer 0 (config, artefacts, lineage); papermill is imported here and only here.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ezsd_core
from ezsd_core import artefacts, config, lineage
from ezsd_core.config import CommonConfig, ConfigError


class StageFailed(RuntimeError):
    """A stage notebook raised; the message names the executed notebook that holds the error."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one stage: ``ran`` (shards executed), ``skipped`` (with the reason)."""

    stage: str
    skipped: bool
    detail: str
    seconds: float = 0.0


def notebook_path(stage: str) -> Path:
    """``notebooks/NN_<stage>.ipynb`` of the checkout the package runs from."""
    return Path(ezsd_core.__file__).resolve().parent.parent / "notebooks" / f"{artefacts.stage_dirname(stage)}.ipynb"


def select_stages(doc: dict, *, stage: str | None = None, first: str | None = None, last: str | None = None,
                  source: str) -> list[str]:
    """The stage ids to run, in pipeline order: one ``stage``, or the file's stages from ``first`` to ``last``.

    Raises:
        ConfigError: an unknown stage id, one the params file has no section for, or an empty range
            (``first`` after ``last``).
    """
    present = [s for s in artefacts.STAGE_NUMBERS if s in doc]
    for name in (stage, first, last):
        if name is not None and name not in artefacts.STAGE_NUMBERS:
            raise ConfigError(f"unknown stage {name!r}; allowed: {', '.join(artefacts.STAGE_NUMBERS)}")
        if name is not None and name not in present:
            raise ConfigError(f"{source}: no section {name!r}; stages in this file: {', '.join(present)}")
    if stage is not None:
        return [stage]
    lo = present.index(first) if first else 0
    hi = present.index(last) if last else len(present) - 1
    if lo > hi:
        raise ConfigError(f"--from {present[lo]} --to {present[hi]}: an empty range; {present[lo]} comes after "
                          f"{present[hi]} in the pipeline order ({', '.join(present)})")
    return present[lo:hi + 1]


def shards_to_run(cfg: CommonConfig, stage: str, upstream: dict[str, str], explicit_shard: bool) -> list[int]:
    """The shard executions a stale stage needs: the given ``shard_index``; every shard when forced;
    else the missing, stale or damaged ones, or shard 0 alone when every shard is intact (its run
    only re-finalises: metrics and manifest). A stage without shards runs once, as shard 0."""
    if not hasattr(cfg, "num_shards"):
        return [0]
    if explicit_shard:
        return [cfg.shard_index]
    if cfg.force:
        return list(range(cfg.num_shards))
    return lineage.pending_shards(cfg, stage, upstream) or [0]


KERNEL_START_ATTEMPTS = 5
# what jupyter_client / nbclient raise when a kernel dies or hangs before its first reply; with several
# notebooks started at once on one node, the usual cause is a port another kernel bound between
# jupyter_client's choice of it and this kernel's bind ("Address already in use" in the kernel's log)
_KERNEL_START_ERRORS = ("Kernel died before replying to kernel_info", "Kernel didn't respond",
                        "Address already in use")


def _kernel_start_failure(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _KERNEL_START_ERRORS)


def execute_notebook(source: Path, out: Path, parameters: dict, *, label: str, verbose: bool = False,
                     attempts: int = KERNEL_START_ATTEMPTS) -> None:
    """Execute ``source`` into ``out`` with papermill, retrying a kernel that fails to start.

    A kernel that dies before its first reply (a port race between notebooks started at the same
    moment) is relaunched after a random 0.2-2 s pause, up to ``attempts`` launches in all; nothing
    of the notebook ran in a failed launch.

    Raises:
        StageFailed: a cell raised (the executed copy keeps the error cell), or the kernel failed to
            start ``attempts`` times (one line naming ``label`` and the last error).
    """
    import papermill  # 3 s to import: only when something really runs
    from papermill.exceptions import PapermillExecutionError

    for attempt in range(1, attempts + 1):
        try:
            papermill.execute_notebook(str(source), str(out), parameters=parameters, kernel_name="python3",
                                       progress_bar=False, log_output=verbose, cwd=str(Path.cwd()))
            return
        except PapermillExecutionError as e:
            raise StageFailed(f"{label} failed ({e.ename}: {e.evalue.splitlines()[0] if e.evalue else ''}); "
                              f"see the executed notebook {out}") from None
        except RuntimeError as e:
            if not _kernel_start_failure(e):
                raise
            if attempt == attempts:
                raise StageFailed(f"{label}: the Jupyter kernel failed to start {attempts} times (last: {e}); "
                                  "too many kernels starting at once on this node? see the node's free ports "
                                  "and memory") from None
            time.sleep(random.uniform(0.2, 2.0))


def execute(cfg: CommonConfig, stage: str, shard_index: int, *, verbose: bool = False) -> Path:
    """Run a stage notebook once with papermill; returns the executed notebook's path.

    The executed copy is ``<stage dir>/notebooks/shard-XXXXX.ipynb``, or, inside a scheduler task
    (``EZSD_TASK_TAG`` set by ``ezsd submit``), ``shard-XXXXX.<job>_<task>.ipynb``.

    Raises:
        StageFailed: the notebook raised (its executed copy keeps the error cell), or its kernel could
            not start.
    """
    tag = os.environ.get("EZSD_TASK_TAG")
    name = f"shard-{shard_index:05d}" + (f".{tag}" if tag else "") + ".ipynb"
    out = artefacts.stage_dir(cfg.run_root, stage) / "notebooks" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    params = config.config_dict(cfg)
    if "shard_index" in params:
        params["shard_index"] = shard_index
    execute_notebook(notebook_path(stage), out, params, label=f"stage {stage}", verbose=verbose)
    return out


def run(params_path: Path | str, *, stage: str | None = None, first: str | None = None, last: str | None = None,
        overrides: Sequence[str] = (), force: bool = False, echo: Callable[[str], None] = print,
        command: str | None = None, verbose: bool = False) -> list[Outcome]:
    """Run stages of a params file, skipping those already complete.

    Args:
        params_path: ``params/<split>.yaml``.
        stage: run only this stage; or ``first`` / ``last`` to bound a range (default: all in the file).
        overrides: ``section.key=value`` strings (values read as YAML), applied after the file.
        force: recompute even complete stages (also passed to the stages as ``force``).
        echo: where progress lines go.
        command: the command line to record in every manifest (default: an equivalent ``ezsd run``).
        verbose: stream the notebooks' output (logs, progress bars) while they run.

    Returns:
        One Outcome per selected stage.

    Raises:
        ConfigError: any params problem, before anything runs.
        MissingArtefactError: an upstream stage outside the selection is not complete.
        StageFailed: a notebook raised.
    """
    source = str(params_path)
    doc = config.read_params(params_path)
    names = select_stages(doc, stage=stage, first=first, last=last, source=source)
    overrides = list(overrides) + (["common.force=true"] if force else [])
    cfgs = {s: config.stage_config(doc, s, source=source, overrides=overrides) for s in names}
    explicit = {s: any(o.strip().startswith(f"{s}.shard_index=") for o in overrides) for s in names}
    command = command or " ".join(["ezsd run", source, *(f"--set {o}" for o in overrides)])
    with _environ(EZSD_COMMAND=command):  # notebook kernels inherit it; manifests record it
        return [_run_stage(cfgs[s], s, f"[{n}/{len(names)}] {artefacts.stage_dirname(s)}", explicit[s], echo,
                           verbose) for n, s in enumerate(names, 1)]


@contextlib.contextmanager
def _environ(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _run_stage(cfg: CommonConfig, stage: str, label: str, explicit: bool, echo: Callable[[str], None],
               verbose: bool) -> Outcome:
    upstream = lineage.upstream_hashes(cfg)
    reason = lineage.staleness(artefacts.stage_dir(cfg.run_root, stage), config_hash=config.config_hash(cfg),
                               upstream=upstream)
    if reason is None and not cfg.force:
        echo(f"{label}: skipped, up to date")
        return Outcome(stage, True, "up to date")
    sharded = hasattr(cfg, "num_shards")
    shards = shards_to_run(cfg, stage, upstream, explicit)
    t0 = time.perf_counter()
    # a forced run that fails leaves the complete stage as it was (lineage.previous_kept)
    with lineage.previous_kept(artefacts.stage_dir(cfg.run_root, stage)) if cfg.force else contextlib.nullcontext():
        for i in shards:
            echo(f"{label}: running ({'forced' if cfg.force else reason})"
                 + (f", shard {i + 1}/{cfg.num_shards}" if sharded else "") + " ...")
            execute(cfg, stage, i, verbose=verbose)
    dt = time.perf_counter() - t0
    echo(f"{label}: done in {dt:.1f} s")
    return Outcome(stage, False, reason or "forced", dt)
