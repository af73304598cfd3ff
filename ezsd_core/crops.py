"""Box crops for CLIP: the crop geometry of the method and two ways to cut crops.

Role: method spec §1.3. A box (x1, y1, x2, y2) is enlarged by ``r`` around its centre, clipped to
the image, zero-padded to a centred square and resized to the CLIP input size. ``crop_windows`` is
the geometry (pure, exact integers); ``cut_crops`` cuts every box of one decoded image tensor,
resizing crops of equal shape together (the path every stage uses); ``cut_crops_pil`` is the
per-crop PIL path of the reference, kept for tests and the benchmark.
Layer 1: torch, PIL.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP's statistics (open_clip's default)


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


def cut_crops(image: Tensor, boxes: Tensor, *, scale: float, size: int, min_side: float = 0.0) -> Tensor:
    """Cut all crops of one image (spec §1.3), batched by crop shape.

    Crops that share a (height, width) are zero-padded to their common square and resized in one
    antialiased bicubic call (torch's antialiased bicubic follows PIL's, which the reference uses);
    a grid of anchors has few distinct shapes, so an image needs a few dozen calls, not one per crop.

    Args:
        image: (3, H, W) uint8 or float RGB in [0, 255].
        boxes: (N, 4) XYXY absolute.
        scale: enlargement factor r.
        size: output side S (the CLIP input size).
        min_side: see ``crop_windows``.

    Returns:
        (N, 3, S, S) float32 in [0, 1], not yet normalised (see ``normalize``).
    """
    out = torch.zeros(len(boxes), 3, size, size)
    if len(boxes) == 0:
        return out
    img = image.float()
    win = crop_windows(boxes, scale, image.shape[1], image.shape[2], min_side)
    hw = torch.stack([win[:, 3] - win[:, 1], win[:, 2] - win[:, 0]], 1)
    shapes, group = torch.unique(hw, dim=0, return_inverse=True)
    for g, (h, w) in enumerate(shapes.tolist()):
        idx = (group == g).nonzero()[:, 0]
        side = max(h, w)
        oy, ox = (side - h) // 2, (side - w) // 2
        canvas = img.new_zeros(len(idx), 3, side, side)
        for j, (x_lo, y_lo, _, _) in zip(range(len(idx)), win[idx].tolist()):
            canvas[j, :, oy:oy + h, ox:ox + w] = img[:, y_lo:y_lo + h, x_lo:x_lo + w]
        out[idx] = nn.functional.interpolate(canvas, size=(size, size), mode="bicubic", antialias=True,
                                             align_corners=False)
    return out.clamp_(0, 255).div_(255.0)


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


def normalize(crops: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(N, 3, S, S) RGB in [0, 1] -> (crops - mean) / std per channel, same shape.

    ``mean`` / ``std`` are the CLIP's own preprocessing statistics (``Clip.image_mean`` / ``image_std``,
    from the weights' preprocess config; OpenAI's ``CLIP_MEAN`` / ``CLIP_STD`` for OpenAI CLIP): a
    model trained with other statistics would otherwise see shifted colours.
    """
    m = torch.tensor(mean, dtype=crops.dtype, device=crops.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=crops.dtype, device=crops.device).view(1, 3, 1, 1)
    return (crops - m) / s


def resize_images(images: Tensor, size: int) -> Tensor:
    """(B, 3, H, W) uint8/float in [0, 255] -> (B, 3, size, size) float in [0, 1], antialiased bicubic."""
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True,
                                        align_corners=False)
    return x.clamp_(0, 255) / 255.0
