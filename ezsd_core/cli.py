"""The ``ezsd`` console script: ``run``, ``submit``, ``status``, ``report``, ``verify``, ``predict``, ``ablate``,
``check``, ``export``, ``toyworld``.

Role: argument parsing and error reporting only. Params problems print one line and exit 2
before any heavy import (torch is never imported to validate a params file); a failing stage
exits 1 naming its executed notebook. Layer 4.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ezsd_core import artefacts, pipeline
from ezsd_core.config import ConfigError


def _run(args: argparse.Namespace) -> int:
    if args.stage and (args.first or args.last):
        raise ConfigError("give either --stage or --from/--to, not both")
    pipeline.run(args.params, stage=args.stage, first=args.first, last=args.last, overrides=args.set or (),
                 force=args.force, command=shlex.join(["ezsd", *sys.argv[1:]]), verbose=args.verbose)
    return 0


def _toyworld(args: argparse.Namespace) -> int:
    from ezsd_core import toyworld

    spec = toyworld.SMOKE_SPEC if args.smoke else toyworld.WorldSpec()
    changes = {k: v for k, v in vars(args).items() if k in toyworld.WorldSpec.__dataclass_fields__ and v is not None}
    spec = toyworld.WorldSpec(**{**spec.__dict__, **changes})
    out = toyworld.generate(args.out, spec, force=args.force)
    info = json.loads((out / "world.json").read_text())
    print(f"toy world in {out}: {spec.num_train} train / {spec.num_val} val scenes of {spec.image_size} px "
          f"({info['counts']['train']['coco_objects']} / {info['counts']['val']['coco_objects']} objects in the COCO "
          f"version; an LVIS version beside it); the teacher's pictures: {spec.num_web} + {spec.num_web_heldout} web "
          f"pictures of shapes in context, {spec.num_web_background} of clutter, {spec.num_iconic} + "
          f"{spec.num_iconic_heldout} iconic ones")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ezsd_core import report

    print(report.run_summary(args.params))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ezsd_core import export, predict

    paths = predict.image_paths(args.images)
    names = export.names_from(args.names, args.names_file)  # before loading anything
    predictor = predict.Predictor.from_run(args.run, device=args.device, box_score_thresh=args.box_score_thresh,
                                           box_detections_per_img=args.box_detections_per_img,
                                           masks=False,  # JSON has none
                                           box_nms_thresh=args.box_nms_thresh, templates=args.template)
    results = predictor(paths, names)
    if args.overlay:
        for r in results:
            predict.draw_overlay(r, args.overlay)
        print(f"{len(results)} overlays -> {args.overlay}", file=sys.stderr)
    payload = [r.to_json() for r in results]
    if args.out:
        artefacts.atomic_write_json(args.out, payload)
        print(f"{sum(len(p['detections']) for p in payload)} detections on {len(payload)} images -> {args.out}")
    else:
        print(json.dumps(payload, indent=1))
    if args.fiftyone:
        from ezsd_core import viz

        ds = viz.predictions_dataset(results, args.fiftyone)
        print(f"FiftyOne dataset {ds.name!r} ({len(ds)} samples, persistent); open it with fo.load_dataset")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ezsd_core import lineage

    if not args.run.is_dir():
        raise ValueError(f"verify: {args.run} is not a run folder (runs/<split>)")
    findings, checked = lineage.verify_run(args.run)
    for f in findings:
        print(f)
    bad = [f for f in findings if f.kind != "unlisted"]
    print(f"{args.run}: {checked} outputs hashed, {len(bad)} damaged, missing or invalid, "
          f"{len(findings) - len(bad)} files no manifest lists")
    return 1 if bad else 0


def _ablate(args: argparse.Namespace) -> int:
    from ezsd_core import ablation

    ablation.ablate(args.params, overrides=tuple(args.set or ()), intervals_only=args.intervals_only,
                    num_resamples=args.num_resamples, seed=args.bootstrap_seed, replicates=args.replicates)
    return 0


# --- issue 11: check, export ------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    from ezsd_core import check

    report = check.check(args.params, data_root=args.data_root, overrides=tuple(args.set or ()),
                         seconds=args.seconds, measure=not args.no_measure)
    print(report.text())
    return 0 if report.ok else 1


def _add_check_parser(sub) -> None:
    c = sub.add_parser("check", help="validate a params file's data layout, time its CLIP, print the plan")
    c.add_argument("params", type=Path, help="params/<split>.yaml")
    c.add_argument("--data-root", type=Path, help="replaces common.data_root")
    c.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override, as for run")
    c.add_argument("--seconds", type=float, default=3.0, help="measuring time for crops and for prompts")
    c.add_argument("--no-measure", action="store_true", help="do not build and time the CLIP")
    c.set_defaults(func=_check)


# first-release flag -> stage 05's knob name it now carries (one line each, as for params files)
RENAMED_FLAGS = {"--score-thresh": "--box-score-thresh", "--nms-thresh": "--box-nms-thresh",
                 "--max-detections": "--box-detections-per-img"}


class _RenamedFlag(argparse.Action):
    """A flag of the first release: one line naming its new name, exit status 2."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"ezsd {parser.prog.split()[-1]}: error: {option_string} is now called {RENAMED_FLAGS[option_string]} "
              "(stage 05's knob of the same name)", file=sys.stderr)
        sys.exit(2)


def _add_detection_knobs(parser: argparse.ArgumentParser, nms_default: float | None) -> None:
    """The detection knobs of predict and export, named and meaning as stage 05's (``evaluate.box_*``)."""
    parser.add_argument("--box-score-thresh", type=float, default=0.3, help="as evaluate.box_score_thresh")
    parser.add_argument("--box-nms-thresh", type=float, default=nms_default,
                        help="as evaluate.box_nms_thresh" + (" (default: the run's)" if nms_default is None else ""))
    parser.add_argument("--box-detections-per-img", type=int, default=100, help="as evaluate.box_detections_per_img")
    for old in RENAMED_FLAGS:
        parser.add_argument(old, action=_RenamedFlag, help=argparse.SUPPRESS)


def _export(args: argparse.Namespace) -> int:
    from ezsd_core import export

    names = export.names_from(args.names, args.names_file)
    out = args.out or args.run / f"detector.{'onnx' if args.format == 'onnx' else 'pt'}"
    export.export(args.run, names, out, fmt=args.format, templates=args.template,
                  box_score_thresh=args.box_score_thresh, box_nms_thresh=args.box_nms_thresh,
                  box_detections_per_img=args.box_detections_per_img)
    print(f"{args.format} detector for {len(names)} names -> {out} (names in {out}.names.json)")
    return 0


def _add_export_parser(sub) -> None:
    e = sub.add_parser("export", help="write a run's detector with a frozen vocabulary as ONNX or TorchScript")
    e.add_argument("--run", type=Path, required=True, help="runs/<split> with a trained detector")
    e.add_argument("--names", help="comma-separated category names")
    e.add_argument("--names-file", type=Path, help="category names, one a line (instead of --names)")
    e.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    e.add_argument("--out", type=Path, help="output file (default: <run>/detector.onnx or .pt)")
    e.add_argument("--template", action="append", metavar="TEMPLATE", help="prompt template(s), as for predict")
    _add_detection_knobs(e, nms_default=0.5)
    e.set_defaults(func=_export)


# --- end issue 11 ------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# cluster: submit / status (distributed.py)


def _submit(args: argparse.Namespace) -> int:
    from ezsd_core import distributed

    if args.stage and (args.first or args.last):
        raise ConfigError("give either --stage or --from/--to, not both")
    res = distributed.Resources(
        partition=args.partition, account=args.account, gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task, mem=args.mem, time_min=distributed.parse_time(args.time),
        array_parallelism=args.array_parallelism, nodes=args.nodes, procs_per_node=args.procs_per_node,
        signal_s=args.signal)
    try:
        distributed.submit(args.params, stage=args.stage, first=args.first, last=args.last, overrides=args.set or (),
                           resources=res, executor=args.executor, dry_run=args.dry_run,
                           resubmit_failed=args.resubmit_failed, command=shlex.join(["ezsd", *sys.argv[1:]]))
    except RuntimeError as e:  # local jobs that failed: one line naming their logs
        print(f"ezsd: error: {e}", file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    from ezsd_core import distributed

    print(distributed.format_status(distributed.status(args.params, overrides=args.set or ())))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; allowed: an integer >= 1")
    return value


def _add_cluster_commands(sub) -> None:
    s = sub.add_parser("submit", help="submit stages of params/<split>.yaml as SLURM jobs (or local processes)")
    s.add_argument("params", type=Path, help="params/<split>.yaml")
    s.add_argument("--stage", help=f"submit one stage: {', '.join(artefacts.STAGE_NUMBERS)}")
    s.add_argument("--from", dest="first", help="first stage of a range")
    s.add_argument("--to", dest="last", help="last stage of a range")
    s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a parameter; repeatable")
    s.add_argument("--executor", choices=("slurm", "local"), default="slurm",
                   help="slurm (sbatch through submitit) or local (processes of this machine, one stage after another)")
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--gpus-per-node", type=int, default=0)
    s.add_argument("--cpus-per-task", type=_positive, default=1)
    s.add_argument("--mem", help="memory per node, e.g. 32G")
    s.add_argument("--time", default="60", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS (default 60)")
    s.add_argument("--array-parallelism", type=_positive, default=256, help="array tasks running at once")
    s.add_argument("--nodes", type=_positive, default=1, help="nodes of the train_detector job")
    s.add_argument("--procs-per-node", type=_positive,
                   help="train_detector processes per node (torchrun; default: --gpus-per-node, else 1)")
    s.add_argument("--signal", type=_positive, default=120,
                   help="seconds before the time limit at which a job checkpoints and requeues (sbatch --signal)")
    s.add_argument("--dry-run", action="store_true", help="print every job (resources, command, dependency) only")
    s.add_argument("--resubmit-failed", action="store_true",
                   help="resubmit only the failed or cancelled tasks of the last submission")
    s.set_defaults(func=_submit)
    st = sub.add_parser("status", help="each stage complete / stale / missing; each submitted shard's job state")
    st.add_argument("params", type=Path, help="params/<split>.yaml")
    st.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a parameter; repeatable")
    st.set_defaults(func=_status)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ezsd`` (subcommands ``run`` and ``toyworld``)."""
    p = argparse.ArgumentParser(prog="ezsd", description="EZSD zero-shot detection pipeline (arXiv 2303.12145)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run stages of params/<split>.yaml through their notebooks")
    r.add_argument("params", type=Path, help="params/<split>.yaml")
    r.add_argument("--stage", help=f"run one stage: {', '.join(artefacts.STAGE_NUMBERS)}")
    r.add_argument("--from", dest="first", help="first stage of a range")
    r.add_argument("--to", dest="last", help="last stage of a range")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a parameter (value read as YAML); repeatable")
    r.add_argument("--force", action="store_true", help="recompute even stages that are up to date")
    r.add_argument("-v", "--verbose", action="store_true", help="stream the notebooks' logs and progress bars")
    r.set_defaults(func=_run)
    _add_cluster_commands(sub)
    rep = sub.add_parser("report", help="print every stage's status and metrics for a params file")
    rep.add_argument("params", type=Path, help="params/<split>.yaml")
    rep.set_defaults(func=_report)
    ver = sub.add_parser("verify", help="hash every output of a run against its manifests; list unlisted files")
    ver.add_argument("run", type=Path, help="runs/<split>")
    ver.set_defaults(func=_verify)
    ab = sub.add_parser("ablate", help="full EZSD vs no distillation / untuned-CLIP regions / random boxes / no "
                        "LayerNorm tuning")
    ab.add_argument("params", type=Path, help="params/<split>.yaml (e.g. params/toy_coco.yaml)")
    ab.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override for every variant")
    ab.add_argument("--intervals-only", action="store_true",
                    help="recompute only the bootstrap intervals of the existing variant runs (no training)")
    ab.add_argument("--num-resamples", type=int, default=1000, help="bootstrap resamples of the val images")
    ab.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling")
    ab.add_argument("--replicates", type=int, default=1,
                    help="train each variant's detector this many times (train_detector.replicate 0..R-1; "
                         "stages 04-05 only) and compare replicate means")
    ab.set_defaults(func=_ablate)
    pr = sub.add_parser("predict", help="detect any category names on any images with a trained run")
    pr.add_argument("--run", type=Path, required=True, help="runs/<split> with a trained detector")
    pr.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    pr.add_argument("--names", help="comma-separated category names, e.g. 'heart,star,kite'")
    pr.add_argument("--names-file", type=Path, help="category names, one a line (instead of --names)")
    pr.add_argument("--template", action="append", metavar="TEMPLATE",
                    help="prompt template with {} for the name; repeat for an ensemble (embeddings averaged); "
                         "default: the run's stage-01 templates")
    pr.add_argument("--overlay", type=Path, metavar="DIR",
                    help="also write each image with its boxes as DIR/<stem>.png")
    pr.add_argument("--out", type=Path, help="write the detections as JSON here (default: print them)")
    pr.add_argument("--fiftyone", metavar="NAME", help="also save a persistent FiftyOne dataset with this name")
    _add_detection_knobs(pr, nms_default=None)
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=_predict)
    _add_check_parser(sub)
    _add_export_parser(sub)
    t = sub.add_parser("toyworld", help="generate the procedural shapes world (images + COCO/LVIS JSON)")
    t.add_argument("out", type=Path, help="output folder, e.g. data/toy")
    t.add_argument("--seed", type=int)
    t.add_argument("--num-train", type=int)
    t.add_argument("--num-val", type=int)
    t.add_argument("--web-seed", type=int, help="seed of the teacher's pictures (default 0: one teacher for all)")
    t.add_argument("--num-web", type=int)
    t.add_argument("--num-iconic", type=int)
    t.add_argument("--image-size", type=int)
    t.add_argument("--smoke", action="store_true", help="a tiny world for tests (8 train / 4 val images)")
    t.add_argument("--force", action="store_true", help="replace a world made with other arguments")
    t.set_defaults(func=_toyworld)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ezsd`` console script; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # one progress line per stage is ours
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, artefacts.MissingArtefactError, FileExistsError, ValueError) as e:
        print(f"ezsd: error: {e}", file=sys.stderr)
        return 2
    except pipeline.StageFailed as e:  # one line naming the executed notebook with the error cell
        print(f"ezsd: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
