"""Metrics: region recall of CLIP regions (stage 02) and detection AP through pycocotools / lvis
(paired bootstrap intervals of COCO AP are in ``bootstrap``).

Role: every number the pipeline reports about quality is computed here, from typed structures or
the annotation files, never inside a stage loop.
Layer 2: imports structures, splits (layers 0-1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from ezsd_core.splits import CategorySplit
from ezsd_core.structures import ImageRecord, RegionSet

BACKGROUND_IOU = 0.1  # a region overlapping every GT box less than this shows background


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
        ``background@k``: the share of top-k regions that overlap no GT box (IoU < ``BACKGROUND_IOU``;
        NaN without regions), plus ``num_gt_base`` / ``num_gt_novel``.
    """
    best: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    background: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    novel = []
    for rec, reg in zip(records, regions, strict=True):
        if rec.image_id != reg.image_id:
            raise ValueError(f"records and regions are not aligned: image {rec.image_id} vs {reg.image_id}")
        iou = box_iou(rec.gt_boxes, reg.region_boxes)  # (G, R); either may be empty
        # best overlap of each region with any GT box (0 when the image has none)
        region_best = iou.max(0).values if len(iou) else torch.zeros(iou.shape[1])
        for k in ks:
            background[k].append(region_best[:k] < BACKGROUND_IOU)
        if len(rec.gt_boxes) == 0:
            continue
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
        bg = torch.cat(background[k]).float() if background[k] else torch.zeros(0)
        out[f"background@{k}"] = float(bg.mean()) if len(bg) else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# detection AP


def quiet():
    """Context manager that silences pycocotools' / lvis' prints."""
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


def coco_metrics(gt_json: Path | str, results: list[dict] | Path, split: CategorySplit, *,
                 iou_types: Sequence[str] = ("bbox", "segm"), max_dets: Sequence[int] = (100, 300),
                 image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCO AP / AP50 per subset (base, novel, all) with pycocotools, ``catIds`` restricted per subset.

    Args:
        gt_json: the val annotation file (COCO format).
        results: detections in COCO results format (``bbox`` XYWH absolute; ``segmentation`` RLE for segm),
            or a non-empty JSON file of them (read by the evaluator, once per iou type: no second copy).
        split: the subsets.
        iou_types: ``bbox`` and/or ``segm``.
        max_dets: detections per image considered; the largest gives the headline keys
            (``bbox/AP50_novel``), the others a suffix (``bbox/AP50_novel@100``). AP and AP50 are both
            read at that number (``COCOeval.summarize`` reads AP at 100 whatever ``maxDets`` says).
        image_ids: the images scored (``COCOeval.params.imgIds``); None = every image of ``gt_json``.

    Returns:
        Flat metrics; -1.0 where a subset has no GT (COCOeval's convention).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with quiet():
        gt = COCO(str(gt_json))
    present = set(gt.getCatIds())
    out: dict[str, float] = {}
    for iou_type in iou_types:
        usable = _usable(results, iou_type)
        with quiet():
            dt = gt.loadRes(usable) if usable else None
        for subset in ("base", "novel", "all"):
            cats = [c for c in split.ids(subset) if c in present]
            for n in sorted(max_dets):
                suffix = "" if n == max(max_dets) else f"@{n}"
                ap, ap50 = -1.0, -1.0
                if dt is not None and cats:
                    e = COCOeval(gt, dt, iou_type)
                    e.params.catIds, e.params.maxDets = cats, [1, 10, n]
                    if image_ids is not None:
                        e.params.imgIds = sorted(int(i) for i in image_ids)
                    with quiet():
                        e.evaluate()
                        e.accumulate()
                    # not e.summarize()'s stats: its AP is read at maxDets=100 whatever params.maxDets says
                    ap, ap50 = _summary_ap(e.eval["precision"]), _summary_ap(e.eval["precision"], iou=0.5,
                                                                              iou_thrs=e.params.iouThrs)
                elif cats:
                    ap, ap50 = 0.0, 0.0
                out[f"{iou_type}/AP_{subset}{suffix}"] = ap
                out[f"{iou_type}/AP50_{subset}{suffix}"] = ap50
    return out


def _usable(results: list[dict] | Path, iou_type: str) -> list[dict] | str:
    """The results an iou type can score: all for bbox, those with masks for segm; a file is passed on
    whole (stage 05 writes one of either kind: every result has a mask, or none has)."""
    if isinstance(results, str | Path):
        return str(results)
    return [r for r in results if iou_type == "bbox" or "segmentation" in r]


def _summary_ap(precision: np.ndarray, iou: float | None = None, iou_thrs: np.ndarray | None = None) -> float:
    """COCOeval's AP (area ``all``, the last maxDets) from its (T, R, K, A, M) precision: averaged over
    the IoU thresholds T (AP@[.50:.95]), or at the one threshold ``iou`` of ``iou_thrs`` (AP50)."""
    s = precision[:, :, :, 0, -1]
    if iou is not None:
        s = s[np.where(np.isclose(iou_thrs, iou))[0]]
    return float(np.mean(s[s > -1])) if (s > -1).any() else -1.0


def lvis_metrics(gt_json: Path | str, results: list[dict] | Path, *, iou_types: Sequence[str] = ("bbox", "segm"),
                 max_dets: int = 300, image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """LVIS AP, AP50, APr, APc, APf with the ``lvis`` package (``np.float`` shimmed for numpy >= 1.24).

    Args:
        results: as for ``coco_metrics`` (a list, or a non-empty JSON file of them).
        image_ids: the images scored (``LVISEval.params.img_ids``); None = every image of ``gt_json``.

    Returns:
        ``{"bbox/AP", "bbox/APr", ...}`` as plain floats; -1.0 where LVIS reports no value.
    """
    if not hasattr(np, "float"):
        np.float = float  # lvis 0.5.3 still uses np.float (removed in numpy 1.24)
    from lvis import LVIS, LVISEval, LVISResults

    with quiet():
        gt = LVIS(str(gt_json))
    out: dict[str, float] = {}
    for iou_type in iou_types:
        usable = _usable(results, iou_type)
        if not usable:
            out.update({f"{iou_type}/{k}": 0.0 for k in ("AP", "AP50", "APr", "APc", "APf")})
            continue
        with quiet():
            e = LVISEval(gt, LVISResults(gt, usable, max_dets=max_dets), iou_type)
            e.params.max_dets = max_dets
            if image_ids is not None:
                e.params.img_ids = sorted(int(i) for i in image_ids)
            e.run()
        res = e.get_results()
        out.update({f"{iou_type}/{k}": float(res[k]) for k in ("AP", "AP50", "APr", "APc", "APf")})
    return out
