"""Category splits as data: which categories are base, novel or neither, for every split id.

Role: one ``CategorySplit`` maps dataset category ids <-> contiguous labels <-> prompt names <->
base/novel for a split (DESIGN.md II.8). COCO settings come from the fixed lists in
``resources/splits.json`` (arXiv 2303.12145 settings); LVIS settings derive frequent/common/rare
from each category's ``frequency`` in the annotation file; toy splits use ``TOY_NOVEL`` and ``TOY_OTHER``.
Reads: ``resources/splits.json``. Layer 0: standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

SPLIT_IDS = ("smoke", "toy_coco", "toy_lvis", "coco_48_17", "coco_60_20", "lvis_866_337", "lvis_405_798")
VOCABS = ("base", "novel", "all", "proposal")
ROLES = ("base", "novel", "other")
# Novel categories of the toy COCO split = rare categories of the toy LVIS world (by construction).
TOY_NOVEL = ("star", "heart", "crescent", "arrow", "bowtie", "lightning")
# Shapes in neither toy subset, as COCO's 15 unused names: in the scenes and the proposal vocabulary only.
TOY_OTHER = ("clover", "crown", "bone", "keyhole", "wave")
LVIS_JSON_TO_PROMPT = {"speaker_(stero_equipment)": "speaker_(stereo_equipment)"}


def split_style(name: str) -> str:
    """``"lvis"`` for LVIS-style splits (LVIS JSON, Seesaw, RFS, LVIS eval), else ``"coco"``.

    Raises:
        ValueError: for an unknown split id.
    """
    if name not in SPLIT_IDS:
        raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLIT_IDS)}")
    return "lvis" if name in ("toy_lvis", "lvis_866_337", "lvis_405_798") else "coco"


@cache
def reference_lists() -> dict[str, Any]:
    """The category lists of the real settings (``resources/splits.json``)."""
    return json.loads(resources.files("ezsd_core").joinpath("resources/splits.json").read_text())


@dataclass(frozen=True)
class CategorySplit:
    """Every category of a dataset with its role in one split.

    Attributes:
        name: split id.
        style: ``"coco"`` (softmax CE, COCO eval) or ``"lvis"`` (Seesaw, RFS, LVIS eval).
        category_ids: dataset ids, ascending (the label order of every vocabulary).
        names: prompt names, aligned with ``category_ids``.
        roles: ``"base"``, ``"novel"`` or ``"other"`` (named in proposals only, e.g. COCO's unused 15).
        in_proposal: whether the name scores CLIP regions (stage 02) and classifies them (stage 03).
        frequency: LVIS ``f``/``c``/``r`` per category, or None for COCO-style data.
    """

    name: str
    style: str
    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    roles: tuple[str, ...]
    in_proposal: tuple[bool, ...]
    frequency: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.category_ids)
        if not (len(self.names) == len(self.roles) == len(self.in_proposal) == n):
            raise ValueError(f"split {self.name}: per-category fields differ in length")
        if list(self.category_ids) != sorted(set(self.category_ids)):
            raise ValueError(f"split {self.name}: category ids must be unique and ascending")
        if bad := set(self.roles) - set(ROLES):
            raise ValueError(f"split {self.name}: unknown roles {sorted(bad)}; allowed: {ROLES}")

    def _members(self, vocab: str) -> list[int]:
        if vocab not in VOCABS:
            raise ValueError(f"vocab must be one of {VOCABS}, got {vocab!r}")
        keep = {"base": lambda i: self.roles[i] == "base", "novel": lambda i: self.roles[i] == "novel",
                "all": lambda i: self.roles[i] != "other", "proposal": lambda i: self.in_proposal[i]}[vocab]
        return [i for i in range(len(self.category_ids)) if keep(i)]

    def ids(self, vocab: str) -> tuple[int, ...]:
        """Dataset ids of a vocabulary (``base``, ``novel``, ``all`` = base + novel, ``proposal``), in id order."""
        return tuple(self.category_ids[i] for i in self._members(vocab))

    def prompt_names(self, vocab: str) -> tuple[str, ...]:
        """Prompt names of a vocabulary, aligned with ``ids(vocab)``."""
        return tuple(self.names[i] for i in self._members(vocab))

    def label_map(self, vocab: str) -> dict[int, int]:
        """Dataset id -> contiguous label 1..K of ``vocab`` (0 is the detector's background)."""
        return {cid: k + 1 for k, cid in enumerate(self.ids(vocab))}

    def role_of(self, category_id: int) -> str:
        """``base``, ``novel`` or ``other``."""
        return self.roles[self.category_ids.index(category_id)]

    def name_of(self, category_id: int) -> str:
        """The prompt name of a dataset id."""
        return self.names[self.category_ids.index(category_id)]


def _from_roles(name: str, style: str, cats: Sequence[Mapping[str, Any]], roles: Sequence[str],
                in_proposal: Sequence[bool], names: Sequence[str] | None = None) -> CategorySplit:
    freq = tuple(c["frequency"] for c in cats) if style == "lvis" else None
    return CategorySplit(name=name, style=style, category_ids=tuple(int(c["id"]) for c in cats),
                         names=tuple(names or [c["name"] for c in cats]), roles=tuple(roles),
                         in_proposal=tuple(in_proposal), frequency=freq)


def _coco_split(name: str, cats: list[dict], base: Iterable[str], novel: Iterable[str]) -> CategorySplit:
    ref = reference_lists()["coco80_names_in_id_order"]
    got = [c["name"] for c in cats]
    if sorted(got) != sorted(ref):
        missing = sorted(set(ref) - set(got))[:3]
        raise ValueError(f"split {name} needs the 80 COCO categories; the annotation file differs "
                         f"(e.g. missing {missing})")
    base, novel = set(base), set(novel)
    roles = ["base" if n in base else "novel" if n in novel else "other" for n in got]
    return _from_roles(name, "coco", cats, roles, [True] * len(cats))


def _lvis_split(name: str, cats: list[dict], novel_tiers: str, proposal_tiers: str) -> CategorySplit:
    if any(c.get("frequency") not in ("f", "c", "r") for c in cats):
        raise ValueError(f"split {name}: every LVIS category needs 'frequency' in f/c/r")
    names = [LVIS_JSON_TO_PROMPT.get(c["name"], c["name"]) for c in cats]
    roles = ["novel" if c["frequency"] in novel_tiers else "base" for c in cats]
    return _from_roles(name, "lvis", cats, roles, [c["frequency"] in proposal_tiers for c in cats], names)


def split_from_categories(name: str, categories: Sequence[Mapping[str, Any]]) -> CategorySplit:
    """Build a split from the ``categories`` list of its annotation file.

    Args:
        name: one of SPLIT_IDS.
        categories: COCO/LVIS category dicts (``id``, ``name``; LVIS also ``frequency``).

    Returns:
        The split; every vocabulary is in ascending dataset-id order.

    Raises:
        ValueError: unknown split id, or categories that do not fit the split.
    """
    cats = sorted((dict(c) for c in categories), key=lambda c: c["id"])
    ref = reference_lists()
    if name in ("smoke", "toy_coco"):
        roles = ["novel" if c["name"] in TOY_NOVEL else "other" if c["name"] in TOY_OTHER else "base" for c in cats]
        return _from_roles(name, "coco", cats, roles, [True] * len(cats))
    if name == "coco_48_17":
        return _coco_split(name, cats, ref["coco_zeroshot_base48"], ref["coco_zeroshot_novel17"])
    if name == "coco_60_20":
        return _coco_split(name, cats, ref["coco_fewshot_base60"], ref["coco_fewshot_novel20"])
    if name in ("toy_lvis", "lvis_866_337"):  # base = frequent + common, novel = rare; all names propose
        return _lvis_split(name, cats, novel_tiers="r", proposal_tiers="fcr")
    if name == "lvis_405_798":  # base = frequent, novel = common + rare; rare names never propose (spec §3)
        return _lvis_split(name, cats, novel_tiers="cr", proposal_tiers="fc")
    raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLIT_IDS)}")
