"""COCO and LVIS readers: annotation file -> CategorySplit + list[ImageRecord].

Role: the only code that reads annotation files for the pipeline; the metric's ground truth is the
same file with the same rules applied (``clean_annotations``). Rules (method spec §1.1 and issue 9),
one function for every reader: an annotation of a category the file does not declare is dropped
(``unknown_category``); a box with w < 1, h < 1 or area <= 0 is dropped (``degenerate_box``); a box
is clipped to its image (``clipped_box``) and dropped when less than 1 px of it is inside
(``outside_image``); an image whose file is missing is skipped with its boxes (``missing_image``);
crowd boxes are ignored, training images without a base box are dropped. What the rules dropped is
counted (``read_records(..., counts=...)``) and logged in one warning line per file.
**Strict zero-shot at the source:** the ``train`` subset keeps only base-category annotations (and
only base ids in LVIS ``neg_category_ids`` / ``not_exhaustive_category_ids``), so no stage can see a
novel training annotation. Boxes come out XYXY absolute.
Reads: ``<data_root>/<train|val>_annotations`` and image paths. Layer 1: imports config, splits,
structures.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ezsd_core import splits
from ezsd_core.config import CommonConfig
from ezsd_core.splits import CategorySplit, SplitDef, split_from_categories, split_style
from ezsd_core.structures import ImageRecord, xywh_to_xyxy

SUBSETS = ("train", "val")
log = logging.getLogger(__name__)


def _quiet() -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(io.StringIO())  # pycocotools prints "loading annotations..."


class _Api:
    """The part of pycocotools.COCO / lvis.LVIS the reader needs, behind one interface."""

    def __init__(self, ann_file: Path, style: str):
        self.style = style
        if style == "lvis":
            from lvis import LVIS
            lvis_log = logging.getLogger("lvis")
            level, lvis_log.level = lvis_log.level, logging.WARNING
            try:
                self.api = LVIS(str(ann_file))
            finally:
                lvis_log.setLevel(level)
            self.images = self.api.dataset["images"]
            self.anns_of = lambda i: self.api.img_ann_map.get(i, [])
            self.to_rle = self.api.ann_to_rle
        else:
            from pycocotools.coco import COCO
            with _quiet():
                self.api = COCO(str(ann_file))
            self.images = self.api.dataset["images"]
            self.anns_of = lambda i: self.api.imgToAnns.get(i, [])
            self.to_rle = self.api.annToRLE
        self.categories = self.api.dataset["categories"]


def read_split(ann_file: Path | str, split: str | SplitDef) -> CategorySplit:
    """The CategorySplit of ``split`` (a built-in id or a ``SplitDef``) over the categories of ``ann_file``."""
    return split_from_categories(split, json.loads(Path(ann_file).read_text())["categories"])


def read_config_split(cfg: CommonConfig) -> CategorySplit:
    """The CategorySplit of a stage config (built-in or declared) over its train annotation file."""
    return read_split(cfg.data_root / cfg.train_annotations, splits.definition(cfg))


def _image_path(img: dict[str, Any], image_dir: Path) -> Path:
    if "file_name" in img:
        return image_dir / img["file_name"]
    folder, name = img["coco_url"].rstrip("/").split("/")[-2:]  # LVIS: .../<train2017|val2017>/<file>
    return image_dir.parent / folder / name


RULES = ("unknown_category", "degenerate_box", "outside_image", "clipped_box", "missing_image")


def annotation_rule(ann: dict[str, Any], width: int, height: int, categories: set[int]
                    ) -> tuple[list[float] | None, str | None]:
    """The box an annotation contributes, after the input rules.

    Args:
        ann: a COCO/LVIS annotation (``bbox`` [x, y, w, h] absolute pixels, ``category_id``, optional ``area``).
        width, height: its image's size in pixels; categories: the ids the file declares.

    Returns:
        (box, rule): ``box`` is the [x, y, w, h] kept (clipped to the image), or None when dropped;
        ``rule`` names the rule that fired (one of ``RULES``), or None for an untouched box.
    """
    if ann.get("category_id") not in categories:
        return None, "unknown_category"
    x, y, w, h = (float(v) for v in ann["bbox"])
    if not (w >= 1 and h >= 1 and ann.get("area", w * h) > 0):  # `not >=` also catches NaN
        return None, "degenerate_box"
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
        return list(ann["bbox"]), None
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None, "outside_image"
    return [x1, y1, x2 - x1, y2 - y1], "clipped_box"


_warned: set[tuple] = set()


def _warn_once(ann_file: Path, subset: str, counts: dict[str, int], example: str | None) -> None:
    """One warning line per file and outcome (a stage that reads a file twice warns once)."""
    found = {k: v for k, v in counts.items() if v}
    if not found or (str(ann_file), subset, tuple(sorted(found.items()))) in _warned:
        return
    _warned.add((str(ann_file), subset, tuple(sorted(found.items()))))
    what = ", ".join(f"{v} {k}" for k, v in found.items())
    log.warning("%s (%s): input rules fired: %s%s", ann_file, subset, what,
                f" (e.g. {example} is missing)" if example else "")


def _rle(api: _Api, ann: dict[str, Any]) -> dict[str, Any]:
    rle = api.to_rle(ann)
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def read_records(ann_file: Path | str, image_dir: Path | str, split_name: str | SplitDef, *, subset: str,
                 with_masks: bool = False, vocab: str | None = None, keep_empty: bool | None = None,
                 check_files: bool = True, counts: dict[str, int] | None = None
                 ) -> tuple[CategorySplit, list[ImageRecord]]:
    """Read one annotation file of a split, applying the input rules (module docstring).

    Args:
        ann_file: COCO (pycocotools) or LVIS v1 (lvis) JSON; the split id decides which.
        image_dir: folder of the images (COCO ``file_name``); LVIS images resolve through
            ``coco_url`` to ``image_dir.parent/<train2017|val2017>/<file>`` unless ``file_name`` is given.
        split_name: a built-in split id (``splits.SPLIT_IDS``) or a ``SplitDef`` (``splits.definition(cfg)``).
        subset: ``train`` keeps base annotations only and drops images without one;
            ``val`` keeps base + novel annotations of every image (images without boxes included).
        with_masks: also return each instance's mask as a COCO RLE dict.
        vocab: override the categories kept (``base`` for train, ``all`` for val). Anything but ``base``
            on ``train`` reads novel training annotations: only ``iou_filter_gt: all`` does, on purpose.
        keep_empty: keep images without a kept box (default: only for ``val``).
        check_files: skip images whose file does not exist (``missing_image``).
        counts: if given, filled with how often each rule of ``RULES`` fired (annotations of the kept
            vocabulary or of undeclared categories; images for ``missing_image``).

    Returns:
        The split and the records, in ascending image id; ``gt_boxes`` (N, 4) float32 XYXY absolute.

    Raises:
        ValueError: an unknown subset or split id.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    api = _Api(ann_file, split_style(split_name))
    split = split_from_categories(split_name, api.categories)
    kept = set(split.ids(vocab or ("base" if subset == "train" else "all")))
    declared = {int(c["id"]) for c in api.categories}
    keep_empty = subset == "val" if keep_empty is None else keep_empty
    fired = dict.fromkeys(RULES, 0)
    missing_example, records = None, []
    for img in sorted(api.images, key=lambda i: i["id"]):
        path = _image_path(img, image_dir)
        if check_files and not path.is_file():
            fired["missing_image"] += 1
            missing_example = missing_example or str(path)
            continue
        anns, boxes = [], []
        for a in api.anns_of(img["id"]):
            if a.get("category_id") in declared and a["category_id"] not in kept:
                continue  # another vocabulary's annotation: not read, not counted (strict zero-shot)
            box, rule = annotation_rule(a, int(img["width"]), int(img["height"]), declared)
            if rule:
                fired[rule] += 1
            if box is not None and not a.get("iscrowd", 0):
                anns.append(a)
                boxes.append(box)
        if not anns and not keep_empty:
            continue
        records.append(ImageRecord(
            image_id=int(img["id"]), file_name=str(path), height=int(img["height"]), width=int(img["width"]),
            gt_boxes=xywh_to_xyxy(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
            gt_category_ids=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            gt_masks=[_rle(api, a) for a in anns] if with_masks else None,
            neg_category_ids=tuple(sorted(c for c in img.get("neg_category_ids", []) if c in kept)),
            not_exhaustive_category_ids=tuple(
                sorted(c for c in img.get("not_exhaustive_category_ids", []) if c in kept))))
    _warn_once(ann_file, subset, fired, missing_example)
    if counts is not None:
        counts.update(fired)
    log.info("%s %s: %d images, %d boxes", split.name, subset, len(records),
             sum(len(r.gt_boxes) for r in records))
    return split, records


def clean_annotations(ann_file: Path | str, image_dir: Path | str, *, check_files: bool = True
                      ) -> tuple[dict[str, Any], dict[str, int]]:
    """The annotation file with the same input rules applied, for the metric's ground truth.

    Every annotation goes through ``annotation_rule`` (crowd ones too: the metric ignores them, as
    COCO does); images whose file is missing are removed with their annotations. Everything else
    (categories with LVIS ``frequency``, ``neg_category_ids``, ...) is kept as it is.

    Args:
        ann_file: COCO or LVIS JSON (all categories: the metric sees base and novel).
        image_dir: as for ``read_records``.

    Returns:
        (the cleaned dataset dict, how often each rule of ``RULES`` fired).
    """
    doc = json.loads(Path(ann_file).read_text())
    fired = dict.fromkeys(RULES, 0)
    declared = {int(c["id"]) for c in doc["categories"]}
    images = []
    for img in doc["images"]:
        if check_files and not _image_path(img, Path(image_dir)).is_file():
            fired["missing_image"] += 1
        else:
            images.append(img)
    sizes = {img["id"]: (int(img["width"]), int(img["height"])) for img in images}
    anns = []
    for a in doc["annotations"]:
        if a["image_id"] not in sizes:
            continue
        box, rule = annotation_rule(a, *sizes[a["image_id"]], declared)
        if rule:
            fired[rule] += 1
        if box is not None:
            anns.append({**a, "bbox": box} if rule == "clipped_box" else a)
    return {**doc, "images": images, "annotations": anns}, fired


@contextlib.contextmanager
def clean_annotation_file(ann_file: Path | str, image_dir: Path | str) -> Iterator[Path]:
    """A temporary copy of ``ann_file`` with ``clean_annotations``' rules applied (the same rules as the
    records detections are made on), for pycocotools / lvis; removed on exit."""
    clean, _ = clean_annotations(ann_file, image_dir)
    with tempfile.TemporaryDirectory(prefix="ezsd-gt-") as tmp:
        path = Path(tmp) / Path(ann_file).name
        path.write_text(json.dumps(clean))
        yield path


def read_config_records(cfg: CommonConfig, subset: str, **options) -> tuple[CategorySplit, list[ImageRecord]]:
    """``read_records`` with the paths of a stage config (relative to ``cfg.data_root``); options
    (``counts=`` included) pass on."""
    ann = cfg.train_annotations if subset == "train" else cfg.val_annotations
    images = cfg.train_images if subset == "train" else cfg.val_images
    return read_records(cfg.data_root / ann, cfg.data_root / images, splits.definition(cfg), subset=subset,
                        **options)


def input_counts(cfg: CommonConfig, subsets: tuple[str, ...] = ("train", "val"), **options) -> dict[str, int]:
    """How often each input rule fired on the split's files, as metrics: ``input/<subset>/<rule>`` (or
    ``input/<rule>`` for one subset), nonzero counts only (a clean file adds no key). Options as for
    ``read_config_records``; the warning line is logged once per file, however often it is read."""
    out = {}
    for subset in subsets:
        counts: dict[str, int] = {}
        read_config_records(cfg, subset, counts=counts, **options)
        prefix = "input/" if len(subsets) == 1 else f"input/{subset}/"
        out.update({f"{prefix}{k}": v for k, v in counts.items() if v})
    return out


def read_image(path: Path | str) -> torch.Tensor:
    """Decode an image file to a (3, H, W) uint8 RGB tensor.

    Raises:
        ValueError: a missing, unreadable or truncated file, in one line naming it.
    """
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    except (OSError, SyntaxError, ValueError) as e:  # PIL: OSError (truncated, unknown), SyntaxError (bad PNG)
        raise ValueError(f"image {path}: cannot read it ({e.__class__.__name__}: {e})") from None


class DecodedImages(torch.utils.data.Dataset):
    """Images decoded in DataLoader workers: item i -> (i, (3, H, W) uint8) of ``records[i]``."""

    def __init__(self, records: list[ImageRecord]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, read_image(self.records[i].file_name)


def image_loader(records: list[ImageRecord], num_workers: int) -> torch.utils.data.DataLoader:
    """Yields ``(i, image)`` for each record in order, decoding ahead in ``num_workers`` processes."""
    return torch.utils.data.DataLoader(DecodedImages(records), batch_size=None, num_workers=num_workers)
