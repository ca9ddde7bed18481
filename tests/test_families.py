"""Prior and guide families: means, closed-form KLs against Monte Carlo, the analytic-KL table,
the registries users extend."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_bamf import BAMF, BAMFConfig, Batch
from pyro_bamf.data import ImplicitSplit, make_synthetic
from pyro_bamf.families import GUIDES, PRIORS
from pyro_bamf.registry import bind
from pyro_bamf.training import NegativeELBO, kl_method, loss_scales, make_elbo, svi_step

ANALYTIC = {("lognormal", "lognormal"), ("weibull", "gamma"), ("weibull", "exponential")}
BUILT_IN_PRIORS = ("lognormal", "gamma", "weibull", "halfnormal", "exponential")
BUILT_IN_GUIDES = ("lognormal", "weibull")


def prior_distribution(family, log_mean, sigma, shape):
    return bind(PRIORS.resolve(family), "prior family", sigma=sigma, shape=shape)(log_mean)


def guide_distribution(family, psi, sigma, shape):
    guide = bind(GUIDES.resolve(family), "guide family", ("spread",), shape=shape)
    return guide(psi, spread=sigma) if family == "lognormal" else guide(psi)


def has_analytic_kl(guide, prior):
    q = guide_distribution(guide, torch.tensor(0.3), 0.1, 3.0)
    p = prior_distribution(prior, torch.tensor(0.0), 1.0, 2.0)
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


def test_built_in_families_are_registered_like_users_ones():
    assert PRIORS.names[: len(BUILT_IN_PRIORS)] == BUILT_IN_PRIORS
    assert GUIDES.names[: len(BUILT_IN_GUIDES)] == BUILT_IN_GUIDES


@pytest.mark.parametrize("family", BUILT_IN_PRIORS)
@pytest.mark.parametrize("log_mean", [-1.0, 0.0, 1.3])
def test_prior_mean_is_exp_log_mean(family, log_mean):
    prior = prior_distribution(family, torch.tensor(log_mean), sigma=0.7, shape=2.5)
    assert float(prior.mean) == pytest.approx(math.exp(log_mean), rel=1e-5)


@pytest.mark.parametrize("family", BUILT_IN_GUIDES)
@pytest.mark.parametrize("psi", [-0.5, 0.0, 2.0])
def test_guide_mean_is_exp_psi(family, psi):
    guide = guide_distribution(family, torch.tensor(psi), sigma=0.1, shape=10.0)
    assert float(guide.mean) == pytest.approx(math.exp(psi), rel=1e-5)


def test_analytic_kl_table():
    pairs = ((g, p) for g in BUILT_IN_GUIDES for p in BUILT_IN_PRIORS)
    found = {(g, p) for g, p in pairs if has_analytic_kl(g, p)}
    assert found == ANALYTIC


@pytest.mark.parametrize(("guide", "prior"), sorted(ANALYTIC))
@pytest.mark.parametrize(("psi", "log_mean", "shape"), [(0.3, 0.0, 2.0), (-1.0, 0.5, 0.7)])
def test_closed_form_kl_matches_monte_carlo(guide, prior, psi, log_mean, shape):
    torch.manual_seed(0)
    q = guide_distribution(guide, torch.tensor(psi, dtype=torch.float64), 0.3, 4.0)
    p = prior_distribution(prior, torch.tensor(log_mean, dtype=torch.float64), 1.0, shape)
    samples = q.sample((400_000,))
    monte_carlo = (q.log_prob(samples) - p.log_prob(samples)).mean()
    stderr = (q.log_prob(samples) - p.log_prob(samples)).std() / math.sqrt(len(samples))
    assert float(kl_divergence(q, p)) == pytest.approx(float(monte_carlo), abs=4 * float(stderr))


@pytest.mark.parametrize("guide", BUILT_IN_GUIDES)
@pytest.mark.parametrize("prior", BUILT_IN_PRIORS)
def test_mean_field_elbo_is_analytic_exactly_for_the_table(guide, prior):
    """With only latent sites, the mean-field loss is noise-free iff the KL is closed-form."""
    psi = torch.linspace(-1.0, 1.0, 6)

    def model():
        with pyro.plate("n", 6):
            pyro.sample("s", prior_distribution(prior, torch.zeros(6), 1.0, 2.0))

    def guide_fn():
        with pyro.plate("n", 6):
            pyro.sample("s", guide_distribution(guide, psi, 0.1, 10.0))

    losses = set()
    for seed in range(3):
        pyro.set_rng_seed(seed)
        losses.add(float(TraceMeanField_ELBO().differentiable_loss(model, guide_fn)))
    assert (len(losses) == 1) == ((guide, prior) in ANALYTIC)


@pytest.fixture(scope="module")
def tiny_split():
    data = make_synthetic(n_users=30, n_items=60, rank=3, mean_interactions=12, seed=0)
    return ImplicitSplit.from_interactions(data, seed=0)


@pytest.mark.parametrize("guide", BUILT_IN_GUIDES)
@pytest.mark.parametrize("prior", BUILT_IN_PRIORS)
@pytest.mark.parametrize("elbo", ["meanfield", "trace"])
def test_every_family_pair_takes_a_finite_svi_step(tiny_split, guide, prior, elbo):
    config = BAMFConfig(
        embedding_dim=8, guide_family=guide, prior_family=prior, elbo=elbo, prior_shape=2.0
    )
    model = BAMF(tiny_split.n_users, tiny_split.n_items, config)
    users = np.array([0, 3, 7])
    items = np.stack([tiny_split.train.items[tiny_split.train.users == u][:5] for u in users])
    labels = np.zeros(items.shape, dtype=np.float32)
    labels[:, 0] = 1.0
    batch = Batch.build(users, items, tiny_split.history_items, tiny_split.history_lengths, labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    elbo_loss = make_elbo(config)
    objective = NegativeELBO(model, elbo_loss)
    scales = loss_scales(config, batch, 1.0)
    with pyro.validation_enabled(False):
        terms = svi_step(model, elbo_loss, optimizer, batch, *scales, objective=objective)
    assert math.isfinite(terms.loss) and math.isfinite(terms.kl) and terms.kl != 0.0
    assert all(p.grad is not None for p in model.user_scorer.parameters())
    analytic = elbo == "meanfield" and (guide, prior) in ANALYTIC
    method = kl_method(elbo_loss, *objective.traces)  # what history.csv records
    assert method == ("analytic" if analytic else "monte_carlo")
