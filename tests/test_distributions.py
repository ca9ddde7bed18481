"""MaskedLogNormal is ``LogNormal(loc, scale).expand(mask.shape).mask(mask).to_event(2)``."""

from __future__ import annotations

import pytest
import torch
from pyro import distributions as dist
from torch.distributions import kl_divergence

from pyro_bamf.distributions import EventSite, MaskedLogNormal, history_site, lognormal_kl

G, S, L = 3, 4, 5


def random_mask(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(G, S, L, generator=generator) < 0.7
    mask[1] = False  # a group with nothing unmasked
    return mask


def reference(loc, scale, mask):
    """The chain of Pyro and torch distributions MaskedLogNormal replaces."""
    if isinstance(scale, torch.Tensor):
        loc, scale = torch.broadcast_tensors(loc, scale)
    return EventSite(dist.LogNormal(loc, scale).expand(mask.shape).mask(mask), 2)


# locations and spreads as the model passes them: a constant prior (0-dim loc, float scale),
# the user-side guide (G, 1, L), the item-side guide (G, S, L), learned spreads as tensors
PARAMETERS = {
    "constant prior": (lambda: torch.tensor(0.5), lambda: 1.0),
    "user guide": (lambda: torch.randn(G, 1, L), lambda: 0.1),
    "item guide": (lambda: torch.randn(G, S, L), lambda: 0.1),
    "user guide, learned spread": (
        lambda: torch.randn(G, 1, L),
        lambda: torch.rand(G, 1, L) + 0.05,
    ),
    "item guide, learned spread": (
        lambda: torch.randn(G, S, L),
        lambda: torch.rand(G, S, L) + 0.05,
    ),
}


@pytest.mark.parametrize("case", PARAMETERS)
def test_draws_and_their_gradients_equal_the_reference_bit_for_bit(case):
    make_loc, make_scale = PARAMETERS[case]
    loc, scale = make_loc().requires_grad_(), make_scale()
    if isinstance(scale, torch.Tensor):
        scale.requires_grad_()
    leaves = [t for t in (loc, scale) if isinstance(t, torch.Tensor)]
    mask = random_mask(0)
    draws = []
    for build in (MaskedLogNormal, reference):
        torch.manual_seed(7)
        value = build(loc, scale, mask).rsample()
        draws.append((value, torch.autograd.grad(value.log().sum() + value.sum(), leaves)))
    (value, grads), (expected, expected_grads) = draws
    assert value.shape == (G, S, L)
    assert torch.equal(value, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert torch.equal(grad, expected_grad)


@pytest.mark.parametrize("case", PARAMETERS)
def test_log_density_sums_the_unmasked_lognormal_densities(case):
    make_loc, make_scale = PARAMETERS[case]
    loc, scale, mask = make_loc().double(), make_scale(), random_mask(1)
    scale = scale.double() if isinstance(scale, torch.Tensor) else scale
    value = torch.rand(G, S, L, dtype=torch.float64) * 3 + 0.01
    site = MaskedLogNormal(loc, scale, mask)
    log_prob = site.log_prob(value)
    assert log_prob.shape == (G,)
    assert log_prob[1] == 0  # the all-masked group
    by_hand = torch.where(mask, dist.LogNormal(loc, scale).log_prob(value), 0.0).sum((-2, -1))
    torch.testing.assert_close(log_prob, by_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_prob, reference(loc, scale, mask).log_prob(value))


@pytest.mark.parametrize("prior", ["constant prior", "user guide"])
@pytest.mark.parametrize("guide", ["user guide", "item guide, learned spread"])
def test_kl_equals_the_reference_bit_for_bit_and_the_closed_form(prior, guide):
    q_loc, q_scale = (make() for make in PARAMETERS[guide])
    p_loc, p_scale = (make() for make in PARAMETERS[prior])
    mask = random_mask(2)
    q, p = MaskedLogNormal(q_loc, q_scale, mask), MaskedLogNormal(p_loc, p_scale, mask)
    kl = kl_divergence(q, p)
    assert kl.shape == (G,) and kl[1] == 0
    assert torch.equal(
        kl, kl_divergence(reference(q_loc, q_scale, mask), reference(p_loc, p_scale, mask))
    )
    q_scale, p_scale = (torch.as_tensor(s).expand(G, S, L) for s in (q_scale, p_scale))
    q_loc, p_loc = q_loc.expand(G, S, L), p_loc.expand(G, S, L)
    by_hand = (
        torch.log(p_scale / q_scale) + (q_scale**2 + (q_loc - p_loc) ** 2) / (2 * p_scale**2) - 0.5
    )
    torch.testing.assert_close(kl, (by_hand * mask).sum((-2, -1)))


def test_kl_of_two_masks_counts_the_slots_both_keep():
    loc, mask, other = torch.randn(G, S, L), random_mask(3), random_mask(4)
    q, p = MaskedLogNormal(loc, 0.3, mask), MaskedLogNormal(torch.tensor(0.0), 1.0, other)
    elementwise = lognormal_kl(loc, torch.tensor(0.3), torch.tensor(0.0), torch.tensor(1.0))
    expected = torch.where(mask & other, elementwise, 0.0).sum((-2, -1))
    assert torch.equal(kl_divergence(q, p), expected)


def test_expand_returns_itself_for_its_own_batch_shape_and_broadcasts_otherwise():
    loc, mask = torch.randn(G, 1, L), random_mask(5)
    site = MaskedLogNormal(loc, torch.rand(G, 1, L) + 0.1, mask)
    assert site.expand((G,)) is site
    wider = site.expand((2, G))
    assert (wider.batch_shape, wider.event_shape) == ((2, G), (S, L))
    assert wider.rsample().shape == (2, G, S, L)
    assert site.rsample((6,)).shape == (6, G, S, L)
    value = site.rsample()
    torch.testing.assert_close(wider.log_prob(value), site.log_prob(value).expand(2, G))
    prior = MaskedLogNormal(torch.tensor(0.0), 1.0, mask)
    torch.testing.assert_close(
        kl_divergence(wider, prior.expand((2, G))), kl_divergence(site, prior).expand(2, G)
    )


def test_mean_and_variance_are_the_lognormal_moments():
    loc, scale, mask = torch.randn(G, 1, L), torch.rand(G, 1, L) + 0.1, random_mask(6)
    site, lognormal = MaskedLogNormal(loc, scale, mask), dist.LogNormal(loc, scale)
    torch.testing.assert_close(site.mean, lognormal.mean.expand(G, S, L))
    torch.testing.assert_close(site.variance, lognormal.variance.expand(G, S, L))


def test_bad_shapes_and_parameters_are_named():
    with pytest.raises(ValueError, match=r"mask must be \(\.\.\., G, S, L\)"):
        MaskedLogNormal(torch.tensor(0.0), 1.0, torch.ones(S, L, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool tensor, got torch.uint8"):
        MaskedLogNormal(torch.tensor(0.0), 1.0, torch.ones(G, S, L, dtype=torch.uint8))
    mask = random_mask(7)
    with pytest.raises(ValueError, match="scale"):
        MaskedLogNormal(torch.zeros(G, S, L), -torch.ones(G, S, L), mask, validate_args=True)
    site = MaskedLogNormal(torch.zeros(G, S, L), 1.0, mask, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        site.log_prob(-torch.ones(G, S, L))


def test_history_site_makes_a_lognormal_one_masked_lognormal_keeping_a_number_a_number():
    mask = random_mask(4)
    loc = torch.randn(G, 1, L)
    site = history_site(dist.LogNormal(loc, 0.1), mask)  # what a lognormal family returns
    assert isinstance(site, MaskedLogNormal) and site.mask is mask
    assert site.scale.dim() == 0 and float(site.scale) == pytest.approx(0.1)
    assert site.loc.shape == mask.shape and site.loc.stride()[1] == 0  # a view, not a copy
    value = site.sample()
    torch.testing.assert_close(site.log_prob(value), reference(loc, 0.1, mask).log_prob(value))
    other = history_site(dist.Gamma(torch.full((G, 1, L), 2.0), 3.0), mask)
    assert isinstance(other, EventSite) and other.batch_shape == (G,)
    # torch's own distributions, as a user's family may return them
    plain = history_site(torch.distributions.Gamma(torch.full((G, 1, L), 2.0), 3.0), mask)
    draw = other.sample()
    torch.testing.assert_close(plain.log_prob(draw), other.log_prob(draw))
    assert isinstance(history_site(torch.distributions.LogNormal(loc, 0.1), mask), MaskedLogNormal)
