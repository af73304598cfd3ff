"""Stage 02 `propose_regions`: score a dense anchor grid with the tuned CLIP and keep confident regions.

Paper step: CLIP proposals (arXiv 2303.12145 §3.3; method spec §3). Every anchor of a grid on the
resized image is cropped (r = 1.0) from the original image, scored ln C - H(softmax(logit_scale *
cos)) over the proposal vocabulary, then one class-agnostic NMS and top-K; boxes are stored in
original-image coordinates, sorted by score, with CLIP's argmax category and its probability.
Reads: ``01_finetune_clip``, train annotations (image list) and val annotations (recall metrics).
Writes: ``02_propose_regions/regions/shard-*.safetensors`` (CSR), ``metrics.json``, ``manifest.json``.
Imports: config, artefacts, lineage, runtime, data, crops, shards, structures, clip, evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import time
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import nms
from tqdm import tqdm

from ezsd_core import artefacts, clip, config, crops, data, evaluation, lineage, runtime, shards
from ezsd_core.artefacts import StageResult
from ezsd_core.config import ProposeRegionsConfig
from ezsd_core.structures import ImageRecord, RegionSet

STAGE = "propose_regions"
RECALL_KS = (10, 100)
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# the science (pure)


def resize_scale(height: int, width: int, min_side: int, max_side: int) -> float:
    """Keep-ratio resize factor: the short side to ``min_side`` unless the long side would pass ``max_side``."""
    return min(min_side / min(height, width), max_side / max(height, width))


def anchor_grid(height: int, width: int, *, stride: int, sides: tuple[int, ...], ratios: tuple[float, ...]) -> Tensor:
    """All anchors of a grid over an image (spec §3): centres at (stride*i, stride*j), i < ceil(W/stride),
    j < ceil(H/stride); per centre one anchor per (side, ratio) with w = side/sqrt(r), h = side*sqrt(r).

    Returns:
        (ceil(H/stride) * ceil(W/stride) * len(sides) * len(ratios), 4) float32 XYXY in the image's frame,
        not clipped (1333 x 800, stride 32, 5 sides, 3 ratios: 42 * 25 * 15 = 15,750).
    """
    ys = torch.arange(math.ceil(height / stride), dtype=torch.float32) * stride
    xs = torch.arange(math.ceil(width / stride), dtype=torch.float32) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    wh = torch.tensor([[s / math.sqrt(r), s * math.sqrt(r)] for s in sides for r in ratios])
    centres = torch.stack([cx.flatten(), cy.flatten()], 1)[:, None, :]
    return torch.cat([centres - wh / 2, centres + wh / 2], -1).reshape(-1, 4)


@lru_cache(maxsize=64)
def candidate_boxes(height: int, width: int, cfg_key: tuple) -> Tensor:
    """The anchors of an original image of this size, in its coordinates: built on the resized image,
    clipped to it, mapped back (/ scale), without degenerate boxes or exact duplicates. (A, 4) float32."""
    min_side, max_side, stride, sides, ratios = cfg_key
    s = resize_scale(height, width, min_side, max_side)
    rh, rw = round(height * s), round(width * s)
    boxes = anchor_grid(rh, rw, stride=stride, sides=sides, ratios=ratios)
    boxes = boxes / s  # back to original pixels, then clipped there (the resized size was rounded)
    boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height), boxes[:, 2].clamp(0, width),
                         boxes[:, 3].clamp(0, height)], 1)
    boxes = boxes[((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)]
    return torch.unique(boxes, dim=0)  # duplicates would get identical scores and fall to NMS anyway


def entropy_scores(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Selection score ln C - H(p) with p = softmax(logits) over C names (spec §3: zeros -> 1e-5 in the log).

    Args:
        logits: (N, C).

    Returns:
        scores (N,) float32 (high = confident), argmax (N,) int64, max probability (N,) float32.
    """
    p = logits.float().softmax(-1)
    entropy = -(p * p.clamp(min=1e-5).log()).sum(-1)
    prob, arg = p.max(-1)
    return math.log(logits.shape[-1]) - entropy, arg, prob


def select_regions(boxes: Tensor, scores: Tensor, *, nms_thresh: float, max_regions: int) -> Tensor:
    """Class-agnostic NMS then top-K: (K,) int64 indices into ``boxes``, by descending score."""
    keep = nms(boxes.float(), scores.float(), nms_thresh)  # nms returns indices sorted by score
    return keep[:max_regions]


@torch.no_grad()
def box_logits(image: Tensor, model: clip.Clip, text_embeds: Tensor, boxes: Tensor, *, crop_scale: float,
               crops_per_batch: int) -> Tensor:
    """CLIP's logits ``logit_scale * cos`` (A, C), on the CPU, of (A, 4) XYXY absolute boxes of a (3, H, W)
    uint8 image, each cropped at r = ``crop_scale``, against (C, D) unit text rows."""
    device = text_embeds.device
    logits = [torch.zeros(0, len(text_embeds))]
    for start in range(0, len(boxes), crops_per_batch):
        x = crops.cut_crops(image, boxes[start:start + crops_per_batch], scale=crop_scale, size=model.image_size)
        emb = nn.functional.normalize(clip.encode_images(model, model.normalize(x.to(device))), dim=-1)
        logits.append((model.logit_scale * emb @ text_embeds.T).cpu())
    return torch.cat(logits)


@torch.no_grad()
def propose_for_image(image: Tensor, model: clip.Clip, text_embeds: Tensor, category_ids: Tensor, boxes: Tensor, *,
                      crop_scale: float, nms_thresh: float, max_regions: int, crops_per_batch: int,
                      image_id: int = -1) -> RegionSet:
    """Score candidate boxes of one image and keep the confident ones.

    Args:
        image: (3, H, W) uint8 RGB.
        model: the tuned CLIP; text_embeds: (C, D) unit rows of the proposal vocabulary.
        category_ids: (C,) dataset ids of that vocabulary.
        boxes: (A, 4) XYXY absolute candidate boxes.
        crop_scale: r; nms_thresh, max_regions: selection; crops_per_batch: CLIP batch size.

    Returns:
        RegionSet with M <= max_regions rows sorted by score (no embeddings).
    """
    scores, arg, prob = entropy_scores(box_logits(image, model, text_embeds, boxes, crop_scale=crop_scale,
                                                  crops_per_batch=crops_per_batch))
    keep = select_regions(boxes, scores, nms_thresh=nms_thresh, max_regions=max_regions)
    return RegionSet(image_id=image_id, region_boxes=boxes[keep].float(), region_scores=scores[keep].float(),
                     region_category_ids=category_ids[arg[keep]], region_probs=prob[keep].float())


# ---------------------------------------------------------------------------------------------
# the stage


def work_items(cfg: ProposeRegionsConfig) -> list[tuple[ImageRecord, bool]]:
    """Every training image, then the first ``num_recall_images`` val images (for recall only); (record, is_val)."""
    _, train = data.read_config_records(cfg, "train")
    _, val = data.read_config_records(cfg, "val")
    return [(r, False) for r in train] + [(r, True) for r in val[: cfg.num_recall_images]]


def anchor_key(cfg: ProposeRegionsConfig) -> tuple:
    """The knobs that fix ``candidate_boxes`` (its cache key)."""
    return (cfg.resize_min_side, cfg.resize_max_side, cfg.region_anchor_stride, cfg.region_anchor_sizes,
            cfg.region_anchor_ratios)


def _propose_chunk(items: list[tuple[ImageRecord, bool]], model: clip.Clip, text: Tensor, ids: Tensor,
                   cfg: ProposeRegionsConfig, bar: tqdm) -> tuple[list[int], dict, dict]:
    rows = []
    for _, image in data.image_loader([r for r, _ in items], cfg.num_workers):
        boxes = candidate_boxes(image.shape[1], image.shape[2], anchor_key(cfg))
        rs = propose_for_image(image, model, text, ids, boxes, crop_scale=cfg.crop_scale,
                               nms_thresh=cfg.region_nms_thresh, max_regions=cfg.max_regions,
                               crops_per_batch=cfg.crops_per_batch)
        rows.append(shards.region_rows(rs))
        bar.update(1)
        bar.crops += len(boxes)
        bar.set_postfix(crops_per_s=f"{bar.crops / max(time.perf_counter() - bar.t0, 1e-9):.0f}", refresh=False)
    is_val = torch.tensor([v for _, v in items], dtype=torch.bool)
    return [r.image_id for r, _ in items], {"region": rows}, {"image_is_val": is_val}


def finalize_if_complete(cfg: ProposeRegionsConfig, out, key: str, chash: str, upstream: dict, started: str
                         ) -> StageResult:
    """When every shard is current: recall metrics on the val images, then the manifest. Idempotent."""
    paths = [out / cfg.SHARD_DIR / artefacts.shard_name(i, cfg.num_shards) for i in range(cfg.num_shards)]
    done = [lineage.shard_current(out, str(p.relative_to(out)), key) for p in paths]
    if not all(done):
        return StageResult(out, False, {"shards_done": sum(done), "num_shards": cfg.num_shards})
    manifest = lineage.finalize_once(out, key, lambda: _write_metrics_and_manifest(cfg, out, paths, chash, upstream,
                                                                                   started))
    return StageResult(out, False, manifest["summary"])


def _write_metrics_and_manifest(cfg: ProposeRegionsConfig, out, paths: list, chash: str, upstream: dict,
                                started: str) -> dict:
    regions, per_image, seconds, crops_done = {}, [], 0.0, 0
    for p in paths:
        shard = shards.RaggedShard(p)
        timing = p.with_suffix(".timing.json")
        if timing.exists():  # absent for shards finished before a restart that resumed only others
            t = json.loads(timing.read_text())
            seconds, crops_done = seconds + t["seconds"], crops_done + t["num_crops"]
        for i in range(len(shard)):
            rs = shard.region_set(i)
            (regions.__setitem__(rs.image_id, rs) if shard.image_fields["image_is_val"][i] else
             per_image.append(len(rs.region_boxes)))
    split, val = data.read_config_records(cfg, "val")
    val = [r for r in val if r.image_id in regions]
    metrics = evaluation.region_recall(val, [regions[r.image_id] for r in val], split,
                                       ks=sorted({k for k in RECALL_KS if k < cfg.max_regions} | {cfg.max_regions}))
    metrics.update({"num_train_images": len(per_image), "num_recall_images": len(val),
                    "regions_per_image_mean": float(np.mean(per_image)) if per_image else 0.0,
                    **data.input_counts(cfg)})
    artefacts.atomic_write_json(out / "metrics.json", metrics)  # deterministic; throughput goes to the summary
    speed = {"crops_per_second": round(crops_done / seconds, 1) if seconds else None}
    return artefacts.write_manifest(
        out, stage=STAGE, split=cfg.split, config=config.config_dict(cfg), config_hash=chash, upstream=upstream,
        outputs=[str(p.relative_to(out)) for p in paths] + ["metrics.json"], summary={**metrics, **speed},
        started_at=started)


def scoring_clip(cfg: ProposeRegionsConfig, device: torch.device) -> tuple[clip.Clip, Tensor, Tensor]:
    """The CLIP that scores regions, its (C, D) proposal-vocabulary text embeddings and their (C,) ids.

    ``clip_layernorms: original`` uses the CLIP before stage 01's tuning (an ablation); text
    embeddings are then recomputed with it from stage 01's prompt templates.
    """
    folder = artefacts.stage_dir(cfg.run_root, "finetune_clip")
    model, text = clip.load_tuned(folder, device)
    if cfg.clip_layernorms == "original":
        record, ft = artefacts.read_manifest(folder)["clip"], artefacts.read_manifest(folder)["config"]
        model = clip.build_clip(record["model_name"], record["pretrained"],
                                allow_random_init=record["pretrained"] is None, device=device)
        names = [data.read_config_split(cfg).name_of(int(c))
                 for c in text["proposal_category_ids"]]
        with torch.no_grad():
            text["proposal"] = clip.encode_texts(model, names, ft["prompt_templates"])
    return model, text["proposal"].to(device), text["proposal_category_ids"]


def run(cfg: ProposeRegionsConfig) -> StageResult:
    """Propose regions for this shard's images (resuming finished parts); finalise when all shards exist."""
    begun = lineage.begin(cfg, STAGE)
    if begun.skipped:
        return begun.skipped
    runtime.seed_everything(cfg.seed)
    runtime.configure_threads()
    device = runtime.resolve_device(cfg.device)
    out, key, chash, upstream, started = begun.stage_dir, begun.key, begun.config_hash, begun.upstream, begun.started_at
    rel = f"{cfg.SHARD_DIR}/{artefacts.shard_name(cfg.shard_index, cfg.num_shards)}"
    path = out / rel
    if cfg.force or not lineage.shard_current(out, rel, key):
        lineage.invalidate(out)  # an output it lists is rewritten
        if cfg.force:
            shards.discard_parts(path)
        model, emb, ids = scoring_clip(cfg, device)
        items = work_items(cfg)[cfg.shard_index::cfg.num_shards]
        bar = tqdm(total=len(items), desc=f"propose_regions shard {cfg.shard_index + 1}/{cfg.num_shards}",
                   unit="img", mininterval=5)
        bar.t0, bar.crops = time.perf_counter(), 0
        def work(chunk):
            with runtime.autocast(device, cfg.amp):  # bf16/fp16 CLIP on CUDA when amp is on; scores in fp32
                return _propose_chunk(chunk, model, emb, ids, cfg, bar)
        shards.build_in_parts(path, key, items, work, chunk=cfg.images_per_part,
                              metadata=lambda: {"split": cfg.split, "stage": STAGE})
        bar.close()
        # timing stays out of the shard (whose bytes must depend on its content only)
        artefacts.atomic_write_json(path.with_suffix(".timing.json"), {
            "seconds": time.perf_counter() - bar.t0, "num_crops": bar.crops, "num_images": bar.n})
    return finalize_if_complete(cfg, out, key, chash, upstream, started)
