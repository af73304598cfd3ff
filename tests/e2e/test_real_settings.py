"""The four real settings end to end (stages 01-05) on data in the exact COCO 2017 / LVIS v1 formats
(``realformat.write_real_dataset``), with a random-init ViT-B/32 and a random-init ResNet-50.

The params files run as they are, changed only by ``--set`` values from ``shrink_overrides``: sizes
(images, anchors, regions kept per image, steps, shards), where the data and runs live, and the two
switches that ask for random-init weights (no download). ``test_overrides_touch_only_sizes`` holds
that list to account. The tests check the vocabulary each stage uses (method spec: 80 / 65 COCO names,
1203 / 866 LVIS names), the base/novel subsets of the metrics, and that deleting every novel
annotation of the training JSON leaves stages 01-03 byte-identical (no stage reads them).
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from realformat import write_real_dataset
from safetensors.torch import load_file

from ezsd_core import artefacts, config, splits

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ("coco_48_17", "coco_60_20", "lvis_866_337", "lvis_405_798")
STAGES = ("finetune_clip", "propose_regions", "extract_features", "train_detector", "evaluate")
# Keys a shrinking override may touch: how much work, never what the method does.
SIZE_KEYS = {
    "finetune_clip": {"epochs", "batch_size", "log_every"},
    "propose_regions": {"resize_min_side", "resize_max_side", "anchor_stride", "max_regions", "num_recall_images",
                        "crops_per_batch", "num_shards"},
    "extract_features": {"num_candidates", "max_regions", "crops_per_batch", "num_shards"},
    "train_detector": {"min_sizes", "max_size", "rpn_pre_nms_train", "rpn_post_nms_train", "rpn_pre_nms_test",
                       "rpn_post_nms_test", "rpn_batch_size", "roi_batch_size", "num_distill_regions", "max_steps",
                       "warmup_steps", "lr_steps", "batch_size", "checkpoint_every", "log_every"},
    "evaluate": {"batch_size"},
}
PLACES = {"common.data_root", "common.run_root", "common.device", "common.num_workers"}
RANDOM_INIT = ("finetune_clip.clip_pretrained=null", "finetune_clip.allow_random_init=true",
               "train_detector.pretrained_backbone=false")


def shrink_overrides(doc: dict, data_root: Path, run_root: Path) -> list[str]:
    """The ``--set`` values that make a real params file run in seconds on the fixture."""
    steps = 2
    sizes = {
        "finetune_clip": {"epochs": 1, "batch_size": 2, "log_every": 1},
        "propose_regions": {"resize_min_side": 64, "resize_max_side": 64, "anchor_stride": 64, "max_regions": 8,
                            "num_recall_images": 2, "crops_per_batch": 64, "num_shards": 1},
        "extract_features": {"num_candidates": 8, "max_regions": 4, "crops_per_batch": 64, "num_shards": 1},
        "train_detector": {"min_sizes": [max(32, round(s * 0.08)) for s in doc["train_detector"]["min_sizes"]],
                           "max_size": 64, "rpn_pre_nms_train": 100, "rpn_post_nms_train": 50,
                           "rpn_pre_nms_test": 50, "rpn_post_nms_test": 50, "rpn_batch_size": 32,
                           "roi_batch_size": 32, "num_distill_regions": 4, "max_steps": steps, "warmup_steps": 1,
                           "lr_steps": [steps - 1] if doc["train_detector"]["lr_steps"] else [], "batch_size": 2,
                           "checkpoint_every": steps, "log_every": 1},
        "evaluate": {"batch_size": 2},
    }
    out = [f"common.data_root={data_root}", f"common.run_root={run_root}", "common.device=cpu",
           "common.num_workers=0", *RANDOM_INIT]
    out += [f"{stage}.{k}={json.dumps(v)}" for stage, kv in sizes.items() for k, v in kv.items()]
    return out


def run_setting(split: str, data_root: Path, run_root: Path, stages: tuple[str, ...] = STAGES) -> None:
    """Run ``stages`` of ``params/<split>.yaml`` in-process (the same configs ``ezsd run --set`` builds)."""
    doc = config.read_params(ROOT / f"params/{split}.yaml")
    overrides = shrink_overrides(doc, data_root, run_root)
    for stage in stages:
        module = importlib.import_module(f"ezsd_core.stages.{stage}")
        module.run(config.stage_config(doc, stage, source=f"params/{split}.yaml", overrides=overrides))
