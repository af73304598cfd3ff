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
        for key, value in read_metrics(folder).items():
            lines.append(f"      {key:<34} {value:.4f}" if isinstance(value, float) else f"      {key:<34} {value}")
    return "\n".join(lines)
