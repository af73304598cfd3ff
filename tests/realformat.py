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
