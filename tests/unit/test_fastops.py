"""fastops: RoIAlign and 1x1 convolutions as matmuls give torchvision's / PyTorch's numbers and gradients."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from ezsd_core import detector, fastops


def _rois(n: int, images: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 5) RoIs in a 200 x 150 px frame, some partly or wholly outside it, tiny ones, unsorted images."""
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([220.0, 170.0]) - 20
    wh = torch.rand(n, 2, generator=gen) * 90 + 0.2
    image = torch.randint(0, images, (n, 1), generator=gen).float()
    rois = torch.cat([image, xy, xy + wh], 1)
    rois[0, 1:] = torch.tensor([-40.0, -40.0, -30.0, -31.0])  # wholly outside: zeros
    rois[1, 1:] = torch.tensor([180.0, 130.0, 260.0, 210.0])  # over the far edges: last row/column repeated
    rois[2, 1:] = torch.tensor([50.0, 50.0, 50.3, 50.2])  # below a pixel
    return rois


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("scale", [0.25, 0.125])
def test_roi_align_matches_torchvision_values_and_gradients(aligned: bool, sampling_ratio: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(sampling_ratio)
    feat = torch.randn(3, 5, 150 // 4, 200 // 4, generator=gen, requires_grad=True)
    rois = _rois(60, 3, gen)
    want = tv_roi_align(feat, rois, (7, 6), scale, sampling_ratio, aligned)
    got = fastops.roi_align(feat, rois, (7, 6), scale, sampling_ratio, aligned)
    assert got.shape == want.shape == (60, 5, 7, 6)
    assert torch.allclose(got, want, atol=1e-5)
    assert got[0].abs().max() == 0  # outside the map
    upstream = torch.randn(want.shape, generator=gen)
    (g_want,) = torch.autograd.grad((want * upstream).sum(), feat)
    (g_got,) = torch.autograd.grad((got * upstream).sum(), feat)
    assert torch.allclose(g_got, g_want, atol=1e-5)


def test_roi_align_falls_back_to_torchvision_for_adaptive_sampling_and_large_maps_and_handles_no_roi() -> None:
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 4, 16, 16, generator=gen)
    rois = _rois(10, 2, gen)
    assert torch.equal(fastops.roi_align(feat, rois, (7, 7), 0.1, 0), tv_roi_align(feat, rois, (7, 7), 0.1, 0))
    assert fastops.roi_align(feat, rois[:0], (7, 7), 0.1, 2).shape == (0, 4, 7, 7)
    big = torch.randn(1, 2, 65, 64, generator=gen)  # above MAX_DENSE_PIXELS: torchvision's kernel, bit for bit
    rois[:, 0] = 0
    assert torch.equal(fastops.roi_align(big, rois, (7, 7), 0.3, 2), tv_roi_align(big, rois, (7, 7), 0.3, 2))


def test_roi_align_in_chunks_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 3, 20, 24, generator=gen)
    rois = _rois(30, 2, gen)
    whole = fastops.roi_align(feat, rois, (5, 5), 0.2, 2)
    monkeypatch.setattr(fastops, "MAX_INTERMEDIATE", 5 * 3 * 24 * 4)  # 4 RoIs per chunk
    assert torch.allclose(fastops.roi_align(feat, rois, (5, 5), 0.2, 2), whole, atol=1e-6)


def test_multiscale_pooler_matches_torchvision_over_several_levels() -> None:
    """canonical scale 32 spreads 10-90 px boxes over P2-P5; RoIs come back in the order given."""
    gen = torch.Generator().manual_seed(1)
    feats = {str(k): torch.randn(2, 3, 64 // 2**k, 64 // 2**k, generator=gen, requires_grad=True) for k in range(4)}
    boxes = [_rois(25, 1, gen)[:, 1:].clamp(0, 255) + torch.tensor([0.0, 0.0, 1.0, 1.0]) for _ in range(2)]
    shapes = [(256, 256)] * 2
    ours = fastops.FastMultiScaleRoIAlign(list(feats), 7, 2, canonical_scale=32)
    theirs = MultiScaleRoIAlign(list(feats), 7, 2, canonical_scale=32)
    got, want = ours(feats, boxes, shapes), theirs(feats, boxes, shapes)
    assert len(set(theirs.map_levels(boxes).tolist())) >= 3
    assert torch.allclose(got, want, atol=1e-5)
    upstream = torch.randn(want.shape, generator=gen)
    g_got = torch.autograd.grad((got * upstream).sum(), list(feats.values()))
    g_want = torch.autograd.grad((want * upstream).sum(), list(feats.values()))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_got, g_want))


def test_pointwise_convs_become_matmuls_with_the_same_parameters_and_outputs() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(6, 4, 1), torch.nn.Conv2d(4, 4, 3, padding=1),
                              torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.Conv2d(4, 3, 1, bias=False))
    x = torch.randn(2, 6, 9, 7)
    want = net[1](net[0](x))
    keys, weight = list(net.state_dict()), net[0].weight
    assert fastops.pointwise_convs_as_matmul(net) == 2  # the 3x3 and the strided 1x1 stay convolutions
    assert [type(m).__name__ for m in net] == ["PointwiseConv2d", "Conv2d", "Conv2d", "PointwiseConv2d"]
    assert list(net.state_dict()) == keys and net[0].weight is weight
    assert torch.allclose(net[1](net[0](x)), want, atol=1e-6)
    assert torch.allclose(net[3](net[1](net[0](x))), torch.nn.functional.conv2d(want, net[3].weight), atol=1e-6)


def test_the_detector_uses_the_fast_ops_and_keeps_its_state_dict_keys() -> None:
    """A state dict written before fastops (plain nn.Conv2d keys) loads into today's detector."""
    from tests.unit.test_detector import _spec

    model = detector.build_detector(_spec(), torch.randn(3, 16))
    fast = [n for n, m in model.named_modules() if isinstance(m, fastops.PointwiseConv2d)]
    assert any(n.startswith("rpn.head") for n in fast) and any(n.startswith("backbone.fpn") for n in fast)
    assert isinstance(model.roi_heads.box_roi_pool, fastops.FastMultiScaleRoIAlign)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    assert "rpn.head.cls_logits.weight" in plain
    model.load_state_dict(plain)
