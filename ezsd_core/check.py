"""``ezsd check``: is a params file ready for real data, and what will running it cost?

Validates the layout (annotation JSON present and parsing, image folders present, every image file
there, a sample of images decoding), that the category names fit the split (built-in or declared),
measures the configured CLIP's crops/s and prompts/s on the configured device for a few seconds, and
prints the plan: per stage its shards, images, CLIP crops / prompts and estimated device-hours
(crops and prompts over the measured rates; training crops and prompts count 3x, forward + backward).
Stages 04-05 run the detector, not CLIP: their hours are not estimated. Reads: the params file, the
annotation files, a sample of images. Layer 4: imports layers 0-2.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ezsd_core import config, splits
from ezsd_core.config import CommonConfig

SAMPLE_IMAGES = 8  # images decoded per subset
BACKWARD = 3.0  # cost of a training crop / prompt relative to a forward one


@dataclass
class Report:
    """What ``check`` found: problem lines (empty when ready), facts per subset and the plan rows."""

    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        """The report as printed by ``ezsd check``."""
        out = list(self.lines)
        if self.plan:
            out.append("plan (hours: crops and prompts over the measured rates; training counts 3x):")
            out.append(f"  {'stage':<20}{'shards':>7}{'images':>10}{'CLIP crops':>14}{'prompts':>12}{'hours':>10}")
            for row in self.plan:
                hours = "n/a" if row["hours"] is None else f"{row['hours']:.2f}"
                out.append(f"  {row['stage']:<20}{row['shards']:>7}{row['images']:>10,}{row['crops']:>14,}"
                           f"{row['prompts']:>12,}{hours:>10}" + (f"   {row['note']}" if row.get("note") else ""))
        out += [f"problem: {p}" for p in self.problems]
        out.append("ready" if self.ok else f"not ready: {len(self.problems)} problem(s)")
        return "\n".join(out)


def image_path(img: dict[str, Any], image_dir: Path) -> Path:
    """Where an image of a COCO (``file_name``) or LVIS v1 (``coco_url``) JSON lives."""
    if "file_name" in img:
        return image_dir / img["file_name"]
    folder, name = img["coco_url"].rstrip("/").split("/")[-2:]
    return image_dir.parent / folder / name


def _load_json(path: Path, report: Report, what: str) -> dict | None:
    if not path.is_file():
        report.problems.append(f"{what}: {path} does not exist")
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        report.problems.append(f"{what}: {path} does not parse as JSON ({' '.join(str(e).split())[:120]})")
        return None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(doc.get(k), list)]
    if missing:
        report.problems.append(f"{what}: {path} has no list {missing[0]!r} (a COCO / LVIS file has images, "
                               f"annotations, categories)")
        return None
    return doc


def check_layout(cfg: CommonConfig, report: Report) -> dict[str, dict]:
    """Check both subsets' files and names; fill ``report``; return ``{subset: json}`` of the readable ones."""
    from PIL import Image

    docs = {}
    definition = None
    try:
        definition = splits.definition(cfg)
    except ValueError as e:
        report.problems.append(str(e))
    for subset in ("train", "val"):
        ann = cfg.data_root / (cfg.train_annotations if subset == "train" else cfg.val_annotations)
        image_dir = cfg.data_root / (cfg.train_images if subset == "train" else cfg.val_images)
        doc = _load_json(ann, report, f"{subset}_annotations")
        if doc is None:
            continue
        docs[subset] = doc
        if not image_dir.is_dir():
            report.problems.append(f"{subset}_images: {image_dir} is not a folder")
        paths = [image_path(img, image_dir) for img in doc["images"]]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            report.problems.append(f"{subset}: {len(absent)} of {len(paths)} image files missing (e.g. {absent[0]})")
        present = [p for p in paths if p not in set(absent)]
        step = max(1, len(present) // SAMPLE_IMAGES)
        bad = []
        for p in present[::step][:SAMPLE_IMAGES]:
            try:
                with Image.open(p) as im:
                    im.convert("RGB").load()
            except (OSError, SyntaxError, ValueError) as e:
                bad.append(f"{p} ({e.__class__.__name__})")
        if bad:
            report.problems.append(f"{subset}: {len(bad)} sampled image(s) do not decode, e.g. {bad[0]}")
        line = (f"{subset}: {ann} ({len(doc['images'])} images, {len(doc['annotations'])} annotations, "
                f"{len(doc['categories'])} categories); {len(present)} image files, "
                f"{min(SAMPLE_IMAGES, len(present)) - len(bad)} of {min(SAMPLE_IMAGES, len(present))} sampled decode")
        if definition is not None:
            try:
                split = definition.build(doc["categories"])
                line += (f"; split {split.name} ({split.style}): {len(split.ids('base'))} base, "
                         f"{len(split.ids('novel'))} novel, {len(split.ids('proposal'))} proposal names")
            except ValueError as e:
                report.problems.append(f"{subset}_annotations: {e}")
        report.lines.append(line)
    return docs


def measure_clip(cfg: Any, seconds: float, device: str) -> tuple[float, float, str]:
    """(crops/s, prompts/s, description) of the configured CLIP on ``device``, measured for about
    ``seconds`` each on random (B, 3, S, S) crops and one-template prompts, after a warm-up batch."""
    import torch

    from ezsd_core import clip, runtime

    dev = runtime.resolve_device(device)
    name, weights = cfg.clip_model, cfg.clip_pretrained
    if weights == config.PRETRAIN_CLIP:  # the toy teacher: the packaged model of the shipped checkpoint
        from importlib import resources
        folder = Path(str(resources.files("ezsd_core").joinpath("resources/teacher")))
        name = json.loads((folder / "manifest.json").read_text())["config"]["clip_model"]
        weights = str(folder / "open_clip_model.safetensors")
    model = clip.build_clip(name, weights, allow_random_init=cfg.allow_random_init, device=dev)
    batch = 32 if dev.type == "cpu" else 256
    x = torch.rand(batch, 3, model.image_size, model.image_size, device=dev)
    prompts = [f"a photo of a thing {i}" for i in range(batch)]

    def rate(fn, n: int) -> float:
        with torch.no_grad():
            fn()  # warm-up
            done, t0 = 0, time.perf_counter()
            while done == 0 or time.perf_counter() - t0 < seconds:
                fn()
                done += n
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return done / (time.perf_counter() - t0)

    crops = rate(lambda: clip.encode_images(model, x), batch)
    texts = rate(lambda: clip.encode_texts(model, prompts, ["{}"]), batch)
    return crops, texts, f"{name} ({weights or 'random init'}) on {dev}"


def _anchors(height: int, width: int, cfg: Any) -> int:
    """Anchors of one image before clipping and de-duplication (an upper bound of stage 02's crops)."""
    s = min(cfg.resize_min_side / min(height, width), cfg.resize_max_side / max(height, width))
    rh, rw = round(height * s), round(width * s)
    return (math.ceil(rh / cfg.region_anchor_stride) * math.ceil(rw / cfg.region_anchor_stride)
            * len(cfg.region_anchor_sizes) * len(cfg.region_anchor_ratios))


def plan(cfgs: dict[str, Any], docs: dict[str, dict], crops_s: float | None, prompts_s: float | None
         ) -> list[dict[str, Any]]:
    """One row per stage: shards, images, CLIP crops and prompts, estimated hours (None: not estimated)."""
    any_cfg = next(iter(cfgs.values()))
    split = splits.definition(any_cfg).build(docs["train"]["categories"])
    base = set(split.ids("base"))
    train, val = docs["train"], docs["val"]
    boxes_of: dict[int, list] = {}
    for a in train["annotations"]:
        if a.get("category_id") in base and not a.get("iscrowd", 0):
            boxes_of.setdefault(a["image_id"], []).append(a)
    n_val_boxes = sum(1 for a in val["annotations"] if not a.get("iscrowd", 0))
    train_images = [img for img in train["images"] if img["id"] in boxes_of]  # images with a base box
    base_boxes = sum(len(v) for v in boxes_of.values())
    hours = lambda crops, prompts: None if not crops_s else (crops / crops_s + prompts / (prompts_s or crops_s)) / 3600
    rows = []
    for stage, cfg in cfgs.items():
        row = {"stage": artefacts_name(stage), "shards": getattr(cfg, "num_shards", 1), "images": 0, "crops": 0,
               "prompts": 0, "hours": None, "note": ""}
        if stage == "finetune_clip":
            per_epoch = math.ceil(len(train_images) / cfg.batch_size)
            steps = cfg.max_steps if cfg.epochs is None else cfg.epochs * per_epoch
            epochs = cfg.epochs if cfg.epochs is not None else steps / max(per_epoch, 1)  # max_steps: its epochs
            tuned_text = "text" in cfg.towers
            row |= {"images": round(len(train_images) * epochs),
                    "crops": round(base_boxes * epochs) + 2 * n_val_boxes,
                    "prompts": (steps * len(base) * len(cfg.prompt_templates) if tuned_text else 0)
                    + 2 * len(split.category_ids) * len(cfg.prompt_templates)}
            row["hours"] = hours(BACKWARD * base_boxes * epochs + 2 * n_val_boxes,
                                 BACKWARD * (row["prompts"] - 2 * len(split.category_ids) * len(cfg.prompt_templates))
                                 + 2 * len(split.category_ids) * len(cfg.prompt_templates))
            row["note"] = f"{steps:,} steps" + (f", each encoding the {len(base)} base prompts" if tuned_text else "")
        elif stage == "propose_regions":
            images = train_images + val["images"][: cfg.num_recall_images]
            row |= {"images": len(images), "crops": sum(_anchors(i["height"], i["width"], cfg) for i in images)}
            row["hours"] = hours(row["crops"], 0)
            row["note"] = "anchors before clipping (an upper bound)"
        elif stage == "extract_features":
            per = cfg.num_candidates if cfg.subset_rule == "drop_base" else cfg.max_regions
            n = len(train["images"])  # every training image, with or without base boxes
            row |= {"images": n, "crops": n * per + base_boxes}
            row["hours"] = hours(row["crops"], 0)
            row["note"] = f"up to {per} regions per image + the base GT boxes"
        elif stage == "train_detector":
            # epochs over the images with a base box (repeat-factor sampling, which stage 04 counts, not here)
            steps = cfg.max_steps if cfg.epochs is None else math.ceil(cfg.epochs * len(train_images) / cfg.batch_size)
            row |= {"images": steps * cfg.batch_size}
            row["note"] = f"{steps:,} steps of {cfg.batch_size} images (detector: not estimated)"
        elif stage == "evaluate":
            row |= {"images": len(val["images"])}
            row["note"] = "detector inference (not estimated)"
        elif stage == "pretrain_clip":
            row["note"] = "toy teacher (shipped checkpoint reused when its recipe matches)"
        rows.append(row)
    return rows


def artefacts_name(stage: str) -> str:
    """``01_finetune_clip`` for ``finetune_clip``."""
    from ezsd_core import artefacts

    return artefacts.stage_dirname(stage)


def check(params: Path | str, *, data_root: Path | str | None = None, overrides: Sequence[str] = (),
          seconds: float = 3.0, measure: bool = True) -> Report:
    """Check a params file against its data; measure CLIP; plan the run.

    Args:
        params: ``params/<split>.yaml``.
        data_root: replaces ``common.data_root``.
        overrides: ``--set`` values, as for ``ezsd run``.
        seconds: measuring time for each of crops and prompts.
        measure: build and time the CLIP (False: the plan has no hours).

    Returns:
        The report (``report.ok`` when nothing is missing).

    Raises:
        ConfigError: the params file itself is invalid (one line).
    """
    doc = config.read_params(params)
    extra = [*overrides, *([f"common.data_root={data_root}"] if data_root is not None else [])]
    cfgs = {s: config.stage_config(doc, s, source=str(params), overrides=extra)
            for s in config.STAGE_CONFIGS if s in doc}
    report = Report()
    first = next(iter(cfgs.values()))
    report.lines.append(f"params {params}: split {first.split}, stages {', '.join(artefacts_name(s) for s in cfgs)}")
    docs = check_layout(first, report)
    crops_s = prompts_s = None
    clip_cfg = cfgs.get("finetune_clip")
    if measure and clip_cfg is not None:
        try:
            crops_s, prompts_s, what = measure_clip(clip_cfg, seconds, clip_cfg.device)
            report.lines.append(f"CLIP {what}: {crops_s:.1f} crops/s, {prompts_s:.1f} prompts/s "
                                f"(measured for {seconds:g} s each)")
        except (RuntimeError, ValueError, OSError) as e:
            report.problems.append(f"finetune_clip: cannot build the CLIP to measure it "
                                   f"({' '.join(str(e).split())[:200]})")
    if {"train", "val"} <= set(docs):
        try:
            report.plan = plan(cfgs, docs, crops_s, prompts_s)
        except ValueError:  # the names do not fit the split: already a problem line
            report.plan = []
        known = [r["hours"] for r in report.plan if r["hours"] is not None]
        if known:
            report.lines.append(f"CLIP stages: {sum(known):.2f} device-hours in all at the measured rates")
    return report
