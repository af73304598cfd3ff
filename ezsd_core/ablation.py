"""The toy reproduction of the paper's ablation: what each part of EZSD adds to novel-category AP.

Variants, each on the same world and training budget, as params overrides of the full run:
  (a) no distillation                    train_detector.distill_weight = 0
  (b) regions scored by the CLIP before LayerNorm tuning   propose_regions.clip_layernorms = original
  (c) random boxes instead of CLIP regions                 extract_features.region_source = random_boxes
  (e) no LayerNorm tuning at all         finetune_clip.epochs = 0
  (d) full EZSD                          the params file as it is
(b) changes only which regions are distilled (their embeddings and the text are the tuned CLIP's);
(e) is the paper's "raw CLIP" comparison: the untuned CLIP proposes the regions, embeds them and the
base GT boxes, and names the classes, so the detector distils the CLIP before stage 01 throughout.
Each variant lives in ``<run_root>-ablation-<variant>``; the stages it shares with the full run
are hard-linked from it (their manifests match, so the runner skips them) and the rest run anew.
Every AP gets a 95% bootstrap interval over the val images, and every difference (d) - (x) the
interval of the difference on the same resampled images (``bootstrap.bootstrap_coco_ap``).
With ``replicates`` R > 1 each variant is also trained R - 1 more times (``train_detector.replicate``
= 1..R-1, in ``<variant run>-r<k>``, stages 00-03 hard-linked): its row then gives the replicates'
mean AP, their spread, and intervals of the mean on the same resamples; the image bootstrap does
not include training noise, the replicates' spread shows it.
Reads each variant's ``05_evaluate/{metrics,detections}.json`` and the val annotations.
Writes ``<run_root>/ablation.json`` and ``ablation.png``. Layer 4: imports config, artefacts, splits,
pipeline, report, and bootstrap (lazily, for the intervals: no stage owns numbers across four runs).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ezsd_core import artefacts, config, pipeline, report, splits

VARIANTS: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    # name: (label, overrides, stages shared with the full run)
    "a_no_distillation": ("(a) no distillation", ["train_detector.distill_weight=0.0"],
                          ("pretrain_clip", "finetune_clip", "propose_regions", "extract_features")),
    "b_untuned_clip_regions": ("(b) regions of the untuned CLIP", ["propose_regions.clip_layernorms=original"],
                               ("pretrain_clip", "finetune_clip")),
    "c_random_boxes": ("(c) random boxes", ["extract_features.region_source=random_boxes"],
                       ("pretrain_clip", "finetune_clip", "propose_regions")),
    "e_no_layernorm_tuning": ("(e) no LayerNorm tuning", ["finetune_clip.epochs=0"], ("pretrain_clip",)),
    "d_full": ("(d) full EZSD", [], ()),
}
REFERENCE = "d_full"  # the differences are AP(d) - AP(x)
HEADLINE = ("bbox/AP50_novel", "bbox/AP50_base", "bbox/AP50_all")
INTERVAL_KEYS = (*HEADLINE, "bbox/AP_novel", "bbox/AP_base")
LEVEL = 0.95
UPSTREAM_OF_TRAINING = ("pretrain_clip", "finetune_clip", "propose_regions", "extract_features")


def link_stage(src: Path, dst: Path) -> None:
    """Hard-link a finished stage folder ``src`` to ``dst`` (its notebooks and part files left out), so that
    another run root shares it; nothing happens when ``dst`` exists or ``src`` does not."""
    if dst.exists() or not src.exists():
        return
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("notebooks", ".parts"))


def variant_root(base_root: Path, name: str) -> Path:
    """The run folder of a variant: the full run's own for ``d_full``, else ``<run_root>-ablation-<name>``."""
    return base_root if name == REFERENCE else base_root.with_name(f"{base_root.name}-ablation-{name}")


def replicate_roots(base_root: Path, name: str, replicates: int) -> list[Path]:
    """Run folders of a variant's training replicates 0..R-1: its own, then ``<variant run>-r<k>``."""
    root = variant_root(base_root, name)
    return [root] + [root.with_name(f"{root.name}-r{k}") for k in range(1, replicates)]


def _run_variants(params_path: Path | str, base_root: Path, overrides: tuple[str, ...],
                  echo: Callable[[str], None], replicates: int = 1) -> None:
    echo(f"(d) full EZSD in {base_root}")
    pipeline.run(params_path, overrides=overrides, echo=echo)
    for name, (label, changes, shared) in VARIANTS.items():
        root = variant_root(base_root, name)
        if name != REFERENCE:
            echo(f"{label} in {root}")
            for stage in shared:
                link_stage(artefacts.stage_dir(base_root, stage), artefacts.stage_dir(root, stage))
            pipeline.run(params_path, overrides=[*overrides, f"common.run_root={root}", *changes], echo=echo)
        for k, rep_root in enumerate(replicate_roots(base_root, name, replicates)[1:], start=1):
            echo(f"{label}, training replicate {k} in {rep_root}")
            for stage in UPSTREAM_OF_TRAINING:
                link_stage(artefacts.stage_dir(root, stage), artefacts.stage_dir(rep_root, stage))
            pipeline.run(params_path, overrides=[*overrides, f"common.run_root={rep_root}", *changes,
                                                 f"train_detector.replicate={k}"], echo=echo)


def _variant_row(name: str, roots: list[Path]) -> dict[str, Any]:
    """Label, run folder and the bbox/segm metrics of a variant's complete ``05_evaluate``; with several
    training replicates (``roots``: replicate 0 first) the metrics are their means, and the row adds
    ``replicates`` (each one's run folder and metrics) and ``replicate_sd`` (sample sd per metric).

    Raises:
        ValueError: a replicate has no complete evaluate stage (message names the variant and its folder).
    """
    label = VARIANTS[name][0]
    per_run = []
    for root in roots:
        try:
            artefacts.require_complete(root, "evaluate")
        except artefacts.MissingArtefactError:
            raise ValueError(f"ablation variant {name} {label} has no complete run in {root} (05_evaluate); "
                             "run `ezsd ablate` without --intervals-only first") from None
        metrics = report.read_metrics(artefacts.stage_dir(root, "evaluate"))
        per_run.append({k: v for k, v in metrics.items() if k.startswith(("bbox/", "segm/"))})
    row: dict[str, Any] = {"label": label, "run_root": str(roots[0])}
    if len(roots) == 1:
        return {**row, **per_run[0]}
    keys = [k for k in per_run[0] if all(isinstance(m.get(k), int | float) for m in per_run)]
    values = {k: [float(m[k]) for m in per_run] for k in keys}
    return {**row, **{k: statistics.fmean(v) for k, v in values.items()},
            "replicates": [{"run_root": str(r), **m} for r, m in zip(roots, per_run)],
            "replicate_sd": {k: statistics.stdev(v) for k, v in values.items()}}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x  # JSON has no NaN


def intervals(table: dict[str, dict[str, Any]], cfg: config.EvaluateConfig, *, num_resamples: int = 1000,
              seed: int = 0) -> dict[str, Any] | None:
    """Paired bootstrap intervals over the val images of every variant's AP and of (d) - (x).

    Args:
        table: variant name -> row with ``run_root`` (every name of ``VARIANTS``), or with
            ``replicates`` (rows with ``run_root``) whose mean AP is bootstrapped.
        cfg: the evaluate stage config (val annotations, ``box_detections_per_img``, split id).
        num_resamples: bootstrap resamples of the val images.
        seed: seed of the resampling.

    Returns:
        ``{"ci": {variant: {key: [lo, hi]}}, "differences": {"d_full - <x>": {key: {delta, lo, hi,
        p_le_0}}}, "bootstrap": {settings}}`` for the keys of ``INTERVAL_KEYS`` (None where undefined);
        None for an LVIS-style split (it reports LVIS AP, which is not bootstrapped here).
    """
    from ezsd_core import bootstrap, data

    ann_file = Path(cfg.data_root) / cfg.val_annotations
    split = splits.split_from_categories(splits.definition(cfg), json.loads(ann_file.read_text())["categories"])
    if split.style != "coco":
        return None
    members = {name: [r["run_root"] for r in row.get("replicates", [row])] for name, row in table.items()}
    results = {root: json.loads((artefacts.stage_dir(root, "evaluate") / "detections.json").read_text())
               for roots in members.values() for root in roots}
    with data.clean_annotation_file(ann_file, Path(cfg.data_root) / cfg.val_images) as gt:  # stage 05's GT
        per_run = bootstrap.bootstrap_coco_ap(gt, results, split, iou_types=("bbox",),
                                              max_dets=cfg.box_detections_per_img, num_resamples=num_resamples,
                                              seed=seed)
    boot = {name: bootstrap.replicate_mean(per_run, roots) for name, roots in members.items()}
    ci = {name: {k: [_finite(v) for v in b.interval(k, LEVEL)] for k in INTERVAL_KEYS} for name, b in boot.items()}
    diffs = bootstrap.paired_differences(boot, REFERENCE, INTERVAL_KEYS, level=LEVEL)
    differences = {f"{REFERENCE} - {name}": {k: {s: _finite(v) for s, v in d.items()} for k, d in per_key.items()}
                   for name, per_key in diffs.items()}
    settings = {"num_resamples": num_resamples, "seed": seed, "num_images": boot[REFERENCE].num_images,
                "level": LEVEL, "iou_type": "bbox", "max_detections": cfg.box_detections_per_img,
                "reference": REFERENCE, "replicates": len(members[REFERENCE]),
                "val_annotations": str(ann_file)}
    return {"ci": ci, "differences": differences, "bootstrap": settings}


def ablate(params_path: Path | str, *, echo: Callable[[str], None] = print, overrides: tuple[str, ...] = (),
           intervals_only: bool = False, num_resamples: int = 1000, seed: int = 0, replicates: int = 1) -> dict:
    """Run the full pipeline and the ablations of ``VARIANTS``, then bootstrap intervals of their AP.

    Args:
        params_path: ``params/<split>.yaml``.
        echo: where progress lines and the final tables go.
        overrides: ``--set`` overrides for every variant.
        intervals_only: skip the runs; recompute the intervals of the existing ones.
        num_resamples: bootstrap resamples of the val images.
        seed: seed of the resampling.
        replicates: training replicates R per variant (stages 04-05 rerun R - 1 times; 1: none).

    Returns:
        ``{variant: {label, run_root, metrics..., ci}, "differences": ..., "bootstrap": ...}`` as written
        to ``ablation.json``.

    Raises:
        ValueError: ``num_resamples`` or ``replicates`` below 1; a variant without a complete run (named).
    """
    if num_resamples < 1:  # checked before hours of training, not after
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    doc = config.read_params(params_path)
    cfg = config.stage_config(doc, "evaluate", source=str(params_path), overrides=overrides)
    base_root = Path(cfg.run_root)
    if not intervals_only:
        _run_variants(params_path, base_root, overrides, echo, replicates)
    table: dict[str, Any] = {name: _variant_row(name, replicate_roots(base_root, name, replicates))
                             for name in VARIANTS}
    extra = intervals(table, cfg, num_resamples=num_resamples, seed=seed)
    if extra is None:
        echo(f"no bootstrap intervals: split {cfg.split} is LVIS-style")
    else:
        for name, ci in extra["ci"].items():
            table[name]["ci"] = ci
        table.update(differences=extra["differences"], bootstrap=extra["bootstrap"])
    artefacts.atomic_write_json(base_root / "ablation.json", table)
    report.ablation_chart(table, HEADLINE).savefig(base_root / "ablation.png", dpi=120)
    echo(report.ablation_table(table, INTERVAL_KEYS))
    return table
