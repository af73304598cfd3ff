"""COCO and LVIS readers: annotation file -> CategorySplit + list[ImageRecord].

Role: the only code that reads annotation files for the pipeline (evaluation hands the files to
pycocotools/lvis directly). Rules (method spec §1.1): crowd boxes are ignored, boxes with w < 1,
h < 1 or area <= 0 are dropped, training images without a base box are dropped.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ezsd_core.config import CommonConfig
from ezsd_core.splits import CategorySplit, split_from_categories, split_style
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


def read_split(ann_file: Path | str, split_name: str) -> CategorySplit:
    """The CategorySplit of ``split_name`` built from the categories of ``ann_file``."""
    return split_from_categories(split_name, json.loads(Path(ann_file).read_text())["categories"])


def _image_path(img: dict[str, Any], image_dir: Path) -> Path:
    if "file_name" in img:
        return image_dir / img["file_name"]
    folder, name = img["coco_url"].rstrip("/").split("/")[-2:]  # LVIS: .../<train2017|val2017>/<file>
    return image_dir.parent / folder / name


def _keep(ann: dict[str, Any], vocab: set[int]) -> bool:
    x, y, w, h = ann["bbox"]
    return (ann["category_id"] in vocab and not ann.get("iscrowd", 0) and w >= 1 and h >= 1
            and ann.get("area", w * h) > 0)


def _rle(api: _Api, ann: dict[str, Any]) -> dict[str, Any]:
    rle = api.to_rle(ann)
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def read_records(ann_file: Path | str, image_dir: Path | str, split_name: str, *, subset: str,
                 with_masks: bool = False, vocab: str | None = None, keep_empty: bool | None = None
                 ) -> tuple[CategorySplit, list[ImageRecord]]:
    """Read one annotation file of a split.

    Args:
        ann_file: COCO (pycocotools) or LVIS v1 (lvis) JSON; the split id decides which.
        image_dir: folder of the images (COCO ``file_name``); LVIS images resolve through
            ``coco_url`` to ``image_dir.parent/<train2017|val2017>/<file>`` unless ``file_name`` is given.
        split_name: split id (``splits.SPLIT_IDS``).
        subset: ``train`` keeps base annotations only and drops images without one;
            ``val`` keeps base + novel annotations of every image (images without boxes included).
        with_masks: also return each instance's mask as a COCO RLE dict.
        vocab: override the categories kept (``base`` for train, ``all`` for val). Anything but ``base``
            on ``train`` reads novel training annotations: only ``iou_filter_gt: all`` does, on purpose.
        keep_empty: keep images without a kept box (default: only for ``val``).

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
    keep_empty = subset == "val" if keep_empty is None else keep_empty
    records = []
    for img in sorted(api.images, key=lambda i: i["id"]):
        anns = [a for a in api.anns_of(img["id"]) if _keep(a, kept)]
        if not anns and not keep_empty:
            continue
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        records.append(ImageRecord(
            image_id=int(img["id"]), file_name=str(_image_path(img, image_dir)),
            height=int(img["height"]), width=int(img["width"]), gt_boxes=xywh_to_xyxy(boxes),
            gt_category_ids=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            gt_masks=[_rle(api, a) for a in anns] if with_masks else None,
            neg_category_ids=tuple(sorted(c for c in img.get("neg_category_ids", []) if c in kept)),
            not_exhaustive_category_ids=tuple(
                sorted(c for c in img.get("not_exhaustive_category_ids", []) if c in kept))))
    log.info("%s %s: %d images, %d boxes", split_name, subset, len(records),
             sum(len(r.gt_boxes) for r in records))
    return split, records


def read_config_records(cfg: CommonConfig, subset: str, **options) -> tuple[CategorySplit, list[ImageRecord]]:
    """``read_records`` with the paths of a stage config (relative to ``cfg.data_root``); options pass on."""
    ann = cfg.train_annotations if subset == "train" else cfg.val_annotations
    images = cfg.train_images if subset == "train" else cfg.val_images
    return read_records(cfg.data_root / ann, cfg.data_root / images, cfg.split, subset=subset, **options)


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
