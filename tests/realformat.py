"""Small annotation files in the real COCO 2017 / LVIS v1 formats, with the real category names.

They hold the cases the readers must get right: crowd boxes, degenerate boxes, images without boxes,
images with only novel boxes, polygon and RLE segmentations, LVIS ``coco_url`` paths and
``neg_category_ids`` / ``not_exhaustive_category_ids``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ezsd_core.splits import reference_lists


def coco_categories() -> list[dict]:
    ref = reference_lists()
    return [{"id": i, "name": n, "supercategory": "x"}
            for i, n in zip(ref["coco80_category_ids"], ref["coco80_names_in_id_order"])]


def lvis_categories() -> list[dict]:
    ref = reference_lists()
    tier = {**{n: "f" for n in ref["lvis_freq405"]}, **{n: "c" for n in ref["lvis_comm461"]},
            **{n: "r" for n in ref["lvis_rare337"]}}
    names = ref["lvis_all1203_prompt_names_in_id_order"]
    return [{"id": i + 1, "name": n.replace("stereo_equipment", "stero_equipment"), "frequency": tier[n],
             "synset": f"s{i}.n.01", "synonyms": [n], "def": "", "image_count": 1, "instance_count": 1}
            for i, n in enumerate(names)]


def coco_id(name: str) -> int:
    return next(c["id"] for c in coco_categories() if c["name"] == name)


def lvis_id(name: str) -> int:
    return next(c["id"] for c in lvis_categories() if c["name"] == name)


def _poly(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def write_coco(path: Path) -> Path:
    """Four images: 1 = base + novel + crowd + degenerate + 'other'; 2 = empty; 3 = novel only; 4 = RLE."""
    person, dog, bench, tl = coco_id("person"), coco_id("dog"), coco_id("bench"), coco_id("traffic light")
    ann = lambda i, img, cat, box, **kw: {"id": i, "image_id": img, "category_id": cat, "bbox": box,
                                          "area": box[2] * box[3], "segmentation": _poly(*box), "iscrowd": 0, **kw}
    m = np.zeros((40, 60), np.uint8, order="F")
    m[5:15, 10:30] = 1
    enc = mask_utils.encode(m)
    rle = {"size": enc["size"], "counts": enc["counts"].decode()}
    doc = {
        "info": {}, "licenses": [], "categories": coco_categories(),
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 40, "width": 60} for i in (1, 2, 3, 4)],
        "annotations": [
            ann(1, 1, person, [10.0, 5.0, 20.0, 10.0]),
            ann(2, 1, dog, [30.0, 20.0, 10.0, 8.0]),
            ann(3, 1, person, [0.0, 0.0, 60.0, 40.0], iscrowd=1),
            ann(4, 1, bench, [5.0, 5.0, 0.5, 10.0]),
            ann(5, 1, tl, [40.0, 2.0, 5.0, 5.0]),
            ann(6, 3, dog, [1.0, 1.0, 10.0, 10.0]),
            {"id": 7, "image_id": 4, "category_id": bench, "bbox": [10.0, 5.0, 20.0, 10.0], "area": 200.0,
             "segmentation": rle, "iscrowd": 0},
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def write_lvis(path: Path) -> Path:
    """Three images (LVIS v1 layout): 1 = frequent + rare + common boxes; 2 = rare only; 3 = empty."""
    f, c, r = lvis_id("person"), lvis_id("speaker_(stero_equipment)"), lvis_id("applesauce")
    tiers = {x["id"]: x["frequency"] for x in lvis_categories()}
    assert (tiers[f], tiers[r]) == ("f", "r")
    comm = next(i for i, t in tiers.items() if t == "c")
    ann = lambda i, img, cat, box: {"id": i, "image_id": img, "category_id": cat, "bbox": box,
                                    "area": box[2] * box[3], "segmentation": _poly(*box)}
    doc = {
        "info": {}, "licenses": [], "categories": lvis_categories(),
        "images": [
            {"id": 11, "coco_url": "http://images.cocodataset.org/train2017/000000000011.jpg", "height": 50,
             "width": 50, "neg_category_ids": [r, comm, f + 1], "not_exhaustive_category_ids": [f, r]},
            {"id": 12, "coco_url": "http://images.cocodataset.org/val2017/000000000012.jpg", "height": 50,
             "width": 50, "neg_category_ids": [], "not_exhaustive_category_ids": []},
            {"id": 13, "coco_url": "http://images.cocodataset.org/train2017/000000000013.jpg", "height": 50,
             "width": 50, "neg_category_ids": [f], "not_exhaustive_category_ids": []},
        ],
        "annotations": [ann(1, 11, f, [1.0, 1.0, 10.0, 10.0]), ann(2, 11, r, [20.0, 20.0, 5.0, 5.0]),
                        ann(3, 11, c, [30.0, 5.0, 10.0, 10.0]), ann(4, 12, r, [2.0, 2.0, 8.0, 8.0]),
                        ann(5, 11, comm, [3.0, 30.0, 4.0, 4.0])],
    }
    path.write_text(json.dumps(doc))
    return path


# ---------------------------------------------------------------------------------------------
# A whole dataset in the real COCO 2017 + LVIS v1 layout, with real photos (issue 11 §3)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel", "cat", "camera")
LONG_SIDE = 64  # px: the photos are shrunk to this long side
# COCO categories the fixture boxes, chosen for their roles: base in 48/17 and 60/20 (bench, truck, bed),
# novel in both (cat, dog, airplane), novel only in 48/17 (umbrella), only in 60/20 (person),
# other in 48/17 and base in 60/20 (traffic light).
COCO_BOXED = ("bench", "truck", "cat", "person", "umbrella", "dog", "traffic light", "bed", "airplane")


def _photo(name: str) -> np.ndarray:
    import skimage.data
    from PIL import Image

    x = getattr(skimage.data, name)()
    x = np.stack([x] * 3, -1) if x.ndim == 2 else x[..., :3]
    h, w = x.shape[:2]
    s = LONG_SIDE / max(h, w)
    return np.asarray(Image.fromarray(x).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))


def _boxes(rng: np.random.Generator, w: int, h: int, n: int) -> list[list[float]]:
    out = []
    for _ in range(n):
        bw, bh = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        out.append([round(float(v), 2) for v in (x, y, bw, bh)])
    return out


def _write_images(root: Path, folder: str, ids: list[int], first: int) -> list[dict]:
    from PIL import Image

    (root / folder).mkdir(parents=True, exist_ok=True)
    images = []
    for k, i in enumerate(ids):
        x = _photo(PHOTOS[(first + k) % len(PHOTOS)])
        name = f"{i:012d}.jpg"
        Image.fromarray(x).save(root / folder / name, quality=90)
        images.append({"id": i, "file_name": name, "height": int(x.shape[0]), "width": int(x.shape[1]),
                       "license": 1, "coco_url": f"http://images.cocodataset.org/{folder}/{name}",
                       "flickr_url": "", "date_captured": "2013-11-14 11:18:45"})
    return images


def write_real_dataset(root: Path, *, num_train: int = 4, num_val: int = 2, boxes_per_image: int = 3) -> Path:
    """``root`` as a COCO 2017 + LVIS v1 download looks (``annotations/instances_{train,val}2017.json``,
    ``annotations/lvis_v1_{train,val}.json``, ``train2017/``, ``val2017/`` of ``<12-digit id>.jpg``), with
    the 80 real COCO names and ids and the 1203 real LVIS names and frequencies, on photos of
    ``skimage.data`` shrunk to 64 px. Each image holds base and novel boxes of every real setting;
    LVIS images carry ``neg_category_ids`` / ``not_exhaustive_category_ids`` and only ``coco_url``.

    Returns:
        ``root``.
    """
    rng = np.random.default_rng(0)
    train_ids = list(range(1, num_train + 1))
    val_ids = list(range(101, 101 + num_val))
    imgs = {"train": _write_images(root, "train2017", train_ids, 0), "val": _write_images(root, "val2017", val_ids, 3)}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    lcats = lvis_categories()
    tier_ids = {t: [c["id"] for c in lcats if c["frequency"] == t] for t in "fcr"}
    lvis_boxed = [tier_ids["f"][0], tier_ids["c"][0], tier_ids["r"][0], tier_ids["f"][1], tier_ids["r"][1],
                  tier_ids["c"][1]]
    ann_id = 1
    for subset in ("train", "val"):
        coco_anns, lvis_anns = [], []
        for n, img in enumerate(imgs[subset]):
            for k, box in enumerate(_boxes(rng, img["width"], img["height"], boxes_per_image)):
                common = {"id": ann_id, "image_id": img["id"], "bbox": box, "area": round(box[2] * box[3], 2),
                          "segmentation": _poly(*box)}
                coco_anns.append({**common, "iscrowd": 0,
                                  "category_id": coco_id(COCO_BOXED[(n * boxes_per_image + k) % len(COCO_BOXED)])})
                lvis_anns.append({**common, "category_id": lvis_boxed[(n * boxes_per_image + k) % len(lvis_boxed)]})
                ann_id += 1
        info = {"description": "ezsd test fixture in the COCO 2017 format", "version": "1.0", "year": 2017}
        licenses = [{"id": 1, "name": "test", "url": ""}]
        coco = {"info": info, "licenses": licenses, "images": imgs[subset], "annotations": coco_anns,
                "categories": coco_categories()}
        (root / "annotations" / f"instances_{subset}2017.json").write_text(json.dumps(coco))
        limages = []
        for img in imgs[subset]:
            present = sorted({a["category_id"] for a in lvis_anns if a["image_id"] == img["id"]})
            absent = [c for c in lvis_boxed if c not in present]
            limages.append({k: v for k, v in img.items() if k != "file_name"}
                           | {"neg_category_ids": absent[:2], "not_exhaustive_category_ids": present[:1]})
        lvis = {"info": info, "licenses": licenses, "images": limages, "annotations": lvis_anns,
                "categories": lcats}
        (root / "annotations" / f"lvis_v1_{subset}.json").write_text(json.dumps(lvis))
    return root


# ---------------------------------------------------------------------------------------------
# A dataset of its own (issue 11 §2): COCO format, names no built-in split knows

CUSTOM_NAMES = ("astronaut", "rocket", "tabby cat", "coffee cup", "flag", "color wheel")
CUSTOM_NOVEL = ("flag", "color wheel")


def write_custom_dataset(root: Path, *, num_train: int = 4, num_val: int = 2) -> Path:
    """``root/annotations/{train,val}.json`` (COCO format, the six ``CUSTOM_NAMES``, ids 11..16), images
    in ``root/images/``, and the names files ``root/base.txt`` / ``root/novel.txt`` that
    ``params/examples/photos_4_2.yaml`` declares its split with. Every image has a box of each of three
    names, so train and val hold base and novel boxes.

    Returns:
        ``root``.
    """
    from PIL import Image

    rng = np.random.default_rng(1)
    cats = [{"id": 11 + k, "name": n, "supercategory": "thing"} for k, n in enumerate(CUSTOM_NAMES)]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    ann_id = 1
    for subset, ids in (("train", range(1, num_train + 1)), ("val", range(101, 101 + num_val))):
        images, anns = [], []
        for n, i in enumerate(ids):
            x = _photo(PHOTOS[(n + (3 if subset == "val" else 0)) % len(PHOTOS)])
            name = f"{subset}_{i:04d}.jpg"
            Image.fromarray(x).save(root / "images" / name, quality=90)
            images.append({"id": i, "file_name": name, "height": int(x.shape[0]), "width": int(x.shape[1])})
            for k, box in enumerate(_boxes(rng, x.shape[1], x.shape[0], 3)):
                cat = cats[(2 * n + k) % len(cats)]["id"]
                anns.append({"id": ann_id, "image_id": i, "category_id": cat, "bbox": box, "iscrowd": 0,
                             "area": round(box[2] * box[3], 2), "segmentation": _poly(*box)})
                ann_id += 1
        (root / "annotations" / f"{subset}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "base.txt").write_text("# base categories, one a line\n" +
                                   "".join(f"{n}\n" for n in CUSTOM_NAMES if n not in CUSTOM_NOVEL))
    (root / "novel.txt").write_text("".join(f"{n}\n" for n in CUSTOM_NOVEL))
    return root
