"""Stage 03 `extract_features`: CLIP embeddings of selected regions and of every base GT box.

Paper step: the distillation targets (arXiv 2303.12145 §3.4; method spec §4). Per training image:
drop regions overlapping GT (IoU >= thresh; against **base** GT by default; ``iou_filter_gt: all``
reproduces the reference, which also reads novel training boxes: a leak), apply the split's subset
rule (``drop_base``: embed the first candidates, drop those CLIP classifies as base, keep the first
N; ``random``: a seeded random N), and store each kept region's raw CLIP embedding at r = 1.2
(fp16), CLIP's max probability (the distillation weight), its category and its region score; plus
the embedding of every base GT box (which the reference scripts never wrote, spec §10.4).
Reads: ``01_finetune_clip``, ``02_propose_regions``, train annotations.
Writes: ``03_extract_features/feats/shard-*.safetensors`` (CSR groups ``region`` and ``gt``), manifest.
Imports: config, artefacts, lineage, runtime, data, crops, shards, structures, clip.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou
from tqdm import tqdm

from ezsd_core import artefacts, clip, config, crops, data, lineage, runtime, shards
from ezsd_core.artefacts import StageResult
from ezsd_core.config import ExtractFeaturesConfig
from ezsd_core.structures import ImageRecord, RegionSet

STAGE = "extract_features"
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# the science (pure)


def overlap_filter(regions: RegionSet, gt_boxes: Tensor, iou_thresh: float) -> RegionSet:
    """Drop regions whose IoU with any GT box is >= ``iou_thresh`` (gt_boxes: (N, 4) XYXY absolute)."""
    if len(gt_boxes) == 0 or len(regions.region_boxes) == 0:
        return regions
    return regions.subset(box_iou(regions.region_boxes, gt_boxes).max(1).values < iou_thresh)


def random_subset(num: int, max_regions: int, seed: int, image_id: int) -> Tensor:
    """Indices of a seeded random subset of ``max_regions`` out of ``num`` (all, in order, if fewer).

    The order is random, as the reference stores it; the seed is (stage seed, image id), so an
    image gets the same subset whichever shard processes it.
    """
    if num <= max_regions:
        return torch.arange(num)
    rng = np.random.default_rng([seed, image_id])
    return torch.from_numpy(rng.choice(num, size=max_regions, replace=False)).long()


def random_regions(image_id: int, num: int, height: int, width: int, seed: int) -> RegionSet:
    """``num`` random boxes (ablation: distil random boxes instead of CLIP regions), seeded per image.

    Sides are log-uniform between 8 px and half the image's longer side, centres uniform; boxes are
    clipped to the image. Scores are zero (no order), categories and probabilities are set later.
    """
    rng = np.random.default_rng([seed, image_id, 7])
    side = np.exp(rng.uniform(np.log(8), np.log(max(height, width) / 2), (num, 2)))
    centre = rng.uniform(0, 1, (num, 2)) * [width, height]
    boxes = torch.from_numpy(np.concatenate([centre - side / 2, centre + side / 2], 1)).float()
    boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height), boxes[:, 2].clamp(0, width),
                         boxes[:, 3].clamp(0, height)], 1)
    return RegionSet(image_id=image_id, region_boxes=boxes, region_scores=torch.zeros(num),
                     region_category_ids=torch.zeros(num, dtype=torch.int64), region_probs=torch.zeros(num))


def classify(embeds: Tensor, text_embeds: Tensor, logit_scale: float) -> tuple[Tensor, Tensor]:
    """Argmax index and max probability of softmax(logit_scale * cos) for (M, D) raw embeddings vs (C, D)."""
    p = (logit_scale * nn.functional.normalize(embeds.float(), dim=-1) @ text_embeds.T).softmax(-1)
    prob, arg = p.max(-1)
    return arg, prob


@torch.no_grad()
def embed_boxes(image: Tensor, boxes: Tensor, model: clip.Clip, *, crop_scale: float, crops_per_batch: int,
                dim: int) -> Tensor:
    """Raw CLIP image embeddings (M, D = ``dim``) float32 of boxes (M, 4 XYXY absolute) of a (3, H, W) uint8 image."""
    device = next(model.model.parameters()).device
    out = [clip.encode_images(model, model.normalize(
        crops.cut_crops(image, boxes[s:s + crops_per_batch], scale=crop_scale, size=model.image_size).to(device))).cpu()
        for s in range(0, len(boxes), crops_per_batch)]
    return torch.cat(out) if out else torch.zeros(0, dim)


def select_and_embed(image: Tensor, regions: RegionSet, filter_gt: Tensor, model: clip.Clip, text: Tensor,
                     category_ids: Tensor, base_ids: set[int], cfg: ExtractFeaturesConfig) -> RegionSet:
    """Filter, subset and embed the regions of one image (spec §4).

    Args:
        image: (3, H, W) uint8; regions: stage-02 regions, sorted by score.
        filter_gt: (N, 4) GT boxes of the overlap filter (base GT by default).
        text: (C, D) proposal-vocabulary text embeddings; category_ids: (C,) their dataset ids.
        base_ids: dataset ids of the base categories (``drop_base`` removes regions classified as one).

    Returns:
        RegionSet with ``region_embeds`` (M, D) float16, ``region_probs`` = CLIP's max probability and
        ``region_category_ids`` = its argmax at r = ``crop_scale``; ``region_scores`` from stage 02.
    """
    kept = overlap_filter(regions, filter_gt, cfg.iou_thresh)
    embed = lambda rs: embed_boxes(image, rs.region_boxes, model, crop_scale=cfg.crop_scale,
                                   crops_per_batch=cfg.crops_per_batch, dim=text.shape[1])
    if cfg.subset_rule == "drop_base":
        kept = kept.subset(torch.arange(min(cfg.num_candidates, len(kept.region_boxes))))
        emb = embed(kept)
        arg, prob = classify(emb, text.cpu(), model.logit_scale)
        cats = category_ids[arg]
        keep = torch.tensor([int(c) not in base_ids for c in cats], dtype=torch.bool).nonzero()[:, 0][:cfg.max_regions]
        emb, cats, prob, kept = emb[keep], cats[keep], prob[keep], kept.subset(keep)
    else:
        kept = kept.subset(random_subset(len(kept.region_boxes), cfg.max_regions, cfg.seed, regions.image_id))
        emb = embed(kept)
        arg, prob = classify(emb, text.cpu(), model.logit_scale)
        cats = category_ids[arg]
    return RegionSet(image_id=regions.image_id, region_boxes=kept.region_boxes, region_scores=kept.region_scores,
                     region_category_ids=cats.long(), region_probs=prob.float(), region_embeds=emb.half())


# ---------------------------------------------------------------------------------------------
# the stage


def region_index(run_root: Path) -> dict[int, tuple[shards.RaggedShard, int]]:
    """Training image id -> (stage-02 shard, position) over the shards stage 02's manifest lists
    (val images excluded; shard files it does not list, e.g. of another ``num_shards``, are ignored)."""
    index = {}
    for p in lineage.upstream_outputs(run_root, "propose_regions", f"{config.ProposeRegionsConfig.SHARD_DIR}/"):
        shard = shards.RaggedShard(p)
        for i in range(len(shard)):
            if not shard.image_fields["image_is_val"][i]:
                index[int(shard.image_ids[i])] = (shard, i)
    return index


def _extract_chunk(items: list[ImageRecord], ctx: dict, cfg: ExtractFeaturesConfig, bar: tqdm
                   ) -> tuple[list[int], dict, dict]:
    region_rows, gt_rows = [], []
    for i, image in data.image_loader(items, cfg.num_workers):
        rec = items[i]
        shard, pos = ctx["index"][rec.image_id]
        regions = shard.region_set(pos)
        if cfg.region_source == "random_boxes":
            regions = random_regions(rec.image_id, len(regions.region_boxes), image.shape[1], image.shape[2], cfg.seed)
        filter_gt = ctx["filter_gt"].get(rec.image_id, rec.gt_boxes)
        rs = select_and_embed(image, regions, filter_gt, ctx["model"], ctx["text"], ctx["ids"], ctx["base"], cfg)
        gt = embed_boxes(image, rec.gt_boxes, ctx["model"], crop_scale=cfg.crop_scale,
                         crops_per_batch=cfg.crops_per_batch, dim=ctx["text"].shape[1])
        region_rows.append(shards.region_rows(rs))
        gt_rows.append({"gt_boxes": rec.gt_boxes.float(), "gt_category_ids": rec.gt_category_ids,
                        "gt_embeds": gt.half()})
        bar.update(1)
        bar.kept += len(rs.region_boxes)
        bar.set_postfix(regions_per_img=f"{bar.kept / bar.n:.1f}", refresh=False)
    return [r.image_id for r in items], {"region": region_rows, "gt": gt_rows}, {}


def _filter_gt(cfg: ExtractFeaturesConfig) -> dict[int, Tensor]:
    """GT boxes of the overlap filter per image: empty (= the record's base GT) unless ``iou_filter_gt: all``.

    ``all`` reproduces the reference: it reads the training annotations of every proposal-vocabulary
    category, novel ones included, which strict zero-shot forbids (method spec §10.5).
    """
    if cfg.iou_filter_gt == "base":
        return {}
    log.warning("iou_filter_gt: all reads novel training annotations (the reference's leak)")
    _, records = data.read_config_records(cfg, "train", vocab="proposal", keep_empty=True)
    return {r.image_id: r.gt_boxes for r in records}


def run(cfg: ExtractFeaturesConfig) -> StageResult:
    """Embed this shard's regions and base GT boxes (resuming finished parts); finalise when all shards exist."""
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
        model, text = clip.load_tuned(artefacts.stage_dir(cfg.run_root, "finetune_clip"), device)
        split, records = data.read_config_records(cfg, "train")
        ctx = {"model": model, "text": text["proposal"].to(device), "ids": text["proposal_category_ids"],
               "base": set(split.ids("base")), "index": region_index(cfg.run_root), "filter_gt": _filter_gt(cfg)}
        items = records[cfg.shard_index::cfg.num_shards]
        bar = tqdm(total=len(items), desc=f"extract_features shard {cfg.shard_index + 1}/{cfg.num_shards}",
                   unit="img", mininterval=5)
        bar.kept = 0
        def work(chunk):
            with runtime.autocast(device, cfg.amp):  # bf16/fp16 CLIP on CUDA when amp is on
                return _extract_chunk(chunk, ctx, cfg, bar)

        shards.build_in_parts(path, key, items, work,
                              chunk=cfg.images_per_part, metadata=lambda: {"split": cfg.split, "stage": STAGE})
        bar.close()
    return finalize_if_complete(cfg, out, key, chash, upstream, started)


def finalize_if_complete(cfg: ExtractFeaturesConfig, out: Path, key: str, chash: str, upstream: dict, started: str
                         ) -> StageResult:
    """When every shard is current: summary statistics and the manifest. Idempotent."""
    paths = [out / cfg.SHARD_DIR / artefacts.shard_name(i, cfg.num_shards) for i in range(cfg.num_shards)]
    done = [lineage.shard_current(out, str(p.relative_to(out)), key) for p in paths]
    if not all(done):
        return StageResult(out, False, {"shards_done": sum(done), "num_shards": cfg.num_shards})
    manifest = lineage.finalize_once(out, key, lambda: _write_manifest(cfg, out, paths, chash, upstream, started))
    return StageResult(out, False, manifest["summary"])


def _write_manifest(cfg: ExtractFeaturesConfig, out: Path, paths: list[Path], chash: str, upstream: dict,
                    started: str) -> dict:
    per_image, gt, empty = [], 0, 0
    for p in paths:
        shard = shards.RaggedShard(p)
        counts = shard.row_counts("region").tolist()
        per_image += counts
        empty += sum(c == 0 for c in counts)
        gt += int(shard.row_counts("gt").sum())
    summary = {"num_images": len(per_image), "regions_per_image_mean": float(np.mean(per_image)) if per_image else 0.0,
               "images_without_regions": empty, "num_gt_embeds": gt, "num_region_embeds": int(sum(per_image)),
               **data.input_counts(cfg, ("train",))}
    return artefacts.write_manifest(
        out, stage=STAGE, split=cfg.split, config=config.config_dict(cfg), config_hash=chash, upstream=upstream,
        outputs=[str(p.relative_to(out)) for p in paths], summary=summary, started_at=started)
