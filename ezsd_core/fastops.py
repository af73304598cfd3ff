"""CPU-fast equivalents of two detection ops whose torchvision CPU kernels dominate a toy training step.

Role: on the toy detector (2 CPU cores) a training step spent about a fifth of its time in
``torchvision.ops.roi_align``'s backward (a serial scatter) and about as much in the backward of the
1x1 convolutions of the RPN head and the FPN laterals (oneDNN's weight-gradient path for few output
channels on small maps). Both are replaced here by the same maths as plain matrix products, whose
forward and backward are GEMMs:

* ``roi_align``: RoIAlign with a fixed ``sampling_ratio`` on a small map is separable. Each output bin averages
  s x s bilinear samples, and both the bilinear weights and torchvision's out-of-range rule factor into
  a row part and a column part, so for one RoI ``out[c] = A_y @ feat[c] @ A_x^T`` with A_y (S_h, H) and
  A_x (S_w, W) holding at most 2 s nonzeros per row.
* ``PointwiseConv2d``: a 1x1 convolution as a matmul over channels (same parameters and state-dict keys
  as ``nn.Conv2d``).

Both give torchvision's / PyTorch's numbers up to float rounding (``tests/unit/test_fastops.py``). The
fast RoIAlign is used on CPU with a fixed sampling ratio on maps of at most ``MAX_DENSE_PIXELS``; on
CUDA, with adaptive sampling, on larger maps and under tracing (ONNX / TorchScript export)
torchvision's kernel runs as before.
Layer 1: torch and torchvision.ops only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

# The matmul form does about H*W / (4 S_w s^2) times the multiply-adds of the direct kernel (4 taps per
# sample): 9x on the toy detector's P2 (32 x 32), which GEMMs more than repay, but 600x on a ResNet-FPN's
# (200 x 334 for an 800 x 1333 image), so larger maps keep torchvision's kernel. Intermediates are
# chunked to MAX_INTERMEDIATE floats (64 MB).
MAX_DENSE_PIXELS = 64 * 64
MAX_INTERMEDIATE = 16 * 2**20


def _axis_weights(start: Tensor, bin_size: Tensor, samples: int, out_size: int, length: int) -> Tensor:
    """Interpolation matrices of one axis, torchvision's bilinear rule averaged over ``samples`` points per bin.

    Args:
        start: (R,) RoI start on the feature map; bin_size: (R,) bin side in feature-map pixels;
        samples: sampling points per bin side; out_size: bins; length: feature-map side.

    Returns:
        (R, out_size, length) float: row p holds the weights of bin p's samples, divided by ``samples``.
    """
    bins = torch.arange(out_size, dtype=start.dtype, device=start.device)
    points = torch.arange(samples, dtype=start.dtype, device=start.device) + 0.5
    pos = (start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]
           + points[None, None, :] * bin_size[:, None, None] / samples)  # (R, S, s)
    valid = ((pos >= -1.0) & (pos <= length)).to(pos.dtype)  # outside [-1, length]: the sample is 0
    pos = pos.clamp(min=0.0)
    low = pos.long()
    at_end = low >= length - 1  # the last row / column is repeated, as torchvision does
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(pos.dtype))
    weights = torch.zeros(start.shape[0], out_size, length, dtype=pos.dtype, device=pos.device)
    weights.scatter_add_(2, low, (1.0 - frac) * valid / samples)
    weights.scatter_add_(2, high, frac * valid / samples)
    return weights


def roi_align(feat: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int,
              aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align`` (bilinear, average of ``sampling_ratio``^2 samples per bin) as matmuls.

    Args:
        feat: (B, C, H, W) feature map; rois: (R, 5) ``[batch index, x1, y1, x2, y2]`` in input pixels
            (XYXY); output_size: (S_h, S_w) bins; spatial_scale: feature-map pixels per input pixel;
            sampling_ratio: samples per bin side (<= 0, adaptive: torchvision's kernel is used);
            aligned: pixel centres at +0.5 (Detectron2 / MMDetection), else torchvision's default.

    Returns:
        (R, C, S_h, S_w) pooled features, differentiable with respect to ``feat`` (not the boxes).
    """
    (sh, sw), (b, c, h, w) = output_size, feat.shape
    if (sampling_ratio <= 0 or feat.device.type != "cpu" or h * w > MAX_DENSE_PIXELS or torch.jit.is_tracing()
            or torch.jit.is_scripting()):
        return tv_roi_align(feat, rois, output_size, spatial_scale, sampling_ratio, aligned)
    if rois.shape[0] == 0:
        return feat.new_zeros((0, c, sh, sw))
    with torch.no_grad():
        boxes = rois[:, 1:].to(torch.float32) * spatial_scale - (0.5 if aligned else 0.0)
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        if not aligned:  # torchvision forces malformed RoIs to 1 x 1
            width, height = width.clamp(min=1.0), height.clamp(min=1.0)
        ay = _axis_weights(boxes[:, 1], height / sh, sampling_ratio, sh, h).to(feat.dtype)  # (R, S_h, H)
        ax = _axis_weights(boxes[:, 0], width / sw, sampling_ratio, sw, w).to(feat.dtype)  # (R, S_w, W)
        image = rois[:, 0].long()
        order = torch.argsort(image, stable=True)
        counts = torch.bincount(image, minlength=b).tolist()
    parts, first, chunk = [], 0, max(1, MAX_INTERMEDIATE // (sh * c * w))
    for i, count in enumerate(counts):
        if count == 0:
            continue
        fmap = feat[i].permute(1, 0, 2).reshape(h, c * w)  # (H, C*W): only the small map is permuted
        for lo in range(first, first + count, chunk):
            idx = order[lo:min(lo + chunk, first + count)]
            n = len(idx)
            # contract H: (n*S_h, H) @ (H, C*W), then W: (n, S_h*C, W) @ (n, W, S_w)
            rows = ay[idx].reshape(n * sh, h) @ fmap
            parts.append(torch.bmm(rows.view(n, sh * c, w), ax[idx].transpose(1, 2)).view(n, sh, c, sw)
                         .permute(0, 2, 1, 3))
        first += count
    out = torch.cat(parts)
    return out if bool((order == torch.arange(len(order))).all()) else out[torch.argsort(order)]


class FastMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (FPN level of each RoI by eq. 1 of the FPN paper) on ``roi_align``
    above, with torchvision's default pixel convention or, with ``aligned``, MMDetection's (+0.5)."""

    def __init__(self, featmap_names: list[str], output_size: int, sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4, aligned: bool = False):
        super().__init__(featmap_names, output_size, sampling_ratio, canonical_scale=canonical_scale,
                         canonical_level=canonical_level)
        self.aligned = aligned

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """x: FPN maps (B, C, H_l, W_l) by name; boxes: per image (N_i, 4) XYXY in input pixels.
        Returns (sum N_i, C, S, S) pooled features, RoIs in the order given."""
        if not self.aligned and (torch.jit.is_tracing() or torch.jit.is_scripting()):
            return super().forward(x, boxes, image_shapes)  # torchvision's traceable level merge (export)
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois, levels = _convert_to_roi_format(boxes), self.map_levels(boxes)
        parts, where = [], []
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            if len(idx):
                parts.append(roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, self.aligned))
                where.append(idx)
        if not parts:
            return feats[0].new_zeros((0, feats[0].shape[1], *self.output_size))
        if len(parts) == 1:
            return parts[0]  # every RoI on one level, in order
        return torch.cat(parts)[torch.argsort(torch.cat(where))]


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped ``nn.Conv2d`` computed as a matmul over channels (same parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H, W)."""
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return super().forward(x)
        y = torch.matmul(self.weight.view(self.out_channels, self.in_channels), x.flatten(2))  # (B, C_out, H*W)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.view(x.shape[0], self.out_channels, *x.shape[2:])


def pointwise_convs_as_matmul(module: nn.Module) -> int:
    """Swap every plain 1x1 ``nn.Conv2d`` inside ``module`` for a ``PointwiseConv2d`` sharing its parameters.

    Returns:
        The number of convolutions swapped.
    """
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (type(child) is nn.Conv2d and child.kernel_size == (1, 1) and child.stride == (1, 1)
                    and child.padding == (0, 0) and child.dilation == (1, 1) and child.groups == 1
                    and child.padding_mode == "zeros"):
                fast = PointwiseConv2d(child.in_channels, child.out_channels, 1, bias=child.bias is not None,
                                       device="meta")
                fast.weight, fast.bias = child.weight, child.bias
                setattr(parent, name, fast)
                swapped += 1
    return swapped
