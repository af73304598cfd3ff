"""Stage 05 `evaluate`: detect on val with base + novel text embeddings, then AP by subset.

Paper step: zero-shot inference and evaluation (arXiv 2303.12145 §4; method spec §5.5, §6). The
trained detector is untouched except its classifier's text embeddings, which are swapped for the
vocabulary's (base + novel); the learned background vector and temperature stay. COCO-style
splits report bbox/segm AP and AP50 for base / novel / all (pycocotools, ``catIds`` per subset) at
``box_detections_per_img`` and at 100 per image; LVIS-style splits report AP, APr, APc, APf (lvis). The val
images scored are ``image_set``'s; the protocol is stored next to the numbers.
Reads: ``01_finetune_clip``, ``04_train_detector``, val annotations.
Writes: ``05_evaluate/{detections.json, metrics.json, manifest.json}``.
Imports: config, artefacts, lineage, runtime, data, structures, splits, detector, trained, evaluation.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ezsd_core import artefacts, config, data, detector, evaluation, lineage, runtime, structures, trained
from ezsd_core.artefacts import StageResult
from ezsd_core.config import EvaluateConfig
from ezsd_core.structures import ImageRecord

STAGE = "evaluate"
IMAGE_SETS = ("all", "with_gt")
log = logging.getLogger(__name__)


def scored_records(records: list[ImageRecord], image_set: str) -> list[ImageRecord]:
    """The val images a run is scored on.

    Args:
        records: the val records as the reader returns them (base + novel GT of the split, empty
            images included), ascending image id.
        image_set: ``all`` (every val image: COCO 60/20's full val2017, the toy worlds) or ``with_gt``
            (images with at least one non-crowd box of the split's categories: COCO 48/17's
            ``instances_val2017_65cates.json``, and LVIS's ``eval_filter_empty_gt``; method spec §6).

    Returns:
        The kept records, same order.
    """
    if image_set not in IMAGE_SETS:
        raise ValueError(f"image_set: got {image_set!r}; allowed: {', '.join(IMAGE_SETS)}")
    return list(records) if image_set == "all" else [r for r in records if len(r.gt_boxes)]


def protocol(cfg: EvaluateConfig, style: str, num_names: int, num_scored: int, num_val: int) -> dict[str, object]:
    """What the numbers mean, stored beside them (``protocol/<key>`` in metrics.json) and logged.

    Returns:
        ``vocabulary`` (stage 01 vocabulary and its size), ``max_dets`` (detections per image the AP
        keys are computed at), ``box_score_thresh``, ``box_nms_thresh``, ``image_set`` (which val images and
        how many of how many) and ``evaluator``.
    """
    max_dets = [cfg.box_detections_per_img] if style == "lvis" else sorted({100, cfg.box_detections_per_img})
    return {"vocabulary": f"{cfg.vocabulary} ({num_names} names)",
            "max_dets": ",".join(map(str, max_dets)) + (" (unsuffixed keys at the largest)" * (len(max_dets) > 1)),
            "box_score_thresh": cfg.box_score_thresh, "box_nms_thresh": cfg.box_nms_thresh,
            "image_set": f"{cfg.image_set}: {num_scored} of {num_val} val images",
            "evaluator": "lvis LVISEval" if style == "lvis" else "pycocotools COCOeval, catIds per subset"}


def to_results(dets: structures.Detections) -> list[dict]:
    """One image's detections in COCO results format, masks (if any) as RLE."""
    rles = None
    if dets.pred_masks is not None:
        rles = []
        for m in dets.pred_masks.numpy().astype(np.uint8):
            rle = mask_utils.encode(np.asfortranarray(m))
            rles.append({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
    return structures.to_coco_results(dets, rles)


@torch.no_grad()
def iter_detections(model: detector.EzsdDetector, records: list, category_ids: torch.Tensor, batch_size: int,
                    num_workers: int, device: torch.device) -> Iterator[list[dict]]:
    """COCO results (bbox XYWH absolute, dataset category ids, RLE masks) of each batch of records, in order.

    Each batch's masks are encoded to RLE at once and dropped, so memory holds one batch's
    (P, H, W) masks, not the whole val set's; a detector without a mask branch pastes none.
    """
    loader = data.image_loader(records, num_workers)
    batch: list = []
    for i, image in tqdm(loader, total=len(records), desc="evaluate", unit="img", mininterval=10):
        batch.append((records[i].image_id, image.float().div(255).to(device)))
        if len(batch) == batch_size or i == len(records) - 1:
            dets = model([b[1] for b in batch], return_detections=True).detections
            out: list[dict] = []
            for (image_id, _), d in zip(batch, dets):
                cpu = {k: v.cpu() for k, v in d.items()}
                out += to_results(structures.from_tv_output(cpu, image_id, category_ids.tolist()))
            batch = []
            yield out


def detect(model: detector.EzsdDetector, records: list, category_ids: torch.Tensor, batch_size: int,
           num_workers: int, device: torch.device) -> list[dict]:
    """Every record's COCO results in one list (``iter_detections`` gathered)."""
    chunks = iter_detections(model, records, category_ids, batch_size, num_workers, device)
    return [r for chunk in chunks for r in chunk]


def write_detections(path: Path, chunks: Iterable[list[dict]]) -> int:
    """Stream COCO results to ``path`` as one compact JSON list, chunk by chunk, atomically.

    A full LVIS val run holds millions of results (300 per image, masks as RLE): written this way,
    memory holds one chunk, not the whole list and its indented text (several GB).

    Returns:
        The number of results written.
    """
    n = 0
    with artefacts.atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("[")
            for chunk in chunks:
                for r in chunk:
                    f.write(("," if n else "") + json.dumps(r, separators=(",", ":")))
                    n += 1
            f.write("]\n")
            f.flush()
            os.fsync(f.fileno())
    return n


def ground_truth(cfg: EvaluateConfig) -> AbstractContextManager[Path]:
    """The val annotation file under the reader's rules (``data.clean_annotation_file``), as a context."""
    return data.clean_annotation_file(cfg.data_root / cfg.val_annotations, cfg.data_root / cfg.val_images)


def run(cfg: EvaluateConfig) -> StageResult:
    """Detect on the val split and write detections.json and metrics.json (flat keys, e.g. ``bbox/AP50_novel``,
    the ``protocol/<key>`` strings that say what they mean, and ``input/<rule>`` counts of what the input
    rules dropped or clipped, when any fired)."""
    begun = lineage.begin(cfg, STAGE)
    if begun.skipped:
        return begun.skipped
    runtime.seed_everything(cfg.seed)
    runtime.configure_threads()
    device = runtime.resolve_device(cfg.device)
    out, chash, upstream, started = begun.stage_dir, begun.config_hash, begun.upstream, begun.started_at
    model, _ = trained.load_trained_detector(cfg.run_root, device, box_score_thresh=cfg.box_score_thresh,
                                             box_nms_thresh=cfg.box_nms_thresh,
                                             box_detections_per_img=cfg.box_detections_per_img)
    ids = trained.set_run_vocabulary(model, cfg.run_root, cfg.vocabulary)
    dropped: dict[str, int] = {}
    split, val = data.read_config_records(cfg, "val", counts=dropped)
    records = scored_records(val, cfg.image_set)
    used = protocol(cfg, split.style, len(ids), len(records), len(val))
    log.info("protocol: %s", "; ".join(f"{k} {v}" for k, v in used.items()))
    image_ids = [r.image_id for r in records]
    out.mkdir(parents=True, exist_ok=True)
    num_detections = write_detections(out / "detections.json",
                                      iter_detections(model, records, ids, cfg.batch_size, cfg.num_workers, device))
    results = out / "detections.json" if num_detections else []  # the evaluators read the file themselves
    iou_types = ("bbox", "segm") if model.roi_heads.has_mask() else ("bbox",)
    with ground_truth(cfg) as gt:  # the val file under the reader's rules: the metric counts what was read
        if split.style == "lvis":
            metrics = evaluation.lvis_metrics(gt, results, iou_types=iou_types, max_dets=cfg.box_detections_per_img,
                                              image_ids=image_ids)
        else:
            metrics = evaluation.coco_metrics(gt, results, split, iou_types=iou_types,
                                              max_dets=sorted({100, cfg.box_detections_per_img}), image_ids=image_ids)
    metrics = {**{k: round(v, 4) for k, v in metrics.items()}, **{f"protocol/{k}": v for k, v in used.items()},
               **{f"input/{k}": v for k, v in dropped.items() if v}}
    artefacts.atomic_write_json(out / "metrics.json", metrics)
    manifest = artefacts.write_manifest(
        out, stage=STAGE, split=cfg.split, config=config.config_dict(cfg), config_hash=chash, upstream=upstream,
        outputs=["detections.json", "metrics.json"], started_at=started,
        summary={**{k: v for k, v in metrics.items() if not k.startswith("protocol/")}, "num_images": len(records),
                 "num_detections": num_detections}, extra={"protocol": used})
    return StageResult(out, False, manifest["summary"])
