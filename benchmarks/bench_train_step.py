"""Benchmark of one detector training step: EZSD with and without the distillation branch, EZSD on
torchvision's own RoIAlign and 1x1 convolutions (the baseline of ``fastops``), and a plain torchvision
Mask R-CNN with the same backbone, RPN and head sizes, timed in one process.

Batches are real toy-world training images with their GT boxes and masks; distillation RoIs are the
image's GT boxes plus ``num_distill_regions`` random boxes with random targets (the cost does not
depend on the target values). Steps are interleaved (A, B, C, A, B, C, ...) after warm-up so that
machine-load drift hits all three alike; medians are reported.

    .venv/bin/python benchmarks/bench_train_step.py --params params/toy_coco.yaml
writes benchmarks/results/bench_train_step.json.
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
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from ezsd_core import artefacts, config, data, detector, fastops, runtime
from ezsd_core.stages import train_detector as td


def plain_maskrcnn(spec: detector.DetectorSpec, num_classes: int) -> MaskRCNN:
    """torchvision's Mask R-CNN with EZSD's backbone, anchors, RPN/RoI sampling and head widths."""
    backbone = detector.BACKBONES[spec.backbone](spec)
    sizes = tuple((s,) for s in spec.rpn_anchor_sizes)
    return MaskRCNN(
        backbone, num_classes=None, min_size=spec.min_size, max_size=spec.max_size,
        rpn_anchor_generator=AnchorGenerator(sizes, (spec.rpn_anchor_ratios,) * len(sizes)),
        rpn_pre_nms_top_n_train=spec.rpn_pre_nms_train, rpn_post_nms_top_n_train=spec.rpn_post_nms_train,
        rpn_batch_size_per_image=spec.rpn_batch_size, box_batch_size_per_image=spec.roi_batch_size,
        box_head=TwoMLPHead(backbone.out_channels * 49, spec.head_fc_dim),
        box_predictor=FastRCNNPredictor(spec.head_fc_dim, num_classes + 1),
        mask_head=MaskRCNNHeads(backbone.out_channels, [spec.mask_head_dim] * spec.mask_head_convs, 1),
        mask_predictor=MaskRCNNPredictor(spec.mask_head_dim, spec.mask_head_dim, num_classes + 1))


def with_torchvision_ops(model: detector.EzsdDetector) -> detector.EzsdDetector:
    """The same model on torchvision's RoIAlign and nn.Conv2d 1x1 kernels instead of ``fastops`` (the baseline)."""
    heads = model.roi_heads
    for name in ("box_roi_pool", "mask_roi_pool"):
        pool = getattr(heads, name)
        if pool is not None:
            if pool.aligned:
                raise SystemExit("the torchvision-ops baseline needs roi_aligned: false")
            setattr(heads, name, MultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio,
                                                    canonical_scale=pool.canonical_scale))
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, fastops.PointwiseConv2d):
                plain = torch.nn.Conv2d(child.in_channels, child.out_channels, 1, bias=child.bias is not None,
                                        device="meta")
                plain.weight, plain.bias = child.weight, child.bias
                setattr(parent, child_name, plain)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=Path("params/toy_coco.yaml"))
    p.add_argument("--steps", type=int, default=15, help="timed steps per model (after 3 warm-up steps)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_train_step.json"))
    args = p.parse_args()
    runtime.configure_threads()
    torch.manual_seed(0)
    cfg = config.stage_config(config.read_params(args.params), "train_detector", source=str(args.params))
    split, records = data.read_config_records(cfg, "train", with_masks=True)
    base = split.label_map("base")
    dim = 64
    spec = td.detector_spec(cfg, embed_dim=dim)
    text = torch.nn.functional.normalize(torch.randn(len(base), dim), dim=-1)
    models = {"ezsd_distill": detector.build_detector(spec, text),
              "ezsd_distill_torchvision_ops": with_torchvision_ops(detector.build_detector(spec, text)),
              "ezsd_no_distill": detector.build_detector(spec, text),
              "torchvision_maskrcnn": plain_maskrcnn(spec, len(base))}
    dataset = td.DistillDataset(records, base, None, cfg)
    gen = torch.Generator().manual_seed(0)

    def batch(step: int):
        items = [dataset[(0, (step * cfg.batch_size + i) % len(dataset))] for i in range(cfg.batch_size)]
        images, targets = [x[0] for x in items], [x[1] for x in items]
        distill = []
        for img, t in zip(images, targets):
            xy = torch.rand(cfg.num_distill_regions, 2, generator=gen) * img.shape[-1] * 0.7
            wh = 8 + torch.rand(cfg.num_distill_regions, 2, generator=gen) * img.shape[-1] * 0.3
            boxes = torch.cat([t["boxes"], torch.cat([xy, xy + wh], 1)])
            distill.append({"boxes": boxes, "embeds": torch.randn(len(boxes), dim, generator=gen),
                            "weights": torch.ones(len(boxes))})
        return images, targets, distill

    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for step in range(3 + args.steps):
        images, targets, distill = batch(step)
        for name, model in models.items():
            model.train()
            t0 = time.perf_counter()
            if name == "torchvision_maskrcnn":
                losses = model(images, targets)
            else:
                losses = model(images, targets, distill if name.startswith("ezsd_distill") else None).losses
            opts[name].zero_grad()
            sum(losses.values()).backward()
            opts[name].step()
            if step >= 3:
                times[name].append(time.perf_counter() - t0)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "bench_train_step", "date": artefacts.utc_now(), "command": " ".join(["python", *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "params": str(args.params), "batch_size": cfg.batch_size, "num_distill_regions": cfg.num_distill_regions,
        "timed_steps": args.steps, "seconds_per_step_median": median, "seconds_per_step_all": times,
        "distill_overhead": median["ezsd_distill"] / median["ezsd_no_distill"],
        "fastops_speedup": median["ezsd_distill_torchvision_ops"] / median["ezsd_distill"],
        "ezsd_distill_vs_torchvision": median["ezsd_distill"] / median["torchvision_maskrcnn"],
    }
    artefacts.atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("seconds_per_step_median", "distill_overhead", "fastops_speedup",
                                              "ezsd_distill_vs_torchvision")}, indent=2))


if __name__ == "__main__":
    main()
