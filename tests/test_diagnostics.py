"""Posterior summaries for prior/guide studies, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_bamf import BAMF, BAMFConfig
from pyro_bamf.data import ImplicitSplit, make_synthetic
from pyro_bamf.diagnostics import attention_entropy, example_batch, interval_widths, kl_per_weight


@pytest.fixture(scope="module")
def split():
    data = make_synthetic(n_users=30, n_items=60, rank=3, mean_interactions=12, seed=4)
    return ImplicitSplit.from_interactions(data, seed=4, max_history=15)


def flat_model(split, **overrides) -> BAMF:
    """Score networks that output the constant ``psi = 0.4`` for every weight."""
    model = BAMF(split.n_users, split.n_items, BAMFConfig(embedding_dim=8, **overrides))
    for scorer in (model.user_scorer, model.item_scorer):
        scorer.out.weight.data.zero_()
        scorer.out.bias.data.fill_(0.4)
    return model


def test_example_batch_holds_one_labelled_example_per_positive(split):
    batch = example_batch(split, "loo")
    assert batch.items.shape == (len(split.loo), 1)
    assert torch.all(batch.labels == 1)


def test_kl_per_weight_matches_the_lognormal_closed_form(split):
    model = flat_model(split, guide_sigma=0.2, prior_sigma=1.0, prior_log_mean=1.0)
    qs, ps = 0.2, 1.0
    mq, mp = 0.4 - qs**2 / 2, 1.0 - ps**2 / 2
    expected = math.log(ps / qs) + (qs**2 + (mq - mp) ** 2) / (2 * ps**2) - 0.5
    assert kl_per_weight(model, example_batch(split)) == pytest.approx(expected, rel=1e-5)


def test_flat_attention_has_the_entropy_of_a_uniform_distribution(split):
    model = flat_model(split)
    batch = example_batch(split)
    lengths = batch.mask.sum(-1).double()
    expected = float(torch.log(lengths[lengths > 0]).mean())
    assert attention_entropy(model, batch) == pytest.approx(expected, rel=1e-5)


def test_fixed_sigma_gives_one_relative_width_for_every_user(split):
    model = flat_model(split, guide_sigma=0.1, beta=0.5)
    users = np.arange(6)
    widths = interval_widths(model, split, users, num_samples=4000)
    assert widths["absolute"].shape == (6,)
    # flat psi and fixed sigma: alpha_j / median is nearly the same law for every user
    assert widths["relative"].std() < 0.02
    assert np.all(widths["relative"] > 0.1)
