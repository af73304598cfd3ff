from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ezsd_core import toydraw, toyworld
from ezsd_core.splits import TOY_OTHER
from ezsd_core.toyshapes import CATEGORY_NAMES, shape_polygons


def test_world_is_deterministic_and_seed_dependent(smoke_world: Path, tmp_path: Path) -> None:
    again = toyworld.generate(tmp_path / "again", toyworld.SMOKE_SPEC)
    a, b = (json.loads((w / "world.json").read_text()) for w in (smoke_world, again))
    assert a["coco_sha256"] == b["coco_sha256"] and a["iconic_sha256"] == b["iconic_sha256"]
    assert a["web_sha256"] == b["web_sha256"]
    img, objs = toydraw.render_scene(1, 64, np.ones(len(CATEGORY_NAMES)), 4)
    img2, objs2 = toydraw.render_scene(2, 64, np.ones(len(CATEGORY_NAMES)), 4)
    assert np.asarray(img).tobytes() != np.asarray(img2).tobytes()


def test_scene_seed_leaves_the_teachers_pictures_alone(tmp_path: Path) -> None:
    """One CLIP serves every world: the scenes' seed changes the scenes, not the web or iconic pictures."""
    spec = toyworld.SMOKE_SPEC
    a = toyworld.generate(tmp_path / "a", spec)
    b = toyworld.generate(tmp_path / "b", toyworld.WorldSpec(**{**spec.__dict__, "seed": 1}))
    c = toyworld.generate(tmp_path / "c", toyworld.WorldSpec(**{**spec.__dict__, "web_seed": 1}))
    wa, wb, wc = (json.loads((w / "world.json").read_text()) for w in (a, b, c))
    assert wa["web_sha256"] == wb["web_sha256"] and wa["iconic_sha256"] == wb["iconic_sha256"]
    assert wa["coco_sha256"] != wb["coco_sha256"] and wa["web_sha256"] != wc["web_sha256"]


def test_scene_camera_is_the_only_difference_of_a_camera_free_scene() -> None:
    """The diagnostic scene without the camera has the same objects (the gap is photographic only)."""
    w = np.ones(len(CATEGORY_NAMES))
    img, objs = toydraw.render_scene(5, 128, w, 5)
    raw, raw_objs = toydraw.render_scene(5, 128, w, 5, camera=0.0)
    assert [o["bbox"] for o in objs] == [o["bbox"] for o in raw_objs] and objs
    a, b = np.asarray(img, np.float32), np.asarray(raw, np.float32)
    assert np.abs(a - b).mean() > 20, "the camera changes the pixels a lot"
    assert np.corrcoef(a.mean(2).ravel(), b.mean(2).ravel())[0, 1] > 0.8, "... by a global response curve"
    assert a.std() < 0.7 * b.std() and np.percentile(a, 1) > 0.15 * 255, "low contrast, lifted blacks"


def test_scene_annotations_are_exact(smoke_world: Path) -> None:
    doc = json.loads((smoke_world / "coco/annotations/instances_train.json").read_text())
    assert len(doc["categories"]) == len(CATEGORY_NAMES) >= 20
    assert doc["annotations"], "the smoke world has objects"
    lvis = json.loads((smoke_world / "lvis/annotations/lvis_v1_train.json").read_text())
    assert [c["name"] for c in lvis["categories"]] == list(toyworld.LVIS_NAMES)
    assert not set(TOY_OTHER) & set(toyworld.LVIS_NAMES) and len(toyworld.LVIS_NAMES) == 24
    for ann in doc["annotations"]:
        m = mask_utils.decode(ann["segmentation"])
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert ann["area"] == m.sum() and ann["iscrowd"] == 0
    image = Image.open(smoke_world / "coco/train" / doc["images"][0]["file_name"])
    assert image.size == (64, 64) and image.mode == "RGB"


def test_lvis_world_is_long_tailed_with_train_frequencies_in_both_files(tmp_path: Path) -> None:
    spec = toyworld.WorldSpec(num_train=400, num_val=4, num_web=29, num_web_background=1, num_web_heldout=29,
                              num_iconic=29, num_iconic_heldout=29, image_size=64)
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
    frequent = [n for n in toyworld.LVIS_NAMES if n not in toyworld.RARE + toyworld.COMMON]
    assert max(by_name[n] for n in toyworld.RARE) < min(by_name[n] for n in frequent), "long-tailed by design"
    assert Counter(c["frequency"] for c in train["categories"])["f"] >= 10
    assert val["categories"] == train["categories"], "LVIS tags come from the training set"
    img = train["images"][0]
    assert "file_name" not in img and img["coco_url"].endswith(f"/train/{1:06d}.png")
    assert set(img["neg_category_ids"]).isdisjoint(a["category_id"] for a in train["annotations"]
                                                   if a["image_id"] == img["id"])


@pytest.mark.parametrize("kind", toyworld.PICTURE_KINDS)
def test_pictures_cover_every_category_with_captions(smoke_world: Path, kind: str) -> None:
    lines = [json.loads(x) for x in (smoke_world / kind / "train.jsonl").read_text().splitlines()]
    ids = toyworld.category_ids()
    named = toyworld.SMOKE_SPEC.num_web if kind == "web" else toyworld.SMOKE_SPEC.num_iconic
    objects = lines[:named]
    assert {x["category_id"] for x in objects} == set(ids), "every category, the 'other' shapes too"
    for x in objects:
        assert CATEGORY_NAMES[ids.index(x["category_id"])] in x["caption"].split()
    clutter = lines[named:]
    assert len(clutter) == (toyworld.SMOKE_SPEC.num_web_background if kind == "web" else 0)
    for x in clutter:  # pictures of no category, and captions that name none
        assert x["category_id"] is None and not any(n in x["caption"].split() for n in CATEGORY_NAMES)
        assert x["stuff"] in toydraw.STUFF_KINDS and x["stuff"] in x["caption"].split()  # named by its kind
    for x in lines:
        assert (smoke_world / kind / x["file"]).exists()


def test_web_pictures_show_their_subject_in_context() -> None:
    """A web picture is cluttered (unlike an iconic one) and holds its subject: more edges than iconic."""
    edges = lambda im: float(np.abs(np.diff(np.asarray(im, np.float32), axis=1)).mean())
    web = [edges(toydraw.render_web(s, 48, s % len(CATEGORY_NAMES))[0]) for s in range(30)]
    iconic = [edges(toydraw.render_iconic(s, 48, s % len(CATEGORY_NAMES))[0]) for s in range(30)]
    assert np.median(web) > 2 * np.median(iconic)
    image, caption = toydraw.render_web(3, 48, CATEGORY_NAMES.index("clover"))
    assert image.size == (48, 48) and "clover" in caption.split()


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
