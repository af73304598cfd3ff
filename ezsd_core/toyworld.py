"""The toy world: a deterministic shapes world written as real image files and COCO/LVIS JSON.

Role: the embedded default data set. Neither COCO/LVIS nor CLIP weights can be downloaded on the
project's machines, so the method runs end to end on procedurally drawn shapes (``toydraw``) instead.
Writes (under one output folder):

    web/{train,heldout}/*.png + web/{train,heldout}.jsonl        the teacher's "web": subjects in context
    iconic/{train,heldout}/*.png + iconic/{train,heldout}.jsonl  clean centred objects with captions
    coco/{train,val}/*.png + coco/annotations/instances_{train,val}.json   uniform category frequency,
                                                                  "other" shapes included (role other)
    lvis/{train,val}/*.png + lvis/annotations/lvis_v1_{train,val}.json   long-tailed, f/c/r tags
    world.json                                                    arguments, counts and content hashes

Scenes share their content with the web pictures (clutter, neighbours, occlusion) and differ by the
scene camera and the layout: that is the domain gap stage 01 closes. Masks are exact (RLE).
Layer 1: numpy, pycocotools; imports layer-0 modules and ``toydraw``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ezsd_core import artefacts, toydraw
from ezsd_core.splits import TOY_NOVEL, TOY_OTHER
from ezsd_core.toyshapes import CATEGORY_NAMES

SCHEMA_VERSION = 7  # bumped whenever generated scenes change (6: "other" shapes, the scene camera in toydraw;
                    # 7: the camera re-calibrated for teacher T2, strength 0.8 -> 0.9)
ICONIC_VERSION = 4  # changes when the teacher's pictures change (the shipped teacher depends on it; 3: web pictures;
# 4: stuff pictures name their kind, one in seven web pictures)
VAL_ID_OFFSET = 1_000_000


def category_ids(num_categories: int = len(CATEGORY_NAMES)) -> list[int]:
    """Sparse dataset ids (like COCO's 1..90 with gaps) so id <-> label mapping bugs cannot hide."""
    return [k + k // 4 + 1 for k in range(num_categories)]


@dataclass(frozen=True, kw_only=True)
class WorldSpec:
    """Arguments of one toy world; stored in ``world.json``.

    Attributes:
        seed: master seed of the detection scenes; every image has its own seed derived from it.
        web_seed: seed of the teacher's pictures (web and iconic). It is a separate seed because there is
            one CLIP for every data set: worlds of other ``seed`` share one teacher.
        num_train: scene images per training split (both the COCO and the LVIS world).
        num_val: scene images per validation split.
        num_web: web pictures of a named subject (the stand-in for CLIP's web data), categories cycling.
        num_web_background: web pictures of no category ("stuff": clutter captioned by its texture kind).
        num_web_heldout: web pictures kept for the teacher's held-out accuracy.
        web_size: side of the web pictures in pixels.
        num_iconic: iconic training pictures (clean single objects; with the base ones the detector
            backbone is pretrained, the toy "ImageNet"; the teacher sees them all too).
        num_iconic_heldout: iconic pictures kept for held-out accuracies.
        image_size: side of the square scene images in pixels.
        iconic_size: side of the square iconic images in pixels.
        max_objects: most objects drawn per scene (1..max_objects, before occlusion drops).
    """

    seed: int = 0
    web_seed: int = 0
    num_train: int = 1200
    num_val: int = 500
    num_web: int = 23200
    num_web_background: int = 4000
    num_web_heldout: int = 1450
    web_size: int = 48
    num_iconic: int = 8700
    num_iconic_heldout: int = 1160
    image_size: int = 128
    iconic_size: int = 64
    max_objects: int = 5


# A world for tests and the smoke split: seconds to write, every code path present.
SMOKE_SPEC = WorldSpec(num_train=8, num_val=4, num_web=58, num_web_background=8, num_web_heldout=29,
                       num_iconic=58, num_iconic_heldout=29, image_size=64, max_objects=4)


def _item_seed(seed: int, kind: str, index: int) -> int:
    code = int.from_bytes(hashlib.sha256(kind.encode()).digest()[:4], "little")
    return int(np.random.SeedSequence([seed, code, index]).generate_state(1)[0])


# Toy LVIS tiers by design (the f/c/r tags written to the JSON are still derived from the counts,
# as LVIS does): the rare tier is the toy COCO novel set, so the two toy splits share novel classes.
# LVIS has no category outside its vocabulary, so the LVIS world draws no "other" shape.
RARE = TOY_NOVEL
COMMON = ("ring", "pentagon", "trapezoid", "plus", "drop", "tee")
LVIS_NAMES = tuple(n for n in CATEGORY_NAMES if n not in TOY_OTHER)


def lvis_train_weights() -> np.ndarray:
    """(K,) long-tailed sampling shares over CATEGORY_NAMES: frequent classes decay geometrically, common
    0.5%, rare 0.07%, "other" shapes 0.

    With ~3.4 objects per scene and 2000 training scenes that puts common classes in ~30 images and
    rare ones in ~5 (LVIS: rare <= 10 images, common 11-100).
    """
    w = np.zeros(len(CATEGORY_NAMES))
    frequent = [k for k, n in enumerate(CATEGORY_NAMES) if n in LVIS_NAMES and n not in RARE + COMMON]
    decay = 0.87 ** np.arange(len(frequent))
    w[frequent] = decay / decay.sum() * (1.0 - 0.005 * len(COMMON) - 0.0007 * len(RARE))
    w[[CATEGORY_NAMES.index(n) for n in COMMON]] = 0.005
    w[[CATEGORY_NAMES.index(n) for n in RARE]] = 0.0007
    return w


def _scene_job(args: tuple) -> tuple[int, int, list[dict]]:
    out_png, seed, size, weights, max_objects = args
    image, objects = toydraw.render_scene(seed, size, weights, max_objects)
    image.save(out_png)
    for o in objects:
        rle = mask_utils.encode(np.asfortranarray(o.pop("mask").astype(np.uint8)))
        o["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        o["area"] = int(mask_utils.area(rle))
    return size, size, objects


def _picture_job(args: tuple) -> tuple[str, str | None]:
    """Draw and save one picture; its caption and stuff kind (None: a picture of a category)."""
    out_png, seed, k, size, kind = args
    stuff = None
    if kind == "iconic":
        image, caption = toydraw.render_iconic(seed, size, k)
    elif k >= 0:
        image, caption = toydraw.render_web(seed, size, k)
    else:
        image, caption, stuff = toydraw.render_background(seed, size)
    image.save(out_png)
    return caption, stuff


def _scenes(root: Path, subset: str, spec: WorldSpec, weights: np.ndarray, pool: ProcessPoolExecutor,
            kind: str) -> Iterator[tuple[int, str, int, int, list[dict]]]:
    count = spec.num_train if subset == "train" else spec.num_val
    (root / subset).mkdir(parents=True, exist_ok=True)
    jobs = [(root / subset / f"{i + 1:06d}.png", _item_seed(spec.seed, f"{kind}/{subset}", i),
             spec.image_size, weights, spec.max_objects) for i in range(count)]
    first_id = 1 if subset == "train" else VAL_ID_OFFSET + 1  # ids unique across train and val, as in COCO
    for i, (h, w, objects) in enumerate(pool.map(_scene_job, jobs, chunksize=16)):
        yield first_id + i, f"{i + 1:06d}.png", h, w, objects


def _coco_json(records: list, ids: list[int]) -> dict:
    images, annotations = [], []
    for image_id, file_name, h, w, objects in records:
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for o in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": ids[o["category_index"]], "bbox": o["bbox"],
                                "area": o["area"], "segmentation": o["segmentation"], "iscrowd": 0})
    return {"info": {"description": "ezsd toy world (COCO format)"}, "licenses": [], "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in zip(ids, CATEGORY_NAMES)]}


def _lvis_json(records: list, subset: str, seed: int, train_categories: list[dict] | None = None) -> dict:
    """LVIS v1 layout: ``coco_url`` instead of ``file_name``, neg/not-exhaustive ids, f/c/r by image count.

    Categories are LVIS_NAMES with dense ids 1..K, as LVIS numbers them. As in LVIS, the frequency tags
    are those of the training set: ``train_categories`` (from the train JSON) replaces the validation
    file's own counts.
    """
    dense = {CATEGORY_NAMES.index(n): j for j, n in enumerate(LVIS_NAMES)}  # category index -> 0..K-1
    ids = list(range(1, len(LVIS_NAMES) + 1))
    rng = np.random.default_rng(_item_seed(seed, f"lvis-neg/{subset}", 0))
    images, annotations = [], []
    image_count, instance_count = np.zeros(len(ids), int), np.zeros(len(ids), int)
    for image_id, file_name, h, w, objects in records:
        present = sorted({dense[o["category_index"]] for o in objects})
        absent = [k for k in range(len(ids)) if k not in present]
        neg = sorted(int(ids[k]) for k in rng.choice(absent, size=min(3, len(absent)), replace=False))
        images.append({"id": image_id, "coco_url": f"http://toy.invalid/{subset}/{file_name}", "height": h,
                       "width": w, "neg_category_ids": neg, "not_exhaustive_category_ids": []})
        image_count[present] += 1
        for o in objects:
            instance_count[dense[o["category_index"]]] += 1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": ids[dense[o["category_index"]]], "bbox": o["bbox"],
                                "area": o["area"], "segmentation": o["segmentation"]})
    # LVIS tiers (rare <= 10 images, common <= 100) at the default 2000 training images, scaled with
    # the world's size so that small worlds keep the designed tiers.
    rare_max, common_max = 10 * len(records) / 2000, 100 * len(records) / 2000
    cats = [{"id": i, "name": n, "synset": f"{n}.n.01", "synonyms": [n], "def": f"a {n} shape",
             "image_count": int(c), "instance_count": int(m),
             "frequency": "r" if c <= rare_max else "c" if c <= common_max else "f"}
            for i, n, c, m in zip(ids, LVIS_NAMES, image_count, instance_count)]
    return {"info": {"description": "ezsd toy world (LVIS v1 format)"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": train_categories or cats}


PICTURE_KINDS = ("web", "iconic")


def picture_item(spec: WorldSpec, kind: str, subset: str, i: int) -> tuple[int, int]:
    """(seed, category index into CATEGORY_NAMES) of picture ``i`` of ``kind`` (``web`` / ``iconic``) and
    ``subset`` (``train`` / ``heldout``): categories cycle; the ``num_web_background`` web pictures after
    the ``num_web`` of ``train`` show no category (index -1)."""
    k = -1 if kind == "web" and subset == "train" and i >= spec.num_web else i % len(CATEGORY_NAMES)
    return _item_seed(spec.web_seed, f"{kind}/{subset}", i), k


def picture_counts(spec: WorldSpec, kind: str) -> dict[str, int]:
    """Pictures per subset of ``kind``."""
    if kind == "web":
        return {"train": spec.num_web + spec.num_web_background, "heldout": spec.num_web_heldout}
    return {"train": spec.num_iconic, "heldout": spec.num_iconic_heldout}


def _write_pictures(root: Path, spec: WorldSpec, kind: str, pool: ProcessPoolExecutor) -> None:
    """<kind>/<subset>/*.png and <kind>/<subset>.jsonl rows {file, caption, category_id (null: no category)},
    plus ``stuff`` (the texture word) on pictures of no category."""
    ids = category_ids()
    size = spec.web_size if kind == "web" else spec.iconic_size
    for subset, count in picture_counts(spec, kind).items():
        (root / kind / subset).mkdir(parents=True, exist_ok=True)
        items = [picture_item(spec, kind, subset, i) for i in range(count)]
        jobs = [(root / kind / subset / f"{i:06d}.png", seed, k, size, kind) for i, (seed, k) in enumerate(items)]
        lines = [json.dumps({"file": f"{subset}/{i:06d}.png", "caption": cap,
                             "category_id": ids[k] if k >= 0 else None, **({"stuff": stuff} if stuff else {})})
                 for i, ((_, k), (cap, stuff)) in enumerate(zip(items, pool.map(_picture_job, jobs, chunksize=64)))]
        (root / kind / f"{subset}.jsonl").write_text("\n".join(lines) + "\n")


def _tree_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def generate(out: Path | str, spec: WorldSpec, *, workers: int | None = None, force: bool = False) -> Path:
    """Write the toy world to ``out`` (atomically: built next to it, then renamed into place).

    Args:
        out: destination folder.
        spec: world arguments.
        workers: drawing processes (default: all cores).
        force: replace an existing world whose arguments differ.

    Returns:
        ``out`` as a Path. A world already there with the same arguments is kept as it is.

    Raises:
        FileExistsError: ``out`` holds a different world (or something else) and ``force`` is False.
    """
    out = Path(out)
    marker = out / "world.json"
    if marker.exists() and not force:
        info = json.loads(marker.read_text())
        if info["spec"] == asdict(spec) and info["schema_version"] == SCHEMA_VERSION \
                and info.get("iconic_version") == ICONIC_VERSION:
            return out
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists and is not a toy world made with these arguments by this version "
                              "of ezsd; pass --force to replace it")
    tmp = out.with_name(artefacts.temp_name(out.name))
    ids = category_ids()
    uniform = np.ones(len(CATEGORY_NAMES))
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        for kind in PICTURE_KINDS:
            _write_pictures(tmp, spec, kind, pool)
        counts, train_categories = {}, None
        for subset in ("train", "val"):
            records = list(_scenes(tmp / "coco", subset, spec, uniform, pool, "coco"))
            artefacts.atomic_write_json(tmp / "coco/annotations" / f"instances_{subset}.json",
                                        _coco_json(records, ids))
            weights = lvis_train_weights() if subset == "train" else \
                np.array([float(n in LVIS_NAMES) for n in CATEGORY_NAMES])
            lrecords = list(_scenes(tmp / "lvis", subset, spec, weights, pool, "lvis"))
            lvis = _lvis_json(lrecords, subset, spec.seed, train_categories)
            train_categories = lvis["categories"]
            artefacts.atomic_write_json(tmp / "lvis/annotations" / f"lvis_v1_{subset}.json", lvis)
            counts[subset] = {"coco_objects": sum(len(r[4]) for r in records),
                              "lvis_objects": sum(len(r[4]) for r in lrecords)}
    info = {"schema_version": SCHEMA_VERSION, "iconic_version": ICONIC_VERSION, "spec": asdict(spec),
            "categories": list(CATEGORY_NAMES), "other_categories": list(TOY_OTHER),
            "counts": counts, **{f"{kind}_sha256": _tree_sha256(tmp / kind) for kind in PICTURE_KINDS},
            "coco_sha256": _tree_sha256(tmp / "coco"), "lvis_sha256": _tree_sha256(tmp / "lvis")}
    artefacts.atomic_write_json(tmp / "world.json", info)
    if out.exists():
        artefacts.remove_tree(out)
    os.replace(tmp, out)
    return out
