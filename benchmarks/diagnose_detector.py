"""Where a trained detector loses AP: localisation, classification, or base objects named as novel.

Reads a finished run (``04_train_detector`` and ``05_evaluate``) and its val annotations; for every val
GT box (XYXY absolute pixels):
  * localised: some detection of any class overlaps it with IoU >= 0.5;
  * top_is_novel: of the detections that overlap it, the highest-scoring one names a novel category;
  * GT-box top-1: the box head applied to the GT box itself (the distillation path: same RoIAlign and
    head), argmax over the base names (base boxes) or over all names (novel boxes);
  * head probabilities: the box head's softmax over background and all names on base GT, novel GT and
    random background boxes: mean probability of the own class and of background, share argmax novel.
Accuracy diagnostics, not timings; same JSON conventions as the benchmarks.

    .venv/bin/python benchmarks/diagnose_detector.py --params params/toy_coco.yaml [--run runs/X]
writes benchmarks/results/diagnose_detector_<run name>.json.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou

from ezsd_core import artefacts, config, data, runtime, trained


@torch.no_grad()
def box_head_probabilities(model, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The box head applied to given boxes (the distillation path: same RoIAlign and head).

    Args:
        image: (3, H, W) float in [0, 1]; boxes: (N, 4) XYXY absolute pixels of the image.

    Returns:
        (N, K + 1) probabilities [background, the model's vocabulary].
    """
    head = model.roi_heads
    batch, _ = model.transform([image])
    feats = model.backbone(batch.tensors)
    boxes = resize_boxes(boxes.float(), list(image.shape[-2:]), list(batch.image_sizes[0]))
    cls_f, _ = head.box_head(head.box_roi_pool(feats, [boxes], batch.image_sizes))
    return head.box_predictor.probabilities(head.box_predictor.classify(head.box_predictor.embed(cls_f)))


@torch.no_grad()
def gt_box_top1(model, records: list, ids: list[int], base: set[int], max_images: int) -> dict[str, float]:
    """Top-1 of the box head on GT boxes: base boxes among base names, novel boxes among all names."""
    base_cols = torch.tensor([1 + i for i, c in enumerate(ids) if c in base])
    base_ids = [c for c in ids if c in base]
    hits, counts = collections.Counter(), collections.Counter()
    for r in records[:max_images]:
        probs = box_head_probabilities(model, data.read_image(r.file_name).float() / 255, r.gt_boxes)
        for gt, p in zip(r.gt_category_ids.tolist(), probs):
            if gt in base:
                counts["base"] += 1
                hits["base"] += base_ids[int(p[base_cols].argmax())] == gt
            else:
                counts["novel"] += 1
                hits["novel"] += ids[int(p[1:].argmax())] == gt
    return {f"gt_box_top1_{k}": round(hits[k] / counts[k], 4) for k in counts}


@torch.no_grad()
def head_probabilities(model, records: list, ids: list[int], novel: set[int], max_images: int,
                       num_background: int = 40, seed: int = 0) -> dict[str, float]:
    """The box head's softmax over [background, all names] on GT boxes and on background boxes.

    Background boxes: ``num_background`` random boxes per image (sides log-uniform 16-64 px), kept where
    their IoU with every annotated box is < 0.1 (unannotated "other" shapes may still be under them).
    Reports, per kind (base GT, novel GT, background), the mean probability of the own class / of
    background, and the share whose argmax (over background and every name) is a novel name.
    """
    gen = torch.Generator().manual_seed(seed)
    novel_cols = torch.tensor([1 + i for i, c in enumerate(ids) if c in novel])
    novel_set = set(novel_cols.tolist())
    sums, counts = collections.Counter(), collections.Counter()
    for r in records[:max_images]:
        img = data.read_image(r.file_name).float() / 255
        height, width = img.shape[-2:]
        side = torch.exp(torch.empty(num_background, 2).uniform_(2.7726, 4.1589, generator=gen))  # ln 16 .. ln 64
        centre = torch.rand(num_background, 2, generator=gen) * torch.tensor([width, height])
        bg = torch.cat([centre - side / 2, centre + side / 2], 1)
        bg = torch.stack([bg[:, 0].clamp(0, width), bg[:, 1].clamp(0, height), bg[:, 2].clamp(0, width),
                          bg[:, 3].clamp(0, height)], 1)
        if len(r.gt_boxes):
            bg = bg[box_iou(bg, r.gt_boxes.float()).max(1).values < 0.1]
        probs = box_head_probabilities(model, img, torch.cat([r.gt_boxes.float(), bg]))
        kinds = ["novel" if c in novel else "base" for c in r.gt_category_ids.tolist()] + ["background"] * len(bg)
        for j, (kind, p) in enumerate(zip(kinds, probs)):
            counts[kind] += 1
            sums[f"{kind}_argmax_novel"] += int(p.argmax()) in novel_set
            sums[f"{kind}_p_background"] += float(p[0])
            sums[f"{kind}_max_p_novel"] += float(p[novel_cols].max())
            if kind != "background":
                sums[f"{kind}_p_own"] += float(p[1 + ids.index(int(r.gt_category_ids[j]))])
    return {f"head_{k}": round(v / counts[k.split("_")[0]], 4) for k, v in sorted(sums.items())}


def detection_overlap(records: list, detections: list[dict], novel: set[int]) -> dict[str, float]:
    """Share of GT boxes localised by any detection, and of localised base boxes topped by a novel name."""
    by_image = collections.defaultdict(list)
    for d in detections:
        by_image[d["image_id"]].append(d)
    n, localised, topped_novel = collections.Counter(), collections.Counter(), collections.Counter()
    for r in records:
        dets = by_image.get(r.image_id, [])
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)]).reshape(-1, 4)
        scores = torch.tensor([d["score"] for d in dets])
        iou = box_iou(r.gt_boxes.float(), boxes)
        for i, gt in enumerate(r.gt_category_ids.tolist()):
            kind = "novel" if gt in novel else "base"
            n[kind] += 1
            overlap = iou[i] >= 0.5
            if bool(overlap.any()):
                localised[kind] += 1
                top = int(scores.masked_fill(~overlap, -1).argmax())
                topped_novel[kind] += dets[top]["category_id"] in novel
    out = {f"localised_{k}": round(localised[k] / n[k], 4) for k in n}
    out.update({f"topped_by_novel_{k}": round(topped_novel[k] / localised[k], 4) for k in localised})
    return {**out, **{f"num_gt_{k}": n[k] for k in n}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, required=True)
    p.add_argument("--run", type=Path, help="run root (default: the params file's)")
    p.add_argument("--max-images", type=int, default=200, help="val images for the GT-box top-1")
    p.add_argument("--out", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="params override")
    args = p.parse_args()
    runtime.configure_threads()
    overrides = [*args.set, *([f"common.run_root={args.run}"] if args.run else [])]
    cfg = config.stage_config(config.read_params(args.params), "evaluate", source=str(args.params),
                              overrides=overrides)
    model, _ = trained.load_trained_detector(cfg.run_root, "cpu", box_score_thresh=cfg.box_score_thresh,
                                             box_nms_thresh=cfg.box_nms_thresh,
                                             box_detections_per_img=cfg.box_detections_per_img)
    ids = trained.set_run_vocabulary(model, cfg.run_root, "all")
    split, records = data.read_config_records(cfg, "val")
    base, novel = set(split.ids("base")), set(split.ids("novel"))
    dets = json.loads((artefacts.stage_dir(cfg.run_root, "evaluate") / "detections.json").read_text())
    result = {"diagnostic": "diagnose_detector", "date": artefacts.utc_now(), "run_root": str(cfg.run_root),
              **detection_overlap(records, dets, novel),
              **gt_box_top1(model, records, ids.tolist(), base, args.max_images),
              **head_probabilities(model, records, ids.tolist(), novel, args.max_images),
              "gt_box_images": min(args.max_images, len(records))}
    out = args.out or Path(f"benchmarks/results/diagnose_detector_{Path(cfg.run_root).name}.json")
    artefacts.atomic_write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
