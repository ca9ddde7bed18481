"""Posterior summaries for prior/guide studies, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_bamf import BAMF, BAMFConfig
from pyro_bamf.data import ImplicitSplit, make_synthetic
from pyro_bamf.diagnostics import (
    attention_entropy,
    attention_uniformity,
    example_batches,
    interval_widths,
    kl_per_weight,
)


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


def example_batch(split):
    (batch,) = example_batches(split, "loo")
    return batch


def test_example_batches_hold_every_positive_once_with_label_1(split):
    batches = list(example_batches(split, "loo", max_elements=15 * 32 * 7))
    assert len(batches) == -(-len(split.loo) // 7)
    users = np.concatenate([b.users.numpy() for b in batches])
    items = np.concatenate([b.items[:, 0].numpy() for b in batches])
    np.testing.assert_array_equal(users, split.loo.users)
    np.testing.assert_array_equal(items, split.loo.items)
    assert all(torch.all(b.labels == 1) for b in batches)


def test_batched_summaries_equal_the_single_batch_ones(split):
    model = flat_model(split)
    for parameter in model.parameters():
        parameter.data.add_(0.2 * torch.randn_like(parameter))
    small = 15 * 32 * 7
    assert kl_per_weight(model, example_batches(split, max_elements=small)) == pytest.approx(
        kl_per_weight(model, [example_batch(split)]), rel=1e-6
    )
    assert attention_entropy(model, example_batches(split, max_elements=small)) == pytest.approx(
        attention_entropy(model, [example_batch(split)]), rel=1e-6
    )


def test_kl_per_weight_matches_the_lognormal_closed_form(split):
    model = flat_model(split, guide_sigma=0.2, prior_sigma=1.0, prior_log_mean=1.0)
    qs, ps = 0.2, 1.0
    mq, mp = 0.4 - qs**2 / 2, 1.0 - ps**2 / 2
    expected = math.log(ps / qs) + (qs**2 + (mq - mp) ** 2) / (2 * ps**2) - 0.5
    assert kl_per_weight(model, [example_batch(split)]) == pytest.approx(expected, rel=1e-5)


def test_flat_attention_has_the_entropy_of_a_uniform_distribution(split):
    model = flat_model(split)
    batch = example_batch(split)
    lengths = batch.mask.sum(-1).double()
    expected = float(torch.log(lengths[lengths > 0]).mean())
    assert attention_entropy(model, [batch]) == pytest.approx(expected, rel=1e-5)


def test_uniformity_of_flat_and_of_known_attention(split):
    flat = attention_uniformity(flat_model(split), [example_batch(split)])
    assert flat["entropy_gap"] == pytest.approx(0.0, abs=1e-5) and flat["psi_sd"] < 1e-6
    model = flat_model(split)  # psi = the key's first coordinate: a known spread of scores
    for scorer in (model.user_scorer, model.item_scorer):
        scorer.out.bias.data.zero_()
    batch = example_batch(split)
    psi_user, psi_item = model.attention_logits(batch)
    assert torch.all(psi_user == 0)
    # replace the networks' output by a known function of the position
    positions = torch.arange(batch.mask.shape[-1], dtype=torch.float32)

    def known(self, batch):
        psi = positions.expand(batch.mask.shape)
        return psi[:, :1], psi

    model.attention_logits = known.__get__(model)
    out = attention_uniformity(model, [batch])
    lengths = batch.mask[:, 0].sum(-1)[batch.mask[:, 0].any(-1)].double()
    expected_sd, expected_entropy = [], []  # row by row, over the unmasked positions
    for row in range(batch.mask.shape[0]):
        keep = batch.mask[row, 0]
        if not keep.any():
            continue
        psi = positions[keep].double()
        expected_sd.append(psi.std(unbiased=False))
        a = torch.softmax(psi, 0)
        expected_entropy.append(-(a * a.log()).sum())
    assert out["psi_sd"] == pytest.approx(float(torch.stack(expected_sd).mean()), rel=1e-5)
    assert out["entropy"] == pytest.approx(float(torch.stack(expected_entropy).mean()), rel=1e-4)
    assert out["uniform_entropy"] == pytest.approx(float(lengths.log().mean()), rel=1e-6)
    assert out["entropy_gap"] > 0.5


def test_fixed_sigma_relative_widths_follow_the_log_normal_law(split):
    model = flat_model(split, guide_sigma=0.1, beta=0.5)
    users = np.arange(6)
    widths = interval_widths(model, split, users, num_samples=4000)
    assert widths["absolute"].shape == (6,)
    # log alpha_j = log s_j - beta log sum_l s_l with s_j i.i.d. LogNormal(., 0.1): to first
    # order its SD is 0.1 sqrt(1 - (2 beta - beta^2) / L), and a log-normal's 90 % interval
    # over its median is 2 sinh(1.645 SD)
    lengths = split.history_lengths[users]
    sd = 0.1 * np.sqrt(1 - (2 * 0.5 - 0.25) / lengths)
    np.testing.assert_allclose(widths["relative"], 2 * np.sinh(1.6449 * sd), atol=0.008)
