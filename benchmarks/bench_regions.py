"""Benchmark of CLIP region scoring (stage 02): the reference's per-crop PIL path vs ezsd's batched path.

Both paths score the same images' anchors with the same tuned CLIP and keep regions the same way
(entropy score, NMS, top-K); only crop cutting and batching differ:
  (a) per crop: PIL crop, zero-padded square, torchvision Resize(bicubic) / CenterCrop / ToTensor /
      Normalize, the model run in chunks of 100 crops (the reference's chunk);
  (b) batched: one roi_align per chunk of ``--crops-per-batch`` anchors on the decoded image tensor.
Reported: crops/s of both (median of interleaved repeats, measured in one process), their ratio,
crops/s as a fraction of this machine's fp32 matmul bound for the model (measured FLOP/s over the
model's counted FLOPs per crop), and the agreement of the kept boxes (mean IoU of each region of
(a)'s top-K with its best match in (b)'s, averaged over images).

    .venv/bin/python benchmarks/bench_regions.py --run runs/toy_coco --images 20
writes benchmarks/results/bench_regions.json (needs ``01_finetune_clip`` of the run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms
from torchvision.ops import box_iou

from ezsd_core import artefacts, clip, config, crops, data, runtime
from ezsd_core.stages import propose_regions as pr

REFERENCE_CHUNK = 100


def score_per_crop_pil(image: Image.Image, boxes: torch.Tensor, model: clip.Clip, text: torch.Tensor,
                       scale: float) -> torch.Tensor:
    """(A, C) logits through the per-crop PIL path (a)."""
    tf = transforms.Compose([transforms.Resize(model.image_size, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(model.image_size), transforms.ToTensor(),
                             transforms.Normalize(crops.CLIP_MEAN, crops.CLIP_STD)])
    windows = crops.crop_windows(boxes, scale, image.height, image.width).tolist()
    logits = []
    for start in range(0, len(windows), REFERENCE_CHUNK):
        batch = []
        for x_lo, y_lo, x_hi, y_hi in windows[start:start + REFERENCE_CHUNK]:
            crop = image.crop((x_lo, y_lo, x_hi, y_hi))
            side = max(crop.size)
            square = Image.new("RGB", (side, side))
            square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
            batch.append(tf(square))
        emb = nn.functional.normalize(clip.encode_images(model, torch.stack(batch)), dim=-1)
        logits.append(model.logit_scale * emb @ text.T)
    return torch.cat(logits)


def select(boxes: torch.Tensor, logits: torch.Tensor, cfg: config.ProposeRegionsConfig) -> torch.Tensor:
    scores, _, _ = pr.entropy_scores(logits)
    return boxes[pr.select_regions(boxes, scores, nms_thresh=cfg.region_nms_thresh, max_regions=cfg.max_regions)]


def matmul_flops_per_second(n: int = 1024, reps: int = 10) -> float:
    """Measured fp32 matmul throughput of this machine with torch's current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def flops_per_crop(model: clip.Clip) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        clip.encode_images(model, torch.randn(8, 3, model.image_size, model.image_size))
    return counter.get_total_flops() / 8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run root with a complete 01_finetune_clip")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--crops-per-batch", type=int, default=1024)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_regions.json"))
    args = p.parse_args()
    runtime.configure_threads()
    manifest = artefacts.require_complete(args.run, "finetune_clip")
    finetune = config.load_config(config.FinetuneClipConfig, manifest["config"])
    model, text = clip.load_tuned(artefacts.stage_dir(args.run, "finetune_clip"))
    emb = text["proposal"]
    _, records = data.read_config_records(finetune, "val")
    records = records[: args.images]
    params = config.read_params(Path("params") / f"{finetune.split}.yaml")
    cfg = config.stage_config(params, "propose_regions", source="params",
                              overrides=[f"common.data_root={finetune.data_root}"])
    key = (cfg.resize_min_side, cfg.resize_max_side, cfg.region_anchor_stride, cfg.region_anchor_sizes,
           cfg.region_anchor_ratios)
    pil = [Image.open(r.file_name).convert("RGB") for r in records]
    tensors = [data.read_image(r.file_name) for r in records]
    boxes = [pr.candidate_boxes(t.shape[1], t.shape[2], key) for t in tensors]
    n_crops = sum(len(b) for b in boxes)

    def run_a() -> list[torch.Tensor]:
        with torch.no_grad():
            return [select(b, score_per_crop_pil(im, b, model, emb, cfg.crop_scale), cfg) for im, b in zip(pil, boxes)]

    def run_b() -> list[torch.Tensor]:
        return [pr.propose_for_image(t, model, emb, text["proposal_category_ids"], b, crop_scale=cfg.crop_scale,
                                     nms_thresh=cfg.region_nms_thresh, max_regions=cfg.max_regions,
                                     crops_per_batch=args.crops_per_batch).region_boxes for t, b in zip(tensors, boxes)]

    run_a(), run_b()  # warm-up (oneDNN kernels, allocator)
    times: dict[str, list[float]] = {"a": [], "b": []}
    kept: dict[str, list[torch.Tensor]] = {}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        for name, fn in (("a", run_a), ("b", run_b)):
            t0 = time.perf_counter()
            kept[name] = fn()
            times[name].append(time.perf_counter() - t0)
    # where the time goes: crop cutting alone in each path, and the model alone on ready crops
    def cut_a() -> None:
        tf = transforms.Compose([transforms.Resize(model.image_size, transforms.InterpolationMode.BICUBIC),
                                 transforms.CenterCrop(model.image_size), transforms.ToTensor(),
                                 transforms.Normalize(crops.CLIP_MEAN, crops.CLIP_STD)])
        for im, b in zip(pil, boxes):
            for x_lo, y_lo, x_hi, y_hi in crops.crop_windows(b, cfg.crop_scale, im.height, im.width).tolist():
                crop = im.crop((x_lo, y_lo, x_hi, y_hi))
                square = Image.new("RGB", (max(crop.size),) * 2)
                square.paste(crop, ((square.width - crop.width) // 2, (square.height - crop.height) // 2))
                tf(square)

    ready = [model.normalize(crops.cut_crops(t, b, scale=cfg.crop_scale, size=model.image_size))
             for t, b in zip(tensors, boxes)]

    def model_only() -> None:
        with torch.no_grad():
            for x in ready:
                clip.encode_images(model, x)

    parts = {}
    for name, fn in (("cut_per_crop_pil", cut_a), ("cut_batched", lambda: [crops.cut_crops(
            t, b, scale=cfg.crop_scale, size=model.image_size) for t, b in zip(tensors, boxes)]),
                     ("model", model_only)):
        t0 = time.perf_counter()
        fn()
        parts[name] = (time.perf_counter() - t0) / n_crops * 1e6
    overlap = statistics.mean(float(box_iou(a, b).max(1).values.mean()) for a, b in zip(kept["a"], kept["b"]) if len(a))
    bound = matmul_flops_per_second() / flops_per_crop(model)
    speed = {k: n_crops / statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "bench_regions", "date": artefacts.utc_now(), "command": " ".join(["python", *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "model": manifest["clip"]["model_name"], "image_size": model.image_size, "images": len(records),
        "crops": n_crops, "anchors_per_image": n_crops / len(records), "repeats": args.repeats,
        "seconds": times, "crops_per_s": {"per_crop_pil": speed["a"], "batched": speed["b"]},
        "ratio_batched_over_pil": speed["b"] / speed["a"],
        "model_flops_per_crop": flops_per_crop(model), "fp32_bound_crops_per_s": bound,
        "fraction_of_bound": {"per_crop_pil": speed["a"] / bound, "batched": speed["b"] / bound},
        "kept_box_agreement_mean_iou": overlap,
        "microseconds_per_crop": parts,
        # even with free crop cutting, the batched path cannot beat the per-crop one by more than this
        "ratio_bound_if_cutting_were_free": (parts["cut_per_crop_pil"] + parts["model"]) / parts["model"],
    }
    artefacts.atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("crops_per_s", "ratio_batched_over_pil", "fraction_of_bound",
                                              "kept_box_agreement_mean_iou", "microseconds_per_crop",
                                              "ratio_bound_if_cutting_were_free")}, indent=2))


if __name__ == "__main__":
    main()
