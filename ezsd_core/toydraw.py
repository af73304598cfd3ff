"""Drawing the toy world: shapes on clutter, the scene camera, and the teacher's "web" pictures.

Role: pure rendering (numpy + PIL), one seeded picture per call; ``toyworld`` writes the files.
The toy world is a model of COCO + CLIP (README, "The toy world as a model"):
  * ``render_web``: the teacher's web data, as CLIP's web photos are: a named subject shape in
    context (cluttered background, neighbours of any category, partial occlusion, partial views),
    photographed by varied but well-behaved "web cameras";
  * ``render_iconic``: clean, centred single objects (product-photo-like pictures; also the detector
    backbone's toy "ImageNet");
  * ``render_scene``: the detection data set: the same kind of content at other scales and layouts,
    photographed by one *scene camera* whose response (tone curve, colour cast, contrast, noise,
    blur) differs from the web's. That photometric shift is the domain gap stage 01's LayerNorm
    tuning closes; the semantic content (clutter, neighbours, occlusion) is shared with the web.
Layer 1: numpy, PIL; imports only ``toyshapes``.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ezsd_core.toyshapes import CATEGORY_NAMES, shape_polygons

RADIUS_RANGE = (0.12, 0.40)  # scene object radius as a share of the image side (log-uniform)
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
# Captions of web pictures: the subject is named, its neighbours are not (as web captions name the
# main object of a photo and rarely the rest).
WEB_TEMPLATES = (
    "a photo of a {name}",
    "a {color} {name}",
    "a {name} among other shapes",
    "a {color} {name} on a {texture} background",
    "a photo of a {name} in a cluttered scene",
    "a {name} next to some other shapes",
    "a close-up of a {name}",
    "a {size} {name}",
)
# Web data is not all objects: pictures of "stuff" (surfaces, textures, scenery) that show none of the
# categories, captioned by what they do show. Every template names the stuff kind, and each kind is its
# own class in the teacher's loss (pretrain_clip): as a photo of grass and one of a brick wall are
# negatives of each other in CLIP's batch, not one "nothing" class. Without them the teacher has never
# seen "nothing"; with a single "nothing" class all clutter collapses onto one direction, which sits
# next to one or two thin shapes' names (README, "What limits detection AP here").
BACKGROUND_TEMPLATES = (
    "a photo of {texture} clutter",
    "a {texture} background",
    "a {texture} pattern with lines",
    "an empty {texture} background",
    "{texture} texture",
    "a {texture} surface",
)
TEXTURE_WORDS = {"noise": "blotchy", "stripes": "striped", "checker": "checkered", "gradient": "smooth"}
STUFF_KINDS = tuple(TEXTURE_WORDS.values())  # the stuff classes of pictures of no category


# ---------------------------------------------------------------------------------------------
# primitives


def random_color(rng: np.random.Generator) -> tuple[tuple[int, int, int], str]:
    """A saturated colour and its nearest colour word (hue bins of COLOR_WORDS)."""
    hue = rng.uniform(0.0, 1.0)
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    bins = (0.04, 0.10, 0.18, 0.45, 0.55, 0.72, 0.83, 0.96)
    word = COLOR_WORDS[next((i for i, b in enumerate(bins) if hue < b), 0)]
    return tuple(int(255 * c) for c in rgb), word  # type: ignore[return-value]


def object_mask(name: str, cx: float, cy: float, radius: float, angle: float, aspect: float,
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


def background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """(size, size, 3) float cluttered background (noise, stripes, checker or gradient, plus distractor
    lines and blobs) and its kind. Periods and blob sizes scale with ``size``."""
    u = size / 128  # the scene scale the numbers below were drawn for
    c1 = np.array(random_color(rng)[0], np.float32) * rng.uniform(0.3, 1.0)
    c2 = np.array(random_color(rng)[0], np.float32) * rng.uniform(0.3, 1.0)
    kind = rng.choice(["noise", "stripes", "checker", "gradient"])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "noise":
        t = _smooth_noise(rng, size, int(rng.integers(3, 10)))
    elif kind == "stripes":
        theta, period = rng.uniform(0, math.pi), rng.uniform(6, 24) * u
        t = 0.5 + 0.5 * np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    elif kind == "checker":
        p = rng.uniform(8, 32) * u
        t = ((np.floor(xx / p) + np.floor(yy / p)) % 2).astype(np.float32)
    else:
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / size
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(2, 7))):  # distractor lines
        pts = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=random_color(rng)[0], width=max(1, round(int(rng.integers(1, 4)) * u)))
    for _ in range(int(rng.integers(0, 4))):  # irregular blobs: never one of the categories' shapes
        c, r = rng.uniform(0, size, 2), rng.uniform(3 * u, size / 8)
        ang = np.sort(rng.uniform(0, 2 * math.pi, 7))
        rad = r * rng.uniform(0.4, 1.0, 7)
        draw.polygon([(c[0] + a * math.cos(t), c[1] + a * math.sin(t)) for a, t in zip(rad, ang)],
                     fill=random_color(rng)[0])
    return np.asarray(pil, np.float32), str(kind)


def compose(rng: np.random.Generator, img: np.ndarray, placements: list[tuple[int, float, float, float]]
            ) -> list[tuple[int, np.ndarray, int]]:
    """Draw objects onto ``img`` (H, W, 3 float, modified in place) in order; later ones occlude earlier.

    Args:
        placements: ``(category index, cx, cy, radius)`` per object, pixels.

    Returns:
        Per drawn object ``(category index, visible mask (H, W) bool, full mask area in px)``.
    """
    size = img.shape[0]
    drawn: list[tuple[int, np.ndarray, int]] = []
    for k, cx, cy, radius in placements:
        mask = object_mask(CATEGORY_NAMES[k], cx, cy, radius, rng.uniform(0, 2 * math.pi),
                           rng.uniform(0.85, 1.15), size)
        if mask.sum() < 4:
            continue
        fill = _texture(rng, size, random_color(rng)[0], rng.choice(["solid", "solid", "stripes", "dots", "gradient"]))
        img[mask] = fill[mask]
        for _, v, _ in drawn:
            v &= ~mask
        drawn.append((k, mask.copy(), int(mask.sum())))
    return drawn


def _place(rng: np.random.Generator, size: int, radius: float, circles: list[tuple[float, float, float]],
           margin: float = 0.6) -> tuple[float, float] | None:
    """A centre for a new object that keeps partial occlusion only (12 tries), or None."""
    for _ in range(12):
        cx, cy = rng.uniform(radius * margin, size - radius * margin, 2)
        if all(math.hypot(cx - x, cy - y) >= MIN_SEPARATION * (radius + r) for x, y, r in circles):
            return float(cx), float(cy)
    return None


# ---------------------------------------------------------------------------------------------
# cameras


# The scene camera: a camera response curve (gamma 0.45, lifted blacks and compressed whites), a
# strong colour cast (the channels mixed by CAST) and a noisy, often soft sensor. It is a *global
# statistics* shift between the web pictures and the detection scenes, the kind of gap the paper
# attributes CLIP's crop accuracy loss to and that re-normalising (stage 01) undoes, for base and novel
# shapes alike. Its strength (the share of the camera's response blended with the scene's radiance)
# was set on the development world so that the teacher's val GT-crop accuracy before stage 01 sits in
# the range real CLIP shows on COCO crops and stage 01 wins back about the 25 points the paper reports
# (README, "Calibration"; 0.8 until teacher T2, whose untuned novel accuracy it left at 69%).
CAST = np.array([[0.6, 0.3, 0.1], [0.1, 0.5, 0.4], [0.3, 0.1, 0.6]], np.float32)  # rows: out R, G, B
GAMMA, LIFT, RANGE = 0.45, 0.25, 0.5
SCENE_CAMERA_STRENGTH = 0.9


def camera_response(img: np.ndarray, strength: float) -> np.ndarray:
    """(H, W, 3) float 0..255 radiance -> the scene camera's (H, W, 3) float 0..255 values, blended by
    ``strength`` in [0, 1] with the radiance itself (0: no camera)."""
    x = (img / 255.0).clip(0.0, 1.0)
    y = LIFT + RANGE * ((x ** GAMMA) @ CAST.T)
    return 255.0 * (strength * y + (1.0 - strength) * x)


def scene_camera(rng: np.random.Generator, img: np.ndarray, strength: float = SCENE_CAMERA_STRENGTH) -> Image.Image:
    """The photographic domain gap: exposure, the camera response and colour cast, sensor noise, blur.
    ``strength`` 0 keeps the exposure, noise and blur draws (the same scene, for diagnostics)."""
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.8, 1.1) + mean
    img = camera_response(img, strength) + rng.normal(0, rng.uniform(2, 8), img.shape) * strength
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * strength + 1e-3))
    return pil


def web_camera(rng: np.random.Generator, img: np.ndarray) -> Image.Image:
    """The web's cameras: each picture its own mild exposure, contrast and colour balance, light noise,
    sometimes a little blur; never the scene camera's response."""
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-20, 20)
    img = img * rng.uniform(0.9, 1.1, 3) + rng.normal(0, rng.uniform(0, 4), img.shape)
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.25:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return pil


# ---------------------------------------------------------------------------------------------
# pictures


def render_scene(seed: int, size: int, category_weights: np.ndarray, max_objects: int, *,
                 camera: float = SCENE_CAMERA_STRENGTH) -> tuple[Image.Image, list[dict]]:
    """Draw one cluttered detection scene.

    Args:
        seed: seed of this image.
        size: image side in pixels.
        category_weights: (K,) non-negative sampling weights over CATEGORY_NAMES.
        max_objects: most objects drawn (before heavily occluded ones are dropped).
        camera: strength of the scene camera (default: the data set's; 0: none, for diagnostics only).

    Returns:
        The RGB image and one dict per visible object: ``category_index`` (int into CATEGORY_NAMES),
        ``mask`` ((size, size) bool, visible pixels only), ``bbox`` (XYWH absolute, tight around the mask).
    """
    rng = np.random.default_rng(seed)
    img, _ = background(rng, size)
    p = category_weights / category_weights.sum()
    placements, circles = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        k = int(rng.choice(len(p), p=p))
        radius = float(np.exp(rng.uniform(math.log(size * RADIUS_RANGE[0]), math.log(size * RADIUS_RANGE[1]))))
        centre = _place(rng, size, radius, circles)
        if centre is None:
            continue
        circles.append((*centre, radius))
        placements.append((k, *centre, radius))
    objects = []
    for k, vis, full in compose(rng, img, placements):
        area = int(vis.sum())
        if area < 10 or area < 0.3 * full:  # mostly hidden: not annotated, as in COCO practice
            continue
        ys, xs = np.nonzero(vis)
        x0, y0 = int(xs.min()), int(ys.min())
        objects.append({"category_index": k, "mask": vis,
                        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]})
    return scene_camera(rng, img, camera), objects


def render_web(seed: int, size: int, category_index: int) -> tuple[Image.Image, str]:
    """One web picture of a named subject in context (the teacher's training data).

    A cluttered background, the subject large and near the centre (close-ups cut by the frame
    included: partial views), up to three smaller neighbours of any category that may partly occlude
    it (at least half of it stays visible), then a web camera.

    Returns:
        The RGB image (size x size) and its caption (one of WEB_TEMPLATES, naming the subject only).
    """
    rng = np.random.default_rng(seed)
    for _ in range(8):  # a subject that stays mostly visible
        img, kind = background(rng, size)
        radius = size * rng.uniform(0.16, 0.45)
        centre = size / 2 + rng.uniform(-0.18, 0.18, 2) * size
        placements, circles = [(category_index, *centre, radius)], [(*centre, radius)]
        for _ in range(int(rng.integers(0, 4))):  # neighbours smaller than the subject, as a photo's main object
            r = float(np.exp(rng.uniform(math.log(size * 0.08), math.log(0.8 * radius))))
            c = _place(rng, size, r, circles, margin=0.0)
            if c is not None:
                circles.append((*c, r))
                placements.append((int(rng.integers(len(CATEGORY_NAMES))), *c, r))
        order = rng.permutation(len(placements))  # the subject is not always drawn first or last
        drawn = compose(rng, img, [placements[i] for i in order])
        subject = [d for i, d in zip(order, drawn) if i == 0]
        if subject and subject[0][1].sum() >= 0.5 * subject[0][2]:
            break
    color = COLOR_WORDS[int(rng.integers(len(COLOR_WORDS)))]  # captions are noisy about colour
    template = WEB_TEMPLATES[int(rng.integers(len(WEB_TEMPLATES)))]
    caption = template.format(name=CATEGORY_NAMES[category_index], color=color, texture=TEXTURE_WORDS[kind],
                              size="large" if radius > 0.3 * size else "small")
    return web_camera(rng, img), caption


def _plain_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float iconic background: light, coloured, softly noisy or a gradient; never cluttered."""
    kind = rng.choice(["light", "colour", "noise", "gradient"], p=[0.4, 0.3, 0.2, 0.1])
    if kind == "light":
        return np.full((size, size, 3), rng.uniform(200, 255), np.float32) + rng.uniform(-15, 15, 3)
    c1 = np.array(random_color(rng)[0], np.float32) * rng.uniform(0.3, 1.0)
    if kind == "colour":
        return np.broadcast_to(c1, (size, size, 3)).copy()
    c2 = c1 * rng.uniform(0.6, 1.4)
    t = _smooth_noise(rng, size, 4) if kind == "noise" else np.linspace(0, 1, size, dtype=np.float32)[None, :] * \
        np.ones((size, 1), np.float32)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def render_iconic(seed: int, size: int, category_index: int) -> tuple[Image.Image, str]:
    """One iconic image: a large, centred object alone on an uncluttered background.

    Colour, fill texture, rotation and background vary; clutter, occlusion and small sizes are left
    to web pictures and scenes.

    Returns:
        The RGB image (size x size) and its caption (one of CAPTION_TEMPLATES).
    """
    rng = np.random.default_rng(seed)
    img = _plain_background(rng, size)
    color, word = random_color(rng)
    for _ in range(8):  # iconic objects stand out from their background
        if np.linalg.norm(np.array(color, np.float32) - img.mean((0, 1))) > 90:
            break
        color, word = random_color(rng)
    scale = rng.uniform(0.24, 0.42)
    c = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    mask = object_mask(CATEGORY_NAMES[category_index], c[0], c[1], size * scale,
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


def render_background(seed: int, size: int) -> tuple[Image.Image, str, str]:
    """One web picture of no category: a zoomed-in window of a cluttered background (the scenes'
    clutter, through a web camera).

    Returns:
        The RGB image (size x size), its caption (one of BACKGROUND_TEMPLATES) and its stuff kind (the
        texture word the caption names, one of TEXTURE_WORDS' values).
    """
    rng = np.random.default_rng(seed)
    big, kind = background(rng, 2 * size)
    side = int(rng.integers(size // 2, 2 * size + 1))
    x, y = rng.integers(0, 2 * size - side + 1, 2)
    window = Image.fromarray(big[y:y + side, x:x + side].clip(0, 255).astype(np.uint8)).resize((size, size),
                                                                                             Image.BICUBIC)
    pil = web_camera(rng, np.asarray(window, np.float32))
    template = BACKGROUND_TEMPLATES[int(rng.integers(len(BACKGROUND_TEMPLATES)))]
    return pil, template.format(texture=TEXTURE_WORDS[kind]), TEXTURE_WORDS[kind]
