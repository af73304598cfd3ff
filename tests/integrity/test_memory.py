"""Memory in proportion: ``ezsd predict`` pastes no full-size masks it would not output (issue 9)."""

from __future__ import annotations

from pathlib import Path

import integrity_runs
import numpy as np
import pytest
import torchvision.models.detection.transform as tv_transform
from PIL import Image

from ezsd_core import cli, predict

finished_run = integrity_runs.finished_run  # a fixture (see integrity_runs)


@pytest.fixture
def pasted(monkeypatch) -> list[tuple[int, int]]:
    """(masks, pixels per mask) of every full-size mask paste torchvision makes."""
    calls: list[tuple[int, int]] = []
    real = tv_transform.paste_masks_in_image

    def paste(masks, boxes, img_shape, padding=1):
        calls.append((len(masks), img_shape[0] * img_shape[1]))
        return real(masks, boxes, img_shape, padding)

    monkeypatch.setattr(tv_transform, "paste_masks_in_image", paste)
    return calls


def test_predict_pastes_masks_only_when_asked(finished_run, pasted, tmp_path: Path, capsys) -> None:
    _, run_root = finished_run
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)).save(big)
    assert cli.main(["predict", "--run", str(run_root), "--images", str(big), "--names", "circle,square",
                     "--box-score-thresh", "0.0", "--out", str(tmp_path / "d.json")]) == 0
    assert pasted == [], "the JSON holds boxes only: no (P, 1500, 1500) masks were made"
    capsys.readouterr()
    lean = predict.Predictor.from_run(run_root, box_score_thresh=0.0, masks=False)([big], ["circle"])[0]
    assert lean.masks is None and pasted == [] and len(lean.boxes)
    full = predict.Predictor.from_run(run_root, box_score_thresh=0.0, masks=True)([big], ["circle"])[0]
    assert full.masks.shape[1:] == (1500, 1500) and pasted, "asked for, they are pasted"
    assert full.boxes.tolist() == lean.boxes.tolist(), "the mask switch changes nothing else"
