"""Calibration of the toy teacher against real CLIP's behaviour: val GT-crop top-1 with and without
the scene camera, before and after stage 01's LayerNorm tuning, base and novel.

Real CLIP ViT-B/32 on COCO GT crops loses accuracy to the crop-vs-web domain gap and re-normalising
its LayerNorms on base crops wins about 25 points back on base and novel alike (arXiv 2303.12145,
README of the authors' code). The toy teacher should behave the same way, and the gap it suffers
should be the photographic one (the scene camera), not a semantic one: so the same val scenes are
drawn again without the camera (same seeds, same objects) and measured too.

Usage: ``python benchmarks/calibrate_teacher.py --run runs/toy_coco [--params params/toy_coco.yaml]``
(needs stages 00 and 01 of the run). Writes ``benchmarks/results/calibrate_teacher[-NAME].json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ezsd_core import artefacts, clip, config, crops, data, runtime, toydraw, toyworld
from ezsd_core.stages import finetune_clip

RESULTS = Path(__file__).resolve().parent / "results"


def _crops(images: list[torch.Tensor], records: list, size: int) -> torch.Tensor:
    return torch.cat([crops.cut_crops(im, r.gt_boxes, scale=1.2, size=size) for im, r in zip(images, records)])


@torch.no_grad()
def _top1(model: clip.Clip, x: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, novel: torch.Tensor,
          areas: torch.Tensor) -> dict[str, float]:
    emb = torch.cat([clip.encode_images(model, model.normalize(x[s:s + 512])) for s in range(0, len(x), 512)])
    pred = (nn.functional.normalize(emb, dim=-1) @ text.T).argmax(1)
    return {k: round(v, 4) for k, v in finetune_clip.accuracy_table(pred, labels, novel, areas).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="run root with stages 00 and 01")
    p.add_argument("--params", type=Path, default=Path("params/toy_coco.yaml"))
    p.add_argument("--name", default="", help="suffix of the results file")
    args = p.parse_args()
    runtime.configure_threads()
    manifest = artefacts.require_complete(args.run, "finetune_clip")
    cfg = config.stage_config(config.read_params(args.params), "finetune_clip", source=str(args.params),
                              overrides=[f"common.{k}={manifest['config'][k]}" for k in ("data_root", "run_root")])
    world = json.loads((cfg.data_root / "world.json").read_text())["spec"]
    split, records = data.read_config_records(cfg, "val")
    records = [r for r in records if len(r.gt_boxes)]
    index = {f"{i + 1:06d}.png": i for i in range(world["num_val"])}
    weights = np.ones(len(toyworld.CATEGORY_NAMES))
    camera_free = []
    for r in records:  # the same scene (same seed, same objects), drawn without the scene camera
        seed = toyworld._item_seed(world["seed"], "coco/val", index[Path(r.file_name).name])
        image, _ = toydraw.render_scene(seed, world["image_size"], weights, world["max_objects"], camera=0.0)
        camera_free.append(torch.from_numpy(np.asarray(image)).permute(2, 0, 1).contiguous())
    with_camera = [data.read_image(r.file_name) for r in records]
    lut = {cid: k for k, cid in enumerate(split.ids("all"))}
    labels = torch.cat([torch.tensor([lut[int(c)] for c in r.gt_category_ids]) for r in records])
    novel = torch.tensor([split.role_of(split.ids("all")[int(k)]) == "novel" for k in labels])
    areas = torch.cat([(r.gt_boxes[:, 2] - r.gt_boxes[:, 0]) * (r.gt_boxes[:, 3] - r.gt_boxes[:, 1]) for r in records])
    tuned, _ = clip.load_tuned(artefacts.stage_dir(args.run, "finetune_clip"))
    untuned = clip.build_clip(manifest["clip"]["model_name"], manifest["clip"]["pretrained"])
    out = {"run": str(args.run), "num_crops": len(labels), "num_novel": int(novel.sum())}
    for name, model in (("before", untuned), ("after", tuned)):
        text = clip.encode_texts(model, split.prompt_names("all"), cfg.prompt_templates)
        for cam, images in (("scene_camera", with_camera), ("no_camera", camera_free)):
            out[f"{name}/{cam}"] = _top1(model, _crops(images, records, model.image_size), text, labels, novel, areas)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"calibrate_teacher{'-' + args.name if args.name else ''}.json"
    artefacts.atomic_write_json(path, out)
    print(f"{'':22s}" + "".join(f"{k:>8s}" for k in ("all", "base", "novel")))
    for key in ("before/no_camera", "before/scene_camera", "after/no_camera", "after/scene_camera"):
        print(f"{key:22s}" + "".join(f"{100 * out[key][f'top1_{k}']:8.1f}" for k in ("all", "base", "novel")))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
