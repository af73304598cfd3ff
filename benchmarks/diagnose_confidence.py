"""How well a stage-01 CLIP's confidence separates objects from background: what stage 02 ranks by
and stage 03 weights by.

For the first ``--images`` val images of a world, every stage-02 anchor (the params file's grid, r =
``propose_regions.crop_scale``) is scored by each run's stage-01 CLIP over the proposal vocabulary at
the CLIP's own logit scale, exactly as stage 02 scores it. As a diagnostic only (no stage may), every
val annotation is read, "other" shapes included, and each anchor is labelled by its best IoU with a
GT box (XYXY absolute pixels): ``<role>_object`` (IoU >= 0.5 with a base / novel / other box),
``background`` (IoU < 0.1 with every box), or ignored. Reported per run and label: the count, the
mean max probability (stage 03's distillation weight) and the mean selection score ln C - H; and the
AUROC of that score for objects of each role against background (0.5: confidence says nothing about
objectness; 1: every object anchor outranks every background one).

    .venv/bin/python benchmarks/diagnose_confidence.py --params params/toy_coco.yaml \\
        --runs runs/toy_coco runs/toy_coco-ablation-e_no_layernorm_tuning --name seed0
writes benchmarks/results/diagnose_confidence_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import Tensor
from torchvision.ops import box_iou
from tqdm import tqdm

from ezsd_core import artefacts, clip, config, data
from ezsd_core.stages import propose_regions

RESULTS = Path(__file__).resolve().parent / "results"


def auroc(pos: Tensor, neg: Tensor) -> float:
    """P(a random positive scores above a random negative), ties counted half; (P,), (N,) scores."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    scores = torch.cat([pos, neg]).double()
    ranks = torch.empty_like(scores)
    order = scores.argsort()
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique()[torch.unique(scores, return_counts=True)[1] > 1]:  # average the tied ranks
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def anchor_labels(anchors: Tensor, gt_boxes: Tensor, roles: list[str]) -> list[str]:
    """One label per (A, 4) anchor against (G, 4) GT boxes of ``roles``: ``<role>_object``, ``background`` or ``""``."""
    if len(gt_boxes) == 0:
        return ["background"] * len(anchors)
    best, arg = box_iou(anchors, gt_boxes.float()).max(1)
    return [f"{roles[int(a)]}_object" if b >= 0.5 else "background" if b < 0.1 else "" for b, a in zip(best, arg)]


def summarise(scores: dict[str, list[Tensor]], probs: dict[str, list[Tensor]]) -> dict:
    s = {k: torch.cat(v) for k, v in scores.items()}
    p = {k: torch.cat(v) for k, v in probs.items()}
    out = {"count": {k: len(v) for k, v in s.items()},
           "mean_max_prob": {k: round(float(v.mean()), 4) for k, v in p.items()},
           "mean_score": {k: round(float(v.mean()), 4) for k, v in s.items()}}
    out["auroc_vs_background"] = {k: round(auroc(v, s["background"]), 4) for k, v in s.items() if k != "background"}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params/toy_coco.yaml"))
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="run roots whose 01_finetune_clip is complete")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--name", required=True)
    args = p.parse_args()
    cfg = config.stage_config(config.read_params(args.params), "propose_regions", source=str(args.params),
                              overrides=args.set)
    split, records = data.read_config_records(cfg, "val", vocab="proposal", keep_empty=True)
    records = records[: args.images]
    key = propose_regions.anchor_key(cfg)
    result = {"world": str(cfg.data_root), "images": len(records), "runs": {}}
    for run in args.runs:
        folder = artefacts.stage_dir(run, "finetune_clip")
        artefacts.require_complete(run, "finetune_clip")
        model, text = clip.load_tuned(folder)
        scores, probs = {}, {}
        for r, image in tqdm(zip(records, (im for _, im in data.image_loader(records, 0))), total=len(records),
                             desc=str(run)):
            anchors = propose_regions.candidate_boxes(image.shape[1], image.shape[2], key)
            labels = anchor_labels(anchors, r.gt_boxes, [split.role_of(int(c)) for c in r.gt_category_ids])
            logits = propose_regions.box_logits(image, model, text["proposal"], anchors, crop_scale=cfg.crop_scale,
                                                crops_per_batch=cfg.crops_per_batch)
            score, _, prob = propose_regions.entropy_scores(logits)
            for lab in set(labels) - {""}:
                m = torch.tensor([x == lab for x in labels])
                scores.setdefault(lab, []).append(score[m])
                probs.setdefault(lab, []).append(prob[m])
        num_names = len(text["proposal"])
        result["runs"][str(run)] = {
            "logit_scale": round(model.logit_scale, 2),
            "stage01_loss_logit_scale": artefacts.read_manifest(folder)["config"].get("loss_logit_scale"),
            "num_names": num_names, "ln_C": round(math.log(num_names), 4), **summarise(scores, probs)}
        print(json.dumps(result["runs"][str(run)], indent=1))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"diagnose_confidence_{args.name}.json"
    artefacts.atomic_write_json(path, result)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
