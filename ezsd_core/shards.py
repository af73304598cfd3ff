"""Sharded, ragged per-image tensors in safetensors files (CSR layout).

Role: the hand-off format of stages 02 and 03 (DESIGN.md II.7). One file holds ``image_ids (I,)``
and one or more *groups* of rows; group ``g`` has ``g_offsets (I+1,) int64`` and row tensors named
``g_*`` whose first dimension is the group's total row count. Image ``i`` owns rows
``g_offsets[i]:g_offsets[i+1]``; an image with no rows has two equal offsets. The header metadata
carries ``schema_version``, ``box_format=xyxy_abs`` and the writer's key (config + upstream hash),
which decides whether a shard on disk is current. Files are written atomically.
Layer 1: torch, safetensors; imports artefacts, structures.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from ezsd_core import artefacts
from ezsd_core.structures import RegionSet

SCHEMA_VERSION = "1"


def write_shard(path: Path | str, image_ids: Sequence[int], groups: Mapping[str, Sequence[Mapping[str, Tensor]]],
                metadata: Mapping[str, str], image_fields: Mapping[str, Tensor] | None = None) -> None:
    """Write one shard atomically.

    Args:
        path: destination ``.safetensors`` file.
        image_ids: I dataset image ids.
        groups: group name -> I per-image dicts of row tensors; every key must start with ``<group>_``
            and every tensor of one image must have the same number of rows (possibly 0).
        metadata: string key/values for the header (e.g. ``key``, ``split``).
        image_fields: more per-image tensors, (I, ...) each, named ``image_*`` (e.g. ``image_is_val``).

    Raises:
        ValueError: inconsistent lengths or key names.
    """
    tensors: dict[str, Tensor] = {"image_ids": torch.as_tensor(list(image_ids), dtype=torch.int64)}
    for key, value in (image_fields or {}).items():
        if not key.startswith("image_") or len(value) != len(image_ids):
            raise ValueError(f"image field {key!r} must be named image_* and have one row per image")
        tensors[key] = value.contiguous()
    for group, per_image in groups.items():
        if len(per_image) != len(image_ids):
            raise ValueError(f"group {group!r}: {len(per_image)} entries for {len(image_ids)} images")
        counts = [0]
        for i, rows in enumerate(per_image):
            sizes = {k: v.shape[0] for k, v in rows.items()}
            if len(set(sizes.values())) > 1 or any(not k.startswith(f"{group}_") for k in rows):
                raise ValueError(f"group {group!r}, image {image_ids[i]}: bad rows {sizes}")
            counts.append(next(iter(sizes.values()), 0))
        tensors[f"{group}_offsets"] = torch.tensor(counts, dtype=torch.int64).cumsum(0)
        for key in per_image[0] if per_image else ():
            tensors[key] = torch.cat([rows[key] for rows in per_image]).contiguous()
    meta = {"schema_version": SCHEMA_VERSION, "box_format": "xyxy_abs", **{k: str(v) for k, v in metadata.items()}}
    save_tensors(path, tensors, meta)


def save_tensors(path: Path | str, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file atomically with a canonical header, so equal tensors give equal bytes.

    safetensors serialises its metadata in hash-map order, which varies between runs; the header JSON
    is rewritten with sorted keys (same offsets, space padding to 8 bytes as the format requires).
    """
    raw = save({k: v.contiguous() for k, v in tensors.items()}, metadata=dict(metadata) if metadata else None)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    artefacts.atomic_write_bytes(path, len(header).to_bytes(8, "little") + header + raw[8 + n:])


def read_header(path: Path | str) -> dict[str, str]:
    """The header metadata of a shard, without reading any tensor."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def is_current(path: Path | str, key: str) -> bool:
    """True when ``path`` exists and was written with writer key ``key`` (shard-level resume)."""
    try:
        return read_header(path).get("key") == key
    except Exception:  # a missing, truncated or foreign file is simply not current
        return False


class RaggedShard:
    """Lazy reader of one shard: ``len(shard)`` images, ``shard.rows(i, group)`` their rows.

    Row tensors are sliced from the file on demand (safetensors memory-maps it), so a multi-GB
    shard of embeddings costs only the rows that are read. The file handle is opened lazily, once
    per process: a pickled reader (a DataLoader worker started by spawn or forkserver) carries the
    path and the small index tensors, never the handle, and reopens the file where it is used.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._handle, self._pid = None, None
        f = self._file
        self.metadata = dict(f.metadata() or {})
        self.image_ids: Tensor = f.get_tensor("image_ids")
        keys = list(f.keys())
        self.image_fields = {k: f.get_tensor(k) for k in keys if k.startswith("image_")}
        self.groups = sorted(k[: -len("_offsets")] for k in keys if k.endswith("_offsets"))
        self._offsets = {g: f.get_tensor(f"{g}_offsets") for g in self.groups}
        self._keys = {g: [k for k in keys if k.startswith(f"{g}_") and k != f"{g}_offsets"] for g in self.groups}

    @property
    def _file(self):
        """The safetensors handle of this process (reopened after a fork or an unpickling)."""
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = safe_open(str(self.path), framework="pt"), os.getpid()
        return self._handle

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": None}

    def __len__(self) -> int:
        return len(self.image_ids)

    def row_counts(self, group: str) -> Tensor:
        """(I,) int64 number of rows of each image in ``group``."""
        return self._offsets[group].diff()

    def rows(self, i: int, group: str) -> dict[str, Tensor]:
        """The rows of image ``i`` (position in this shard) in ``group``: ``{key: (n_i, ...) tensor}``."""
        a, b = self._offsets[group][i].item(), self._offsets[group][i + 1].item()
        return {k: self._file.get_slice(k)[a:b] for k in self._keys[group]}

    def region_set(self, i: int) -> RegionSet:
        """Image ``i``'s ``region`` group as a RegionSet."""
        rows = self.rows(i, "region")
        return RegionSet(image_id=int(self.image_ids[i]), region_boxes=rows["region_boxes"],
                         region_scores=rows["region_scores"], region_category_ids=rows["region_category_ids"],
                         region_probs=rows["region_probs"], region_embeds=rows.get("region_embeds"))


def region_rows(rs: RegionSet) -> dict[str, Tensor]:
    """A RegionSet as the row dict of a ``region`` group (embeddings included when present)."""
    rows = {"region_boxes": rs.region_boxes, "region_scores": rs.region_scores,
            "region_category_ids": rs.region_category_ids, "region_probs": rs.region_probs}
    if rs.region_embeds is not None:
        rows["region_embeds"] = rs.region_embeds
    return rows


def _concat(parts: list[RaggedShard]) -> tuple[list[int], dict[str, list[dict[str, Tensor]]], dict[str, Tensor]]:
    ids = [int(i) for p in parts for i in p.image_ids]
    groups = {g: [p.rows(i, g) for p in parts for i in range(len(p))] for g in (parts[0].groups if parts else [])}
    fields = {k: torch.cat([p.image_fields[k] for p in parts]) for k in (parts[0].image_fields if parts else {})
              if k != "image_ids"}
    return ids, groups, fields


def _parts_dir(path: Path) -> Path:
    return path.parent / ".parts" / path.name.removesuffix(".safetensors")


def discard_parts(path: Path | str) -> None:
    """Delete the resumable parts of a shard (``--force`` recomputes from scratch)."""
    folder = _parts_dir(Path(path))
    for p in folder.glob("*.safetensors*"):
        p.unlink()
    if folder.exists():
        folder.rmdir()


def build_in_parts(path: Path | str, key: str, items: Sequence, work, *, chunk: int,
                   metadata: Callable[[], Mapping[str, str]]) -> None:
    """Build one shard from ``items`` in chunks, each saved atomically as a part, so a killed run resumes.

    Parts live in ``<dir>/.parts/<shard stem>/part-NNNNN.safetensors`` with the writer ``key``; parts
    already written with this key are not recomputed. When all parts exist they are merged into
    ``path`` (atomically) and deleted. Nothing named like a finished shard exists before that.

    Args:
        path: the shard file to produce.
        key: writer key (``artefacts.shard_key``); stale parts (other keys) are recomputed.
        items: the shard's work items (e.g. image records), in order.
        work: ``work(list_of_items) -> (image_ids, groups, image_fields)``, the arguments of ``write_shard``.
        chunk: items per part (parts written with another chunk size are recomputed).
        metadata: called after the work, returns the final shard's header metadata (``key`` is added).
    """
    path = Path(path)
    parts_dir = _parts_dir(path)
    names = []
    part_key = f"{key}/{chunk}"  # a part covers other items when the part size changes
    for c, start in enumerate(range(0, len(items), chunk)):
        part = parts_dir / f"part-{c:05d}.safetensors"
        names.append(part)
        if not is_current(part, part_key):
            ids, groups, fields = work(list(items[start:start + chunk]))
            write_shard(part, ids, groups, {"key": part_key}, image_fields=fields)
    ids, groups, fields = _concat([RaggedShard(p) for p in names])
    if not names:  # an empty shard still records its (empty) groups
        ids, groups, fields = work([])
    write_shard(path, ids, groups, {**metadata(), "key": key}, image_fields=fields)
    discard_parts(path)
