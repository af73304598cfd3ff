from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ezsd_core import toyworld
from ezsd_core.toyshapes import CATEGORY_NAMES, shape_polygons


def test_world_is_deterministic_and_seed_dependent(smoke_world: Path, tmp_path: Path) -> None:
    again = toyworld.generate(tmp_path / "again", toyworld.SMOKE_SPEC)
    a, b = (json.loads((w / "world.json").read_text()) for w in (smoke_world, again))
    assert a["coco_sha256"] == b["coco_sha256"] and a["iconic_sha256"] == b["iconic_sha256"]
    img, objs = toyworld.render_scene(1, 64, np.ones(len(CATEGORY_NAMES)), 4)
    img2, objs2 = toyworld.render_scene(2, 64, np.ones(len(CATEGORY_NAMES)), 4)
    assert np.asarray(img).tobytes() != np.asarray(img2).tobytes()


def test_scene_annotations_are_exact(smoke_world: Path) -> None:
    doc = json.loads((smoke_world / "coco/annotations/instances_train.json").read_text())
    assert len(doc["categories"]) == len(CATEGORY_NAMES) >= 20
    assert doc["annotations"], "the smoke world has objects"
    for ann in doc["annotations"]:
        m = mask_utils.decode(ann["segmentation"])
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert ann["area"] == m.sum() and ann["iscrowd"] == 0
    image = Image.open(smoke_world / "coco/train" / doc["images"][0]["file_name"])
    assert image.size == (64, 64) and image.mode == "RGB"


def test_lvis_world_is_long_tailed_with_train_frequencies_in_both_files(tmp_path: Path) -> None:
    spec = toyworld.WorldSpec(num_train=400, num_val=4, num_iconic=24, num_iconic_heldout=24, image_size=64)
    world = toyworld.generate(tmp_path / "w", spec)
    train = json.loads((world / "lvis/annotations/lvis_v1_train.json").read_text())
    val = json.loads((world / "lvis/annotations/lvis_v1_val.json").read_text())
    counts = Counter()
    for image_id in {a["image_id"] for a in train["annotations"]}:
        counts.update({a["category_id"] for a in train["annotations"] if a["image_id"] == image_id})
    for c in train["categories"]:  # tags follow LVIS's rule (<= 10 / <= 100 images at 2000 images)
        n = counts[c["id"]]
        assert c["frequency"] == ("r" if n <= 10 * 400 / 2000 else "c" if n <= 100 * 400 / 2000 else "f")
    by_name = {c["name"]: counts[c["id"]] for c in train["categories"]}
    frequent = [n for n in CATEGORY_NAMES if n not in toyworld.RARE + toyworld.COMMON]
    assert max(by_name[n] for n in toyworld.RARE) < min(by_name[n] for n in frequent), "long-tailed by design"
    assert Counter(c["frequency"] for c in train["categories"])["f"] >= 10
    assert val["categories"] == train["categories"], "LVIS tags come from the training set"
    img = train["images"][0]
    assert "file_name" not in img and img["coco_url"].endswith(f"/train/{1:06d}.png")
    assert set(img["neg_category_ids"]).isdisjoint(a["category_id"] for a in train["annotations"]
                                                   if a["image_id"] == img["id"])


def test_iconic_pairs_cover_every_category_with_captions(smoke_world: Path) -> None:
    lines = [json.loads(x) for x in (smoke_world / "iconic/train.jsonl").read_text().splitlines()]
    ids = toyworld.category_ids()
    objects = lines[: toyworld.SMOKE_SPEC.num_iconic]
    assert {x["category_id"] for x in objects} == set(ids)
    for x in objects:
        assert CATEGORY_NAMES[ids.index(x["category_id"])] in x["caption"]
    clutter = lines[toyworld.SMOKE_SPEC.num_iconic:]
    assert len(clutter) == toyworld.SMOKE_SPEC.num_iconic_background > 0
    for x in clutter:  # pictures of no category, and captions that name none
        assert x["category_id"] is None and not any(n in x["caption"].split() for n in CATEGORY_NAMES)
    for x in lines:
        assert (smoke_world / "iconic" / x["file"]).exists()


def test_generate_keeps_a_matching_world_and_refuses_a_different_one(smoke_world: Path) -> None:
    stamp = (smoke_world / "world.json").stat().st_mtime_ns
    toyworld.generate(smoke_world, toyworld.SMOKE_SPEC)
    assert (smoke_world / "world.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="--force"):
        toyworld.generate(smoke_world, toyworld.WorldSpec(seed=1, num_train=8))


def test_every_shape_draws_and_unknown_names_fail() -> None:
    for name in CATEGORY_NAMES:
        assert shape_polygons(name)[0][1] is True
    with pytest.raises(ValueError, match="unknown toy category 'blob'"):
        shape_polygons("blob")
