"""The toy reproduction of the paper's ablation: what each part of EZSD adds to novel-category AP.

Variants, each on the same world and training budget, as params overrides of the full run:
  (a) no distillation                    train_detector.distill_weight = 0
  (b) regions scored by the CLIP before LayerNorm tuning   propose_regions.clip_layernorms = original
  (c) random boxes instead of CLIP regions                 extract_features.region_source = random_boxes
  (d) full EZSD                          the params file as it is
Each variant lives in ``<run_root>-ablation-<variant>``; the stages it shares with the full run
are hard-linked from it (their manifests match, so the runner skips them) and the rest run anew.
Writes ``<run_root>/ablation.json`` and ``ablation.png``. Layer 4: imports config, artefacts,
pipeline, report.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ezsd_core import artefacts, config, pipeline, report

VARIANTS: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    # name: (label, overrides, stages shared with the full run)
    "a_no_distillation": ("(a) no distillation", ["train_detector.distill_weight=0.0"],
                          ("pretrain_clip", "finetune_clip", "propose_regions", "extract_features")),
    "b_untuned_clip_regions": ("(b) regions of the untuned CLIP", ["propose_regions.clip_layernorms=original"],
                               ("pretrain_clip", "finetune_clip")),
    "c_random_boxes": ("(c) random boxes", ["extract_features.region_source=random_boxes"],
                       ("pretrain_clip", "finetune_clip", "propose_regions")),
    "d_full": ("(d) full EZSD", [], ()),
}
HEADLINE = ("bbox/AP50_novel", "bbox/AP50_base", "bbox/AP50_all")


def _link_stage(src: Path, dst: Path) -> None:
    if dst.exists() or not src.exists():
        return
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("notebooks", ".parts"))


def ablate(params_path: Path | str, *, echo: Callable[[str], None] = print, overrides: tuple[str, ...] = ()) -> dict:
    """Run the full pipeline and the three ablations; returns ``{variant: {label, metrics...}}``."""
    doc = config.read_params(params_path)
    base_root = Path(config.stage_config(doc, "evaluate", source=str(params_path), overrides=overrides).run_root)
    echo(f"(d) full EZSD in {base_root}")
    pipeline.run(params_path, overrides=overrides, echo=echo)
    table = {}
    for name, (label, changes, shared) in VARIANTS.items():
        root = base_root if name == "d_full" else base_root.with_name(f"{base_root.name}-ablation-{name}")
        if name != "d_full":
            echo(f"{label} in {root}")
            for stage in shared:
                _link_stage(artefacts.stage_dir(base_root, stage), artefacts.stage_dir(root, stage))
            pipeline.run(params_path, overrides=[*overrides, f"common.run_root={root}", *changes], echo=echo)
        metrics = report.read_metrics(artefacts.stage_dir(root, "evaluate"))
        table[name] = {"label": label, "run_root": str(root), **{k: metrics.get(k) for k in metrics
                                                                 if k.startswith(("bbox/", "segm/"))}}
    artefacts.atomic_write_json(base_root / "ablation.json", table)
    report.ablation_chart(table, HEADLINE).savefig(base_root / "ablation.png", dpi=120)
    echo(report.ablation_table(table, HEADLINE))
    return table
