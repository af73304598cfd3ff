from __future__ import annotations

import pytest
import torch

from ezsd_core import detector


def _spec(**changes) -> detector.DetectorSpec:
    base = dict(backbone="toy", pretrained_backbone=False, trainable_backbone_layers=5, fpn_channels=16, min_size=(64,),
                max_size=64, rpn_anchor_sizes=(8, 16, 32, 64, 128), rpn_anchor_ratios=(0.5, 1.0, 2.0),
                rpn_pre_nms_train=100,
                rpn_post_nms_train=50, rpn_pre_nms_test=100, rpn_post_nms_test=50, rpn_batch_size=32,
                roi_batch_size=16, roi_positive_fraction=0.25, head_shared_convs=1, head_branch_convs=1,
                head_conv_dim=8, head_fc_dim=32, mask_head_convs=1, mask_head_dim=8, embed_dim=16,
                temperature_init=20.0, classifier_loss="softmax", box_loss_weight=1.0, distill_weight=1.0,
                box_score_thresh=0.0, box_nms_thresh=0.5, box_detections_per_img=20)
    return detector.DetectorSpec(**{**base, **changes})


def _batch(n_gt: int):
    masks = torch.zeros(n_gt, 64, 64, dtype=torch.uint8)
    boxes = torch.tensor([[8.0, 8, 30, 30], [30, 20, 60, 50]])[:n_gt]
    for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        m[y1:y2, x1:x2] = 1
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 3])[:n_gt], "masks": masks}]
    distill = [{"boxes": torch.tensor([[4.0, 4, 40, 40]]), "embeds": torch.randn(1, 16), "weights": torch.ones(1)}]
    return [torch.rand(3, 64, 64)], targets, distill


@pytest.fixture
def model() -> detector.EzsdDetector:
    torch.manual_seed(0)
    return detector.build_detector(_spec(), torch.nn.functional.normalize(torch.randn(3, 16), dim=-1))


def test_training_returns_every_loss_and_detections(model) -> None:
    images, targets, distill = _batch(2)
    out = model.train()(images, targets, distill, return_detections=True)
    assert set(out.losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
                               "loss_distill"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    sum(out.losses.values()).backward()
    assert model.roi_heads.box_predictor.log_temperature.grad is not None
    d = model.eval()(images, return_detections=True).detections[0]
    assert d["boxes"].shape[1] == 4 and d["labels"].min() >= 1 and d["labels"].max() <= 3
    assert d["masks"].shape[1:] == (1, 64, 64)


def test_negative_image_has_zero_box_and_mask_losses(model) -> None:
    images, targets, distill = _batch(0)
    out = model.train()(images, targets, distill)
    assert out.losses["loss_box_reg"].item() == 0.0 and out.losses["loss_mask"].item() == 0.0
    assert out.losses["loss_classifier"].item() > 0


def test_distill_boxes_are_resized_into_the_frame_of_the_gt_boxes() -> None:
    m = detector.build_detector(_spec(min_size=(128,), max_size=128), torch.randn(3, 16)).train()
    seen = {}

    def spy(features, proposals, image_shapes, targets=None, distill=None, want_detections=False, want_masks=True):
        seen["gt"], seen["distill"] = targets[0]["boxes"], distill[0]["boxes"]
        return {}, None

    m.roi_heads.forward = spy
    images, targets, distill = _batch(2)
    distill[0]["boxes"] = targets[0]["boxes"].clone()
    m(images, targets, distill)
    assert torch.allclose(seen["gt"], seen["distill"]) and seen["gt"].max() > 64, "both were scaled x2"


def test_vocabulary_swap_keeps_background_and_temperature(model) -> None:
    before = model.roi_heads.box_predictor.background.weight.clone()
    model.set_vocabulary(torch.randn(7, 16))
    predictor = model.roi_heads.box_predictor
    assert predictor.num_classes == 7 and torch.equal(before, predictor.background.weight)
    d = model.eval()(_batch(2)[0], return_detections=True).detections[0]
    assert d["labels"].max() <= 7


def test_losses_need_train_mode_and_bad_specs_are_refused(model) -> None:
    images, targets, _ = _batch(2)
    with pytest.raises(ValueError, match="model.train"):
        model.eval()(images, targets)
    with pytest.raises(ValueError, match="classifier_loss must be one of"):
        detector.build_detector(_spec(classifier_loss="focal"), torch.randn(3, 16))


def test_seesaw_detector_trains_and_detects() -> None:
    m = detector.build_detector(_spec(classifier_loss="seesaw"), torch.randn(3, 16))
    images, targets, distill = _batch(2)
    assert torch.isfinite(sum(m.train()(images, targets, distill).losses.values()))
    assert len(m.eval()(images, return_detections=True).detections[0]["scores"]) > 0


def test_weight_decay_spares_temperature_background_norms_and_biases() -> None:
    from ezsd_core.stages import train_detector as st

    model = detector.build_detector(_spec(), torch.nn.functional.normalize(torch.randn(3, 16), dim=1))
    decay, rest = st.param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    spared = {names[id(p)] for p in rest["params"]}
    assert {"roi_heads.box_predictor.log_temperature", "roi_heads.box_predictor.background.weight"} <= spared
    assert all(p.ndim > 1 for p in decay["params"]) and any(n.endswith(".bias") for n in spared)
    assert len(decay["params"]) + len(rest["params"]) == sum(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("scale,level", [(224, 0), (64, 1), (32, 2)])
def test_roi_canonical_scale_picks_the_fpn_level_a_box_pools_from(scale: int, level: int) -> None:
    """k = 4 + log2(side / scale) on P2..P5 ('0'..'3'): a 48 px box of a 128 px image pools from P2
    with FPN's canonical 224 (as every toy object would), from P3 at 64 and from P4 at 32."""
    m = detector.build_detector(_spec(min_size=(128,), max_size=128, roi_canonical_scale=scale), torch.randn(3, 16))
    feats = {name: torch.full((1, 1, 128 // 2 ** (k + 2), 128 // 2 ** (k + 2)), float(k))
             for k, name in enumerate(detector.LEVELS)}
    pooled = m.roi_heads.box_roi_pool(feats, [torch.tensor([[40.0, 40, 88, 88]])], [(128, 128)])
    assert pooled.shape == (1, 1, 7, 7) and torch.allclose(pooled, torch.full_like(pooled, float(level)))


def test_aligned_roi_pool_is_roi_align_with_the_half_pixel_shift_on_each_rois_level() -> None:
    """roi_aligned pools every RoI from the level torchvision's pooler picks, with roi_align(aligned=True);
    not aligned, the pooler gives torchvision's own numbers; roi_sampling_ratio reaches roi_align."""
    from torchvision.ops import MultiScaleRoIAlign, roi_align

    torch.manual_seed(0)
    feats = {str(i): torch.randn(1, 4, 64 // 2**i, 64 // 2**i) for i in range(4)}
    boxes = [torch.tensor([[2.0, 3.0, 12.0, 15.0], [5.0, 5.0, 60.0, 58.0], [10.0, 20.0, 40.0, 30.0]])]
    shapes = [(256, 256)]
    spec = _spec(roi_aligned=True, roi_sampling_ratio=0)
    got = detector.roi_pool(spec, 7)(feats, boxes, shapes)
    plain = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=0, canonical_scale=spec.roi_canonical_scale)
    plain(feats, boxes, shapes)  # sets up its level mapper and scales
    levels = plain.map_levels(boxes)
    for i, lvl in enumerate(levels.tolist()):
        roi = torch.cat([torch.zeros(1, 1), boxes[0][i:i + 1]], 1)
        want = roi_align(feats[str(lvl)], roi, 7, plain.scales[lvl], 0, aligned=True)
        assert torch.allclose(got[i], want[0], atol=1e-6)
    assert not torch.allclose(got, plain(feats, boxes, shapes))
    unaligned = detector.roi_pool(_spec(), 7)
    plain2 = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=2, canonical_scale=spec.roi_canonical_scale)
    assert unaligned.sampling_ratio == 2 and not unaligned.aligned
    assert torch.allclose(unaligned(feats, boxes, shapes), plain2(feats, boxes, shapes), atol=1e-6)


def test_a_detector_with_the_references_roi_align_trains_and_detects() -> None:
    torch.manual_seed(0)
    model = detector.build_detector(_spec(roi_aligned=True, roi_sampling_ratio=0),
                                    torch.nn.functional.normalize(torch.randn(3, 16), dim=-1))
    images, targets, distill = _batch(2)
    out = model.train()(images, targets, distill, return_detections=True)
    assert all(torch.isfinite(v) for v in out.losses.values()) and len(out.detections) == 1


def test_detection_without_any_proposal_gives_empty_results(model) -> None:
    """A batch whose RPN proposes nothing (a random-init backbone on a tiny image can) detects nothing
    instead of crashing in the box decoder (torchvision returns (0, 4), not (0, 1, 4), for no boxes)."""
    model.eval()
    images, _, _ = _batch(0)
    feats = model.backbone(torch.rand(1, 3, 64, 64))
    out = model.roi_heads._detect(feats, [torch.zeros(0, 4)], [(64, 64)])
    assert len(out) == 1 and out[0]["boxes"].shape == (0, 4) and out[0]["scores"].numel() == 0
