from __future__ import annotations

import torch

from ezsd_core import losses


def test_distill_loss_is_weighted_l1_summed_over_dims_and_averaged_over_rois() -> None:
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    w = torch.tensor([1.5, 0.5])
    assert losses.distill_loss(e, t, w).item() == (1.5 * 2 + 0.5 * 0) / 2
    # equals the reference's L1Loss(mean) over all elements times D when weights are 1
    ones = torch.ones(2)
    assert torch.isclose(losses.distill_loss(e, t, ones), torch.nn.functional.l1_loss(e, t) * 2)
    assert losses.distill_loss(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0)).item() == 0.0


def test_box_loss_ignores_background_and_averages_over_all_sampled() -> None:
    d, t = torch.tensor([[1.0, 0, 0, 0], [5.0, 5, 5, 5]]), torch.zeros(2, 4)
    assert losses.box_regression_loss(d, t, torch.tensor([3, 0])).item() == 0.5
    assert losses.box_regression_loss(d, t, torch.tensor([0, 0])).item() == 0.0


def test_seesaw_without_reweighting_is_ce_on_foreground_plus_objectness() -> None:
    """Both parts are normalised by all R sampled RoIs, as MMDetection's SeesawLoss (avg_factor = R):
    the class CE is summed over the 4 foreground RoIs and divided by 6, not averaged over the 4."""
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4 + 2), torch.tensor([0, 1, 2, 4, 0, 3])
    plain = losses.SeesawLoss(4, p=0.0, q=0.0)
    fg = labels > 0
    expected = torch.nn.functional.cross_entropy(logits[fg, :4], labels[fg] - 1, reduction="sum") / 6 + \
        torch.nn.functional.cross_entropy(logits[:, 4:], (~fg).long())
    assert torch.isclose(plain(logits, labels), expected)
    probs = losses.SeesawLoss.probabilities(logits, 4)
    assert probs.shape == (6, 5) and torch.allclose(probs.sum(1), torch.ones(6))


def test_seesaw_mitigation_lowers_the_penalty_on_rare_classes() -> None:
    seesaw = losses.SeesawLoss(2, p=0.8, q=0.0)
    seesaw.cum_samples.copy_(torch.tensor([1000.0, 10.0]))  # class 1 frequent, class 2 rare
    logits = torch.tensor([[0.0, 3.0, 0.0, 0.0]])  # a class-1 sample scored high on the rare class 2
    plain = losses.SeesawLoss(2, p=0.0, q=0.0)
    assert seesaw(logits, torch.tensor([1])) < plain(logits, torch.tensor([1]))


def test_seesaw_matches_the_published_loss_written_out() -> None:
    """Wang et al. (CVPR 2021) eq. 2-5 as the authors' code computes them, by hand for one RoI of class 1
    among K = 3 (counts N = 100, 10, 1; scores sigma): S_1j = M_1j * C_1j with M_1j = min(1, N_j / N_1)^p
    and C_1j = max(1, sigma_j / sigma_1)^q; loss = -log(e^z_1 / (e^z_1 + sum_j S_1j e^z_j))."""
    seesaw = losses.SeesawLoss(3, p=0.8, q=2.0)
    seesaw.cum_samples.copy_(torch.tensor([99.0, 10.0, 1.0]))  # the step adds this RoI: 100, 10, 1
    z = torch.tensor([1.0, 2.0, -0.5])
    logits = torch.cat([z, torch.tensor([0.3, -0.2])])[None]  # one fg RoI + its objectness pair
    sigma = z.softmax(0)
    s = [1.0] + [min(1.0, n / 100.0) ** 0.8 * max(1.0, float(sigma[j] / sigma[0])) ** 2.0
                 for j, n in ((1, 10.0), (2, 1.0))]
    cls = -(z[0] - torch.log(sum(s[j] * torch.exp(z[j]) for j in range(3))))
    obj = torch.nn.functional.cross_entropy(logits[:, 3:], torch.tensor([0]))
    assert torch.isclose(seesaw(logits, torch.tensor([1])), cls + obj, atol=1e-6)
