"""Per-image typed structures and the only converters to other box/dict conventions.

Role: ``ImageRecord`` (ground truth), ``RegionSet`` (CLIP regions, optionally with embeddings) and
``Detections`` (detector output), one instance per image (DESIGN.md II.8). Internally every box is
**XYXY in absolute pixels of the original image, float32**. The converters here are the only code
that knows torchvision's target/output dict keys or the COCO results format.
Layer 1: torch, torchvision.ops; imports ``splits`` (layer 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_convert

from ezsd_core.splits import CategorySplit


def _check_rows(obj: Any, prefix: str) -> None:
    """Every tensor field starting with ``prefix`` has the same number of rows; boxes are (M, 4)."""
    rows = {f.name: getattr(obj, f.name).shape[0] for f in fields(obj)
            if f.name.startswith(prefix) and isinstance(getattr(obj, f.name), Tensor)}
    if len(set(rows.values())) > 1:
        raise ValueError(f"{type(obj).__name__}: fields disagree on the number of rows: {rows}")
    boxes = getattr(obj, f"{prefix}boxes")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{type(obj).__name__}.{prefix}boxes must be (M, 4) XYXY, got {tuple(boxes.shape)}")


def _subset(obj: Any, prefix: str, keep: Tensor) -> Any:
    """A copy of ``obj`` with every per-row field (tensor or list) filtered by ``keep``."""
    idx = torch.arange(getattr(obj, f"{prefix}boxes").shape[0])[keep]
    changes = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if f.name.startswith(prefix) and isinstance(v, Tensor):
            changes[f.name] = v[idx]
        elif f.name.startswith(prefix) and isinstance(v, list):
            changes[f.name] = [v[i] for i in idx.tolist()]
    return replace(obj, **changes)


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image.

    Attributes:
        image_id: dataset image id.
        file_name: path of the image file (absolute, or relative to the working directory).
        height, width: image size in pixels.
        gt_boxes: (N, 4) float32, XYXY absolute.
        gt_category_ids: (N,) int64 dataset category ids.
        gt_masks: N COCO RLE dicts (``{"size": [H, W], "counts": str}``), or None when not loaded.
        neg_category_ids: LVIS: ids verified absent from the image (within the subset's vocabulary).
        not_exhaustive_category_ids: LVIS: ids whose instances are not all annotated.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    gt_boxes: Tensor
    gt_category_ids: Tensor
    gt_masks: list[dict] | None = None
    neg_category_ids: tuple[int, ...] = ()
    not_exhaustive_category_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_rows(self, "gt_")
        if self.gt_masks is not None and len(self.gt_masks) != len(self.gt_boxes):
            raise ValueError(f"ImageRecord {self.image_id}: {len(self.gt_masks)} masks for "
                             f"{len(self.gt_boxes)} boxes")

    def subset(self, keep: Tensor) -> ImageRecord:
        """Keep the GT rows selected by ``keep`` ((N,) bool mask or int64 indices)."""
        return _subset(self, "gt_", keep)


@dataclass(frozen=True)
class RegionSet:
    """CLIP regions of one image (stage 02), with embeddings after stage 03.

    Attributes:
        image_id: dataset image id.
        region_boxes: (M, 4) float32, XYXY absolute.
        region_scores: (M,) float32 selection score ln C - H(p) (higher = more confident).
        region_category_ids: (M,) int64 dataset id of CLIP's argmax category.
        region_probs: (M,) float32 CLIP's probability of that category.
        region_embeds: (M, D) float16 raw (unnormalised) CLIP image embeddings, or None.
    """

    image_id: int
    region_boxes: Tensor
    region_scores: Tensor
    region_category_ids: Tensor
    region_probs: Tensor
    region_embeds: Tensor | None = None

    def __post_init__(self) -> None:
        _check_rows(self, "region_")

    def subset(self, keep: Tensor) -> RegionSet:
        """Keep the rows selected by ``keep`` ((M,) bool mask or int64 indices)."""
        return _subset(self, "region_", keep)


@dataclass(frozen=True)
class Detections:
    """Detector output for one image.

    Attributes:
        image_id: dataset image id.
        pred_boxes: (P, 4) float32, XYXY absolute.
        pred_scores: (P,) float32.
        pred_category_ids: (P,) int64 dataset category ids.
        pred_masks: (P, H, W) bool full-image masks, or None.
    """

    image_id: int
    pred_boxes: Tensor
    pred_scores: Tensor
    pred_category_ids: Tensor
    pred_masks: Tensor | None = None

    def __post_init__(self) -> None:
        _check_rows(self, "pred_")

    def subset(self, keep: Tensor) -> Detections:
        """Keep the rows selected by ``keep`` ((P,) bool mask or int64 indices)."""
        return _subset(self, "pred_", keep)


# ---------------------------------------------------------------------------------------------
# box conventions


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(N, 4) XYWH absolute (COCO annotations) -> (N, 4) XYXY absolute."""
    return box_convert(boxes, "xywh", "xyxy")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(N, 4) XYXY absolute -> (N, 4) XYWH absolute (COCO results)."""
    return box_convert(boxes, "xyxy", "xywh")


# ---------------------------------------------------------------------------------------------
# torchvision and COCO edges


def to_tv_target(record: ImageRecord, split: CategorySplit, vocab: str = "base",
                 masks: Tensor | None = None) -> dict[str, Tensor]:
    """A torchvision detection target: ``boxes`` (N, 4) XYXY, ``labels`` (N,) int64 contiguous (0 = background).

    Args:
        record: the image's GT; every category must be in ``vocab``.
        split: maps dataset ids to contiguous labels of ``vocab`` (``split.label_map``).
        vocab: ``base`` in training.
        masks: optional (N, H, W) uint8 masks to pass on as ``masks``.
    """
    lut = split.label_map(vocab)
    labels = torch.tensor([lut[int(c)] for c in record.gt_category_ids.tolist()], dtype=torch.int64)
    target = {"boxes": record.gt_boxes.float(), "labels": labels}
    if masks is not None:
        target["masks"] = masks
    return target


def from_tv_output(output: dict[str, Tensor], image_id: int, category_ids: Sequence[int]) -> Detections:
    """torchvision output dict (``boxes``, ``labels`` 1..K, ``scores``, optional ``masks`` (P,1,H,W) float)
    -> Detections with dataset category ids (``category_ids[label - 1]``)."""
    ids = torch.as_tensor(list(category_ids), dtype=torch.int64)
    masks = output.get("masks")
    return Detections(image_id=image_id, pred_boxes=output["boxes"].float(), pred_scores=output["scores"].float(),
                      pred_category_ids=ids[output["labels"] - 1],
                      pred_masks=None if masks is None else masks[:, 0] > 0.5)


def to_coco_results(dets: Detections, rles: list[dict] | None = None) -> list[dict]:
    """COCO results format (XYWH absolute boxes; optional RLE ``segmentation``) for one image."""
    xywh = xyxy_to_xywh(dets.pred_boxes).tolist()
    out = []
    for i, (box, score, cid) in enumerate(zip(xywh, dets.pred_scores.tolist(), dets.pred_category_ids.tolist())):
        r = {"image_id": dets.image_id, "category_id": int(cid), "bbox": [round(v, 2) for v in box],
             "score": round(float(score), 5)}
        if rles is not None:
            r["segmentation"] = rles[i]
        out.append(r)
    return out
