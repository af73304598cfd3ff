"""How the teacher names pure clutter: the scenes' background with no shape in it, through the scene camera.

Draws ``--num`` 128 px scene backgrounds (``toydraw.background``, the same clutter as every scene and
web picture), cuts one random square window of 24-72 px from each (the sizes of stage 02's anchors),
and classifies it with a run's stage-01 CLIP over the 29 proposal names ("a photo of a {name}"),
at the teacher's own logit scale. Reports the share of windows given each name, the mean max
probability and the mean proposal score ln C - H (stage 02's selection score). With
``--without-lines`` the background's distractor lines are left out, to test whether they are what
makes clutter look like the thin shapes.

    .venv/bin/python benchmarks/diagnose_background.py --run runs/toy_coco
writes benchmarks/results/diagnose_background_<run name>.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ezsd_core import artefacts, clip, toydraw
from ezsd_core.toyshapes import CATEGORY_NAMES

RESULTS = Path(__file__).resolve().parent / "results"


def clutter_windows(num: int, seed: int, lines: bool) -> torch.Tensor:
    """(num, 3, 32, 32) float crops in [0, 1] of shape-free scene backgrounds."""
    draw_line = ImageDraw.ImageDraw.line
    if not lines:
        ImageDraw.ImageDraw.line = lambda self, *a, **k: None  # the background's distractor lines only
    try:
        out = []
        for s in range(num):
            rng = np.random.default_rng(seed + s)
            img, _ = toydraw.background(rng, 128)
            pil = toydraw.scene_camera(rng, img)
            side = int(rng.integers(24, 72))
            x, y = rng.integers(0, 128 - side, 2)
            window = pil.crop((int(x), int(y), int(x) + side, int(y) + side)).resize((32, 32), Image.BICUBIC)
            out.append(torch.from_numpy(np.asarray(window, np.float32) / 255.0).permute(2, 0, 1))
        return torch.stack(out)
    finally:
        ImageDraw.ImageDraw.line = draw_line


def name_clutter(model: clip.Clip, windows: torch.Tensor) -> dict:
    """Names, max probability and ln C - H of the teacher on (N, 3, 32, 32) windows."""
    names = list(CATEGORY_NAMES)
    text = clip.encode_texts(model, names, ["a photo of a {}"])
    with torch.no_grad():
        emb = F.normalize(clip.encode_images(model, model.normalize(windows)), dim=-1)
        p = (model.model.logit_scale.exp() * emb @ text.T).softmax(-1)
    entropy = -(p * p.clamp_min(1e-5).log()).sum(-1)
    counts = collections.Counter(p.argmax(-1).tolist())
    return {"num_windows": len(windows), "mean_max_prob": round(float(p.max(-1).values.mean()), 4),
            "mean_score_lnC_minus_H": round(float(math.log(len(names)) - entropy.mean()), 4),
            "names": {names[k]: round(v / len(windows), 4) for k, v in counts.most_common(8)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a run whose 01_finetune_clip is complete")
    p.add_argument("--num", type=int, default=800)
    p.add_argument("--seed", type=int, default=1000)
    args = p.parse_args()
    finetune = artefacts.stage_dir(args.run, "finetune_clip")
    artefacts.require_complete(args.run, "finetune_clip")
    model, _ = clip.load_tuned(finetune)
    result = {"run": str(args.run), "with_lines": name_clutter(model, clutter_windows(args.num, args.seed, True)),
              "without_lines": name_clutter(model, clutter_windows(args.num, args.seed, False))}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"diagnose_background_{args.run.name}.json"
    artefacts.atomic_write_json(path, result)
    print(json.dumps(result, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
