"""Stage 00 `pretrain_clip` (toy worlds only): train the tiny CLIP teacher on the toy "web" (captioned
pictures of shapes in context, plus iconic ones), and the detector backbone on iconic base shapes.

Paper step: none. EZSD starts from OpenAI CLIP ViT-B/32 (arXiv 2303.12145 §3); this stage makes
the stand-in for the toy world, where no CLIP weights can be downloaded.
Reads: ``<data_root>/{web,iconic}/{train,heldout}.jsonl`` + images, ``<data_root>/world.json``, val scene GT.
Writes: ``00_pretrain_clip/{open_clip_model.safetensors, metrics.json, train_log.jsonl, manifest.json}``.
A checkpoint shipped in ``ezsd_core/resources/teacher`` is used instead of training when its recipe
(this stage's knobs, the seed and the pictures' spec) is the same, unless ``force``.
Imports: config, artefacts, runtime, data, crops, clip, detector, shards, toydraw, toyworld (layers 0-2).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import fields
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from ezsd_core import artefacts, clip, config, crops, data, detector, runtime, shards, toydraw, toyworld
from ezsd_core.artefacts import StageResult
from ezsd_core.config import PretrainClipConfig

STAGE = "pretrain_clip"
WEIGHTS = "open_clip_model.safetensors"
BACKBONE = "backbone.safetensors"
PART_FILES = {"teacher": WEIGHTS, "backbone": BACKBONE}
BACKBONE_SIZE = 64  # px of the backbone's pretraining pictures (about a toy scene object's crop)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the detector's normalisation
PROMPT = "a photo of a {}"
NO_CATEGORY = -1  # class of a picture of no category whose stuff kind is not recorded (worlds before v4)
PICTURE_SPEC = ("web_seed", "num_web", "num_web_background", "web_size", "num_iconic", "iconic_size")
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# the science: loss and zero-shot accuracy (pure)


def contrastive_loss(image_embeds: Tensor, text_embeds: Tensor, image_classes: Tensor, text_classes: Tensor,
                     logit_scale: Tensor) -> Tensor:
    """Symmetric multi-positive InfoNCE between images and the batch's distinct captions.

    CLIP's loss treats every other caption in the batch as a negative; with 24 categories a batch of
    128 holds many captions of the same category, so every caption of an image's category counts as a
    positive (targets spread uniformly over them), in both directions.

    Args:
        image_embeds: (B, D) L2-normalised.
        text_embeds: (T, D) L2-normalised embeddings of the batch's distinct captions.
        image_classes: (B,) category of each image; text_classes: (T,) category of each caption.
        logit_scale: scalar multiplier of the cosine logits.

    Returns:
        Scalar loss.
    """
    logits = logit_scale * image_embeds @ text_embeds.T
    pos = (image_classes[:, None] == text_classes[None, :]).float()
    to_text = -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    to_image = -(pos.T / pos.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    return (to_text + to_image) / 2


def zero_shot_top1(image_embeds: Tensor, class_embeds: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of nearest-text classification.

    Args:
        image_embeds: (N, D) (any scale); class_embeds: (K, D) L2-normalised; labels: (N,) in 0..K-1.
    """
    if len(labels) == 0:
        return float("nan")
    pred = (nn.functional.normalize(image_embeds, dim=-1) @ class_embeds.T).argmax(1)
    return float((pred == labels).float().mean())


# ---------------------------------------------------------------------------------------------
# data


def load_pictures(root: Path, kind: str, subset: str, size: int) -> tuple[Tensor, Tensor, list[str]]:
    """The teacher's pictures of one kind (``web`` / ``iconic``) and subset, resized once to ``size``.

    Returns:
        images (N, 3, size, size) uint8; classes (N,) int64: category indices into
        ``toyworld.CATEGORY_NAMES`` by name, whatever a split numbers them, and for a picture of no
        category its stuff class (``stuff_class``, negative); N captions.
    """
    rows = [json.loads(line) for line in (root / kind / f"{subset}.jsonl").read_text().splitlines()]
    pics = [np.asarray(Image.open(root / kind / r["file"]).convert("RGB")) for r in rows]
    index_of = {cid: k for k, cid in enumerate(toyworld.category_ids())}
    ids = torch.tensor([stuff_class(r.get("stuff")) if r["category_id"] is None else index_of[r["category_id"]]
                        for r in rows])
    return iconic_batch(pics, size), ids, [r["caption"] for r in rows]


def stuff_class(stuff: str | None) -> int:
    """Class of a picture of no category: one negative class per stuff kind (``toydraw.STUFF_KINDS``,
    -2, -3, ...), so that pictures of different stuff are negatives of each other in the loss;
    NO_CATEGORY when the kind is not recorded."""
    return NO_CATEGORY if stuff is None else -2 - toydraw.STUFF_KINDS.index(stuff)


def iconic_batch(pictures: list[np.ndarray], size: int) -> Tensor:
    """N (H, W, 3) uint8 pictures -> (N, 3, size, size) uint8, resized once (antialiased bicubic)."""
    small = crops.resize_images(torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2), size)
    return (small * 255).round().to(torch.uint8)


def scene_crops(cfg: PretrainClipConfig, size: int) -> tuple[Tensor, Tensor, list]:
    """GT crops (r = 1.2, spec §1.3) of every val scene box: (M, 3, S, S) in [0, 1], (M,) ids, the split."""
    split, records = data.read_config_records(cfg, "val")
    out, ids = [], []
    for r in records:
        out.append(crops.cut_crops(data.read_image(r.file_name), r.gt_boxes, scale=1.2, size=size))
        ids.append(r.gt_category_ids)
    return torch.cat(out), torch.cat(ids), split


# ---------------------------------------------------------------------------------------------
# training


def crop_like(images: Tensor, gen: torch.Generator, prob: float) -> Tensor:
    """Make a share ``prob`` of iconic images look like detection crops (float 0..255 out).

    Random zoom-in (1-1.5x), anisotropic aspect (0.6-1.6, the zero-padded bands of non-square boxes
    appear as black borders) and shift, then pixel noise. Clutter, occlusion and small objects stay
    scene-only: that remaining gap is what stage 01 closes.

    Args:
        images: (B, 3, S, S) uint8.
    """
    x = images.float()
    b = len(x)
    r = lambda *shape: torch.rand(*shape, generator=gen)
    zoom = 1.0 + 0.5 * r(b)
    aspect = torch.exp((r(b) - 0.5) * 2 * math.log(1.6))
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = aspect.sqrt() / zoom, 1 / (aspect.sqrt() * zoom)
    theta[:, :, 2] = (r(b, 2) - 0.5) * 0.2
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    warped = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = warped + torch.randn(warped.shape, generator=gen) * r(b, 1, 1, 1) * 12
    on = (r(b) < prob)[:, None, None, None]
    return torch.where(on, warped.clamp(0, 255), x)


def _pooled_trunk(backbone: detector.ToyBackbone, x: Tensor) -> Tensor:
    """(N, 3, S, S) images in [0, 1] -> (N, C) globally pooled last-stage features (ImageNet normalisation)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    feats = backbone.stem((x - mean) / std)
    for stage in backbone.stages:
        feats = stage(feats)
    return feats.mean((2, 3))


def colour_jitter(x: Tensor, gen: torch.Generator) -> Tensor:
    """(B, 3, S, S) in [0, 1] -> the same pictures under random per-picture colour responses: a gamma
    in [0.4, 2.5], per-channel gains in [0.6, 1.4] and a contrast in [0.5, 1.2] around the mean."""
    b = len(x)
    r = lambda *shape: torch.rand(*shape, generator=gen)
    gamma = torch.exp((r(b, 1, 1, 1) - 0.5) * 2 * math.log(2.5))
    x = x.clamp(1e-4, 1) ** gamma * (0.6 + 0.8 * r(b, 3, 1, 1))
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * (0.5 + 0.7 * r(b, 1, 1, 1)) + mean).clamp(0, 1)


def pretrain_backbone(images: Tensor, labels: Tensor, num_classes: int, cfg: PretrainClipConfig) -> dict[str, Tensor]:
    """The toy world's "ImageNet" pretraining of the detector backbone (the real settings use
    torchvision's ImageNet ResNet): supervised classification of pictures whose subject is a **base**
    category (web pictures in context and iconic ones; ImageNet photos show their object in context
    too) from globally pooled last-stage features, with a random colour response per picture
    (ImageNet-style colour augmentation: the backbone should not care which camera took a picture).

    Args:
        images: (N, 3, S, S) uint8 pictures; labels: (N,) int64 in 0..num_classes-1.

    Returns:
        The trunk's state dict (``stem.*``, ``stages.*``; the FPN is left to the detector) and the
        classification head's (``head.*``, kept for evaluation only).
    """
    backbone = detector.ToyBackbone(fpn_channels=8)
    head = nn.Linear(backbone.stages[-1][-3].out_channels, num_classes)
    params = [*backbone.stem.parameters(), *backbone.stages.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.backbone_lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for step in tqdm(range(cfg.backbone_steps), desc="pretrain backbone", unit="step", mininterval=5):
        factor = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / cfg.backbone_steps))
        for g in opt.param_groups:
            g["lr"] = cfg.backbone_lr * factor
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
        x = colour_jitter(crop_like(images[idx], gen, cfg.augment_prob) / 255, gen)
        loss = nn.functional.cross_entropy(head(_pooled_trunk(backbone, x)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    trunk = {k: v.detach() for k, v in backbone.state_dict().items() if not k.startswith("fpn.")}
    return {**trunk, **{f"head.{k}": v.detach() for k, v in head.state_dict().items()}}


@torch.no_grad()
def backbone_top1(state: dict[str, Tensor], images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of a ``pretrain_backbone`` state (trunk + head) on (N, 3, S, S) uint8 images."""
    backbone = detector.ToyBackbone(fpn_channels=8)
    backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")}, strict=False)
    head = nn.Linear(state["head.weight"].shape[1], state["head.weight"].shape[0])
    head.load_state_dict({"weight": state["head.weight"], "bias": state["head.bias"]})
    return float((head(_pooled_trunk(backbone, images.float() / 255)).argmax(1) == labels).float().mean())


def _param_groups(model: nn.Module, cfg: PretrainClipConfig) -> list[dict]:
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        tower = "scale" if name == "logit_scale" else "image" if name.startswith("visual.") else "text"
        no_decay = p.ndim < 2 or "embedding" in name
        groups.setdefault((tower, no_decay), []).append(p)
    lr = {"image": cfg.lr, "text": cfg.text_lr, "scale": cfg.logit_scale_lr}
    return [{"params": ps, "base_lr": lr[tower], "weight_decay": 0.0 if nd else cfg.weight_decay}
            for (tower, nd), ps in groups.items()]


def _lr_factor(step: int, cfg: PretrainClipConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


PROTOTYPE_SCALE = 16.0  # cos multiplier of the image tower's warm-up classifier


def train(teacher: clip.Clip, images: Tensor, classes: Tensor, captions: list[str], cfg: PretrainClipConfig,
          evaluate, log_path: Path) -> list[dict]:
    """Train the teacher; log loss (and ``evaluate()``'s metrics every ``log_every`` steps).

    The first ``image_warmup_steps`` steps train the image tower alone to classify the pictures'
    categories (cosine against learned prototypes, one per stuff kind too), as CLIP-style models are
    often started from a pretrained image tower (LiT, Zhai et al. 2022): both towers of a tiny CLIP
    trained from scratch on 29 shapes sit at the symmetric start (loss = ln of the captions per batch)
    for a long while, or forever. The remaining steps train both towers contrastively.

    Args:
        images: (N, 3, S, S) uint8; classes: (N,) category indices, negative for pictures of no category
            (their stuff class); captions: N strings.
        evaluate: callable returning a dict of metrics (called in eval mode).
        log_path: ``train_log.jsonl`` (written atomically at the end; progress goes to the logger).

    Returns:
        The logged rows.
    """
    model = teacher.model.train().requires_grad_(True)
    num_things = int(classes.max()) + 1
    warmup_target = torch.where(classes < 0, num_things - 1 - classes, classes)  # stuff rows after the categories
    num_classes = int(warmup_target.max()) + 1
    with torch.no_grad():
        dim = model.encode_image(teacher.normalize(images[:1].float() / 255)).shape[1]
    gen = torch.Generator().manual_seed(cfg.seed)
    prototypes = nn.Parameter(torch.randn(num_classes, dim, generator=gen))
    with torch.no_grad():  # the recipe starts exp(logit_scale) at 1.0, not CLIP's 1/0.07 (README)
        model.logit_scale.fill_(math.log(cfg.logit_scale_init))
    distinct = sorted(set(captions))
    tokens = teacher.tokenizer(distinct)
    caption_of = torch.tensor([distinct.index(c) for c in captions])
    caption_class = torch.empty(len(distinct), dtype=torch.int64)
    caption_class[caption_of] = classes
    groups = _param_groups(model, cfg) + [{"params": [prototypes], "base_lr": cfg.lr, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    rows = []
    for step in tqdm(range(cfg.max_steps), desc="pretrain_clip", unit="step", mininterval=5):
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
        x = teacher.normalize(crop_like(images[idx], gen, cfg.augment_prob) / 255.0)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * _lr_factor(step, cfg)
        img = nn.functional.normalize(model.encode_image(x), dim=-1)
        if step < cfg.image_warmup_steps:
            logits = PROTOTYPE_SCALE * img @ nn.functional.normalize(prototypes, dim=-1).T
            loss = nn.functional.cross_entropy(logits, warmup_target[idx])
        else:
            batch_captions = torch.unique(caption_of[idx])
            txt = nn.functional.normalize(model.encode_text(tokens[batch_captions]), dim=-1)
            scale = model.logit_scale.exp().clamp(max=100)
            loss = contrastive_loss(img, txt, classes[idx], caption_class[batch_captions], scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            row = {"step": step + 1, "loss": round(loss.item(), 4)}
            model.eval()
            row.update(evaluate())
            model.train()
            rows.append(row)
            log.info("step %d: %s", step + 1, row)
    model.eval().requires_grad_(False)
    artefacts.atomic_write_bytes(log_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return rows


# ---------------------------------------------------------------------------------------------
# the stage


BACKBONE_KNOBS = ("backbone_steps", "backbone_lr", "batch_size", "weight_decay", "augment_prob")


RECIPE_NAMES = {"max_steps": "num_steps"}  # knob -> its name in recipes (and so in recipe hashes)


def recipe(cfg: PretrainClipConfig) -> dict[str, dict]:
    """What determines each trained artefact, ``teacher`` and ``backbone``: its knobs, the seed, the
    pictures' spec (the web seed, not the scenes' seed: one teacher serves every world) and, for the
    backbone, its classes (by name). Each is reused from the shipped folder when its own recipe matches."""
    own = {f.name for f in fields(PretrainClipConfig)} - {f.name for f in fields(config.CommonConfig)}
    own -= set(PretrainClipConfig.RUNTIME_FIELDS)
    values = config.config_dict(cfg)
    world = json.loads((cfg.data_root / "world.json").read_text())
    common = {"seed": cfg.seed, "pictures": {k: world["spec"].get(k) for k in PICTURE_SPEC},
              "categories": world["categories"], "iconic_version": world["iconic_version"]}
    base = data.read_config_split(cfg).prompt_names("base")
    teacher_knobs = sorted(own - {"backbone_steps", "backbone_lr"})
    # recorded under the names the shipped teacher's recipe hash was taken with (max_steps was num_steps)
    named = lambda k: RECIPE_NAMES.get(k, k)
    return {"teacher": {"knobs": {named(k): values[k] for k in sorted(teacher_knobs, key=named)}, **common},
            "backbone": {"knobs": {k: values[k] for k in BACKBONE_KNOBS}, **common, "backbone_classes": list(base)}}


def shipped_teacher() -> Path:
    """Folder of the teacher checkpoint shipped in the package (its manifest records how it was made)."""
    return Path(str(resources.files("ezsd_core").joinpath("resources/teacher")))


def _use_shipped(cfg: PretrainClipConfig, hashes: dict[str, str], out: Path) -> tuple[dict | None, set[str]]:
    """Copy each shipped artefact whose recipe hash matches (none when ``force``).

    Returns:
        The shipped manifest (None if absent) and the set of parts taken from it (``teacher``, ``backbone``).
    """
    record = artefacts.read_manifest(shipped_teacher())
    if cfg.force or record is None:
        return record, set()
    shipped = record.get("recipe_hashes", {})
    taken = {part for part in hashes if shipped.get(part) == hashes[part]}
    if cfg.backbone_steps == 0:
        taken.discard("backbone")
    for part in sorted(taken):
        with artefacts.atomic_path(out / PART_FILES[part]) as tmp:
            shutil.copyfile(shipped_teacher() / PART_FILES[part], tmp)
        log.info("using the shipped %s (same recipe %s; train it again with --force)", part, hashes[part][:15])
    return record, taken


def _backbone_pictures(cfg: PretrainClipConfig, subset: str) -> tuple[Tensor, Tensor]:
    """Web and iconic pictures of ``subset`` whose subject is a base category, at 64 px, and their labels."""
    base = data.read_config_split(cfg).prompt_names("base")
    label = {toyworld.CATEGORY_NAMES.index(n): k for k, n in enumerate(base)}
    images, labels = [], []
    for kind in toyworld.PICTURE_KINDS:
        x, ids, _ = load_pictures(cfg.data_root, kind, subset, BACKBONE_SIZE)
        keep = torch.tensor([int(c) in label for c in ids])
        images.append(x[keep])
        labels.append(torch.tensor([label[int(c)] for c in ids[keep]], dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


def _backbone(cfg: PretrainClipConfig, out: Path, train_it: bool) -> dict[str, float]:
    """Pretrain (unless shipped) and evaluate the detector backbone on pictures of base categories
    (nothing at all when ``backbone_steps`` is 0)."""
    if cfg.backbone_steps == 0:
        return {}
    if train_it:
        images, labels = _backbone_pictures(cfg, "train")
        shards.save_tensors(out / BACKBONE, pretrain_backbone(images, labels, int(labels.max()) + 1, cfg))
    from safetensors.torch import load_file

    state = load_file(str(out / BACKBONE))
    return {"backbone/heldout_top1_base": round(backbone_top1(state, *_backbone_pictures(cfg, "heldout")), 4)}


def run(cfg: PretrainClipConfig) -> StageResult:
    """Train (or install the shipped) teacher, evaluate it, write weights, metrics and the manifest.

    Returns:
        StageResult with ``summary`` = the metrics (iconic and scene-crop zero-shot top-1).
    """
    started = artefacts.utc_now()
    determinism = runtime.seed_everything(cfg.seed)
    runtime.configure_threads()
    out = artefacts.stage_dir(cfg.run_root, STAGE)
    out.mkdir(parents=True, exist_ok=True)
    chash, upstream = config.config_hash(cfg), config.upstream_hashes(cfg)
    if artefacts.staleness(out, config_hash=chash, upstream=upstream) is None and not cfg.force:
        return StageResult(out, True, artefacts.read_manifest(out)["summary"])
    recipes = recipe(cfg)
    hashes = {part: artefacts.hash_json(r) for part, r in recipes.items()}
    teacher = clip.build_clip(cfg.clip_model, None, allow_random_init=True)
    crop_x, crop_y, split = scene_crops(cfg, teacher.image_size)
    names, lut = split.prompt_names("all"), {cid: k for k, cid in enumerate(split.ids("all"))}  # stage 01's vocabulary
    labels = torch.tensor([lut[int(c)] for c in crop_y])
    novel = torch.tensor([split.role_of(int(c)) == "novel" for c in crop_y], dtype=torch.bool)
    heldout = {kind: load_pictures(cfg.data_root, kind, "heldout", teacher.image_size)[:2]
               for kind in ("web", "iconic")}

    @torch.no_grad()
    def evaluate() -> dict:
        out = {}
        every = clip.encode_texts(teacher, toyworld.CATEGORY_NAMES, [PROMPT])
        for kind, (x, y) in heldout.items():  # every picture's own vocabulary: all the web's names
            emb = clip.encode_images(teacher, teacher.normalize(x.float() / 255))
            out[f"{kind}/top1"] = round(zero_shot_top1(emb, every, y), 4)
        text = clip.encode_texts(teacher, names, [PROMPT])
        emb = clip.encode_images(teacher, teacher.normalize(crop_x))
        return {**out, "scene_crop/top1": round(zero_shot_top1(emb, text, labels), 4),
                "scene_crop/top1_base": round(zero_shot_top1(emb[~novel], text, labels[~novel]), 4),
                "scene_crop/top1_novel": round(zero_shot_top1(emb[novel], text, labels[novel]), 4)}

    shipped, taken = _use_shipped(cfg, hashes, out)
    t0 = time.perf_counter()
    if "teacher" not in taken:
        parts = [load_pictures(cfg.data_root, kind, "train", teacher.image_size) for kind in ("web", "iconic")]
        images, classes = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        captions = [c for p in parts for c in p[2]]
        train(teacher, images, classes, captions, cfg, evaluate, out / "train_log.jsonl")
        shards.save_tensors(out / WEIGHTS, teacher.model.state_dict())
    else:
        teacher = clip.build_clip(cfg.clip_model, str(out / WEIGHTS))
        artefacts.atomic_write_bytes(out / "train_log.jsonl", (shipped_teacher() / "train_log.jsonl").read_bytes())
    seconds = round(time.perf_counter() - t0, 1)
    metrics = {**evaluate(), **_backbone(cfg, out, "backbone" not in taken), "num_scene_crops": len(crop_y),
               **{f"num_{kind}_heldout": len(y) for kind, (_, y) in heldout.items()}}
    artefacts.atomic_write_json(out / "metrics.json", metrics)  # deterministic; timings go to the summary
    extra = {"recipe_hashes": hashes, "recipe": recipes, "determinism": determinism,
             "source": {part: "shipped" if part in taken else "trained" for part in hashes},
             "shipped_record": {k: shipped[k] for k in ("summary", "command", "code")} if taken else None}
    outputs = [WEIGHTS, *([BACKBONE] if cfg.backbone_steps > 0 else []), "metrics.json", "train_log.jsonl"]
    manifest = artefacts.write_manifest(out, stage=STAGE, split=cfg.split, config=config.config_dict(cfg),
                                        config_hash=chash, upstream=upstream, started_at=started,
                                        summary={**metrics, "train_seconds": seconds}, outputs=outputs, extra=extra)
    return StageResult(out, False, manifest["summary"])
