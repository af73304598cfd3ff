from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ezsd_core import crops


def _spec_window(box, r, h, w, min_side=0.0):
    """Method spec §1.3, written out literally."""
    x1, y1, x2, y2 = box
    bw, bh = max(x2 - x1, min_side), max(y2 - y1, min_side)
    dx, dy = (r - 1) / 2 * bw, (r - 1) / 2 * bh
    return [math.floor(max(x1 - dx, 0)), math.floor(max(y1 - dy, 0)),
            math.ceil(min(x1 + dx + bw, w - 1)), math.ceil(min(y1 + dy + bh, h - 1))]


def test_crop_windows_match_the_spec_formula_inside_and_at_borders() -> None:
    boxes = [[10.0, 12.0, 30.0, 22.0], [0.0, 0.0, 15.5, 9.2], [90.0, 50.0, 100.0, 60.0], [40.2, 3.7, 41.0, 4.1]]
    for r, min_side in ((1.0, 0.0), (1.2, 0.0), (1.2, 10.0)):
        got = crops.crop_windows(torch.tensor(boxes), r, 60, 100, min_side).tolist()
        assert got == [_spec_window(b, r, 60, 100, min_side) for b in boxes]
    # a box at the right/bottom border is clipped to W-1 / H-1 (the reference's exclusive bound)
    assert crops.crop_windows(torch.tensor([[95.0, 55.0, 100.0, 60.0]]), 1.2, 60, 100).tolist() == [[94, 54, 99, 59]]


def test_square_frames_centre_the_crop() -> None:
    win = torch.tensor([[10, 20, 30, 26]])  # 20 wide, 6 high -> padded by 7 above and below
    assert crops.square_windows(win).tolist() == [[10.0, 13.0, 30.0, 33.0]]


def test_batched_crops_agree_with_the_per_crop_pil_path() -> None:
    rng = np.random.default_rng(0)
    arr = (rng.random((60, 100, 3)) * 255).astype(np.uint8)
    arr = np.asarray(Image.fromarray(arr).resize((100, 60), Image.BILINEAR))  # some spatial smoothness
    boxes = torch.tensor([[10.0, 12.0, 30.0, 22.0], [0.0, 0.0, 55.0, 40.0], [80.0, 30.0, 100.0, 60.0]])
    fast = crops.cut_crops(torch.from_numpy(arr.copy()).permute(2, 0, 1), boxes, scale=1.2, size=32)
    ref = crops.cut_crops_pil(Image.fromarray(arr), boxes, scale=1.2, size=32)
    assert fast.shape == ref.shape == (3, 3, 32, 32)
    assert (fast - ref).abs().mean() < 0.01


def test_padding_is_zero_and_empty_input_is_fine() -> None:
    img = torch.full((3, 40, 40), 200, dtype=torch.uint8)
    out = crops.cut_crops(img, torch.tensor([[0.0, 10.0, 40.0, 20.0]]), scale=1.0, size=16)  # wide: pad rows
    assert out[0, :, 0].abs().max() == 0 and out[0, :, -1].abs().max() == 0
    ref = crops.cut_crops_pil(Image.fromarray(img.permute(1, 2, 0).numpy()), torch.tensor([[0.0, 10.0, 40.0, 20.0]]),
                              scale=1.0, size=16)
    assert (out - ref).abs().max() < 0.02, "the same padding and bicubic resize as PIL"
    assert crops.cut_crops(img, torch.zeros(0, 4), scale=1.0, size=16).shape == (0, 3, 16, 16)
