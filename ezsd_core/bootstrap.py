"""Paired bootstrap intervals of COCO AP over the val images: the ablation's error bars.

Role: a difference between two APs is a claim; this module gives every AP of several detection lists
on the *same* B resamples of the val images (drawn with replacement, an image drawn k times counting
k times), so each difference has the interval of the difference, not two unrelated intervals.
Layer 2: imports splits (layer 0) and evaluation (for pycocotools' quiet loading).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ezsd_core.evaluation import quiet
from ezsd_core.splits import CategorySplit

# Shapes: I val images, K categories, T IoU thresholds (10), P detections of one category, Q of them
# true positives at some threshold, B resamples (+1: row 0 of every weight matrix is the val set itself).

SUBSETS = ("base", "novel", "all")


@dataclass(frozen=True)
class _CategoryMatches:
    """One category's detections of one list, in the order ``COCOeval.accumulate`` sorts them.

    Attributes:
        image_index: (P,) int64, the val image (0..I-1, ascending image id) of each detection.
        tps: (T, P) bool, a true positive at each IoU threshold (matched, not ignored).
        counted: (C, P) bool, not ignored (a false positive where not ``tps``); C = 1 when no detection
            hits an ignored (crowd) GT, else T.
        gt_counts: (I,) float64, non-ignored GT boxes of the category in each image.
        keep: (Q,) int64, the positions that are a true positive at some threshold.
        per_segment: (C, I, Q) float64 counted detections of each image in (keep[q-1], keep[q]], or
            None where a cumulative sum over the P detections is cheaper (``_counted_until``).
    """

    image_index: np.ndarray
    tps: np.ndarray
    counted: np.ndarray
    gt_counts: np.ndarray
    keep: np.ndarray
    per_segment: np.ndarray | None


def _sorted_matches(image_index: np.ndarray, tps: np.ndarray, counted: np.ndarray,
                    gt_counts: np.ndarray) -> _CategoryMatches:
    """Add the true-positive positions and, where a matmul beats a gather, the per-segment counts."""
    counted = counted[:1] if counted.all() else counted
    keep = np.flatnonzero(tps.any(0))
    num_images, num_dets = len(gt_counts), len(image_index)
    per_segment = None
    # a BLAS multiply-add is ~100x cheaper than a gather; the (I, Q) counts stay under 16 MB
    if len(keep) * num_images <= min(128 * num_dets, 2**21):
        segment = np.searchsorted(keep, np.arange(num_dets))  # detections up to keep[q] -> q
        ok = segment < len(keep)
        flat = image_index[ok] * len(keep) + segment[ok]
        per_segment = np.stack([np.bincount(flat, row[ok].astype(float), num_images * len(keep))
                                for row in counted]).reshape(len(counted), num_images, len(keep))
    return _CategoryMatches(image_index, tps, counted, gt_counts, keep, per_segment)


@dataclass(frozen=True)
class BootstrapAP:
    """COCO AP of one detection list on the val images and on B bootstrap resamples of them.

    Attributes:
        point: metric key (``bbox/AP50_novel``) -> AP on the val images as they are; equals
            ``coco_metrics`` (-1.0 where the subset has no GT).
        samples: metric key -> (B,) float64 AP on each resample; NaN where a resample holds no GT of
            the subset. Lists from one ``bootstrap_coco_ap`` call share their resamples (paired).
        num_images: I, the val images resampled.
        num_resamples: B.
        seed: seed of the resampling generator.
    """

    point: dict[str, float]
    samples: dict[str, np.ndarray]
    num_images: int
    num_resamples: int
    seed: int

    def interval(self, key: str, level: float = 0.95) -> tuple[float, float]:
        """The percentile interval of ``key`` (``level`` = 0.95: the 2.5th and 97.5th percentiles)."""
        return _percentiles(self.samples[key], level)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    finite = values[~np.isnan(values)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_weights(num_images: int, num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """How often each image is drawn in each resample of the images with replacement.

    Args:
        num_images: I.
        num_resamples: B.
        seed: seed of the one ``numpy.random.Generator`` that draws every resample.

    Returns:
        (B, I) int64 counts; every row sums to I.

    Raises:
        ValueError: ``num_images`` or ``num_resamples`` below 1.
    """
    if num_images < 1 or num_resamples < 1:
        raise ValueError(f"num_images and num_resamples must be >= 1, got {num_images} and {num_resamples}")
    drawn = np.random.default_rng(seed).integers(0, num_images, size=(num_resamples, num_images))
    flat = (drawn + num_images * np.arange(num_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=num_resamples * num_images).reshape(num_resamples, num_images)


def _load_results(gt, results: list[dict]):
    """``gt.loadRes`` on copies (it writes ids and areas into the dicts); an empty COCO for no results."""
    from pycocotools.coco import COCO

    if results:
        with quiet():
            return gt.loadRes([dict(r) for r in results])
    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                  "annotations": []}
    with quiet():
        dt.createIndex()
    return dt


def _category_matches(gt, results: list[dict], cats: Sequence[int], iou_type: str,
                      max_dets: int) -> tuple[dict[int, _CategoryMatches], np.ndarray]:
    """Run ``COCOeval.evaluate()`` once (area ``all``) and gather each category's matches.

    Returns:
        category id -> its matches (every id of ``cats``), and COCO's (R,) recall thresholds.
    """
    from pycocotools.cocoeval import COCOeval

    e = COCOeval(gt, _load_results(gt, results), iou_type)
    p = e.params
    p.catIds, p.maxDets = list(cats), [max_dets]
    p.areaRng, p.areaRngLbl = p.areaRng[:1], p.areaRngLbl[:1]  # 'all' alone: the others are never read here
    with quiet():
        e.evaluate()
    num_images, t = len(p.imgIds), len(p.iouThrs)
    out = {}
    for k, cat in enumerate(p.catIds):
        found = [(i, x) for i, x in enumerate(e.evalImgs[k * num_images:(k + 1) * num_images]) if x is not None]
        gt_counts = np.zeros(num_images)
        for i, x in found:
            gt_counts[i] = np.count_nonzero(x["gtIgnore"] == 0)
        scores = np.concatenate([np.zeros(0), *(np.asarray(x["dtScores"], dtype=float) for _, x in found)])
        order = np.argsort(-scores, kind="mergesort")  # accumulate()'s order, ties by image then rank
        image_index = np.concatenate([np.zeros(0, np.int64), *(np.full(len(x["dtScores"]), i) for i, x in found)])
        matched = np.concatenate([np.zeros((t, 0)), *(x["dtMatches"] for _, x in found)], axis=1)[:, order]
        ignored = np.concatenate([np.zeros((t, 0)), *(x["dtIgnore"] for _, x in found)], axis=1)[:, order]
        counted = np.logical_not(ignored)
        out[int(cat)] = _sorted_matches(image_index.astype(np.int64)[order], np.logical_and(matched, counted),
                                        counted, gt_counts)
    return out, np.asarray(p.recThrs)


def _counted_until(m: _CategoryMatches, weights: np.ndarray) -> np.ndarray:
    """(B, C, Q) weighted count of the not-ignored detections up to each true-positive position.

    Per-image counts between consecutive positions times the weights (a small matmul), or a
    cumulative sum over all P detections, whichever is cheaper; both sum whole numbers exactly.
    """
    if m.per_segment is not None:
        return np.cumsum(np.stack([weights @ h for h in m.per_segment], axis=1), axis=2)
    w = weights[:, None, m.image_index]  # (B, 1, P)
    return np.cumsum(w if len(m.counted) == 1 else w * m.counted, axis=2)[:, :, m.keep]


def _precision_sums(m: _CategoryMatches, weights: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """Sum over the R recall thresholds of COCO's interpolated precision, for weighted images.

    An image of weight w counts w times (its detections and GT). Recall rises only at true positives,
    so only those Q positions are visited: the interpolated precision at a true positive is the
    running maximum from the right over true positives (precision falls between them), and the
    recall thresholds it covers are those in (recall at the previous one, its recall].

    Args:
        m: the category's matches.
        weights: (B, I) float64 image weights.
        rec_thrs: (R,) recall thresholds, ascending (COCO's 101).

    Returns:
        (B, T) float64; / R gives ``COCOeval.accumulate``'s mean precision of the category.
    """
    if not len(m.keep):
        return np.zeros((len(weights), len(m.tps)))
    tp = np.cumsum(weights[:, None, m.image_index[m.keep]] * m.tps[:, m.keep], axis=2)  # (B, T, Q)
    fp = _counted_until(m, weights) - tp
    precision = tp / (fp + tp + np.spacing(1))  # COCOeval's expression, so weights of 1 give its values
    envelope = np.maximum.accumulate(precision[:, :, ::-1], axis=2)[:, :, ::-1]
    reached = _thresholds_reached(tp, weights @ m.gt_counts, rec_thrs)
    return (envelope * np.diff(reached, axis=2, prepend=0)).sum(axis=2)


def _thresholds_reached(tp: np.ndarray, num_gt: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """(B, T, Q) int: how many recall thresholds are <= recall ``tp / num_gt`` (COCO: searchsorted left).

    ``tp`` holds whole numbers up to ``num_gt``, so each resample's recalls n / num_gt (n = 0..num_gt)
    are looked up in a table searched once: the same divisions, hence the same comparisons as COCO's.
    """
    top = int(num_gt.max()) + 1
    with np.errstate(invalid="ignore", divide="ignore"):  # resamples without GT: NaN, dropped later
        table = np.searchsorted(rec_thrs, np.arange(top) / num_gt[:, None], side="right")  # (B, top)
    rows = top * np.arange(len(num_gt))[:, None, None]
    return table.ravel()[tp.astype(np.intp) + rows]


def _category_precision(m: _CategoryMatches, weights: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """(B, T) mean interpolated precision of one category, in chunks of resamples that keep each
    (rows, T, Q) temporary near 512 KB: in cache, twice as fast as whole (B, T, Q) arrays."""
    rows = max(1, 2**16 // max(1, len(m.image_index), len(m.tps) * len(m.keep)))
    sums = [_precision_sums(m, weights[i:i + rows], rec_thrs) for i in range(0, len(weights), rows)]
    return np.concatenate(sums) / len(rec_thrs)


def _subset_ap(precision: list[np.ndarray], has_gt: list[np.ndarray], num_weights: int) -> tuple[np.ndarray, ...]:
    """(B,) AP and AP50 over the categories with GT in each resample (COCO averages those > -1); NaN if none.

    Args:
        precision: (B, T) mean precision per category of the subset.
        has_gt: (B,) bool per category: the resample holds GT of it.
        num_weights: B, for a subset without categories.
    """
    if not precision:
        return np.full(num_weights, np.nan), np.full(num_weights, np.nan)
    prec, valid = np.stack(precision), np.stack(has_gt)  # (K, B, T), (K, B)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = valid.sum(0)
        return (np.where(valid, prec.mean(2), 0.0).sum(0) / n, np.where(valid, prec[:, :, 0], 0.0).sum(0) / n)


def _weighted_ap(gt, results: list[dict], subsets: Mapping[str, Sequence[int]], weights: np.ndarray, iou_type: str,
                 max_dets: int) -> dict[str, np.ndarray]:
    """``<iou_type>/AP_<subset>`` and ``AP50_<subset>`` -> (B,) for each row of the (B, I) image weights."""
    matches, rec_thrs = _category_matches(gt, results, subsets["all"], iou_type, max_dets)
    per_cat = {c: (_category_precision(m, weights, rec_thrs), weights @ m.gt_counts > 0) for c, m in matches.items()}
    out = {}
    for subset, cats in subsets.items():
        ap, ap50 = _subset_ap([per_cat[c][0] for c in cats], [per_cat[c][1] for c in cats], len(weights))
        out[f"{iou_type}/AP_{subset}"], out[f"{iou_type}/AP50_{subset}"] = ap, ap50
    return out


def bootstrap_coco_ap(gt_json: Path | str, results: Mapping[str, list[dict]], split: CategorySplit, *,
                      iou_types: Sequence[str] = ("bbox",), max_dets: int = 100, num_resamples: int = 1000,
                      seed: int = 0) -> dict[str, BootstrapAP]:
    """COCO AP / AP50 per subset of several detection lists on the same B resamples of the val images.

    Each list goes through ``COCOeval.evaluate()`` once; its per-image matches are then re-accumulated
    with COCO's 101-point interpolated precision for every resample, where an image drawn k times
    counts k times (its detections and GT weighted by k; tied scores of its copies form one step).
    The resamples are drawn once (``bootstrap_weights``), so differences between lists are paired.

    Args:
        gt_json: the val annotation file (COCO format).
        results: list name -> detections in COCO results format (``bbox`` XYWH absolute;
            ``segmentation`` RLE for segm).
        split: the subsets (``catIds`` restricted per subset as in ``coco_metrics``).
        iou_types: ``bbox`` and/or ``segm``.
        max_dets: detections per image and category considered (COCOeval's last ``maxDets``).
        num_resamples: B.
        seed: seed of the resampling.

    Returns:
        list name -> its ``BootstrapAP`` with keys ``<iou_type>/AP_<subset>`` and ``AP50_<subset>``.

    Raises:
        ValueError: an unknown iou type, ``max_dets`` or ``num_resamples`` below 1.
    """
    from pycocotools.coco import COCO

    if bad := [t for t in iou_types if t not in ("bbox", "segm")]:
        raise ValueError(f"iou_types must be among ('bbox', 'segm'), got {bad}")
    if max_dets < 1:
        raise ValueError(f"max_dets must be >= 1, got {max_dets}")
    with quiet():
        gt = COCO(str(gt_json))
    present = set(gt.getCatIds())
    subsets = {s: [c for c in split.ids(s) if c in present] for s in SUBSETS}
    num_images = len(set(gt.getImgIds()))
    weights = np.vstack([np.ones(num_images), bootstrap_weights(num_images, num_resamples, seed)]).astype(float)
    out = {}
    for name, dets in results.items():
        values: dict[str, np.ndarray] = {}
        for iou_type in iou_types:
            usable = [r for r in dets if iou_type == "bbox" or "segmentation" in r]
            values.update(_weighted_ap(gt, usable, subsets, weights, iou_type, max_dets))
        point = {k: -1.0 if np.isnan(v[0]) else float(v[0]) for k, v in values.items()}
        out[name] = BootstrapAP(point, {k: v[1:] for k, v in values.items()}, num_images, num_resamples, seed)
    return out


def replicate_mean(boot: Mapping[str, BootstrapAP], names: Sequence[str]) -> BootstrapAP:
    """The mean AP of training replicates (same method, other training draws) on each shared resample.

    Differences of such means against another list are still paired over the val images; they average
    out part of the training noise but do not include it in the interval (compare the replicates'
    own differences for that).

    Args:
        boot: lists of one ``bootstrap_coco_ap`` call (same resamples).
        names: the replicates' list names (at least one).

    Returns:
        A ``BootstrapAP`` whose point and (B,) samples are the replicates' means per key (-1.0 point
        where a subset has no GT).

    Raises:
        ValueError: no names, an unknown name, or lists drawn on other resamples.
    """
    if not names:
        raise ValueError("names must hold at least one list name")
    if unknown := [n for n in names if n not in boot]:
        raise ValueError(f"names {unknown} are not in boot; available: {sorted(boot)}")
    first = boot[names[0]]
    if any((boot[n].seed, boot[n].num_images, boot[n].num_resamples) !=
           (first.seed, first.num_images, first.num_resamples) for n in names):
        raise ValueError(f"lists {list(names)} were drawn on other resamples")
    samples = {k: np.mean([boot[n].samples[k] for n in names], axis=0) for k in first.samples}
    point = {k: -1.0 if first.point[k] == -1.0 else float(np.mean([boot[n].point[k] for n in names]))
             for k in first.point}
    return BootstrapAP(point, samples, first.num_images, first.num_resamples, first.seed)


def paired_differences(boot: Mapping[str, BootstrapAP], reference: str, keys: Sequence[str], *,
                       level: float = 0.95) -> dict[str, dict[str, dict[str, float]]]:
    """AP(reference) - AP(x) for every other list x, with its interval over the shared resamples.

    Args:
        boot: lists of one ``bootstrap_coco_ap`` call (same resamples).
        reference: the list the others are compared to, e.g. the full method.
        keys: metric keys, e.g. ``("bbox/AP50_novel",)``.
        level: coverage of the percentile interval.

    Returns:
        ``{x: {key: {"delta", "lo", "hi", "p_le_0"}}}``: the difference on the val images, the
        percentile interval of the resampled differences and the share of resamples where it is <= 0
        (resamples without GT of the subset left out; NaN when none is left).

    Raises:
        ValueError: ``reference`` or a key unknown, or lists drawn on other resamples.
    """
    if reference not in boot:
        raise ValueError(f"reference must be one of {sorted(boot)}, got {reference!r}")
    ref = boot[reference]
    if bad := [k for k in keys if k not in ref.samples]:
        raise ValueError(f"keys {bad} are not bootstrapped; available: {sorted(ref.samples)}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, other in boot.items():
        if name == reference:
            continue
        if (other.seed, other.num_images, other.num_resamples) != (ref.seed, ref.num_images, ref.num_resamples):
            raise ValueError(f"boot[{name!r}] was drawn on other resamples than boot[{reference!r}]")
        out[name] = {}
        for key in keys:
            diff = ref.samples[key] - other.samples[key]
            lo, hi = _percentiles(diff, level)
            finite = diff[~np.isnan(diff)]
            out[name][key] = {"delta": ref.point[key] - other.point[key], "lo": lo, "hi": hi,
                              "p_le_0": float(np.mean(finite <= 0)) if len(finite) else float("nan")}
    return out
