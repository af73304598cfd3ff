"""Category splits as data: which categories are base, novel or neither, for every split.

Role: one registry of ``SplitDef`` entries (DESIGN.md decision 8) and one ``CategorySplit`` per
(definition, annotation file) that maps dataset category ids <-> contiguous labels <-> prompt names
<-> base/novel. Built-in entries: the toy splits (``TOY_NOVEL`` / ``TOY_OTHER`` by name), the COCO
settings (fixed name lists of ``resources/splits.json``, arXiv 2303.12145) and the LVIS settings
(roles from each category's ``frequency``). A params file declares its own split with
``split_style`` (coco|lvis), ``base_names`` and ``novel_names`` (inline lists or a text file, one
name a line, relative to ``data_root``): ``declared_split`` builds that entry; names of the file in
neither list are ``other`` (they score proposals only, as COCO's unused 15).
Reads: ``resources/splits.json`` and names files. Layer 0: standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

SPLIT_IDS = ("smoke", "toy_coco", "toy_lvis", "coco_48_17", "coco_60_20", "lvis_866_337", "lvis_405_798")  # built-in
STYLES = ("coco", "lvis")
VOCABS = ("base", "novel", "all", "proposal")
ROLES = ("base", "novel", "other")
# Novel categories of the toy COCO split = rare categories of the toy LVIS world (by construction).
TOY_NOVEL = ("star", "heart", "crescent", "arrow", "bowtie", "lightning")
# Shapes in neither toy subset, as COCO's 15 unused names: in the scenes and the proposal vocabulary only.
TOY_OTHER = ("clover", "crown", "bone", "keyhole", "wave")
LVIS_JSON_TO_PROMPT = {"speaker_(stero_equipment)": "speaker_(stereo_equipment)"}


def split_style(split: str | SplitDef) -> str:
    """``"lvis"`` for LVIS-style splits (LVIS JSON, Seesaw, RFS, LVIS eval), else ``"coco"``.

    Raises:
        ValueError: for an unknown split id.
    """
    return resolve(split).style


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


@dataclass(frozen=True)
class SplitDef:
    """One registry entry: how the categories of an annotation file get their roles.

    Attributes:
        name: split id (the run folder's name too).
        style: ``coco`` (pycocotools, softmax CE, COCO AP) or ``lvis`` (lvis API, Seesaw, RFS, LVIS AP).
        base, novel: category names (JSON names or prompt names); ``base=None`` means every name that
            is neither novel nor in ``other`` (the toy splits). Unused by tier rules.
        other: names that are neither base nor novel (proposal vocabulary only).
        exact_names: when set, the annotation file must declare exactly these names (COCO's 80).
        novel_tiers, proposal_tiers: for tier rules (``by_tier``), the LVIS ``frequency`` letters that
            are novel / that score proposals; base is every other tier.
        by_tier: roles from LVIS ``frequency`` instead of names.
        source: ``built-in``, or ``params`` for a declared split (then every listed name must be a
            category of the annotation file).
    """

    name: str
    style: str
    base: tuple[str, ...] | None = None
    novel: tuple[str, ...] = ()
    other: tuple[str, ...] = ()
    exact_names: tuple[str, ...] | None = None
    by_tier: bool = False
    novel_tiers: str = ""
    proposal_tiers: str = "fcr"
    source: str = "built-in"

    def build(self, categories: Sequence[Mapping[str, Any]]) -> CategorySplit:
        """The CategorySplit of this definition over an annotation file's ``categories``.

        Args:
            categories: COCO/LVIS category dicts (``id``, ``name``; LVIS also ``frequency``).

        Returns:
            The split; every vocabulary is in ascending dataset-id order.

        Raises:
            ValueError: one line when the categories do not fit the definition (missing names,
                LVIS categories without ``frequency``).
        """
        cats = sorted((dict(c) for c in categories), key=lambda c: c["id"])
        if self.style == "lvis" and any(c.get("frequency") not in ("f", "c", "r") for c in cats):
            raise ValueError(f"split {self.name}: every LVIS category needs 'frequency' in f/c/r")
        json_names = [c["name"] for c in cats]
        names = [LVIS_JSON_TO_PROMPT.get(n, n) for n in json_names] if self.style == "lvis" else json_names
        if self.exact_names is not None and sorted(json_names) != sorted(self.exact_names):
            missing = sorted(set(self.exact_names) - set(json_names))[:3]
            raise ValueError(f"split {self.name} needs the {len(self.exact_names)} COCO categories; the annotation "
                             f"file differs (e.g. missing {missing})")
        if self.by_tier:
            roles = ["novel" if c["frequency"] in self.novel_tiers else "base" for c in cats]
            return _from_roles(self.name, "lvis", cats, roles,
                               [c["frequency"] in self.proposal_tiers for c in cats], names)
        known = set(json_names) | set(names)
        for key, listed in (("base_names", self.base or ()), ("novel_names", self.novel)) * (self.source == "params"):
            absent = [n for n in listed if n not in known]
            if absent:
                shown = ", ".join(map(repr, absent[:5])) + (f" (and {len(absent) - 5} more)" if len(absent) > 5 else "")
                raise ValueError(f"{key}: {shown} not among the {len(known)} category names of the annotation file "
                                 f"(split {self.name})")
        novel, other = set(self.novel), set(self.other)
        base = None if self.base is None else set(self.base)

        def role(json_name: str, name: str) -> str:
            if {json_name, name} & novel:
                return "novel"
            if {json_name, name} & other:
                return "other"
            return "base" if base is None or {json_name, name} & base else "other"

        roles = [role(j, n) for j, n in zip(json_names, names)]
        return _from_roles(self.name, self.style, cats, roles, [True] * len(cats), names)


@cache
def registry() -> dict[str, SplitDef]:
    """The built-in splits by id (``SPLIT_IDS``): toy, COCO 48/17 and 60/20, LVIS 866/337 and 405/798."""
    ref = reference_lists()
    coco80 = tuple(ref["coco80_names_in_id_order"])
    toy = dict(novel=TOY_NOVEL, other=TOY_OTHER)
    entries = [
        SplitDef("smoke", "coco", **toy),
        SplitDef("toy_coco", "coco", **toy),
        # base = frequent + common, novel = rare; all names propose
        SplitDef("toy_lvis", "lvis", by_tier=True, novel_tiers="r", proposal_tiers="fcr"),
        SplitDef("coco_48_17", "coco", base=tuple(ref["coco_zeroshot_base48"]),
                 novel=tuple(ref["coco_zeroshot_novel17"]), exact_names=coco80),
        SplitDef("coco_60_20", "coco", base=tuple(ref["coco_fewshot_base60"]),
                 novel=tuple(ref["coco_fewshot_novel20"]), exact_names=coco80),
        SplitDef("lvis_866_337", "lvis", by_tier=True, novel_tiers="r", proposal_tiers="fcr"),
        # base = frequent, novel = common + rare; rare names never propose (spec §3)
        SplitDef("lvis_405_798", "lvis", by_tier=True, novel_tiers="cr", proposal_tiers="fc"),
    ]
    assert tuple(e.name for e in entries) == SPLIT_IDS
    return {e.name: e for e in entries}


def resolve(split: str | SplitDef) -> SplitDef:
    """A definition as it is, or the built-in entry of a split id.

    Raises:
        ValueError: an unknown split id (one line with the allowed ids).
    """
    if isinstance(split, SplitDef):
        return split
    if split not in registry():
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLIT_IDS)} (or declare your own in the "
                         f"params file with split_style, base_names and novel_names)")
    return registry()[split]


def read_names_file(path: Path | str, key: str) -> tuple[str, ...]:
    """Category names from a text file: one a line; blank lines and lines starting with ``#`` skipped.

    Raises:
        ValueError: a missing or unreadable file, named with its parameter ``key``.
    """
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"{key}: cannot read names file {path} ({e.strerror or e})") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def check_names(base: Sequence[str], novel: Sequence[str]) -> None:
    """Check declared base / novel name lists: non-empty, no name twice, no name in both.

    Raises:
        ValueError: one line naming the parameter (``base_names`` / ``novel_names``) and the names.
    """
    for key, names in (("base_names", base), ("novel_names", novel)):
        if not names:
            raise ValueError(f"{key}: empty; a declared split needs at least one name in each of base_names "
                             f"and novel_names")
        twice = sorted({n for n in names if list(names).count(n) > 1})
        if twice:
            raise ValueError(f"{key}: {', '.join(map(repr, twice[:5]))} listed twice")
    both = sorted(set(base) & set(novel))
    if both:
        raise ValueError(f"base_names / novel_names: {', '.join(map(repr, both[:5]))} in both "
                         f"({len(both)} overlapping); a category is base or novel, not both")


def declared_split(name: str, style: str, base_names: Sequence[str] | str | Path,
                   novel_names: Sequence[str] | str | Path, *, root: Path | str = ".") -> SplitDef:
    """The registry entry of a split a params file declares.

    Args:
        name: the split id (must not be a built-in one).
        style: ``coco`` or ``lvis`` (the annotation format and the loss / metric family).
        base_names, novel_names: a list of category names, or a text file (one name a line) relative
            to ``root`` (the params' ``data_root``).

    Raises:
        ValueError: a built-in id, an unknown style, an unreadable names file, an empty list, a name
            listed twice or in both lists (one line each).
    """
    if name in SPLIT_IDS:
        raise ValueError(f"split: {name!r} is a built-in split; name a declared split differently "
                         f"(or set split_style, base_names and novel_names to null)")
    if style not in STYLES:
        raise ValueError(f"split_style: got {style!r}; allowed: {', '.join(STYLES)}")
    lists = []
    for key, value in (("base_names", base_names), ("novel_names", novel_names)):
        if isinstance(value, str | Path):
            lists.append(read_names_file(Path(root) / value, key))
        else:
            lists.append(tuple(value))
    check_names(*lists)
    return SplitDef(name, style, base=lists[0], novel=lists[1], source="params")


def definition(cfg: Any) -> SplitDef:
    """The split definition of a config (anything with ``split``, ``split_style``, ``base_names``,
    ``novel_names`` and ``data_root``): the built-in entry, or the one the params declare."""
    style = getattr(cfg, "split_style", None)
    if style is None:
        return resolve(cfg.split)
    return declared_split(cfg.split, style, cfg.base_names, cfg.novel_names, root=cfg.data_root)


def names_files(cfg: Any) -> list[Path]:
    """The names files a config's declared split reads (``[]`` for built-in splits and inline lists)."""
    if getattr(cfg, "split_style", None) is None:
        return []
    return [Path(cfg.data_root) / v for v in (cfg.base_names, cfg.novel_names) if isinstance(v, str | Path)]


def split_from_categories(split: str | SplitDef, categories: Sequence[Mapping[str, Any]]) -> CategorySplit:
    """Build a split from the ``categories`` list of its annotation file.

    Args:
        split: a built-in split id (``SPLIT_IDS``) or a ``SplitDef`` (``definition(cfg)``).
        categories: COCO/LVIS category dicts (``id``, ``name``; LVIS also ``frequency``).

    Returns:
        The split; every vocabulary is in ascending dataset-id order.

    Raises:
        ValueError: unknown split id, or categories that do not fit the split.
    """
    return resolve(split).build(categories)
