"""The toy world: a deterministic shapes world written as real image files and COCO/LVIS JSON.

Role: the embedded default data set. Neither COCO/LVIS nor CLIP weights can be downloaded on the
project's machines, so the method runs end to end on procedurally drawn shapes instead.
Writes (under one output folder):

    iconic/{train,heldout}/*.png + iconic/{train,heldout}.jsonl   clean centred objects with captions
    coco/{train,val}/*.png + coco/annotations/instances_{train,val}.json   uniform category frequency
    lvis/{train,val}/*.png + lvis/annotations/lvis_v1_{train,val}.json   long-tailed, f/c/r tags
    world.json                                                    arguments, counts and content hashes

Scenes differ from iconic images on purpose (clutter, texture, occlusion, blur, small objects): that
is the domain gap stage 01 closes. Masks are exact (the visible pixels of each object, RLE).
Layer 1: numpy, PIL, pycocotools; imports only layer-0 modules.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

from ezsd_core import artefacts
from ezsd_core.splits import TOY_NOVEL
from ezsd_core.toyshapes import CATEGORY_NAMES, shape_polygons

SCHEMA_VERSION = 5  # bumped whenever generated scenes change (5: larger objects, partial occlusion)
ICONIC_VERSION = 2  # changes only when iconic images change (the shipped teacher depends on it; 2: backgrounds)
VAL_ID_OFFSET = 1_000_000
RADIUS_RANGE = (0.12, 0.40)  # object radius as a share of the image side (log-uniform)
MIN_SEPARATION = 0.65  # centre distance >= this x (r1 + r2): occlusion stays partial
SUPERSAMPLE = 3  # objects are drawn at 3x and box-filtered down: smooth edges, exact 0.5-coverage masks
COLOR_WORDS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
CAPTION_TEMPLATES = (
    "a photo of a {name}",
    "a {color} {name}",
    "a picture of a {color} {name}",
    "a {name} on its own",
    "a drawing of a {name}",
    "a {size} {name}",
    "the {name}",
    "a {color} {name} in the centre",
)
# Web data is not all objects: captions of pictures that show none of the categories. Without them the
# teacher has never seen "nothing" and names every background crop with one confident shape name.
BACKGROUND_TEMPLATES = (
    "a photo of clutter",
    "a {texture} background",
    "a {texture} pattern with lines",
    "an empty {texture} background",
    "{texture} texture",
    "a photo of nothing in particular",
)
TEXTURE_WORDS = {"noise": "blotchy", "stripes": "striped", "checker": "checkered", "gradient": "smooth"}


def category_ids(num_categories: int = len(CATEGORY_NAMES)) -> list[int]:
    """Sparse dataset ids (like COCO's 1..90 with gaps) so id <-> label mapping bugs cannot hide."""
    return [k + k // 4 + 1 for k in range(num_categories)]


@dataclass(frozen=True, kw_only=True)
class WorldSpec:
    """Arguments of one toy world; stored in ``world.json``.

    Attributes:
        seed: master seed; every image has its own seed derived from it.
        num_train: scene images per training split (both the COCO and the LVIS world).
        num_val: scene images per validation split.
        num_iconic: iconic training pairs (the stand-in for CLIP's web data).
        num_iconic_heldout: iconic pairs kept for the teacher's held-out accuracy.
        num_iconic_background: extra iconic training pairs showing no category (clutter captions).
        image_size: side of the square scene images in pixels.
        iconic_size: side of the square iconic images in pixels.
        max_objects: most objects drawn per scene (1..max_objects, before occlusion drops).
    """

    seed: int = 0
    num_train: int = 1200
    num_val: int = 500
    num_iconic: int = 12000
    num_iconic_heldout: int = 1200
    num_iconic_background: int = 500
    image_size: int = 128
    iconic_size: int = 64
    max_objects: int = 5


# A world for tests and the smoke split: seconds to write, every code path present.
SMOKE_SPEC = WorldSpec(num_train=8, num_val=4, num_iconic=96, num_iconic_heldout=48, num_iconic_background=8,
                       image_size=64,
                       max_objects=4)


# ---------------------------------------------------------------------------------------------
# drawing


def _random_color(rng: np.random.Generator) -> tuple[tuple[int, int, int], str]:
    """A saturated colour and its nearest colour word (hue bins of COLOR_WORDS)."""
    hue = rng.uniform(0.0, 1.0)
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    bins = (0.04, 0.10, 0.18, 0.45, 0.55, 0.72, 0.83, 0.96)
    word = COLOR_WORDS[next((i for i, b in enumerate(bins) if hue < b), 0)]
    return tuple(int(255 * c) for c in rgb), word  # type: ignore[return-value]


def _object_mask(name: str, cx: float, cy: float, radius: float, angle: float, aspect: float,
                 size: int) -> np.ndarray:
    """Exact binary mask (size, size) of one shape: drawn at SUPERSAMPLE x, kept where coverage >= 0.5."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    cos, sin = math.cos(angle), math.sin(angle)
    for poly, fill in shape_polygons(name):
        pts = [((x * aspect * cos - y * sin) * radius + cx, (x * aspect * sin + y * cos) * radius + cy)
               for x, y in poly]
        draw.polygon([(px * s, py * s) for px, py in pts], fill=255 if fill else 0)
    cover = np.asarray(canvas, dtype=np.float32).reshape(size, s, size, s).mean(axis=(1, 3))
    return cover >= 127.5


def _texture(rng: np.random.Generator, size: int, color: tuple[int, int, int], kind: str) -> np.ndarray:
    """(size, size, 3) float fill for an object: solid, stripes, dots or a gradient of its colour."""
    base = np.array(color, dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if kind == "solid":
        return img
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    other = base * rng.uniform(0.35, 0.7)
    if kind == "stripes":
        theta, period = rng.uniform(0, math.pi), rng.uniform(3.0, 7.0)
        on = (np.floor((xx * math.cos(theta) + yy * math.sin(theta)) / period) % 2) == 1
    elif kind == "dots":
        period = rng.uniform(4.0, 7.0)
        on = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period / 3.2) ** 2
    else:  # gradient
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / size
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        return base * (1 - 0.5 * t[..., None]) + other * 0.5 * t[..., None]
    img[on] = other
    return img


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) values in [0, 1]: a random grid upsampled bicubically (cheap value noise)."""
    grid = (rng.uniform(0, 255, (cells, cells))).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float32) / 255.0


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """(size, size, 3) float cluttered background (noise, stripes, checker or gradient, plus distractor
    lines and blobs) and its kind."""
    c1 = np.array(_random_color(rng)[0], np.float32) * rng.uniform(0.3, 1.0)
    c2 = np.array(_random_color(rng)[0], np.float32) * rng.uniform(0.3, 1.0)
    kind = rng.choice(["noise", "stripes", "checker", "gradient"])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "noise":
        t = _smooth_noise(rng, size, int(rng.integers(3, 10)))
    elif kind == "stripes":
        theta, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
        t = 0.5 + 0.5 * np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    elif kind == "checker":
        p = rng.uniform(8, 32)
        t = ((np.floor(xx / p) + np.floor(yy / p)) % 2).astype(np.float32)
    else:
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / size
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(2, 7))):  # distractor lines
        pts = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=_random_color(rng)[0], width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 4))):  # irregular blobs: never one of the categories' shapes
        c, r = rng.uniform(0, size, 2), rng.uniform(3, size / 8)
        ang = np.sort(rng.uniform(0, 2 * math.pi, 7))
        rad = r * rng.uniform(0.4, 1.0, 7)
        draw.polygon([(c[0] + a * math.cos(t), c[1] + a * math.sin(t)) for a, t in zip(rad, ang)],
                     fill=_random_color(rng)[0])
    return np.asarray(pil, np.float32), str(kind)


# The scene camera: a negative film with a blue-green cast. It is a *global statistics* shift between
# the iconic "web" images and the scenes, the kind of gap the paper attributes CLIP's crop accuracy
# loss to and that re-normalising (stage 01) can undo, for base and novel shapes alike.
SENSOR_GAIN = np.array([0.9, 1.0, 0.8], np.float32)
SENSOR_OFFSET = np.array([12.0, 0.0, 25.0], np.float32)


def _degrade(rng: np.random.Generator, img: np.ndarray) -> Image.Image:
    """Contrast, sensor noise, blur and the scene camera's tone curve: the photographic domain gap."""
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.6, 1.1) + mean
    img = img + rng.normal(0, rng.uniform(2, 10), img.shape)
    img = (255.0 - img.clip(0, 255)) * SENSOR_GAIN + SENSOR_OFFSET
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return pil


# ---------------------------------------------------------------------------------------------
# scenes


def render_scene(seed: int, size: int, category_weights: np.ndarray, max_objects: int
                 ) -> tuple[Image.Image, list[dict]]:
    """Draw one cluttered scene.

    Args:
        seed: seed of this image.
        size: image side in pixels.
        category_weights: (K,) non-negative sampling weights over CATEGORY_NAMES.
        max_objects: most objects drawn (before heavily occluded ones are dropped).

    Returns:
        The RGB image and one dict per visible object: ``category_index`` (int into CATEGORY_NAMES),
        ``mask`` ((size, size) bool, visible pixels only), ``bbox`` (XYWH absolute, tight around the mask).
    """
    rng = np.random.default_rng(seed)
    img, _ = _background(rng, size)
    p = category_weights / category_weights.sum()
    visible: list[np.ndarray] = []
    drawn: list[tuple[int, np.ndarray]] = []
    circles: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        k = int(rng.choice(len(p), p=p))
        radius = float(np.exp(rng.uniform(math.log(size * RADIUS_RANGE[0]), math.log(size * RADIUS_RANGE[1]))))
        for _ in range(12):  # objects may overlap at their edges, not pile up (partial occlusion only)
            cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
            if all(math.hypot(cx - x, cy - y) >= MIN_SEPARATION * (radius + r) for x, y, r in circles):
                break
        else:
            continue
        circles.append((cx, cy, radius))
        mask = _object_mask(CATEGORY_NAMES[k], cx, cy, radius, rng.uniform(0, 2 * math.pi),
                            rng.uniform(0.85, 1.15), size)
        if mask.sum() < 12:
            continue
        color = _random_color(rng)[0]
        fill = _texture(rng, size, color, rng.choice(["solid", "solid", "stripes", "dots", "gradient"]))
        img[mask] = fill[mask]
        for v in visible:  # later objects occlude earlier ones
            v &= ~mask
        visible.append(mask.copy())
        drawn.append((k, mask))
    objects = []
    for (k, full), vis in zip(drawn, visible):
        area = int(vis.sum())
        if area < 10 or area < 0.3 * full.sum():  # mostly hidden: not annotated, as in COCO practice
            continue
        ys, xs = np.nonzero(vis)
        x0, y0 = int(xs.min()), int(ys.min())
        objects.append({"category_index": k, "mask": vis,
                        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]})
    return _degrade(rng, img), objects


def _plain_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float iconic background: light, coloured, softly noisy or a gradient; never cluttered."""
    kind = rng.choice(["light", "colour", "noise", "gradient"], p=[0.4, 0.3, 0.2, 0.1])
    if kind == "light":
        return np.full((size, size, 3), rng.uniform(200, 255), np.float32) + rng.uniform(-15, 15, 3)
    c1 = np.array(_random_color(rng)[0], np.float32) * rng.uniform(0.3, 1.0)
    if kind == "colour":
        return np.broadcast_to(c1, (size, size, 3)).copy()
    c2 = c1 * rng.uniform(0.6, 1.4)
    t = _smooth_noise(rng, size, 4) if kind == "noise" else np.linspace(0, 1, size, dtype=np.float32)[None, :] * \
        np.ones((size, 1), np.float32)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def render_iconic(seed: int, size: int, category_index: int) -> tuple[Image.Image, str]:
    """One iconic image: a large, centred object alone on an uncluttered background.

    Colour, fill texture, rotation and background vary; clutter, occlusion, small sizes and sensor
    noise are left to the scenes (the domain gap).

    Returns:
        The RGB image (size x size) and its caption (one of CAPTION_TEMPLATES).
    """
    rng = np.random.default_rng(seed)
    img = _plain_background(rng, size)
    color, word = _random_color(rng)
    for _ in range(8):  # iconic objects stand out from their background
        if np.linalg.norm(np.array(color, np.float32) - img.mean((0, 1))) > 90:
            break
        color, word = _random_color(rng)
    scale = rng.uniform(0.24, 0.42)
    c = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    mask = _object_mask(CATEGORY_NAMES[category_index], c[0], c[1], size * scale,
                        rng.uniform(0, 2 * math.pi), rng.uniform(0.9, 1.1), size)
    fill = _texture(rng, size, color, rng.choice(["solid", "solid", "solid", "stripes", "dots", "gradient"]))
    img[mask] = fill[mask]
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.2:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    caption = template.format(name=CATEGORY_NAMES[category_index], color=word,
                              size="large" if scale > 0.36 else "small")
    return pil, caption


def render_iconic_background(seed: int, size: int) -> tuple[Image.Image, str]:
    """One iconic picture of no category: a zoomed-in window of a cluttered background (the scenes'
    clutter, without the scene camera), captioned with one of BACKGROUND_TEMPLATES."""
    rng = np.random.default_rng(seed)
    big, kind = _background(rng, 2 * size)
    side = int(rng.integers(size // 2, 2 * size + 1))
    x, y = rng.integers(0, 2 * size - side + 1, 2)
    pil = Image.fromarray(big[y:y + side, x:x + side].clip(0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    template = BACKGROUND_TEMPLATES[int(rng.integers(len(BACKGROUND_TEMPLATES)))]
    return pil, template.format(texture=TEXTURE_WORDS[kind])


# ---------------------------------------------------------------------------------------------
# writing the world


# Toy LVIS tiers by design (the f/c/r tags written to the JSON are still derived from the counts,
# as LVIS does): the rare tier is the toy COCO novel set, so the two toy splits share novel classes.
RARE = TOY_NOVEL
COMMON = ("ring", "pentagon", "trapezoid", "plus", "drop", "tee")


def _item_seed(seed: int, kind: str, index: int) -> int:
    code = int.from_bytes(hashlib.sha256(kind.encode()).digest()[:4], "little")
    return int(np.random.SeedSequence([seed, code, index]).generate_state(1)[0])


def lvis_train_weights() -> np.ndarray:
    """(K,) long-tailed sampling shares: frequent classes decay geometrically, common 0.5%, rare 0.07%.

    With ~3.4 objects per scene and 2000 training scenes that puts common classes in ~30 images and
    rare ones in ~5 (LVIS: rare <= 10 images, common 11-100).
    """
    w = np.zeros(len(CATEGORY_NAMES))
    frequent = [k for k, n in enumerate(CATEGORY_NAMES) if n not in RARE + COMMON]
    decay = 0.87 ** np.arange(len(frequent))
    w[frequent] = decay / decay.sum() * (1.0 - 0.005 * len(COMMON) - 0.0007 * len(RARE))
    w[[CATEGORY_NAMES.index(n) for n in COMMON]] = 0.005
    w[[CATEGORY_NAMES.index(n) for n in RARE]] = 0.0007
    return w


def _scene_job(args: tuple) -> tuple[int, int, list[dict]]:
    out_png, seed, size, weights, max_objects = args
    image, objects = render_scene(seed, size, weights, max_objects)
    image.save(out_png)
    for o in objects:
        rle = mask_utils.encode(np.asfortranarray(o.pop("mask").astype(np.uint8)))
        o["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        o["area"] = int(mask_utils.area(rle))
    return size, size, objects


def _iconic_job(args: tuple) -> str:
    out_png, seed, k, size = args
    image, caption = render_iconic(seed, size, k) if k >= 0 else render_iconic_background(seed, size)
    image.save(out_png)
    return caption


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

    As in LVIS, the frequency tags are those of the training set: ``train_categories`` (from the train
    JSON) replaces the validation file's own counts.
    """
    ids = list(range(1, len(CATEGORY_NAMES) + 1))  # LVIS ids are dense 1..K
    rng = np.random.default_rng(_item_seed(seed, f"lvis-neg/{subset}", 0))
    images, annotations = [], []
    image_count, instance_count = np.zeros(len(ids), int), np.zeros(len(ids), int)
    for image_id, file_name, h, w, objects in records:
        present = sorted({o["category_index"] for o in objects})
        absent = [k for k in range(len(ids)) if k not in present]
        neg = sorted(int(ids[k]) for k in rng.choice(absent, size=min(3, len(absent)), replace=False))
        images.append({"id": image_id, "coco_url": f"http://toy.invalid/{subset}/{file_name}", "height": h,
                       "width": w, "neg_category_ids": neg, "not_exhaustive_category_ids": []})
        image_count[present] += 1
        for o in objects:
            instance_count[o["category_index"]] += 1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": ids[o["category_index"]], "bbox": o["bbox"],
                                "area": o["area"], "segmentation": o["segmentation"]})
    # LVIS tiers (rare <= 10 images, common <= 100) at the default 2000 training images, scaled with
    # the world's size so that small worlds keep the designed tiers.
    rare_max, common_max = 10 * len(records) / 2000, 100 * len(records) / 2000
    cats = [{"id": i, "name": n, "synset": f"{n}.n.01", "synonyms": [n], "def": f"a {n} shape",
             "image_count": int(c), "instance_count": int(m),
             "frequency": "r" if c <= rare_max else "c" if c <= common_max else "f"}
            for i, n, c, m in zip(ids, CATEGORY_NAMES, image_count, instance_count)]
    return {"info": {"description": "ezsd toy world (LVIS v1 format)"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": train_categories or cats}


def iconic_item(spec: WorldSpec, subset: str, i: int) -> tuple[int, int]:
    """(seed, category index) of iconic pair ``i`` of ``subset`` (``train`` / ``heldout``): categories
    cycle; the ``num_iconic_background`` pairs after the ``num_iconic`` of ``train`` have index -1."""
    k = -1 if subset == "train" and i >= spec.num_iconic else i % len(CATEGORY_NAMES)
    return _item_seed(spec.seed, f"iconic/{subset}", i), k


def _write_iconic(root: Path, spec: WorldSpec, pool: ProcessPoolExecutor) -> None:
    """iconic/<subset>/*.png and iconic/<subset>.jsonl rows {file, caption, category_id (null: no category)}."""
    ids = category_ids()
    for subset, count in (("train", spec.num_iconic + spec.num_iconic_background),
                          ("heldout", spec.num_iconic_heldout)):
        (root / "iconic" / subset).mkdir(parents=True, exist_ok=True)
        items = [iconic_item(spec, subset, i) for i in range(count)]
        jobs = [(root / "iconic" / subset / f"{i:06d}.png", seed, k, spec.iconic_size)
                for i, (seed, k) in enumerate(items)]
        lines = [json.dumps({"file": f"{subset}/{i:06d}.png", "caption": cap,
                             "category_id": ids[k] if k >= 0 else None})
                 for i, ((_, k), cap) in enumerate(zip(items, pool.map(_iconic_job, jobs, chunksize=64)))]
        (root / "iconic" / f"{subset}.jsonl").write_text("\n".join(lines) + "\n")


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
        if info["spec"] == asdict(spec) and info["schema_version"] == SCHEMA_VERSION:
            return out
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists and is not a toy world made with these arguments by this version "
                              "of ezsd; pass --force to replace it")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    ids = category_ids()
    uniform = np.ones(len(CATEGORY_NAMES))
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        _write_iconic(tmp, spec, pool)
        counts, train_categories = {}, None
        for subset in ("train", "val"):
            records = list(_scenes(tmp / "coco", subset, spec, uniform, pool, "coco"))
            artefacts.atomic_write_json(tmp / "coco/annotations" / f"instances_{subset}.json",
                                        _coco_json(records, ids))
            weights = lvis_train_weights() if subset == "train" else uniform
            lrecords = list(_scenes(tmp / "lvis", subset, spec, weights, pool, "lvis"))
            lvis = _lvis_json(lrecords, subset, spec.seed, train_categories)
            train_categories = lvis["categories"]
            artefacts.atomic_write_json(tmp / "lvis/annotations" / f"lvis_v1_{subset}.json", lvis)
            counts[subset] = {"coco_objects": sum(len(r[4]) for r in records),
                              "lvis_objects": sum(len(r[4]) for r in lrecords)}
    info = {"schema_version": SCHEMA_VERSION, "iconic_version": ICONIC_VERSION, "spec": asdict(spec),
            "categories": list(CATEGORY_NAMES),
            "counts": counts, "iconic_sha256": _tree_sha256(tmp / "iconic"),
            "coco_sha256": _tree_sha256(tmp / "coco"), "lvis_sha256": _tree_sha256(tmp / "lvis")}
    artefacts.atomic_write_json(tmp / "world.json", info)
    if out.exists():
        artefacts.remove_tree(out)
    os.replace(tmp, out)
    return out
