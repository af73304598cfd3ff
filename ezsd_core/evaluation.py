"""Metrics: region recall of CLIP regions (stage 02), and detection AP through pycocotools / lvis.

Role: every number the pipeline reports about quality is computed here, from typed structures or
the annotation files, never inside a stage loop.
Layer 2: imports structures, splits (layers 0-1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

from ezsd_core.splits import CategorySplit
from ezsd_core.structures import ImageRecord, RegionSet


def region_recall(records: Sequence[ImageRecord], regions: Sequence[RegionSet], split: CategorySplit,
                  ks: Sequence[int], iou_thresh: float = 0.5) -> dict[str, float]:
    """Fraction of GT boxes covered (IoU >= ``iou_thresh``) by an image's top-k regions.

    Regions must be sorted by score (stage 02 writes them so). Cf. the proposal AR of detectron2.

    Args:
        records: val images with base + novel GT (XYXY absolute).
        regions: the RegionSet of each record (same order, same image ids).
        split: tells base from novel.
        ks: cut-offs, e.g. (10, 100, 1000).
        iou_thresh: match threshold.

    Returns:
        ``{"recall@k_base", "recall@k_novel", "recall@k_all"}`` for each k (NaN when a subset has no GT),
        plus ``num_gt_base`` / ``num_gt_novel``.
    """
    best: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    novel = []
    for rec, reg in zip(records, regions, strict=True):
        if rec.image_id != reg.image_id:
            raise ValueError(f"records and regions are not aligned: image {rec.image_id} vs {reg.image_id}")
        if len(rec.gt_boxes) == 0:
            continue
        iou = box_iou(rec.gt_boxes, reg.region_boxes) if len(reg.region_boxes) else torch.zeros(len(rec.gt_boxes), 0)
        for k in ks:
            top = iou[:, :k]
            best[k].append(top.max(1).values if top.shape[1] else torch.zeros(len(rec.gt_boxes)))
        novel.append(torch.tensor([split.role_of(int(c)) == "novel" for c in rec.gt_category_ids]))
    is_novel = torch.cat(novel) if novel else torch.zeros(0, dtype=torch.bool)
    out: dict[str, float] = {"num_gt_base": int((~is_novel).sum()), "num_gt_novel": int(is_novel.sum())}
    for k in ks:
        hit = (torch.cat(best[k]) >= iou_thresh).float() if best[k] else torch.zeros(0)
        for name, mask in (("base", ~is_novel), ("novel", is_novel), ("all", torch.ones_like(is_novel))):
            out[f"recall@{k}_{name}"] = float(hit[mask].mean()) if bool(mask.any()) else float("nan")
    return out
