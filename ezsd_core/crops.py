"""Box crops for CLIP: the crop geometry of the method and two ways to cut crops.

Role: method spec §1.3. A box (x1, y1, x2, y2) is enlarged by ``r`` around its centre, clipped to
the image, zero-padded to a centred square and resized to the CLIP input size. ``crop_windows`` is
the geometry (pure, exact integers); ``cut_crops`` cuts a whole batch of boxes from one decoded
image tensor in one ``roi_align`` call (the fast path every stage uses); ``cut_crops_pil`` is the
per-crop PIL path of the reference, kept for tests and the benchmark.
Layer 1: torch, torchvision.ops, PIL.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import roi_align

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def crop_windows(boxes: Tensor, scale: float, height: int, width: int, min_side: float = 0.0) -> Tensor:
    """Integer crop windows of enlarged boxes, clipped to the image (spec §1.3).

    x-range = [floor(max(x1 - dx, 0)), ceil(min(x2 + dx, W - 1))) with dx = (r - 1) / 2 * w, and the
    same in y; every window keeps at least one pixel.

    Args:
        boxes: (N, 4) XYXY absolute.
        scale: enlargement factor r (1.0 for region scoring, 1.2 for tuning and embeddings).
        height, width: image size H, W.
        min_side: boxes narrower (shorter) than this are widened to it first (10 px when tuning CLIP).

    Returns:
        (N, 4) int64 windows (x_lo, y_lo, x_hi, y_hi), exclusive upper bounds.
    """
    x1, y1, x2, y2 = boxes.double().unbind(-1)
    w = (x2 - x1).clamp(min=min_side)
    h = (y2 - y1).clamp(min=min_side)
    dx, dy = (scale - 1) / 2 * w, (scale - 1) / 2 * h
    x_lo = torch.floor((x1 - dx).clamp(min=0)).clamp(max=width - 1)
    y_lo = torch.floor((y1 - dy).clamp(min=0)).clamp(max=height - 1)
    x_hi = torch.maximum(torch.ceil((x1 + dx + w).clamp(max=width - 1)), x_lo + 1)
    y_hi = torch.maximum(torch.ceil((y1 + dy + h).clamp(max=height - 1)), y_lo + 1)
    return torch.stack([x_lo, y_lo, x_hi, y_hi], -1).long()


def square_windows(windows: Tensor) -> Tensor:
    """(N, 4) crop windows -> (N, 4) float squares that hold each crop centred (zero-padding frame).

    The crop sits at offset (long - short) // 2 along its short side, as the reference pads.
    """
    x_lo, y_lo, x_hi, y_hi = windows.unbind(-1)
    cw, ch = x_hi - x_lo, y_hi - y_lo
    side = torch.maximum(cw, ch)
    sx = x_lo - (side - cw) // 2
    sy = y_lo - (side - ch) // 2
    return torch.stack([sx, sy, sx + side, sy + side], -1).double()


def _coverage(lo: Tensor, hi: Tensor, start: Tensor, side: Tensor, size: int) -> Tensor:
    """(N, size) fraction of each output bin (along one axis) that lies inside the crop [lo, hi)."""
    edges = start[:, None] + side[:, None] * torch.arange(size + 1, dtype=torch.float64) / size
    a, b = edges[:, :-1], edges[:, 1:]
    inside = (torch.minimum(b, hi[:, None].double()) - torch.maximum(a, lo[:, None].double())).clamp(min=0)
    return (inside / (b - a)).float()


def cut_crops(image: Tensor, boxes: Tensor, *, scale: float, size: int, min_side: float = 0.0) -> Tensor:
    """Cut all crops of one image in one batched call.

    Each square frame is resampled by ``roi_align`` (adaptive sampling averages several samples per
    output pixel when downsampling, like an antialiased resize); output pixels outside the crop
    window are zero, and pixels straddling its edge are weighted by the fraction inside.

    Args:
        image: (3, H, W) uint8 or float RGB in [0, 255].
        boxes: (N, 4) XYXY absolute.
        scale: enlargement factor r.
        size: output side S (the CLIP input size).
        min_side: see ``crop_windows``.

    Returns:
        (N, 3, S, S) float32 in [0, 1], not yet normalised (see ``normalize``).
    """
    if len(boxes) == 0:
        return image.new_zeros((0, 3, size, size), dtype=torch.float32)
    _, h, w = image.shape
    win = crop_windows(boxes, scale, h, w, min_side)
    sq = square_windows(win)
    rois = torch.cat([torch.zeros(len(sq), 1, dtype=torch.float64), sq], 1).to(torch.float32)
    out = roi_align(image[None].float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True)
    side = sq[:, 2] - sq[:, 0]
    cov_x = _coverage(win[:, 0], win[:, 2], sq[:, 0], side, size)
    cov_y = _coverage(win[:, 1], win[:, 3], sq[:, 1], side, size)
    # bilinear samples of [0, 255] data stay in [0, 255]: one in-place multiply scales and masks
    return out.mul_(cov_y[:, None, :, None] * cov_x[:, None, None, :] / 255.0)


def cut_crops_pil(image: Image.Image, boxes: Tensor, *, scale: float, size: int, min_side: float = 0.0) -> Tensor:
    """The reference's per-crop path: PIL crop, zero-pad to a centred square, bicubic resize.

    Args and Returns: as ``cut_crops`` (``image`` is a PIL RGB image).
    """
    arr = np.asarray(image)
    out = []
    for x_lo, y_lo, x_hi, y_hi in crop_windows(boxes, scale, arr.shape[0], arr.shape[1], min_side).tolist():
        crop = arr[y_lo:y_hi, x_lo:x_hi]
        side = max(crop.shape[:2])
        canvas = np.zeros((side, side, 3), np.uint8)
        oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
        canvas[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop
        resized = Image.fromarray(canvas).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1))
    if not out:
        return torch.zeros(0, 3, size, size)
    return torch.stack(out).float() / 255.0


def normalize(crops: Tensor) -> Tensor:
    """(N, 3, S, S) in [0, 1] -> CLIP-normalised (OpenAI mean/std), same shape."""
    mean = torch.tensor(CLIP_MEAN, device=crops.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=crops.device).view(1, 3, 1, 1)
    return (crops - mean) / std


def resize_images(images: Tensor, size: int) -> Tensor:
    """(B, 3, H, W) uint8/float in [0, 255] -> (B, 3, size, size) float in [0, 1], antialiased bicubic."""
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True,
                                        align_corners=False)
    return x.clamp_(0, 255) / 255.0
