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
from test_strict_zero_shot import _outputs  # a stage's listed outputs, loaded

from ezsd_core import artefacts, config, splits, trained

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ("coco_48_17", "coco_60_20", "lvis_866_337", "lvis_405_798")
STAGES = ("finetune_clip", "propose_regions", "extract_features", "train_detector", "evaluate")
# Keys a shrinking override may touch: how much work, never what the method does.
SIZE_KEYS = {
    "finetune_clip": {"epochs", "batch_size", "log_every"},
    "propose_regions": {"resize_min_side", "resize_max_side", "max_regions", "num_recall_images",
                        "crops_per_batch", "num_shards"},
    "extract_features": {"num_candidates", "max_regions", "crops_per_batch", "num_shards"},
    "train_detector": {"min_sizes", "max_size", "rpn_pre_nms_train", "rpn_post_nms_train", "rpn_pre_nms_test",
                       "rpn_post_nms_test", "rpn_batch_size", "roi_batch_size", "num_distill_regions", "epochs",
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
        # LVIS: no tuning step (one step back-propagates through 866 prompts: minutes on 2 cores); the
        # COCO settings and the toy tests tune
        "finetune_clip": {"epochs": 0 if doc["common"]["split"].startswith("lvis") else 1, "log_every": 1},
        "propose_regions": {"resize_min_side": 32, "resize_max_side": 32, "max_regions": 8,
                            "num_recall_images": 1, "crops_per_batch": 64, "num_shards": 1},
        "extract_features": {"num_candidates": 8, "max_regions": 4, "crops_per_batch": 64, "num_shards": 1},
        "train_detector": {"min_sizes": [max(32, round(s * 0.08)) for s in doc["train_detector"]["min_sizes"]],
                           "max_size": 64, "rpn_pre_nms_train": 100, "rpn_post_nms_train": 50,
                           "rpn_pre_nms_test": 50, "rpn_post_nms_test": 50, "rpn_batch_size": 32,
                           "roi_batch_size": 32, "num_distill_regions": 4, "epochs": 1, "warmup_steps": 1,
                           # 1 epoch of the 4 fixture images at batch 2 = 2 steps; the drop (in epochs) at its end
                           "lr_steps": [1] if doc["train_detector"]["lr_steps"] else [], "batch_size": 2,
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


# What the method spec fixes per setting: base / novel / proposal vocabulary sizes, the vocabulary
# stage 05 detects with, and the train file the setting reads.
EXPECTED = {
    "coco_48_17": {"base": 48, "novel": 17, "all": 65, "proposal": 80, "train": "instances_train2017.json"},
    "coco_60_20": {"base": 60, "novel": 20, "all": 80, "proposal": 80, "train": "instances_train2017.json"},
    "lvis_866_337": {"base": 866, "novel": 337, "all": 1203, "proposal": 1203, "train": "lvis_v1_train.json"},
    "lvis_405_798": {"base": 405, "novel": 798, "all": 1203, "proposal": 866, "train": "lvis_v1_train.json"},
}


@pytest.fixture(scope="module")
def real_data(tmp_path_factory) -> Path:
    return write_real_dataset(tmp_path_factory.mktemp("real") / "coco", num_train=2, num_val=2)


# LVIS settings take minutes on 2 cores (ViT-B/32's text tower over 1203 prompts): marked slow, so
# `pytest -m "not slow"` leaves them out; the default run includes them.
@pytest.fixture(scope="module",
                params=[*SETTINGS[:2], *(pytest.param(s, marks=pytest.mark.slow) for s in SETTINGS[2:])])
def real_run(request, real_data: Path, tmp_path_factory) -> tuple[str, Path]:
    split = request.param
    run_root = tmp_path_factory.mktemp("runs") / split
    run_setting(split, real_data, run_root)
    return split, run_root


def _stage_file(run_root: Path, stage: str, name: str) -> Path:
    return artefacts.stage_dir(run_root, stage) / name


def test_overrides_touch_only_sizes(tmp_path: Path) -> None:
    """The shrinking --set values change how much work, where things live and the weights' source only,
    and every size they set is at most the params file's own."""
    for split in SETTINGS:
        doc = config.read_params(ROOT / f"params/{split}.yaml")
        for text in shrink_overrides(doc, tmp_path, tmp_path / "runs"):
            section, key, value = config.parse_override(text)
            if text in RANDOM_INIT or f"{section}.{key}" in PLACES:
                continue
            assert key in SIZE_KEYS.get(section, set()), f"{split}: --set {text} is not a size"
            given = doc[section][key]
            if key == "lr_steps":  # the step schedule keeps its shape: decays iff the file's does
                assert bool(value) == bool(given) and all(v < 2 for v in value)
            elif isinstance(value, list):
                assert len(value) == len(given) and all(v <= g for v, g in zip(value, given)), text
            else:
                assert value <= given, f"{split}: --set {text} grows {section}.{key} (file: {given})"


def test_each_stage_uses_the_settings_vocabularies(real_run) -> None:
    split, run_root = real_run
    want = EXPECTED[split]
    text = load_file(str(_stage_file(run_root, "finetune_clip", "text_embeds.safetensors")))
    for vocab in ("base", "novel", "all", "proposal"):
        assert len(text[f"{vocab}_category_ids"]) == want[vocab] == len(text[vocab]), (split, vocab)
    doc = json.loads(_stage_file(run_root, "train_detector", "manifest.json").read_text())
    assert len(doc["vocabulary"]["base"]) == want["base"]
    state = load_file(str(_stage_file(run_root, "train_detector", "model.safetensors")))
    assert state["roi_heads.box_predictor.text_embeds"].shape[0] == want["base"], "stage 04 trains on base names"
    proposal = set(text["proposal_category_ids"].tolist())
    regions = load_file(str(next((artefacts.stage_dir(run_root, "propose_regions") / "regions").glob("*.safetensors"))))
    assert regions["region_category_ids"].numel() > 0 and set(regions["region_category_ids"].tolist()) <= proposal
    feats = load_file(str(next((artefacts.stage_dir(run_root, "extract_features") / "feats").glob("*.safetensors"))))
    base = set(text["base_category_ids"].tolist())
    assert set(feats["gt_category_ids"].tolist()) <= base, "stage 03 distils base GT boxes only"
    vocabulary = config.read_params(ROOT / f"params/{split}.yaml")["evaluate"]["vocabulary"]
    model, _ = trained.load_trained_detector(run_root, "cpu")
    ids = trained.set_run_vocabulary(model, run_root, vocabulary)  # what stage 05 classifies with
    assert len(ids) == want[vocabulary] and ids.tolist() == text[f"{vocabulary}_category_ids"].tolist()
    detected = {d["category_id"] for d in json.loads(_stage_file(run_root, "evaluate", "detections.json").read_text())}
    assert detected <= set(ids.tolist())  # (a random-init RPN may propose nothing on a 64-px photo)


def test_metrics_have_the_base_and_novel_subsets(real_run) -> None:
    split, run_root = real_run
    metrics = json.loads(_stage_file(run_root, "evaluate", "metrics.json").read_text())
    if split.startswith("coco"):
        for subset in ("base", "novel", "all"):  # both subsets have val GT here, so none is -1
            assert 0.0 <= metrics[f"bbox/AP_{subset}"] <= 1.0 and 0.0 <= metrics[f"bbox/AP50_{subset}@100"] <= 1.0
    else:  # LVIS: rare / common / frequent; novel = r (866/337) or c + r (405/798)
        for key in ("bbox/AP", "bbox/APr", "bbox/APc", "bbox/APf"):
            assert key in metrics and -1.0 <= metrics[key] <= 1.0, key
    gt = json.loads((Path(artefacts.read_manifest(artefacts.stage_dir(run_root, "evaluate"))["config"]["data_root"])
                     / config.read_params(ROOT / f"params/{split}.yaml")["common"]["val_annotations"]).read_text())
    split_def = splits.split_from_categories(split, gt["categories"])
    roles = {split_def.role_of(a["category_id"]) for a in gt["annotations"]}
    assert {"base", "novel"} <= roles, "the fixture's val set has base and novel boxes of this setting"


def test_no_stage_reads_novel_training_annotations(real_run, real_data: Path, tmp_path: Path) -> None:
    """Deleting every novel annotation of the training JSON leaves stages 01-03 byte-identical."""
    split, with_novel = real_run
    stripped = tmp_path / "coco"
    shutil.copytree(real_data, stripped)
    ann = stripped / "annotations" / EXPECTED[split]["train"]
    doc = json.loads(ann.read_text())
    novel = set(splits.split_from_categories(split, doc["categories"]).ids("novel"))
    before = len(doc["annotations"])
    doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] not in novel]
    assert 0 < len(doc["annotations"]) < before, "the fixture must have novel training boxes to delete"
    ann.write_text(json.dumps(doc))
    run_setting(split, stripped, tmp_path / "runs" / split, STAGES[:3])
    for stage in STAGES[:3]:
        a, b = _outputs(with_novel, stage), _outputs(tmp_path / "runs" / split, stage)
        assert a.keys() == b.keys()
        for name in a:
            if isinstance(a[name], dict):
                assert a[name].keys() == b[name].keys()
                for key in a[name]:
                    assert torch.equal(a[name][key], b[name][key]), f"{split} {stage}/{name}:{key} differs"
            elif name == "metrics.json":  # all but timings
                strip = lambda raw: json.dumps({k: v for k, v in json.loads(raw).items() if "second" not in k},
                                               sort_keys=True)
                assert strip(a[name]) == strip(b[name]), f"{split} {stage}/metrics.json differs"
            else:
                assert a[name] == b[name], f"{split} {stage}/{name} differs"
