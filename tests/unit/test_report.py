from __future__ import annotations

import numpy as np
import pytest

from ezsd_core import report

KEYS = ("bbox/AP50_novel", "bbox/AP_base")


def _old_table() -> dict:
    """An ``ablation.json`` written before the intervals."""
    return {"a_no_distillation": {"label": "(a) no distillation", "run_root": "r-a", "bbox/AP50_novel": 0.1924,
                                  "bbox/AP_base": 0.2},
            "d_full": {"label": "(d) full EZSD", "run_root": "r", "bbox/AP50_novel": 0.1161}}


def _table_with_intervals() -> dict:
    table = _old_table()
    table["a_no_distillation"]["ci"] = {"bbox/AP50_novel": [0.15, 0.24], "bbox/AP_base": [0.17, 0.23]}
    table["d_full"]["ci"] = {"bbox/AP50_novel": [0.08, 0.16], "bbox/AP_base": [None, None]}
    table["differences"] = {"d_full - a_no_distillation": {
        "bbox/AP50_novel": {"delta": -0.0763, "lo": -0.12, "hi": -0.031, "p_le_0": 0.998},
        "bbox/AP_base": {"delta": None, "lo": None, "hi": None, "p_le_0": None}}}
    table["bootstrap"] = {"num_resamples": 1000, "seed": 0, "num_images": 500, "level": 0.95}
    return table


def test_ablation_table_without_intervals_shows_bare_values() -> None:
    lines = report.ablation_table(_old_table(), KEYS).splitlines()
    assert lines[2] == "| (a) no distillation | 0.192 | 0.200 |"
    assert lines[3] == "| (d) full EZSD | 0.116 | n/a |"
    assert len(lines) == 4


def test_ablation_table_with_intervals_shows_them_and_the_paired_differences() -> None:
    text = report.ablation_table(_table_with_intervals(), KEYS)
    lines = text.splitlines()
    assert lines[2] == "| (a) no distillation | 0.192 [0.150, 0.240] | 0.200 [0.170, 0.230] |"
    assert lines[3] == "| (d) full EZSD | 0.116 [0.080, 0.160] | n/a |"
    assert "| (d) full EZSD − (a) no distillation | -0.076 [-0.120, -0.031], p≤0 1.00 | n/a |" in lines
    assert "over 500 val images resampled 1000 times (seed 0)" in text
    assert not any("differences" in line or "bootstrap" in line for line in lines[:4])  # not variant rows


def _bars(ax) -> list:
    from matplotlib.container import BarContainer

    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _error_segments(ax) -> list[np.ndarray]:
    """Per variant with error bars: (keys, 2, 2) [[x, lo], [x, hi]] of each bar's interval."""
    return [np.asarray(c.errorbar.lines[2][0].get_segments()) for c in _bars(ax) if c.errorbar is not None]


def test_ablation_chart_draws_the_intervals_as_error_bars() -> None:
    import matplotlib.pyplot as plt

    fig = report.ablation_chart(_table_with_intervals(), KEYS)
    ax = fig.axes[0]
    segments = _error_segments(ax)
    assert len(segments) == 2  # one error-bar set per variant
    a = segments[0]  # (a): [x, lo] -> [x, hi] per key
    assert a[:, :, 1].tolist() == [pytest.approx([0.15, 0.24]), pytest.approx([0.17, 0.23])]
    d = segments[1]  # (d): AP_base has no value nor interval: a zero-length bar at 0
    assert d[0, :, 1] == pytest.approx([0.08, 0.16]) and d[1, :, 1] == pytest.approx([0.0, 0.0])
    assert "bootstrap interval over 500 val images" in ax.get_title()
    plt.close(fig)


def test_ablation_chart_without_intervals_has_plain_bars() -> None:
    import matplotlib.pyplot as plt

    fig = report.ablation_chart(_old_table(), KEYS)
    ax = fig.axes[0]
    assert not _error_segments(ax) and len(_bars(ax)) == 2
    assert [b.get_height() for b in _bars(ax)[0]] == pytest.approx([0.1924, 0.2])
    plt.close(fig)
