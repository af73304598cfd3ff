"""Stage 05 `evaluate`: detect on val with base + novel text embeddings, then AP by subset.

Paper step: zero-shot inference and evaluation (arXiv 2303.12145 §4; method spec §5.5, §6). The
trained detector is untouched except its classifier's text embeddings, which are swapped for the
vocabulary's (base + novel); the learned background vector and temperature stay. COCO-style
splits report bbox/segm AP and AP50 for base / novel / all (pycocotools, ``catIds`` per subset) at
``max_detections`` and at 100 per image; LVIS-style splits report AP, APr, APc, APf (lvis).
Reads: ``01_finetune_clip``, ``04_train_detector``, val annotations.
Writes: ``05_evaluate/{detections.json, metrics.json, manifest.json}``.
Imports: config, artefacts, lineage, runtime, data, structures, splits, detector, evaluation.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from safetensors.torch import load_file
from tqdm import tqdm

from ezsd_core import artefacts, config, data, detector, evaluation, lineage, runtime, structures
from ezsd_core.artefacts import StageResult
from ezsd_core.config import EvaluateConfig

STAGE = "evaluate"
log = logging.getLogger(__name__)


def load_detector(run_root: Path, vocabulary: str, *, score_thresh: float, nms_thresh: float, max_detections: int,
                  device: torch.device) -> tuple[detector.EzsdDetector, torch.Tensor]:
    """The trained detector of a run, classifying against a stage-01 vocabulary (``all``, ``proposal``, ...).

    Returns:
        The model in eval mode and the (K,) dataset category ids of its labels 1..K.
    """
    manifest = artefacts.require_complete(run_root, "train_detector")
    spec = detector.DetectorSpec(**{**manifest["detector"], "min_size": tuple(manifest["detector"]["min_size"]),
                                    "score_thresh": score_thresh, "nms_thresh": nms_thresh,
                                    "detections_per_img": max_detections})
    state = load_file(str(artefacts.stage_dir(run_root, "train_detector") / "model.safetensors"))
    model = detector.build_detector(spec, state["roi_heads.box_predictor.text_embeds"])
    model.load_state_dict(state)
    text = load_file(str(artefacts.stage_dir(run_root, "finetune_clip") / "text_embeds.safetensors"))
    model.set_vocabulary(text[vocabulary])
    return model.to(device).eval(), text[f"{vocabulary}_category_ids"]


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
def detect(model: detector.EzsdDetector, records: list, category_ids: torch.Tensor, batch_size: int,
           num_workers: int, device: torch.device) -> list[dict]:
    """COCO results (bbox XYWH absolute, dataset category ids, RLE masks) of every record.

    Each batch's masks are encoded to RLE at once and dropped, so memory holds one batch's
    (P, H, W) masks, not the whole val set's; a detector without a mask branch pastes none.
    """
    out = []
    loader = data.image_loader(records, num_workers)
    batch: list = []
    for i, image in tqdm(loader, total=len(records), desc="evaluate", unit="img", mininterval=10):
        batch.append((records[i].image_id, image.float().div(255).to(device)))
        if len(batch) == batch_size or i == len(records) - 1:
            dets = model([b[1] for b in batch], return_detections=True).detections
            for (image_id, _), d in zip(batch, dets):
                cpu = {k: v.cpu() for k, v in d.items()}
                out += to_results(structures.from_tv_output(cpu, image_id, category_ids.tolist()))
            batch = []
    return out


def ground_truth(cfg: EvaluateConfig) -> AbstractContextManager[Path]:
    """The val annotation file under the reader's rules (``data.clean_annotation_file``), as a context."""
    return data.clean_annotation_file(cfg.data_root / cfg.val_annotations, cfg.data_root / cfg.val_images)


def run(cfg: EvaluateConfig) -> StageResult:
    """Detect on the val split and write detections.json and metrics.json (flat keys, e.g. ``bbox/AP50_novel``,
    plus ``input/<rule>`` counts of what the input rules dropped or clipped, when any fired)."""
    begun = lineage.begin(cfg, STAGE)
    if begun.skipped:
        return begun.skipped
    runtime.seed_everything(cfg.seed)
    runtime.configure_threads()
    device = runtime.resolve_device(cfg.device)
    out, chash, upstream, started = begun.stage_dir, begun.config_hash, begun.upstream, begun.started_at
    model, ids = load_detector(cfg.run_root, cfg.vocabulary, score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                               max_detections=cfg.max_detections, device=device)
    dropped: dict[str, int] = {}
    split, records = data.read_config_records(cfg, "val", counts=dropped)
    results = detect(model, records, ids, cfg.batch_size, cfg.num_workers, device)
    out.mkdir(parents=True, exist_ok=True)
    artefacts.atomic_write_json(out / "detections.json", results)
    iou_types = ("bbox", "segm") if model.roi_heads.has_mask() else ("bbox",)
    with ground_truth(cfg) as gt:  # the val file under the reader's rules: the metric counts what was read
        if split.style == "lvis":
            metrics = evaluation.lvis_metrics(gt, results, iou_types=iou_types, max_dets=cfg.max_detections)
        else:
            metrics = evaluation.coco_metrics(gt, results, split, iou_types=iou_types,
                                              max_dets=sorted({100, cfg.max_detections}))
    metrics = {**{k: round(v, 4) for k, v in metrics.items()}, **{f"input/{k}": v for k, v in dropped.items() if v}}
    artefacts.atomic_write_json(out / "metrics.json", metrics)
    manifest = artefacts.write_manifest(
        out, stage=STAGE, split=cfg.split, config=config.config_dict(cfg), config_hash=chash, upstream=upstream,
        outputs=["detections.json", "metrics.json"], started_at=started,
        summary={**metrics, "num_images": len(records), "num_detections": len(results)})
    return StageResult(out, False, manifest["summary"])
