"""Paired comparison of finished runs: every AP with its 95% bootstrap interval over the val images,
and AP(reference) - AP(x) with the interval of the difference on the same resampled images.
Training replicates of one method (``train_detector.replicate``) can be pooled with ``--mean
NAME=RUN,RUN,...``: NAME's AP is the replicates' mean on each resample, and NAME may be the reference.

For any two runs on the same val set (a variant tried on the development world, say), as ``ezsd
ablate`` does for its four fixed variants. The ground truth is the val file under the readers' input
rules, exactly as stage 05 scores it.

    .venv/bin/python benchmarks/compare_runs.py --params params/toy_coco.yaml \\
        --set common.data_root=data/dev100 --reference runs/dev100-D1 runs/dev100-A1 [...]
    .venv/bin/python benchmarks/compare_runs.py --mean d=runs/s0own,runs/s0own-r1 \\
        --mean b=runs/s0own-b,runs/s0own-b-r1 --reference d runs/s0own runs/s0own-r1 runs/s0own-b runs/s0own-b-r1
writes ``benchmarks/results/compare_runs-<reference name, or --out-name>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ezsd_core import artefacts, bootstrap, config, data, splits

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("bbox/AP50_base", "bbox/AP50_novel", "bbox/AP50_all", "bbox/AP_base", "bbox/AP_novel")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params/toy_coco.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="params override naming the data (e.g. common.data_root=data/dev100)")
    p.add_argument("--reference", type=Path, required=True, help="run root (or --mean name) the others are compared to")
    p.add_argument("runs", type=Path, nargs="+", help="other run roots (complete 05_evaluate)")
    p.add_argument("--mean", action="append", default=[], metavar="NAME=RUN,RUN",
                   help="pool training replicates: NAME's AP is their mean on each resample (runs listed here "
                        "are read even when not given as positional runs)")
    p.add_argument("--num-resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-name", default=None,
                   help="results file compare_runs-<this>.json (default: the reference's name)")
    args = p.parse_args()
    cfg = config.stage_config(config.read_params(args.params), "evaluate", source=str(args.params),
                              overrides=args.overrides)
    ann_file = cfg.data_root / cfg.val_annotations
    split = splits.split_from_categories(cfg.split, json.loads(ann_file.read_text())["categories"])
    if split.style != "coco":
        p.error(f"--params: {cfg.split} is LVIS-style; only COCO-style AP is bootstrapped")
    means = {}
    for text in args.mean:
        name, _, members = text.partition("=")
        if not name or not members:
            p.error(f"--mean {text!r}: expected NAME=RUN,RUN,... (e.g. d=runs/s0own,runs/s0own-r1)")
        means[name] = [m for m in members.split(",") if m]
    roots = {str(r): r for r in (args.reference, *args.runs) if str(r) not in means}
    roots.update({m: Path(m) for members in means.values() for m in members})
    results = {}
    for name, root in roots.items():
        artefacts.require_complete(root, "evaluate")
        results[name] = json.loads((artefacts.stage_dir(root, "evaluate") / "detections.json").read_text())
    with data.clean_annotation_file(ann_file, cfg.data_root / cfg.val_images) as gt:
        boot = bootstrap.bootstrap_coco_ap(gt, results, split, max_dets=cfg.box_detections_per_img,
                                           num_resamples=args.num_resamples, seed=args.seed)
    boot.update({name: bootstrap.replicate_mean(boot, members) for name, members in means.items()})
    diffs = bootstrap.paired_differences(boot, str(args.reference), KEYS)
    out = {"benchmark": "compare_runs", "date": artefacts.utc_now(), "val_annotations": str(ann_file),
           "num_resamples": args.num_resamples, "seed": args.seed, "reference": str(args.reference),
           "runs": {name: {k: {"ap": b.point[k], "ci": list(b.interval(k))} for k in KEYS} for name, b in boot.items()},
           "means": means, "differences": diffs}
    for name, b in boot.items():
        print(f"{name:32s}" + "".join(f"  {k.split('/')[1]} {b.point[k]:.3f} [{b.interval(k)[0]:.3f}, "
                                      f"{b.interval(k)[1]:.3f}]" for k in KEYS[:2]))
    for name, per_key in diffs.items():
        print(f"ref - {name:26s}" + "".join(f"  {k.split('/')[1]} {d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                                            for k, d in list(per_key.items())[:2]))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"compare_runs-{args.out_name or args.reference.name}.json"
    artefacts.atomic_write_json(path, out)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
