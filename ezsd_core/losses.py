"""Losses of the distillation detector: region classification (softmax CE or Seesaw), class-agnostic
box regression, and the weighted L1 embedding distillation.

Role: method spec §5.2-5.3. Labels follow torchvision: 0 is background, 1..K the classes.
Layer 2: torch only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def box_regression_loss(deltas: Tensor, targets: Tensor, labels: Tensor) -> Tensor:
    """L1 between predicted and target box deltas of foreground RoIs, averaged over all sampled RoIs.

    Args:
        deltas: (R, 4) class-agnostic predicted deltas; targets: (R, 4) encoded targets.
        labels: (R,) int64, 0 = background (no box loss).

    Returns:
        Scalar (0 when there is no foreground RoI, with a gradient path so DDP stays in step).
    """
    fg = labels > 0
    return (deltas[fg] - targets[fg]).abs().sum() / max(labels.numel(), 1) + 0.0 * deltas.sum()


def distill_loss(region_embeds: Tensor, target_embeds: Tensor, weights: Tensor) -> Tensor:
    """Weighted L1 distillation (spec §5.3): mean over RoIs of w_i * ||e_i - t_i||_1.

    Equals the reference's ``L1Loss(mean)`` over all (RoI, dim) elements times D.

    Args:
        region_embeds: (M, D) L2-normalised detector embeddings.
        target_embeds: (M, D) L2-normalised CLIP embeddings.
        weights: (M,) per-RoI weights (1 for GT, CLIP's probability for regions, renormalised per image).
    """
    if len(region_embeds) == 0:
        return region_embeds.sum() * 0.0
    return (weights[:, None] * (region_embeds - target_embeds).abs()).sum() / len(region_embeds)


class SeesawLoss(nn.Module):
    """Seesaw loss (Wang et al., CVPR 2021) for long-tailed classification, with an objectness pair.

    Logits layout: (R, K + 2) = K class logits, then [foreground, background] objectness logits.
    The class part is a softmax CE over foreground RoIs whose negative logits are re-weighted by a
    mitigation factor (cum_j / cum_i)^p for rarer j and a compensation factor (sigma_j / sigma_i)^q
    for misclassified j; the objectness part is a 2-way CE over all RoIs. Both parts are divided by the
    number of sampled RoIs R (foreground and background), as the authors' implementation (MMDetection's
    ``SeesawLoss`` under ``BBoxHead.loss``, ``avg_factor`` = R) that the reference trains with: the class
    part is summed over the foreground RoIs, not averaged over them. Class counts accumulate over
    training (a buffer, saved with the model).

    Args:
        num_classes: K.
        p, q, eps: as the paper (0.8, 2.0, 1e-2).
    """

    def __init__(self, num_classes: int, p: float = 0.8, q: float = 2.0, eps: float = 1e-2):
        super().__init__()
        self.p, self.q, self.eps = p, q, eps
        self.register_buffer("cum_samples", torch.zeros(num_classes, dtype=torch.float64))

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Args: logits (R, K + 2); labels (R,) int64 in 0..K (0 = background). Returns a scalar."""
        k = len(self.cum_samples)
        cls, obj = logits[:, :k], logits[:, k:]
        fg = labels > 0
        loss_obj = nn.functional.cross_entropy(obj, (~fg).long())
        if not bool(fg.any()):
            return loss_obj + cls.sum() * 0.0
        target = labels[fg] - 1
        self.cum_samples += torch.bincount(target, minlength=k).to(self.cum_samples)
        x = cls[fg]
        onehot = nn.functional.one_hot(target, k).float()
        cum = self.cum_samples.clamp(min=1).float()
        weights = torch.ones_like(x)
        if self.p > 0:  # mitigation: rarer classes j are pushed down less by frequent i
            ratio = cum[None, :] / cum[:, None]
            weights = weights * ratio.clamp(max=1.0).pow(self.p)[target]
        if self.q > 0:  # compensation: misclassified j with a higher score are pushed down more
            prob = x.detach().softmax(1)
            self_prob = prob.gather(1, target[:, None]).clamp(min=self.eps)
            weights = weights * (prob / self_prob).clamp(min=1.0).pow(self.q)
        x = x + weights.log() * (1 - onehot)
        return nn.functional.cross_entropy(x, target, reduction="sum") / len(labels) + loss_obj

    @staticmethod
    def probabilities(logits: Tensor, num_classes: int) -> Tensor:
        """(R, K + 2) logits -> (R, K + 1) probabilities [background, classes], summing to 1."""
        cls = logits[:, :num_classes].softmax(1)
        obj = logits[:, num_classes:].softmax(1)
        return torch.cat([obj[:, 1:], cls * obj[:, :1]], 1)
