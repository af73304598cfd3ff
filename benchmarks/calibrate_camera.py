"""Choose the scene camera's strength from the teacher's behaviour: stage 01 run on the same toy world
drawn again at several camera strengths, val GT-crop top-1 before and after LayerNorm tuning.

The target is real CLIP's behaviour on COCO crops, not a detection result: about 45-65% before LN
tuning and >= 75% base / >= 70% novel after (issue 8's calibration targets; the paper reports LN
tuning gains of about 25 points on base and novel crops, arXiv 2303.12145). Run it on the development
world only (``--seed 100``); the strength chosen becomes ``toydraw.SCENE_CAMERA_STRENGTH``.

Every scene keeps its seed, objects and annotations (the camera only changes pixels), so the
annotation JSON of the world is reused; stage 00 (the teacher) is hard-linked from ``--teacher-run``
and ``finetune_clip.run`` is called as the pipeline calls it.

    .venv/bin/python benchmarks/calibrate_camera.py --world data/dev100 --teacher-run runs/dev100 \\
        --strengths 0.6,0.8,1.0
writes ``benchmarks/results/calibrate_camera[-NAME].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ezsd_core import artefacts, config, toydraw, toyworld
from ezsd_core.stages import finetune_clip

RESULTS = Path(__file__).resolve().parent / "results"


def _render(job: tuple[Path, int, int, int, float]) -> None:
    path, seed, size, max_objects, strength = job
    image, _ = toydraw.render_scene(seed, size, np.ones(len(toyworld.CATEGORY_NAMES)), max_objects, camera=strength)
    image.save(path)


def redraw(world: Path, out: Path, strength: float, pool: ProcessPoolExecutor) -> None:
    """Copy of the COCO version of ``world`` in ``out`` whose scenes are drawn at camera ``strength``."""
    spec = json.loads((world / "world.json").read_text())["spec"]
    (out / "coco").mkdir(parents=True)
    shutil.copyfile(world / "world.json", out / "world.json")
    shutil.copytree(world / "coco/annotations", out / "coco/annotations")
    for subset in ("train", "val"):
        (out / "coco" / subset).mkdir()
        count = spec[f"num_{subset}"]
        jobs = [(out / "coco" / subset / f"{i + 1:06d}.png", toyworld._item_seed(spec["seed"], f"coco/{subset}", i),
                 spec["image_size"], spec["max_objects"], strength) for i in range(count)]
        list(pool.map(_render, jobs, chunksize=32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True, help="a toy world (ezsd toyworld ... --seed 100)")
    p.add_argument("--teacher-run", type=Path, required=True, help="run root whose stage 00 is complete")
    p.add_argument("--params", type=Path, default=Path("params/toy_coco.yaml"))
    p.add_argument("--strengths", default="0.6,0.8,1.0", help="comma-separated camera strengths in [0, 1]")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="params override for stage 01, e.g. finetune_clip.epochs=5 (repeatable)")
    p.add_argument("--name", default="", help="suffix of the results file")
    args = p.parse_args()
    artefacts.require_complete(args.teacher_run, config.PRETRAIN_CLIP)
    strengths = [float(s) for s in args.strengths.split(",")]
    if any(not 0.0 <= s <= 1.0 for s in strengths):
        p.error(f"--strengths: got {args.strengths}; each must lie in [0, 1]")
    params = config.read_params(args.params)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="ezsd-camera-") as tmp, ProcessPoolExecutor(args.workers) as pool:
        for s in strengths:
            data_root, run_root = Path(tmp) / f"s{s}" / "data", Path(tmp) / f"s{s}" / "runs"
            redraw(args.world, data_root, s, pool)
            src = artefacts.stage_dir(args.teacher_run, config.PRETRAIN_CLIP)
            shutil.copytree(src, artefacts.stage_dir(run_root, config.PRETRAIN_CLIP), copy_function=os.link,
                            ignore=shutil.ignore_patterns("notebooks"))
            cfg = config.stage_config(params, "finetune_clip", source=str(args.params), overrides=[
                f"common.data_root={data_root}", f"common.run_root={run_root}", "common.force=true", *args.overrides])
            summary = finetune_clip.run(cfg).summary
            rows[str(s)] = {k: summary[k] for k in sorted(summary) if k.startswith(("before/top1", "after/top1"))}
            row = rows[str(s)]
            print(f"camera {s:.2f}: before {100 * row['before/top1_base']:.1f} base / "
                  f"{100 * row['before/top1_novel']:.1f} novel, after {100 * row['after/top1_base']:.1f} / "
                  f"{100 * row['after/top1_novel']:.1f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"calibrate_camera{'-' + args.name if args.name else ''}.json"
    artefacts.atomic_write_json(path, {"benchmark": "calibrate_camera", "date": artefacts.utc_now(),
                                       "world": str(args.world), "teacher_run": str(args.teacher_run),
                                       "params": str(args.params), "overrides": args.overrides, "strengths": rows})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
