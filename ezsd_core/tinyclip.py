"""The image tower of the toy-world CLIP teacher: a small CNN with LayerNorms, registered with timm.

Role: open_clip builds timm towers by name (``vision_cfg.timm_model_name``), so registering this CNN
with timm lets a plain open_clip JSON config (``resources/open_clip/ezsd-tiny-cnn.json``) describe
the whole teacher, and ``open_clip.create_model(name, pretrained=file)`` rebuild it exactly.
Why a CNN: tiny ViTs trained from scratch stayed at chance for minutes on a CPU, while this CNN at
32 px learns the shapes in about a minute (measured, see README). Every norm is a LayerNorm
(``nn.LayerNorm`` subclasses), because stage 01 tunes only LayerNorm parameters.
Layer 1: torch, timm.
"""

from __future__ import annotations

from functools import cache

from torch import Tensor, nn


class LayerNormCHW(nn.LayerNorm):
    """Layer normalisation of a conv map over (C, H, W) with a per-channel affine (Ba et al., 2016).

    The statistics of ``GroupNorm(1, C)``; a ``torch.nn.LayerNorm`` so LayerNorm-only tuning finds it.
    Input (B, C, H, W) or (B, C); output the same shape.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            return super().forward(x)
        return nn.functional.group_norm(x, 1, self.weight, self.bias, self.eps)


class ToyCNN(nn.Module):
    """Stages of (conv3x3 -> LayerNormCHW -> ReLU) x ``convs_per_stage`` + max-pool, then global average
    pooling, a LayerNorm and a linear head (timm's classifier interface, which open_clip uses as the
    projection to the joint embedding).

    Args:
        widths: channels of each stage (each halves the resolution; width is cheap in the late, small stages).
        convs_per_stage: conv blocks per stage.
        num_classes: output dimension of the head (open_clip passes its embed dim); 0 = no head.
        global_pool: ``"avg"`` (the only pooling implemented).
        in_chans: input channels.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 96, 192), convs_per_stage: int = 2,
                 num_classes: int = 64, global_pool: str = "avg", in_chans: int = 3, **_: object):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for w in widths:
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), LayerNormCHW(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.global_pool = global_pool
        self.head_norm = nn.LayerNorm(c)
        self.head: nn.Module = nn.Linear(c, num_classes) if num_classes else nn.Identity()
        self.default_cfg = self.pretrained_cfg = {"pool_size": None}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm interface: replace the head (``num_classes=0`` removes it)."""
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, C, S/16, S/16) for four stages."""
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C, h, w) -> (B, num_classes), or the normalised pooled (B, C) when ``pre_logits``."""
        x = self.head_norm(x.mean((2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) normalised images -> (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


@cache
def register_timm_towers() -> None:
    """Register ``ezsd_toycnn`` with timm (once; called by ``clip.register_packaged_models``)."""
    from timm.models import register_model

    def ezsd_toycnn(pretrained: bool = False, **kwargs: object) -> ToyCNN:
        if pretrained:
            raise ValueError("ezsd_toycnn has no pretrained weights; train it with stage 00 (pretrain_clip)")
        return ToyCNN(**kwargs)

    ezsd_toycnn.__module__ = __name__
    register_model(ezsd_toycnn)


def tower_summary(model: nn.Module) -> dict[str, int]:
    """Parameter and LayerNorm counts of a module (for logs and tests)."""
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "layernorms": sum(isinstance(m, nn.LayerNorm) for m in model.modules())}

