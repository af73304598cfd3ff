"""Run and stage paths, atomic writes, hashing and the stage manifest.

Role: the contract between stages (DESIGN.md II.7). Every file is written to
``<name>.tmp-<host>-<pid>-<random>`` next to its destination (unique across the hosts of a shared
file system, not only across pids) and renamed into place, so a file that exists is complete; a
stage's finalisation runs under ``stage_lock`` (one finaliser at a time per stage folder); the manifest is
written last and carries the config hash, upstream hashes, code and environment versions and the
hashes of every output. Reads/writes: ``runs/<split>/<NN_stage>/manifest.json``.
Layer 0: standard library only (no torch).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import ezsd_core

MANIFEST_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# Stage ids in pipeline order; the number prefixes the notebook and the run folder (II.10).
STAGE_NUMBERS: dict[str, int] = {
    "pretrain_clip": 0,
    "finetune_clip": 1,
    "propose_regions": 2,
    "extract_features": 3,
    "train_detector": 4,
    "evaluate": 5,
}
PREEMPT_FILE = "checkpoints/PREEMPT"  # in a training stage's folder: "checkpoint now and stop" (ezsd submit)
_ENV_PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "pycocotools", "lvis")


class MissingArtefactError(RuntimeError):
    """An upstream stage has not completed; the message names the stage to run."""

    def __init__(self, stage: str, stage_dir: Path, reason: str):
        self.stage = stage
        super().__init__(f"stage '{stage}' has no complete artefacts in {stage_dir} ({reason}); "
                         f"run it first: ezsd run params/<split>.yaml --stage {stage}")


class ManifestError(ValueError):
    """A ``manifest.json`` that cannot be read or lacks required keys; the message names the file."""


@dataclass(frozen=True)
class StageResult:
    """What ``stages.<x>.run(cfg)`` returns.

    Attributes:
        stage_dir: the stage's artefact folder.
        skipped: True when everything was already complete and nothing was recomputed.
        summary: small scalar facts for display (also stored in the manifest).
    """

    stage_dir: Path
    skipped: bool
    summary: dict[str, int | float | str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# paths


def stage_dirname(stage: str) -> str:
    """``'propose_regions'`` -> ``'02_propose_regions'``.

    Raises:
        ValueError: for an unknown stage id.
    """
    if stage not in STAGE_NUMBERS:
        raise ValueError(f"unknown stage {stage!r}; allowed: {', '.join(STAGE_NUMBERS)}")
    return f"{STAGE_NUMBERS[stage]:02d}_{stage}"


def stage_dir(run_root: Path | str, stage: str) -> Path:
    """The artefact folder of ``stage`` inside ``run_root``."""
    return Path(run_root) / stage_dirname(stage)


def shard_name(shard_index: int, num_shards: int, suffix: str = ".safetensors") -> str:
    """``shard-00003-of-00016.safetensors``."""
    return f"shard-{shard_index:05d}-of-{num_shards:05d}{suffix}"


# ---------------------------------------------------------------------------------------------
# atomic writes


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it into place, on error delete it.

    Use it for writers that want a file name (safetensors, torch.save, PIL):
    ``with atomic_path(p) as tmp: save_file(tensors, tmp)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def temp_name(name: str) -> str:
    """``<name>.tmp-<host>-<pid>-<8 hex>``: unique across hosts sharing a folder (array tasks on several
    nodes may have equal pids) and across writers within one process."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40] or "host"
    return f"{name}.tmp-{host}-{os.getpid()}-{secrets.token_hex(4)}"


LOCK = ".lock"


@contextlib.contextmanager
def stage_lock(stage_path: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on ``<stage_path>/.lock`` (``flock``; on NFS the kernel maps it to a POSIX
    lock that the server arbitrates): shards that finish at the same moment finalise one at a time."""
    stage_path = Path(stage_path)
    stage_path.mkdir(parents=True, exist_ok=True)
    with open(stage_path / LOCK, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def remove_tree(path: Path | str) -> None:
    """Delete a folder tree (used only on explicit request, e.g. ``--force`` of the toy world)."""
    shutil.rmtree(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


# ---------------------------------------------------------------------------------------------
# hashing


def hash_json(obj: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path | str) -> str:
    """``sha256:<hex>`` of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------------------------
# manifest


def utc_now() -> str:
    """ISO-8601 UTC timestamp, seconds precision."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def code_version() -> dict[str, Any]:
    """Package version plus the git commit and dirty flag of the checkout it runs from (if any)."""
    root = Path(ezsd_core.__file__).resolve().parent.parent
    info: dict[str, Any] = {"ezsd_core": ezsd_core.__version__, "git_commit": None, "git_dirty": None}
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            info["git_dirty"] = bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# CPU features that decide which float kernels oneDNN / MKL pick, hence the last bits of CPU results: two
# runs of the same code on machines that differ here may differ like training replicates (README, Results).
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_description(cpuinfo: str) -> dict[str, str | None]:
    """``{"cpu_model", "cpu_flags"}`` from the text of ``/proc/cpuinfo``: the first ``model name`` and
    which of ``_CPU_FLAGS`` the first ``flags`` line lists (space-separated, in that order; None if absent)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = fields.get("flags")
    return {"cpu_model": fields.get("model name"),
            "cpu_flags": None if flags is None else " ".join(f for f in _CPU_FLAGS if f in flags.split())}


def env_versions() -> dict[str, str | None]:
    """Python and key package versions, read from installed metadata (nothing is imported), and the CPU
    (model and kernel-relevant flags, from ``/proc/cpuinfo`` where there is one)."""
    env: dict[str, str | None] = {"python": platform.python_version()}
    for name in _ENV_PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    try:
        env.update(cpu_description(Path("/proc/cpuinfo").read_text()))
    except OSError:
        env.update({"cpu_model": platform.processor() or None, "cpu_flags": None})
    return env


_COMPLETE_KEYS = ("stage", "config_hash", "upstream", "artefact_hash", "outputs")
_OUTPUT_KEYS = ("path", "bytes", "sha256")


def read_manifest(stage_path: Path | str) -> dict[str, Any] | None:
    """The manifest of a stage folder, or None when there is none.

    Raises:
        ManifestError: the file is not JSON, not an object, or a ``complete`` one lacks
            ``stage``/``config_hash``/``upstream``/``artefact_hash``/``outputs`` (one line naming it).
    """
    p = Path(stage_path) / MANIFEST
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{p}: invalid manifest ({e.__class__.__name__}: {e}); run its stage again "
                            "(it is then recomputed)") from None
    problem = _manifest_problem(m)
    if problem:
        raise ManifestError(f"{p}: invalid manifest ({problem}); run its stage again (it is then recomputed)")
    return m


def _manifest_problem(m: Any) -> str | None:
    if not isinstance(m, dict) or "status" not in m:
        return "expected a JSON object with a 'status'"
    if m["status"] != "complete":
        return None
    missing = [k for k in _COMPLETE_KEYS if k not in m]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(m["upstream"], dict) or not isinstance(m["outputs"], list):
        return "'upstream' must be an object and 'outputs' a list"
    for o in m["outputs"]:
        if not isinstance(o, dict) or any(k not in o for k in _OUTPUT_KEYS):
            return f"an output entry without {'/'.join(_OUTPUT_KEYS)}: {o!r}"[:200]
    return None


def write_manifest(stage_path: Path | str, *, stage: str, split: str, config: Mapping[str, Any],
                   config_hash: str, upstream: Mapping[str, str], outputs: Sequence[str],
                   summary: Mapping[str, Any], started_at: str, extra: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Hash the outputs and write ``manifest.json`` last, atomically, with status ``complete``.

    Args:
        stage_path: the stage folder.
        stage, split: ids.
        config: the resolved config as JSON primitives; ``config_hash`` its hash without runtime fields.
        upstream: upstream stage id -> its ``artefact_hash``.
        outputs: output files, relative to ``stage_path``; each must exist.
        summary: small scalar facts; ``started_at``: ISO time the work began.
        extra: more top-level keys (e.g. ``source`` of a shipped checkpoint).

    Returns:
        The manifest dict that was written. Each output entry holds ``path``, ``bytes``, ``sha256``
        and ``mtime_ns`` (the fast path of ``output_problem``; not part of ``artefact_hash``).
    """
    stage_path = Path(stage_path)
    files = [output_entry(stage_path, o) for o in sorted(outputs)]
    art = hash_json({"stage": stage, "config_hash": config_hash, "upstream": dict(upstream),
                     "outputs": [f["sha256"] for f in files]})
    manifest = {"schema_version": MANIFEST_SCHEMA_VERSION, "stage": stage, "split": split,
                "status": "complete", "config": dict(config), "config_hash": config_hash,
                "upstream": dict(upstream), "artefact_hash": art, "code": code_version(),
                "env": env_versions(), "command": os.environ.get("EZSD_COMMAND"),
                "started_at": started_at, "finished_at": utc_now(),
                "outputs": files, "summary": dict(summary), **(extra or {})}
    atomic_write_json(stage_path / MANIFEST, manifest)
    return manifest


def output_entry(stage_path: Path | str, relpath: str) -> dict[str, Any]:
    """``{"path", "bytes", "sha256", "mtime_ns"}`` of one output file (relative to ``stage_path``).

    ``mtime_ns`` is None when the file changed while it was hashed (it is then always re-hashed).
    """
    p = Path(stage_path) / relpath
    before = p.stat()
    digest = sha256_file(p)
    after = p.stat()
    stable = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
    return {"path": relpath, "bytes": after.st_size, "sha256": digest if stable else sha256_file(p),
            "mtime_ns": after.st_mtime_ns if stable else None}


def output_problem(stage_path: Path | str, entry: Mapping[str, Any], *, full: bool = False) -> str | None:
    """Why an output differs from its manifest entry (``missing``, ``size changed``, ``content changed``),
    or None when it is the recorded file.

    Fast path: the same size and modification time as recorded means unchanged; when the time differs
    (or was not recorded) the file is hashed. ``full`` always hashes (``ezsd verify``).
    """
    p = Path(stage_path) / entry["path"]
    try:
        st = p.stat()
    except OSError:
        return "missing"
    if st.st_size != entry["bytes"]:
        return f"size changed ({entry['bytes']} -> {st.st_size} bytes)"
    if not full and entry.get("mtime_ns") is not None and st.st_mtime_ns == entry["mtime_ns"]:
        return None
    return None if sha256_file(p) == entry["sha256"] else "content changed (sha256 differs)"


def staleness(stage_path: Path | str, *, config_hash: str, upstream: Mapping[str, str]) -> str | None:
    """``lineage.staleness`` (kept here for callers of the first release)."""
    from ezsd_core import lineage  # lineage builds on this module

    return lineage.staleness(stage_path, config_hash=config_hash, upstream=upstream)


def require_complete(run_root: Path | str, stage: str) -> dict[str, Any]:
    """The manifest of an upstream stage, checked to be complete with every output as recorded
    (size + mtime, else sha256).

    Raises:
        MissingArtefactError: naming the stage to run (and the file when the manifest is invalid or
            an output is missing or damaged).
    """
    path = stage_dir(run_root, stage)
    try:
        m = read_manifest(path)
    except ManifestError as e:
        raise MissingArtefactError(stage, path, str(e)) from None
    if m is None or m.get("status") != "complete":
        raise MissingArtefactError(stage, path, "no complete manifest")
    for o in m["outputs"]:
        problem = output_problem(path, o)
        if problem:
            raise MissingArtefactError(stage, path, f"output {o['path']}: {problem}")
    return m


# ---------------------------------------------------------------------------------------------
# shards (read without torch, so the runner can decide what to run)


def safetensors_metadata(path: Path | str) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file (8-byte header length + JSON), or None if unreadable."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100 * 2**20:
                return None
            return json.loads(f.read(n)).get("__metadata__", {})
    except (OSError, ValueError):
        return None
