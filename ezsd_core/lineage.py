"""Run state by content: input fingerprints, lineage hashes, staleness, shard currency, verification.

Role: the one home of "is this stage current?" (DESIGN.md decision 7). A stage's lineage is the
``artefact_hash`` of each upstream stage, the fingerprint of the annotation files (``data``) and the
sha256 of every checkpoint file given as an input (``file:<field>``, e.g. ``file:clip_pretrained``).
A stage is current when its manifest is complete, has the same config hash and lineage, and every
output it lists is the recorded file: same size and mtime (fast path), else the same sha256. Readers
take their inputs from the upstream manifest's ``outputs`` (``upstream_outputs``), never from a glob,
so files no manifest lists (stale shards of another ``num_shards``) are ignored; ``verify_run``
hashes everything and reports them. Reads: ``runs/<split>/<NN_stage>/manifest.json`` and outputs.
Layer 0: standard library only; imports artefacts, config and splits.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ezsd_core import artefacts, config, splits
from ezsd_core.artefacts import MANIFEST, StageResult
from ezsd_core.config import CommonConfig

LOCAL_DIR = "local-dir:"  # open_clip's prefix of a weights folder (clip.build_clip)
CHECKPOINT_FIELDS = ("clip_pretrained",)  # config fields that may name a local checkpoint file
_BOOKKEEPING = ("notebooks", ".parts", ".previous", "checkpoints")  # folders beside outputs, never listed


# ---------------------------------------------------------------------------------------------
# lineage


@functools.cache
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    return artefacts.sha256_file(path)


def file_fingerprint(path: Path | str) -> str:
    """``sha256:<hex>`` of a file, memoised per (path, size, mtime) within a process."""
    p = Path(path).resolve()
    st = p.stat()
    return _file_sha256(p, st.st_size, st.st_mtime_ns)


def data_fingerprint(cfg: CommonConfig) -> str:
    """Hash of the annotation files (and the toy world's ``world.json``, and a declared split's names
    files): data a stage's output depends on.

    Images are not hashed (too many); they are assumed to change only with their annotation file.
    """
    files = [cfg.data_root / cfg.train_annotations, cfg.data_root / cfg.val_annotations, cfg.data_root / "world.json",
             *splits.names_files(cfg)]
    return artefacts.hash_json({f.name: file_fingerprint(f) for f in files if f.exists()})


def input_files(cfg: CommonConfig) -> dict[str, Path]:
    """Checkpoint files the config gives as inputs: ``{"file:clip_pretrained": path}`` when that value
    names an existing file, ``{"file:clip_pretrained/<name>": path}`` for each file of a ``local-dir:DIR``
    (an open_clip tag or ``pretrain_clip`` is not a file and is tracked by value)."""
    found = {}
    for name in CHECKPOINT_FIELDS:
        value = getattr(cfg, name, None)
        if not isinstance(value, str | Path) or str(value) == config.PRETRAIN_CLIP:
            continue
        folder = Path(str(value).removeprefix(LOCAL_DIR)) if str(value).startswith(LOCAL_DIR) else None
        if folder is not None and folder.is_dir():
            found.update({f"file:{name}/{p.name}": p for p in sorted(folder.iterdir()) if p.is_file()})
        elif Path(value).is_file():
            found[f"file:{name}"] = Path(value)
    return found


def upstream_hashes(cfg: CommonConfig) -> dict[str, str]:
    """The lineage of a stage's artefacts: upstream ``artefact_hash`` values, ``data`` and input files.

    Returns:
        ``{"<upstream stage>": "sha256:…", ..., "data": "sha256:…", "file:<field>": "sha256:…"}``.

    Raises:
        MissingArtefactError: an upstream stage is not complete (or an output of it is damaged).
    """
    ups = {u: artefacts.require_complete(cfg.run_root, u)["artefact_hash"] for u in cfg.upstream_stages()}
    files = {k: file_fingerprint(p) for k, p in input_files(cfg).items()}
    return {**ups, "data": data_fingerprint(cfg), **files}


def shard_key(config_hash: str, upstream: Mapping[str, str]) -> str:
    """The key a shard records in its header: current iff config and upstream artefacts are unchanged."""
    return artefacts.hash_json({"config_hash": config_hash, "upstream": dict(upstream)})


# ---------------------------------------------------------------------------------------------
# staleness


def _manifest(stage_path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return artefacts.read_manifest(stage_path), None
    except artefacts.ManifestError as e:
        return None, str(e)


def staleness(stage_path: Path | str, *, config_hash: str, upstream: Mapping[str, str]) -> str | None:
    """Why a stage must run, or None when it is complete for this config and these upstream hashes.

    Checks, in order: a readable, complete manifest; the same config hash; the same lineage; every
    listed output the recorded file (size + mtime, else sha256).
    """
    m, error = _manifest(Path(stage_path))
    if error:
        return f"its manifest is invalid ({error})"
    if m is None or m.get("status") != "complete":
        return "not run yet"
    if m["config_hash"] != config_hash:
        return "its config changed"
    if m["upstream"] != dict(upstream):
        changed = sorted(k for k in set(m["upstream"]) | set(upstream) if m["upstream"].get(k) != upstream.get(k))
        return f"upstream changed: {', '.join(changed)}"
    for o in m["outputs"]:
        problem = artefacts.output_problem(stage_path, o)
        if problem:
            return f"output {o['path']}: {problem}"
    return None


def shard_current(stage_path: Path | str, relpath: str, key: str) -> bool:
    """True when the shard ``relpath`` (relative to the stage folder) needs no recomputation.

    Its header must carry ``key``; when the stage's complete manifest was written under the same key
    and lists the shard, its content must also be the recorded one (a shard with flipped bytes or
    truncated data is recomputed alone).
    """
    path = Path(stage_path) / relpath
    if (artefacts.safetensors_metadata(path) or {}).get("key") != key:
        return False
    m, _ = _manifest(Path(stage_path))
    if m is None or m.get("status") != "complete" or shard_key(m["config_hash"], m["upstream"]) != key:
        return True
    entry = next((o for o in m["outputs"] if o["path"] == relpath), None)
    return entry is None or artefacts.output_problem(stage_path, entry) is None


def invalidate(stage_path: Path | str) -> None:
    """Mark a complete manifest ``incomplete`` before its stage rewrites an output it lists.

    A shard recomputed on another device need not be bit-identical to the one the old manifest
    recorded; once invalidated, shards are judged by their header key until the stage finalises.
    """
    if not Path(stage_path).is_dir():
        return
    with artefacts.stage_lock(stage_path):  # never between another shard's check and its manifest write
        m, _ = _manifest(Path(stage_path))
        if m is not None and m.get("status") == "complete":
            artefacts.atomic_write_json(Path(stage_path) / MANIFEST, {**m, "status": "incomplete"})


def finalize_once(stage_path: Path | str, key: str, write: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Finalise a sharded stage exactly once, whatever order (or moment) its shards finish in.

    Under the stage folder's lock (``artefacts.stage_lock``): when the manifest is already complete
    for ``key`` with every listed output intact, another shard has finalised and it is returned as is;
    else ``write()`` (metrics, then the manifest) runs and its manifest is returned.

    Args:
        stage_path: the stage folder; key: the stage's shard key (``shard_key``).
        write: writes the stage's metrics and manifest; returns the manifest dict.
    """
    with artefacts.stage_lock(stage_path):
        m, _ = _manifest(Path(stage_path))
        if m is not None and m.get("status") == "complete" and shard_key(m["config_hash"], m["upstream"]) == key \
                and all(artefacts.output_problem(stage_path, o) is None for o in m["outputs"]):
            return m
        return write()


def pending_shards(cfg: CommonConfig, stage: str, upstream: Mapping[str, str]) -> list[int]:
    """Shard indices of a sharded stage that are missing, stale or damaged (``shard_current``)."""
    out = artefacts.stage_dir(cfg.run_root, stage)
    key = shard_key(config.config_hash(cfg), upstream)
    rel = lambda i: f"{type(cfg).SHARD_DIR}/{artefacts.shard_name(i, cfg.num_shards)}"
    return [i for i in range(cfg.num_shards) if not shard_current(out, rel(i), key)]


def upstream_outputs(run_root: Path | str, stage: str, under: str = "") -> list[Path]:
    """The output files of a complete upstream stage whose path starts with ``under`` (e.g. ``regions/``),
    in manifest order (sorted paths): what a reader reads, never a glob of the folder.

    Raises:
        MissingArtefactError: the stage is not complete or an output is damaged.
    """
    m = artefacts.require_complete(run_root, stage)
    folder = artefacts.stage_dir(run_root, stage)
    return [folder / o["path"] for o in m["outputs"] if o["path"].startswith(under)]


# ---------------------------------------------------------------------------------------------
# the stage preamble


@dataclass(frozen=True)
class Begun:
    """What a stage's ``run()`` knows once it has asked whether it is current.

    Attributes:
        stage_dir: its artefact folder; config_hash, upstream: its lineage; key: its shard key.
        started_at: ISO time the stage began; skipped: the StageResult to return at once when it is
            current and not forced, else None.
    """

    stage_dir: Path
    config_hash: str
    upstream: dict[str, str]
    key: str
    started_at: str
    skipped: StageResult | None = field(default=None)


def begin(cfg: CommonConfig, stage: str) -> Begun:
    """The shared stage preamble: lineage, config hash, shard key and the skip decision.

    Raises:
        MissingArtefactError: an upstream stage is not complete.
    """
    started = artefacts.utc_now()
    out = artefacts.stage_dir(cfg.run_root, stage)
    upstream = upstream_hashes(cfg)
    chash = config.config_hash(cfg)
    skipped = None
    if not cfg.force and staleness(out, config_hash=chash, upstream=upstream) is None:
        skipped = StageResult(out, True, artefacts.read_manifest(out)["summary"])
    return Begun(out, chash, upstream, shard_key(chash, upstream), started, skipped)


# ---------------------------------------------------------------------------------------------
# forced runs


PREVIOUS = ".previous"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # writers replace files atomically (new inodes), so the link keeps the old bytes
    except OSError:
        shutil.copy2(src, dst)


def _restore(stage_path: Path) -> None:
    """Put the outputs and manifest kept in ``.previous/`` back in place (executed notebooks go to
    ``notebooks/previous/``, so the failed run's notebook, which the error names, stays readable)."""
    keep = stage_path / PREVIOUS
    for p in sorted(keep.rglob("*")):
        if p.is_file():
            rel = p.relative_to(keep)
            dst = stage_path / ("notebooks/previous" / rel.relative_to("notebooks") if rel.parts[0] == "notebooks"
                                else rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dst)
    shutil.rmtree(keep)


@contextlib.contextmanager
def previous_kept(stage_path: Path | str) -> Iterator[None]:
    """Run a forced recomputation of a complete stage without risking its outputs.

    Its listed outputs, manifest and executed notebooks are kept (hard links) in ``.previous/``; if
    the body raises they are put back (the stage is complete again, as before the run), and when it
    completes they are dropped. A ``.previous/`` left by a killed run is restored first when the
    stage is not complete.
    """
    stage_path = Path(stage_path)
    keep = stage_path / PREVIOUS
    m, _ = _manifest(stage_path)
    if keep.exists():
        if m is None or m.get("status") != "complete":
            _restore(stage_path)
            m, _ = _manifest(stage_path)
        else:
            shutil.rmtree(keep)
    if m is None or m.get("status") != "complete":
        yield
        return
    kept = [o["path"] for o in m["outputs"]] + [MANIFEST]
    kept += [p.relative_to(stage_path).as_posix() for p in sorted((stage_path / "notebooks").glob("*.ipynb"))]
    for rel in kept:
        if (stage_path / rel).is_file():
            _link_or_copy(stage_path / rel, keep / rel)
    try:
        yield
    except BaseException:
        _restore(stage_path)
        raise
    shutil.rmtree(keep, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# verification


@dataclass(frozen=True)
class Finding:
    """One line of ``ezsd verify``: ``kind`` is ``damaged``, ``missing``, ``invalid`` or ``unlisted``."""

    kind: str
    path: Path
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


def verify_run(run_root: Path | str) -> tuple[list[Finding], int]:
    """Hash every output of every stage manifest under ``run_root`` (no fast path).

    Returns:
        (findings, number of outputs checked). ``unlisted`` findings are files in a stage folder that
        its manifest does not list (ignored by every reader); bookkeeping (executed notebooks, resume
        parts and checkpoints, ``*.timing.json``) is not reported.
    """
    findings, checked = [], 0
    for stage in artefacts.STAGE_NUMBERS:
        folder = artefacts.stage_dir(run_root, stage)
        if not folder.is_dir():
            continue
        m, error = _manifest(folder)
        if error or m is None or m.get("status") != "complete":
            findings.append(Finding("invalid", folder / MANIFEST, error or "absent or incomplete"))
            listed: set[str] = set()
        else:
            listed = {o["path"] for o in m["outputs"]}
            for o in m["outputs"]:
                checked += 1
                problem = artefacts.output_problem(folder, o, full=True)
                if problem:
                    findings.append(Finding("missing" if problem == "missing" else "damaged", folder / o["path"],
                                            problem))
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder)
            bookkeeping = any(part in _BOOKKEEPING for part in rel.parts[:-1]) or rel.name.endswith(".timing.json") \
                or rel.as_posix() == artefacts.LOCK
            if p.is_file() and rel.as_posix() not in listed and rel.as_posix() != MANIFEST and not bookkeeping:
                findings.append(Finding("unlisted", p, "no manifest lists it; readers ignore it"))
    return findings, checked
