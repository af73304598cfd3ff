"""The teacher and detector backbone shipped in the package (the recorded output of stage 00 on the
toy world) load and reproduce their recorded held-out web and iconic accuracies within one point."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ezsd_core import artefacts, clip, config, toydraw, toyworld
from ezsd_core.stages import pretrain_clip


def _heldout(spec: toyworld.WorldSpec, kind: str) -> tuple[list[np.ndarray], list[int]]:
    size = spec.web_size if kind == "web" else spec.iconic_size
    render = toydraw.render_web if kind == "web" else toydraw.render_iconic
    pictures, labels = [], []
    for i in range(toyworld.picture_counts(spec, kind)["heldout"]):
        seed, k = toyworld.picture_item(spec, kind, "heldout", i)
        pictures.append(np.asarray(render(seed, size, k)[0]))
        labels.append(k)
    return pictures, labels


def test_shipped_teacher_reproduces_its_recorded_accuracy() -> None:
    folder = pretrain_clip.shipped_teacher()
    record = artefacts.read_manifest(folder)
    assert record is not None, "ezsd_core/resources/teacher/manifest.json is missing"
    assert (folder / pretrain_clip.WEIGHTS).stat().st_size <= 20 * 2**20
    assert record["command"].startswith("ezsd run")
    assert set(record["recipe_hashes"]) == {"teacher", "backbone"}
    summary, recipe = record["summary"], record["recipe"]
    spec = toyworld.WorldSpec(**{**toyworld.WorldSpec().__dict__, **recipe["teacher"]["pictures"],
                                 "num_web_heldout": summary["num_web_heldout"],
                                 "num_iconic_heldout": summary["num_iconic_heldout"]})
    teacher = clip.build_clip(record["config"]["clip_model"], str(folder / pretrain_clip.WEIGHTS))
    text = clip.encode_texts(teacher, recipe["teacher"]["categories"], [pretrain_clip.PROMPT])
    base = [i for i, name in enumerate(toyworld.CATEGORY_NAMES) if name in recipe["backbone"]["backbone_classes"]]
    backbone_images, backbone_labels = [], []
    for kind in toyworld.PICTURE_KINDS:
        pictures, labels = _heldout(spec, kind)
        x = teacher.normalize(pretrain_clip.iconic_batch(pictures, teacher.image_size).float() / 255)
        with torch.no_grad():
            acc = pretrain_clip.zero_shot_top1(clip.encode_images(teacher, x), text, torch.tensor(labels))
        assert acc == pytest.approx(summary[f"{kind}/top1"], abs=0.01), kind
        keep = [n for n, k in enumerate(labels) if k in base]
        backbone_images.append(pretrain_clip.iconic_batch([pictures[n] for n in keep], pretrain_clip.BACKBONE_SIZE))
        backbone_labels += [base.index(labels[n]) for n in keep]
    assert summary["iconic/top1"] >= 0.90, "clean single objects are easy for the teacher"
    backbone = load_file(str(folder / pretrain_clip.BACKBONE))
    top1 = pretrain_clip.backbone_top1(backbone, torch.cat(backbone_images), torch.tensor(backbone_labels))
    assert top1 == pytest.approx(summary["backbone/heldout_top1_base"], abs=0.01)


def test_the_default_world_and_params_reuse_the_shipped_teacher(smoke_world: Path, tmp_path: Path) -> None:
    """`make demo` must install the shipped teacher, not train one for ~45 CPU-minutes: the recipe of
    a world drawn with the default WorldSpec under params/toy_coco.yaml is the one the shipped
    checkpoint records. Fails whenever the teacher's pictures or knobs change without a new teacher."""
    world = tmp_path / "default"
    shutil.copytree(smoke_world / "coco" / "annotations", world / "coco" / "annotations")  # the names only
    info = json.loads((smoke_world / "world.json").read_text())
    (world / "world.json").write_text(json.dumps({**info, "spec": asdict(toyworld.WorldSpec())}))
    params = Path(__file__).resolve().parents[2] / "params" / "toy_coco.yaml"
    cfg = config.stage_config(config.read_params(params), "pretrain_clip", source=str(params),
                              overrides=[f"common.data_root={world}"])
    hashes = {part: artefacts.hash_json(r) for part, r in pretrain_clip.recipe(cfg).items()}
    shipped = artefacts.read_manifest(pretrain_clip.shipped_teacher())["recipe_hashes"]
    assert hashes == shipped, "retrain the teacher and ship it (README, 'Stage 00')"
