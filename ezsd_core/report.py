"""Human-facing summaries of artefacts: tables and figures for notebooks, text for ``ezsd report``.

Role: reads ``metrics.json`` / ``train_log.jsonl`` / manifests and renders them; never computes a
result. Nothing here is read back by the pipeline or by tests of results.
Layer 4: imports layers 0-1 (matplotlib and pandas imported inside functions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ezsd_core import artefacts, config


def read_metrics(stage_path: Path | str) -> dict[str, Any]:
    """``metrics.json`` of a stage folder (empty dict when absent)."""
    p = Path(stage_path) / "metrics.json"
    return json.loads(p.read_text()) if p.exists() else {}


def metrics_table(stage_path: Path | str):
    """The stage's metrics as a one-column pandas DataFrame (metric -> value)."""
    import pandas as pd

    return pd.DataFrame.from_dict(read_metrics(stage_path), orient="index", columns=["value"])


def training_curves(stage_path: Path | str, keys: tuple[str, ...] | None = None):
    """Plot every numeric column of ``train_log.jsonl`` against ``step``; returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (Path(stage_path) / "train_log.jsonl").read_text().splitlines() if line]
    keys = keys or tuple(k for k in rows[0] if k not in ("step", "seconds") and isinstance(rows[0][k], int | float))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot([r["step"] for r in rows], [r.get(key) for r in rows], marker=".")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def run_summary(params_path: Path | str) -> str:
    """A text table of every stage of a params file: status, source and headline metrics."""
    doc = config.read_params(params_path)
    run_root = Path(doc["common"]["run_root"])
    lines = [f"run {run_root} ({doc['common']['split']})"]
    for stage in artefacts.STAGE_NUMBERS:
        if stage not in doc:
            continue
        folder = artefacts.stage_dir(run_root, stage)
        manifest = artefacts.read_manifest(folder)
        status = manifest["status"] if manifest else "not run"
        source = f" ({manifest['source']})" if manifest and manifest.get("source") else ""
        lines.append(f"  {artefacts.stage_dirname(stage):<22} {status}{source}")
        for key, value in (read_metrics(folder) or (manifest or {}).get("summary", {})).items():
            lines.append(f"      {key:<34} {value:.4f}" if isinstance(value, float) else f"      {key:<34} {value}")
    return "\n".join(lines)


def before_after(stage_path: Path | str):
    """Grouped bars of ``before/top1_*`` vs ``after/top1_*`` from stage 01's metrics; returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    m = read_metrics(stage_path)
    keys = [k.split("/", 1)[1] for k in m if k.startswith("before/")]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(1.1 * len(keys) + 2, 3))
    for dx, when in ((-0.2, "before"), (0.2, "after")):
        vals = [m[f"{when}/{k}"] for k in keys]
        bars = ax.bar(x + dx, vals, 0.4, label=f"{when} tuning")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [k.replace("top1_", "") for k in keys])
    ax.set_ylabel("crop top-1 accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def recall_curves(stage_path: Path | str):
    """Recall of val GT (base, novel, all) against the number of regions kept (stage 02); the Figure."""
    import matplotlib.pyplot as plt

    m = read_metrics(stage_path)
    if not m:
        print("no metrics yet: they are computed when every shard is done")
        return None
    ks = sorted({int(k.split("@")[1].split("_")[0]) for k in m if k.startswith("recall@")})
    fig, ax = plt.subplots(figsize=(4.2, 3))
    for subset in ("base", "novel", "all"):
        ax.plot(ks, [m[f"recall@{k}_{subset}"] for k in ks], marker="o", label=subset)
    ax.set_xscale("log")
    ax.set_xlabel("regions per image (top-k)")
    ax.set_ylabel("recall @ IoU 0.5")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _listed_shards(stage_path: Path, manifest: dict, shard_dir: str) -> list[Path]:
    """The shard files the stage's manifest lists (never a glob: leftovers of another ``num_shards`` are ignored)."""
    return [stage_path / o["path"] for o in manifest["outputs"]
            if o["path"].startswith(f"{shard_dir}/shard-") and o["path"].endswith(".safetensors")]


def regions_on_images(stage_path: Path | str, num_images: int = 4, top: int = 10):
    """The top regions (red, with CLIP's category) and the GT boxes (green) on a few val images; the Figure."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from ezsd_core import data, shards

    stage_path = Path(stage_path)
    manifest = artefacts.read_manifest(stage_path)
    if manifest is None:
        print("the stage is not complete yet (other shards still running): figures appear once it is")
        return None
    cfg = config.load_config(config.ProposeRegionsConfig, manifest["config"])
    split, records = data.read_config_records(cfg, "val")
    by_id = {r.image_id: r for r in records}
    shown = []
    for p in _listed_shards(stage_path, manifest, cfg.SHARD_DIR):
        shard = shards.RaggedShard(p)
        shown += [shard.region_set(i) for i in range(len(shard)) if shard.image_fields["image_is_val"][i]]
    shown = sorted(shown, key=lambda rs: rs.image_id)[:num_images]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(3.2 * max(len(shown), 1), 3.4), squeeze=False)
    for ax, rs in zip(axes[0], shown):
        rec = by_id[rs.image_id]
        ax.imshow(Image.open(rec.file_name))
        for (x1, y1, x2, y2), cid in zip(rec.gt_boxes.tolist(), rec.gt_category_ids.tolist()):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.5))
            ax.text(x1, y2, f"{split.name_of(cid)} ({split.role_of(cid)})", color="lime", fontsize=6, va="top")
        for (x1, y1, x2, y2), cid in zip(rs.region_boxes[:top].tolist(), rs.region_category_ids[:top].tolist()):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", lw=0.8))
            ax.text(x1, y1, split.name_of(cid), color="red", fontsize=5)
        ax.set_title(f"image {rs.image_id}: top {top} regions", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def features_summary(stage_path: Path | str, top_categories: int = 15):
    """Stage 03: regions per image, distillation weights, and CLIP's categories of the kept regions."""
    import collections

    import matplotlib.pyplot as plt

    from ezsd_core import shards

    stage_path = Path(stage_path)
    manifest = artefacts.read_manifest(stage_path)
    if manifest is None:
        print("the stage is not complete yet (other shards still running): figures appear once it is")
        return None
    counts, weights, cats = [], [], collections.Counter()
    for p in _listed_shards(stage_path, manifest, config.ExtractFeaturesConfig.SHARD_DIR):
        shard = shards.RaggedShard(p)
        counts += shard.row_counts("region").tolist()
        for i in range(len(shard)):
            rows = shard.rows(i, "region")
            weights += rows["region_probs"].tolist()
            cats.update(rows["region_category_ids"].tolist())
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
    axes[0].hist(counts, bins=30)
    axes[0].set_title("regions per image", fontsize=9)
    axes[1].hist(weights, bins=30, range=(0, 1))
    axes[1].set_title("distillation weight (CLIP max prob.)", fontsize=9)
    common = cats.most_common(top_categories)
    axes[2].barh([str(c) for c, _ in common][::-1], [n for _, n in common][::-1])
    axes[2].set_title("CLIP category id of kept regions", fontsize=9)
    fig.tight_layout()
    return fig


def detections_on_images(stage_path: Path | str, num_images: int = 4, min_score: float = 0.3):
    """Stage 05: detections (score >= ``min_score``; novel ones in orange) and GT (green) on val images."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from ezsd_core import data

    stage_path = Path(stage_path)
    manifest = artefacts.read_manifest(stage_path)
    cfg = config.load_config(config.EvaluateConfig, manifest["config"])
    split, records = data.read_config_records(cfg, "val")
    dets = json.loads((stage_path / "detections.json").read_text())
    shown = [r for r in records if len(r.gt_boxes)][:num_images]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(3.2 * max(len(shown), 1), 3.4), squeeze=False)
    for ax, rec in zip(axes[0], shown):
        ax.imshow(Image.open(rec.file_name))
        for x1, y1, x2, y2 in rec.gt_boxes.tolist():
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.2, ls="--"))
        for d in dets:
            if d["image_id"] != rec.image_id or d["score"] < min_score:
                continue
            x, y, w, h = d["bbox"]
            color = "orange" if split.role_of(d["category_id"]) == "novel" else "red"
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, color=color, lw=1.2))
            ax.text(x, y, f"{split.name_of(d['category_id'])} {d['score']:.2f}", color=color, fontsize=6)
        ax.set_title(f"image {rec.image_id}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def _variant_rows(table: dict) -> dict[str, dict]:
    """The variants of an ``ablation.json`` (rows with a label; ``differences`` / ``bootstrap`` are not)."""
    return {name: row for name, row in table.items() if isinstance(row, dict) and "label" in row}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell(value: Any, interval: Any = None, signed: bool = False) -> str:
    """``0.312 [0.270, 0.351]``; ``n/a`` without a value; the interval only where both ends are known."""
    v = _number(value)
    if v is None:
        return "n/a"
    text = f"{v:+.3f}" if signed else f"{v:.3f}"
    ends = [_number(e) for e in interval] if isinstance(interval, list | tuple) and len(interval) == 2 else []
    return text + (f" [{ends[0]:.3f}, {ends[1]:.3f}]" if ends and None not in ends else "")


def _differences_table(table: dict, keys: tuple[str, ...]) -> list[str]:
    rows = _variant_rows(table)
    lines = ["| paired difference | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, per_key in table["differences"].items():
        ref, _, other = name.partition(" - ")
        label = f"{rows[ref]['label']} − {rows[other]['label']}" if ref in rows and other in rows else name
        cells = []
        for k in keys:
            d = per_key.get(k) or {}
            p = _number(d.get("p_le_0"))
            cells.append(_cell(d.get("delta"), [d.get("lo"), d.get("hi")], signed=True)
                         + (f", p≤0 {p:.2f}" if p is not None else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    b = table.get("bootstrap") or {}
    lines.append(f"\n{b.get('level', 0.95):.0%} percentile intervals over {b.get('num_images', '?')} val images "
                 f"resampled {b.get('num_resamples', '?')} times (seed {b.get('seed', '?')}); differences on the "
                 "same resamples; p≤0: share of resamples where the difference is ≤ 0.")
    return lines


def ablation_table(table: dict, keys: tuple[str, ...]) -> str:
    """Markdown tables of an ``ablation.json``: variants (rows) by metric keys (columns).

    Each value carries its bootstrap interval where the file has one (``row["ci"][key] = [lo, hi]``);
    a second table gives the paired differences (d) - (x) with their intervals when the file has
    ``differences``, and a third the sd of each metric over training replicates when rows have
    ``replicate_sd`` (``ezsd ablate --replicates``). Files written before the intervals give the
    first table with bare values.
    """
    lines = ["| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for row in _variant_rows(table).values():
        ci = row.get("ci") or {}
        lines.append(f"| {row['label']} | " + " | ".join(_cell(row.get(k), ci.get(k)) for k in keys) + " |")
    if table.get("differences"):
        lines += ["", *_differences_table(table, keys)]
    spread = {row["label"]: row for row in _variant_rows(table).values() if row.get("replicate_sd")}
    if spread:
        lines += ["", "| training replicates: sd (n) | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        lines += [f"| {label} ({len(row['replicates'])}) | "
                  + " | ".join(_cell(row["replicate_sd"].get(k)) for k in keys) + " |" for label, row in spread.items()]
    return "\n".join(lines)


def _error_bars(row: dict, keys: tuple[str, ...], values: list[float]) -> list[list[float]] | None:
    """(2, len(keys)) distances below / above each value to its interval ends; None without intervals."""
    ci = row.get("ci") or {}
    ends = [[_number(e) for e in ci[k]] if isinstance(ci.get(k), list | tuple) else [None, None] for k in keys]
    if all(None in e for e in ends):
        return None
    # clipped at 0: a bar is metrics.json's rounded value, which may sit a hair outside its interval
    return [[max(v - lo, 0.0) if lo is not None else 0.0 for v, (lo, _) in zip(values, ends)],
            [max(hi - v, 0.0) if hi is not None else 0.0 for v, (_, hi) in zip(values, ends)]]


def ablation_chart(table: dict, keys: tuple[str, ...]):
    """Grouped bars of the ablation variants for each metric key, with the 95% bootstrap interval of
    each bar as an error bar where the file has intervals; returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(_variant_rows(table).values())
    x = np.arange(len(keys))
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(2.2 * len(keys) + 4, 3.2))
    for n, row in enumerate(rows):
        vals = [_number(row.get(k)) or 0.0 for k in keys]
        yerr = _error_bars(row, keys, vals)
        bars = ax.bar(x + (n - (len(rows) - 1) / 2) * width, vals, width, label=row["label"], yerr=yerr,
                      capsize=2, error_kw={"elinewidth": 0.8})
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(x, keys)
    ax.set_ylabel("AP50" if all("/AP50_" in k for k in keys) else "AP")
    if b := table.get("bootstrap"):
        ax.set_title(f"bars: {b.get('level', 0.95):.0%} bootstrap interval over {b.get('num_images', '?')} "
                     "val images", fontsize=8)
    ax.margins(y=0.12)  # room for the labels above the error bars
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars and whiskers stay visible
    fig.tight_layout()
    return fig
