"""Paired bootstrap AP (``ezsd_core.bootstrap``): the point estimate and every resample equal pycocotools
on the correspondingly duplicated val set; paired differences are exact zeros for identical lists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ezsd_core import bootstrap, evaluation
from ezsd_core.splits import CategorySplit

SPLIT = CategorySplit(name="t", style="coco", category_ids=(1, 2), names=("a", "b"), roles=("base", "novel"),
                      in_proposal=(True, True))

SPLIT4 = CategorySplit(name="t", style="coco", category_ids=(1, 2, 3, 4), names=("a", "b", "c", "d"),
                       roles=("base", "novel", "base", "other"), in_proposal=(True,) * 4)


def _world(path: Path, num_images: int, seed: int, max_objects: int = 4) -> list[dict]:
    """A val file of ``num_images`` 100 px images with 0..max_objects boxes of categories 1-4; returns its anns."""
    rng = np.random.default_rng(seed)
    anns = []
    for image_id in range(1, num_images + 1):
        for _ in range(int(rng.integers(0, max_objects + 1))):
            x, y, w, h = (float(v) for v in (*rng.uniform(0, 60, 2), *rng.uniform(8, 40, 2)))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 5)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    path.write_text(json.dumps({"images": [{"id": i, "width": 100, "height": 100} for i in range(1, num_images + 1)],
                                "annotations": anns, "categories": [{"id": c, "name": n} for c, n in
                                                                    zip(SPLIT4.category_ids, SPLIT4.names)]}))
    return anns


def _detections(anns: list[dict], num_images: int, seed: int, *, score_levels: int | None, false_per_image: int
                ) -> list[dict]:
    """Jittered copies of most GT boxes (some with the wrong category) plus random false positives; scores
    drawn from ``score_levels`` values (ties within and across images) or continuous."""
    rng = np.random.default_rng(seed)
    score = (lambda: float(rng.integers(0, score_levels)) / score_levels) if score_levels else (lambda: rng.random())
    out = []
    for a in anns:
        for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 detections of each object
            x, y, w, h = a["bbox"]
            jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.random() < 0.85 else int(rng.integers(1, 5))
            out.append({"image_id": a["image_id"], "category_id": cat, "score": score(),
                        "bbox": [float(v) for v in np.array([x, y, w, h]) + jitter]})
    for image_id in range(1, num_images + 1):
        for _ in range(false_per_image):
            x, y, w, h = (float(v) for v in (*rng.uniform(0, 60, 2), *rng.uniform(8, 40, 2)))
            out.append({"image_id": image_id, "category_id": int(rng.integers(1, 5)), "bbox": [x, y, w, h],
                        "score": score()})
    return out


@pytest.mark.parametrize("max_dets,crowd", [(100, False), (12, False), (100, True)])
def test_bootstrap_point_estimate_equals_coco_metrics_with_tied_scores(tmp_path: Path, max_dets: int,
                                                                       crowd: bool) -> None:
    gt = tmp_path / "gt.json"
    anns = _world(gt, num_images=24, seed=1)
    if crowd:  # crowd GT: detections on them are ignored at some IoU thresholds only
        doc = json.loads(gt.read_text())
        for a in doc["annotations"][::5]:
            a["iscrowd"] = 1
        gt.write_text(json.dumps(doc))
    lists = {f"l{s}": _detections(anns, 24, s, score_levels=levels, false_per_image=8)
             for s, levels in enumerate((4, 10, None))}  # 4 score values: ties everywhere; > 12 per image
    boot = bootstrap.bootstrap_coco_ap(gt, lists, SPLIT4, max_dets=max_dets, num_resamples=5)
    for name, dets in lists.items():
        ref = evaluation.coco_metrics(gt, dets, SPLIT4, iou_types=("bbox",), max_dets=(max_dets,))
        assert set(boot[name].point) == set(ref)
        for key, value in ref.items():
            assert 0.0 < value < 1.0 and boot[name].point[key] == pytest.approx(value, abs=1e-9), (name, key)


@pytest.mark.parametrize("num_images,max_objects,false_per_image", [(16, 4, 8), (400, 1, 0)],
                         ids=["many_detections", "few_detections_per_image"])
def test_bootstrap_resample_equals_pycocotools_on_the_duplicated_images(tmp_path: Path, num_images: int,
                                                                        max_objects: int, false_per_image: int) -> None:
    """A resample = the val set with image i copied k_i times (renumbered), scored by pycocotools. The
    two cases take the two ways of counting detections (per-image segment counts; a cumulative sum)."""
    gt = tmp_path / "gt.json"
    anns = _world(gt, num_images=num_images, seed=2, max_objects=max_objects)
    dets = _detections(anns, num_images, 7, score_levels=None, false_per_image=false_per_image)
    boot = bootstrap.bootstrap_coco_ap(gt, {"x": dets}, SPLIT4, num_resamples=3, seed=5)["x"]
    weights = bootstrap.bootstrap_weights(num_images, 3, seed=5)
    doc = json.loads(gt.read_text())
    for b in range(3):
        images, dup_anns, dup_dets = [], [], []
        for i, k in enumerate(weights[b]):
            for _ in range(k):
                images.append({"id": len(images) + 1, "width": 100, "height": 100})
                dup_anns += [{**a, "id": len(dup_anns) + n + 1, "image_id": len(images)}
                             for n, a in enumerate(a for a in anns if a["image_id"] == i + 1)]
                dup_dets += [{**d, "image_id": len(images)} for d in dets if d["image_id"] == i + 1]
        dup = tmp_path / f"dup{b}.json"
        dup.write_text(json.dumps({**doc, "images": images, "annotations": dup_anns}))
        ref = evaluation.coco_metrics(dup, dup_dets, SPLIT4, iou_types=("bbox",), max_dets=(100,))
        assert not np.array_equal(weights[b], np.ones(num_images))
        for key, value in ref.items():
            assert boot.samples[key][b] == pytest.approx(value, abs=1e-9), (b, key)


def test_paired_difference_of_a_list_with_itself_is_zero_in_every_resample(tmp_path: Path) -> None:
    gt = tmp_path / "gt.json"
    anns = _world(gt, num_images=20, seed=3)
    dets = _detections(anns, 20, 0, score_levels=5, false_per_image=3)
    other = _detections(anns, 20, 1, score_levels=5, false_per_image=3)
    boot = bootstrap.bootstrap_coco_ap(gt, {"x": dets, "same": list(dets), "other": other}, SPLIT4,
                                        num_resamples=200)
    keys = ("bbox/AP50_novel", "bbox/AP_base", "bbox/AP_all")
    diffs = bootstrap.paired_differences(boot, "x", keys)
    for key in keys:
        diff = boot["x"].samples[key] - boot["same"].samples[key]
        assert np.all(diff[~np.isnan(diff)] == 0.0) and (~np.isnan(diff)).sum() > 150
        assert diffs["same"][key] == {"delta": 0.0, "lo": 0.0, "hi": 0.0, "p_le_0": 1.0}
        # a different list: a spread, paired on the same resamples
        d = diffs["other"][key]
        assert d["lo"] < d["hi"] and d["lo"] <= d["delta"] <= d["hi"] and 0.0 <= d["p_le_0"] <= 1.0
        paired = boot["x"].samples[key] - boot["other"].samples[key]
        assert d["lo"] == pytest.approx(np.nanpercentile(paired, 2.5))
    assert set(diffs) == {"same", "other"}


def test_bootstrap_interval_of_perfect_detections_is_one(tmp_path: Path) -> None:
    gt = tmp_path / "gt.json"
    anns = _world(gt, num_images=15, seed=4)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.5 + a["id"] / 1e3} for a in anns]
    boot = bootstrap.bootstrap_coco_ap(gt, {"perfect": dets}, SPLIT4, num_resamples=100)["perfect"]
    for key in ("bbox/AP_base", "bbox/AP50_novel", "bbox/AP_all"):
        lo, hi = boot.interval(key)
        assert lo == pytest.approx(1.0, abs=1e-12) and hi == pytest.approx(1.0, abs=1e-12)
        assert boot.point[key] == pytest.approx(1.0, abs=1e-12)


def test_bootstrap_hand_computed_two_image_case(tmp_path: Path) -> None:
    """Image 1: a base box, found (0.9). Image 2: a base box, missed, a base false positive (0.8) and a
    novel box, found (0.5). Resample (2, 0): base 1, novel undefined; (1, 1): base 51/101 (recall 1/2 at
    precision 1, then a false positive), novel 1; (0, 2): base 0, novel 1."""
    gt = tmp_path / "gt.json"
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0}]
    gt.write_text(json.dumps({"images": [{"id": 1, "width": 50, "height": 50}, {"id": 2, "width": 50, "height": 50}],
                              "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [35, 35, 10, 10], "score": 0.8},
            {"image_id": 2, "category_id": 2, "bbox": [20, 20, 10, 10], "score": 0.5}]
    boot = bootstrap.bootstrap_coco_ap(gt, {"x": dets}, SPLIT, num_resamples=400, seed=1)["x"]
    weights = bootstrap.bootstrap_weights(2, 400, seed=1)
    base = {(2, 0): 1.0, (1, 1): 51 / 101, (0, 2): 0.0}
    novel = {(2, 0): math.nan, (1, 1): 1.0, (0, 2): 1.0}
    for b, w in enumerate(map(tuple, weights)):
        assert boot.samples["bbox/AP50_base"][b] == pytest.approx(base[w], abs=1e-12)
        assert boot.samples["bbox/AP_base"][b] == pytest.approx(base[w], abs=1e-12)  # exact boxes: every IoU
        assert boot.samples["bbox/AP50_novel"][b] == pytest.approx(novel[w], abs=1e-12, nan_ok=True)
        assert boot.samples["bbox/AP50_all"][b] == pytest.approx(np.nanmean([base[w], novel[w]]), abs=1e-12)
    assert {tuple(w) for w in weights} == set(base)
    assert boot.point["bbox/AP50_base"] == pytest.approx(51 / 101, abs=1e-12)
    assert boot.interval("bbox/AP50_base") == (pytest.approx(0.0), pytest.approx(1.0))
    assert boot.interval("bbox/AP50_novel") == (pytest.approx(1.0), pytest.approx(1.0))  # NaNs left out


def test_bootstrap_resamples_are_reproducible_with_the_seed(tmp_path: Path) -> None:
    weights = bootstrap.bootstrap_weights(7, 50, seed=3)
    assert weights.shape == (50, 7) and np.all(weights.sum(1) == 7)
    drawn = np.random.default_rng(3).integers(0, 7, size=(50, 7))
    assert np.array_equal(weights, np.stack([np.bincount(row, minlength=7) for row in drawn]))
    assert not np.array_equal(weights, bootstrap.bootstrap_weights(7, 50, seed=4))
    gt = tmp_path / "gt.json"
    anns = _world(gt, num_images=10, seed=5)
    dets = _detections(anns, 10, 2, score_levels=None, false_per_image=2)
    runs = [bootstrap.bootstrap_coco_ap(gt, {"x": dets}, SPLIT4, num_resamples=30, seed=s)["x"] for s in (9, 9, 10)]
    assert all(np.array_equal(runs[0].samples[k], runs[1].samples[k], equal_nan=True) for k in runs[0].samples)
    assert not np.array_equal(runs[0].samples["bbox/AP_all"], runs[2].samples["bbox/AP_all"], equal_nan=True)


def test_paired_differences_refuses_unpaired_lists_and_unknown_names(tmp_path: Path) -> None:
    gt = tmp_path / "gt.json"
    anns = _world(gt, num_images=6, seed=6)
    dets = _detections(anns, 6, 0, score_levels=None, false_per_image=1)
    a = bootstrap.bootstrap_coco_ap(gt, {"a": dets}, SPLIT4, num_resamples=10, seed=0)
    b = bootstrap.bootstrap_coco_ap(gt, {"b": dets}, SPLIT4, num_resamples=10, seed=1)
    with pytest.raises(ValueError, match="other resamples"):
        bootstrap.paired_differences({**a, **b}, "a", ("bbox/AP_all",))
    with pytest.raises(ValueError, match="reference"):
        bootstrap.paired_differences(a, "d_full", ("bbox/AP_all",))
    with pytest.raises(ValueError, match="iou_types"):
        bootstrap.bootstrap_coco_ap(gt, {"a": dets}, SPLIT4, iou_types=("keypoints",))


def test_replicate_mean_averages_each_resample_and_stays_paired(tmp_path: Path) -> None:
    gt = tmp_path / "gt.json"
    anns = _world(gt, num_images=20, seed=7)
    lists = {f"r{k}": _detections(anns, 20, k, score_levels=None, false_per_image=2) for k in range(3)}
    boot = bootstrap.bootstrap_coco_ap(gt, lists, SPLIT4, num_resamples=50)
    mean = bootstrap.replicate_mean(boot, ["r0", "r1"])
    key = "bbox/AP50_novel"
    assert mean.point[key] == pytest.approx((boot["r0"].point[key] + boot["r1"].point[key]) / 2)
    np.testing.assert_allclose(mean.samples[key], (boot["r0"].samples[key] + boot["r1"].samples[key]) / 2)
    # paired against a third list: the difference of means is the mean of the paired differences
    diffs = bootstrap.paired_differences({"mean": mean, "r2": boot["r2"]}, "mean", (key,))
    singles = bootstrap.paired_differences(boot, "r2", (key,))
    assert diffs["r2"][key]["delta"] == pytest.approx(-(singles["r0"][key]["delta"] + singles["r1"][key]["delta"]) / 2)
    assert bootstrap.replicate_mean(boot, ["r2"]).point == boot["r2"].point
    with pytest.raises(ValueError, match="not in boot"):
        bootstrap.replicate_mean(boot, ["r0", "r9"])
    with pytest.raises(ValueError, match="at least one"):
        bootstrap.replicate_mean(boot, [])
    other = bootstrap.bootstrap_coco_ap(gt, {"s": lists["r0"]}, SPLIT4, num_resamples=50, seed=1)
    with pytest.raises(ValueError, match="other resamples"):
        bootstrap.replicate_mean({**boot, **other}, ["r0", "s"])
