"""The distillation detector: torchvision Mask R-CNN parts with an embedding box head (method spec §5).

Role: ``EzsdDetector`` composes ``GeneralizedRCNNTransform``, a backbone + FPN from ``BACKBONES``,
torchvision's RPN and ``EzsdRoIHeads``. The box head ends in a region embedding (CLIP's dimension,
L2-normalised) classified by scaled cosine similarity with frozen text embeddings plus one learned
background vector; box regression is class-agnostic and conditioned on the text embedding of the
class ("semantic regression"); masks are class-agnostic. The distillation branch pools extra boxes
through the same head and returns ``loss_distill``. No I/O happens here.
Boxes in and out are XYXY in original-image pixels; labels are 1..K (0 = background).
Layer 2: imports losses and fastops (layer 1).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import (
    FeaturePyramidNetwork,
    batched_nms,
    clip_boxes_to_image,
    remove_small_boxes,
)
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ezsd_core import fastops, losses

CLASSIFIER_LOSSES = ("softmax", "seesaw")


@dataclass(frozen=True)
class DetectorSpec:
    """Every constructor argument of ``EzsdDetector`` (config stops at the stage boundary)."""

    backbone: str  # a key of BACKBONES
    pretrained_backbone: bool  # resnet: torchvision ImageNet weights; toy: loaded by the caller (stage 04)
    trainable_backbone_layers: int
    fpn_channels: int
    min_size: tuple[int, ...]  # GeneralizedRCNNTransform: one drawn per training batch, the last at test
    max_size: int
    rpn_anchor_sizes: tuple[int, ...]  # side px, one per FPN level (P2..P6)
    rpn_anchor_ratios: tuple[float, ...]
    rpn_pre_nms_train: int
    rpn_post_nms_train: int
    rpn_pre_nms_test: int
    rpn_post_nms_test: int
    rpn_batch_size: int
    roi_batch_size: int  # sampled RoIs per image
    roi_positive_fraction: float
    head_shared_convs: int
    head_branch_convs: int
    head_conv_dim: int
    head_fc_dim: int
    mask_head_convs: int  # 0: no mask branch (Faster R-CNN)
    mask_head_dim: int
    embed_dim: int
    temperature_init: float  # initial T of T * cos (learned, as exp of a parameter)
    classifier_loss: str  # softmax | seesaw
    box_loss_weight: float
    distill_weight: float  # lambda
    box_score_thresh: float
    box_nms_thresh: float
    box_detections_per_img: int
    roi_canonical_scale: int = 224  # RoIs of this side pool from FPN level 4 (k = 4 + log2(side / scale))
    roi_sampling_ratio: int = 2  # RoIAlign samples per bin side; 0 = adaptive (ceil(RoI side / output side))
    roi_aligned: bool = False  # RoIAlign's half-pixel shift (Detectron2 / MMDet's aligned=True)


@dataclass
class DetectorOutput:
    """What ``EzsdDetector.forward`` always returns: losses (empty without targets) and detections
    (None unless asked for): per image ``boxes`` (P, 4) XYXY original pixels, ``labels`` (P,) 1..K,
    ``scores`` (P,), and ``masks`` (P, 1, H, W) probabilities when the mask branch exists."""

    losses: dict[str, Tensor]
    detections: list[dict[str, Tensor]] | None


# ---------------------------------------------------------------------------------------------
# backbones


class ToyBackbone(nn.Module):
    """A small conv net with an FPN for 128 px toy scenes: stem 16 (stride 2), stages 32-64-128-256
    (stride 4-32, two conv-GroupNorm-ReLU each); FPN outputs '0'..'3' and 'pool'."""

    def __init__(self, fpn_channels: int, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        # GroupNorm, not BatchNorm: a few images per step give BatchNorm poor statistics
        block = lambda i, o, s: [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.GroupNorm(8, o), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*block(3, 16, 2))
        stages, c = [], 16
        for w in widths:
            stages.append(nn.Sequential(*block(c, w, 2), *block(w, w, 1)))
            c = w
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(widths), fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats, x = OrderedDict(), self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[str(i)] = x
        return self.fpn(feats)


def _resnet(name: str):
    def build(spec: DetectorSpec) -> nn.Module:
        from torchvision.models import ResNet18_Weights, ResNet50_Weights, ResNet101_Weights

        weights = {"resnet18": ResNet18_Weights.IMAGENET1K_V1, "resnet50": ResNet50_Weights.IMAGENET1K_V1,
                   "resnet101": ResNet101_Weights.IMAGENET1K_V1}[name]
        return resnet_fpn_backbone(backbone_name=name, weights=weights if spec.pretrained_backbone else None,
                                   trainable_layers=spec.trainable_backbone_layers)
    return build


BACKBONES = {"toy": lambda spec: ToyBackbone(spec.fpn_channels), "resnet18": _resnet("resnet18"),
             "resnet50": _resnet("resnet50"), "resnet101": _resnet("resnet101")}


# ---------------------------------------------------------------------------------------------
# the box head and its predictor


class EmbeddingBoxHead(nn.Module):
    """Shared convs, then a classification branch and a regression branch (spec §5.2), each
    ``branch_convs`` convs + flatten + 2 FCs. Input (R, C, 7, 7); outputs (R, fc_dim) twice."""

    def __init__(self, in_channels: int, spec: DetectorSpec, size: int = 7):
        super().__init__()
        conv = lambda i: [nn.Conv2d(i, spec.head_conv_dim, 3, padding=1), nn.ReLU(inplace=True)]
        layers, c = [], in_channels
        for _ in range(spec.head_shared_convs):
            layers += conv(c)
            c = spec.head_conv_dim
        self.shared = nn.Sequential(*layers)

        def branch() -> nn.Sequential:
            b, ci = [], c
            for _ in range(spec.head_branch_convs):
                b += conv(ci)
                ci = spec.head_conv_dim
            return nn.Sequential(*b, nn.Flatten(), nn.Linear(ci * size * size, spec.head_fc_dim), nn.ReLU(inplace=True),
                                 nn.Linear(spec.head_fc_dim, spec.head_fc_dim), nn.ReLU(inplace=True))

        self.cls_branch, self.reg_branch = branch(), branch()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shared = self.shared(x)
        return self.cls_branch(shared), self.reg_branch(shared)


class EmbeddingBoxPredictor(nn.Module):
    """Region embedding, cosine classifier with a learned background vector, semantic box regression.

    Args:
        fc_dim: input feature size of both branches; text_embeds: (K, D) unit rows (a buffer,
        swappable with ``set_vocabulary``); temperature_init: initial T; seesaw: output Seesaw's
        objectness pair instead of a background logit.
    """

    def __init__(self, fc_dim: int, text_embeds: Tensor, temperature_init: float, seesaw: bool):
        super().__init__()
        dim = text_embeds.shape[1]
        self.to_embed = nn.Linear(fc_dim, dim)
        self.background = nn.Linear(dim, 2 if seesaw else 1, bias=False)  # not normalised, as the reference
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature_init)))
        self.regress = nn.Linear(fc_dim + dim, 4)
        self.seesaw = seesaw
        nn.init.normal_(self.regress.weight, std=0.001)
        nn.init.zeros_(self.regress.bias)
        self.register_buffer("text_embeds", nn.functional.normalize(text_embeds.float(), dim=-1))

    @property
    def num_classes(self) -> int:
        return len(self.text_embeds)

    def set_vocabulary(self, text_embeds: Tensor) -> None:
        """Swap in (K', D) text embeddings (e.g. base + novel at test time); background and T stay."""
        self.text_embeds = nn.functional.normalize(text_embeds.float(), dim=-1).to(self.text_embeds.device)

    def embed(self, cls_features: Tensor) -> Tensor:
        """(R, fc_dim) -> (R, D) L2-normalised region embeddings."""
        return nn.functional.normalize(self.to_embed(cls_features), dim=-1)

    def classify(self, embeds: Tensor) -> Tensor:
        """(R, D) -> logits: (R, K + 1) [background, classes], or (R, K + 2) [classes, fg, bg] for Seesaw."""
        t = self.log_temperature.exp()
        cos = embeds @ self.text_embeds.T
        if self.seesaw:  # Seesaw's objectness logits are not scaled by T (spec §5.2)
            return torch.cat([t * cos, self.background(embeds)], 1)
        return t * torch.cat([self.background(embeds), cos], 1)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Logits -> (R, K + 1) probabilities [background, classes]."""
        if self.seesaw:
            return losses.SeesawLoss.probabilities(logits, self.num_classes)
        return logits.softmax(1)

    def box_deltas(self, reg_features: Tensor, labels: Tensor) -> Tensor:
        """(R, fc_dim) features + (R,) labels 0..K -> (R, 4) class-agnostic deltas, conditioned on
        the text embedding of each label (a zero vector for background)."""
        text = torch.cat([self.text_embeds.new_zeros(1, self.text_embeds.shape[1]), self.text_embeds])
        return self.regress(torch.cat([reg_features, text[labels]], 1))


# ---------------------------------------------------------------------------------------------
# RoI heads


LEVELS = ["0", "1", "2", "3"]  # FPN outputs RoIs are pooled from (P2..P5)


class EzsdRoIHeads(RoIHeads):
    """torchvision's RoIHeads with the embedding predictor, class-agnostic masks and distillation.

    Reuses the parent's sampling (``select_training_samples``), box coder and mask loss; ``forward``
    is split into ``_forward_box``, ``_forward_mask`` and ``_forward_distill``.
    """

    def __init__(self, spec: DetectorSpec, out_channels: int, text_embeds: Tensor):
        mask = spec.mask_head_convs > 0
        super().__init__(
            box_roi_pool=roi_pool(spec, 7),
            box_head=EmbeddingBoxHead(out_channels, spec),
            box_predictor=EmbeddingBoxPredictor(spec.head_fc_dim, text_embeds, spec.temperature_init,
                                                spec.classifier_loss == "seesaw"),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=spec.roi_batch_size,
            positive_fraction=spec.roi_positive_fraction, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
            score_thresh=spec.box_score_thresh, nms_thresh=spec.box_nms_thresh,
            detections_per_img=spec.box_detections_per_img,
            mask_roi_pool=roi_pool(spec, 14) if mask else None,
            mask_head=MaskRCNNHeads(out_channels, [spec.mask_head_dim] * spec.mask_head_convs, 1) if mask else None,
            mask_predictor=MaskRCNNPredictor(spec.mask_head_dim, spec.mask_head_dim, 1) if mask else None)
        self.seesaw = losses.SeesawLoss(len(text_embeds)) if spec.classifier_loss == "seesaw" else None
        self.box_loss_weight, self.distill_weight = spec.box_loss_weight, spec.distill_weight

    def _classification_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self.seesaw(logits, labels) if self.seesaw is not None else nn.functional.cross_entropy(logits, labels)

    def _forward_box(self, features, proposals, image_shapes, targets, distill=None):
        """Training losses on sampled RoIs; distillation boxes (if any) share the same RoIAlign and head
        pass (one call for both RoI sets is what keeps distillation cheap). Returns (losses, sampled
        proposals, their labels, matched GT indices, distillation embeddings or None)."""
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        extra = [d["boxes"] for d in distill] if distill is not None else [p[:0] for p in proposals]
        boxes = [torch.cat([p, e]) for p, e in zip(proposals, extra)]
        sampled = torch.cat([torch.cat([torch.ones(len(p), dtype=torch.bool, device=p.device),
                                        torch.zeros(len(e), dtype=torch.bool, device=p.device)])
                             for p, e in zip(proposals, extra)])
        shared = self.box_head.shared(self.box_roi_pool(features, boxes, image_shapes))
        embeds = self.box_predictor.embed(self.box_head.cls_branch(shared))
        reg_f = self.box_head.reg_branch(shared[sampled])
        labels_all, targets_all = torch.cat(labels), torch.cat(regression_targets)
        logits = self.box_predictor.classify(embeds[sampled])
        deltas = self.box_predictor.box_deltas(reg_f, labels_all)
        result = {"loss_classifier": self._classification_loss(logits, labels_all),
                  "loss_box_reg": self.box_loss_weight * losses.box_regression_loss(deltas, targets_all, labels_all)}
        return result, proposals, labels, matched_idxs, (embeds[~sampled] if distill is not None else None)

    @torch.no_grad()
    def _detect(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        """Inference: class probabilities, the box decoded for the argmax class, per-class NMS, top-N."""
        counts = [len(p) for p in proposals]
        cls_f, reg_f = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        probs = self.box_predictor.probabilities(self.box_predictor.classify(self.box_predictor.embed(cls_f)))
        deltas = self.box_predictor.box_deltas(reg_f, probs.argmax(1))
        boxes = self.box_coder.decode(deltas, proposals).reshape(-1, 4)  # (P, 1, 4), or (0, 4) for no proposal
        results = []
        for b, p, shape in zip(boxes.split(counts), probs.split(counts), image_shapes):
            b = clip_boxes_to_image(b, shape)
            k = p.shape[1] - 1
            scores, labels = p[:, 1:].reshape(-1), torch.arange(1, k + 1, device=p.device).repeat(len(b))
            keep = torch.where(scores > self.score_thresh)[0]
            cand = b.repeat_interleave(k, 0)[keep]
            scores, labels = scores[keep], labels[keep]
            ok = remove_small_boxes(cand, 1e-2)
            cand, scores, labels = cand[ok], scores[ok], labels[ok]
            keep = batched_nms(cand, scores, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": cand[keep], "scores": scores[keep], "labels": labels[keep]})
        return results

    def _forward_mask(self, features, image_shapes, boxes: list[Tensor], targets=None, matched_idxs=None):
        """Class-agnostic masks: the BCE loss on positive RoIs (training) or (P, 1, 28, 28) probabilities."""
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
        zeros = [torch.zeros(len(b), dtype=torch.int64, device=mask_logits.device) for b in boxes]
        if targets is None:
            return maskrcnn_inference(mask_logits, zeros)
        return maskrcnn_loss(mask_logits, boxes, [t["masks"] for t in targets], zeros, matched_idxs)

    def _forward_distill(self, embeds: Tensor, distill: list[dict[str, Tensor]]) -> Tensor:
        """Distillation loss (spec §5.3): (M, D) region embeddings of ``distill[i]["boxes"]`` (from
        ``_forward_box``) against the L2-normalised CLIP ``embeds``, weighted by ``weights``, times lambda."""
        target = nn.functional.normalize(torch.cat([d["embeds"] for d in distill]).float(), dim=-1)
        weights = torch.cat([d["weights"] for d in distill])
        return self.distill_weight * losses.distill_loss(embeds, target, weights)

    def forward(self, features, proposals, image_shapes, targets=None, distill=None, want_detections=False,
                want_masks=True):
        """Returns (losses, detections or None); losses need ``targets`` (and ``distill`` for loss_distill);
        detections carry ``masks`` only when ``want_masks`` (and the model has a mask head)."""
        result: dict[str, Tensor] = {}
        if targets is not None:
            box_losses, sampled, labels, matched, distill_embeds = self._forward_box(
                features, proposals, image_shapes, targets, distill)
            result.update(box_losses)
            if self.has_mask():
                pos = [torch.where(lab > 0)[0] for lab in labels]
                result["loss_mask"] = self._forward_mask(features, image_shapes, [s[p] for s, p in zip(sampled, pos)],
                                                         targets, [m[p] for m, p in zip(matched, pos)])
            if distill is not None:
                result["loss_distill"] = self._forward_distill(distill_embeds, distill)
        detections = None
        if want_detections:
            detections = self._detect(features, proposals, image_shapes)
            if self.has_mask() and want_masks:
                masks = self._forward_mask(features, image_shapes, [d["boxes"] for d in detections])
                for det, m in zip(detections, masks):
                    det["masks"] = m
        return result, detections


# ---------------------------------------------------------------------------------------------
# the detector


class EzsdDetector(nn.Module):
    """The whole detector: transform, backbone + FPN, RPN, EzsdRoIHeads.

    ``forward`` always returns a DetectorOutput; losses need ``model.train()`` and targets.
    """

    def __init__(self, spec: DetectorSpec, text_embeds: Tensor):
        super().__init__()
        if spec.classifier_loss not in CLASSIFIER_LOSSES:
            raise ValueError(f"classifier_loss must be one of {CLASSIFIER_LOSSES}, got {spec.classifier_loss!r}")
        if spec.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {spec.backbone!r}")
        self.spec = spec
        self.transform = GeneralizedRCNNTransform(spec.min_size, spec.max_size, [0.485, 0.456, 0.406],
                                                  [0.229, 0.224, 0.225])
        self.backbone = BACKBONES[spec.backbone](spec)
        sizes = tuple((s,) for s in spec.rpn_anchor_sizes)
        anchors = AnchorGenerator(sizes, (spec.rpn_anchor_ratios,) * len(sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(self.backbone.out_channels, len(spec.rpn_anchor_ratios)), 0.7, 0.3, spec.rpn_batch_size,
            0.5,
            {"training": spec.rpn_pre_nms_train, "testing": spec.rpn_pre_nms_test},
            {"training": spec.rpn_post_nms_train, "testing": spec.rpn_post_nms_test}, 0.7)
        self.roi_heads = EzsdRoIHeads(spec, self.backbone.out_channels, text_embeds)
        # the 1x1 convs of FPN laterals, RPN head and mask predictor as matmuls: same maths, fast backward on CPU
        for part in (getattr(self.backbone, "fpn", None), self.rpn, self.roi_heads):
            if part is not None:
                fastops.pointwise_convs_as_matmul(part)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                distill: list[dict[str, Tensor]] | None = None, *, return_detections: bool = False,
                return_masks: bool = True) -> DetectorOutput:
        """Run the detector.

        Args:
            images: B float tensors (3, H, W) in [0, 1].
            targets: per image ``boxes`` (N, 4) XYXY original pixels, ``labels`` (N,) 1..K, ``masks`` (N, H, W) uint8.
            distill: per image ``boxes`` (M, 4) XYXY original pixels, ``embeds`` (M, D), ``weights`` (M,).
            return_detections: also return detections (in original pixels).
            return_masks: with detections, also predict and paste their (P, 1, H, W) masks at the original
                size (False: boxes only, no memory in proportion to the image size).

        Raises:
            ValueError: targets given while the model is in eval mode (torchvision's RPN computes
                its losses only in training mode).
        """
        if targets is not None and not self.training:
            raise ValueError("losses need model.train(); call model.eval() only for detections")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        if distill is not None:  # torchvision's transform resizes only targets["boxes"]: do the same here
            distill = [{**d, "boxes": resize_boxes(d["boxes"], list(o), list(s))}
                       for d, o, s in zip(distill, original_sizes, batch.image_sizes)]
        features = self.backbone(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        roi_losses, detections = self.roi_heads(features, proposals, batch.image_sizes, targets, distill,
                                                return_detections, return_masks)
        if detections is not None:
            detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        return DetectorOutput(losses={**rpn_losses, **roi_losses}, detections=detections)

    def set_vocabulary(self, text_embeds: Tensor) -> None:
        """Classify against these (K, D) text embeddings from now on (test-time vocabulary swap)."""
        self.roi_heads.box_predictor.set_vocabulary(text_embeds)


def roi_pool(spec: DetectorSpec, size: int) -> fastops.FastMultiScaleRoIAlign:
    """The RoIAlign over FPN levels P2-P5 of a spec: (size x size) bins, ``roi_sampling_ratio``, ``roi_aligned``
    (pixel centres at +0.5, as MMDetection's RoIAlign, spec §5.2; torchvision's pooler does not expose it).
    torchvision's level mapping and maths; matmuls on CPU (``fastops``)."""
    return fastops.FastMultiScaleRoIAlign(LEVELS, size, spec.roi_sampling_ratio,
                                          canonical_scale=spec.roi_canonical_scale,
                                          aligned=spec.roi_aligned)


def build_detector(spec: DetectorSpec, text_embeds: Tensor) -> EzsdDetector:
    """An EzsdDetector for ``spec`` whose classifier starts with ``text_embeds`` (K, D) (the base classes)."""
    return EzsdDetector(spec, text_embeds)
