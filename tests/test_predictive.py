"""Posterior predictive sampling, top-k probabilities and the learned guide spread."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch

from pyro_bamf import BAMF, BAMFConfig, BAMFRecommender, Batch, ConfigError
from pyro_bamf.data import ImplicitSplit, make_synthetic
from pyro_bamf.predictive import (
    attention_samples,
    logit_samples,
    predictive_samples,
    summarize,
    topk_probability,
)
from pyro_bamf.training import loss_scales, make_elbo, svi_step


@pytest.fixture(scope="module")
def split():
    data = make_synthetic(n_users=40, n_items=80, rank=3, mean_interactions=14, seed=2)
    return ImplicitSplit.from_interactions(data, seed=2, max_history=20)


def make_model(split, **overrides) -> BAMF:
    config = BAMFConfig(embedding_dim=8, **overrides)
    torch.manual_seed(0)
    model = BAMF(split.n_users, split.n_items, config)
    for parameter in model.parameters():  # move away from the near-zero initialisation
        parameter.data.add_(0.3 * torch.randn_like(parameter))
    return model


def candidates(split, users=(0, 5, 9), size=4) -> Batch:
    users = np.array(users)
    items = np.stack([split.train.items[split.train.users == u][:size] for u in users])
    return Batch.build(users, items, split.history_items, split.history_lengths)


def test_samples_have_the_documented_shapes_in_any_chunking(split):
    model = make_model(split)
    batch = candidates(split)
    g, s, length = batch.mask.shape
    for max_elements in (2**22, batch.mask.numel() * 3, 1):
        draws = predictive_samples(model, batch, 7, max_elements=max_elements)
        assert draws["user_weights"].shape == (7, g, s, length)
        assert draws["item_weights"].shape == (7, g, s, length)
        assert draws["_RETURN"].shape == (7, g, s)


def test_sampled_weights_respect_the_mask(split):
    model = make_model(split)
    batch = candidates(split)
    draws = predictive_samples(model, batch, 50)
    for site in ("user_weights", "item_weights"):
        weights = draws[site]
        assert torch.all(weights[:, ~batch.mask] == 0.0)
        assert torch.all(weights[:, batch.mask] > 0.0)


@pytest.mark.parametrize("spread", ["fixed", "learned"])
def test_mean_of_sampled_scores_converges_to_exp_psi(split, spread):
    model = make_model(split, guide_spread=spread, guide_sigma=0.3)
    batch = candidates(split)
    draws = predictive_samples(model, batch, 20_000, sites=("item_scores",))
    scores = draws["item_scores"].double()
    model.eval()  # no dropout, as in the predictive draws
    (_, _), (psi, _) = model.attention_posterior(batch)
    mask = batch.mask
    mean, stderr = scores.mean(0)[mask], scores.std(0)[mask] / math.sqrt(len(scores))
    expected = psi.detach().double().exp()[mask]
    assert torch.all((mean - expected).abs() < 5 * stderr + 1e-9)


def test_predictive_mean_approaches_the_expected_score_prediction_as_sigma_shrinks(split):
    batch = candidates(split)
    gaps = []
    for sigma in (0.3, 0.03, 0.003):
        model = make_model(split, guide_sigma=sigma)
        model.eval()
        with torch.no_grad():
            expected = model.expected_logits(batch)
        sampled = predictive_samples(model, batch, 2000, sites=("_RETURN",))["_RETURN"]
        gaps.append(float((sampled.mean(0) - expected).abs().max()))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3


def test_predictive_restores_train_mode_and_leaves_the_parameters_alone(split):
    model = make_model(split)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictive_samples(model, candidates(split), 3)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_sites_and_intervals_are_errors(split):
    with pytest.raises(ValueError, match="unknown sites"):
        predictive_samples(make_model(split), candidates(split), 3, sites=("user_weight",))
    with pytest.raises(ValueError, match="interval"):
        summarize(np.zeros((4, 2)), interval=1.0)


def test_attention_samples_drop_the_target_from_the_history(split):
    model = make_model(split)
    user = 5
    length = int(split.history_lengths[user])
    history = split.history_items[user, :length]
    target = int(history[2])
    with_target = attention_samples(
        model, split.history_items, split.history_lengths, user, target, 30
    )
    assert target not in with_target.history
    assert with_target.user_weights.shape == (30, length - 1)
    assert with_target.item_weights.shape == (30, length - 1)
    assert with_target.logits.shape == (30,)
    assert np.all((with_target.probabilities > 0) & (with_target.probabilities < 1))
    alone = attention_samples(model, split.history_items, split.history_lengths, user, None, 30)
    np.testing.assert_array_equal(alone.history, history)
    assert alone.item_weights is None and alone.logits is None
    table = alone.summary()
    assert list(table.columns) == ["item", "mean", "median", "low", "high", "width"]
    assert table["median"].is_monotonic_decreasing
    assert np.all(table["low"] <= table["median"]) and np.all(table["median"] <= table["high"])
    with pytest.raises(ValueError, match="item"):
        alone.summary("item")


def test_attention_samples_keep_at_most_max_kept_draws_per_site(split, monkeypatch):
    from pyro_bamf import predictive

    model, user = make_model(split), 5
    length = int(split.history_lengths[user])
    args = (model, split.history_items, split.history_lengths, user)
    with pytest.raises(ValueError, match=r"MAX_KEPT_DRAWS = 67108864: use num_samples \(--"):
        attention_samples(*args, None, 10**12)  # refused at once, before any draw
    monkeypatch.setattr(predictive, "MAX_KEPT_DRAWS", 3 * length + 1)
    assert attention_samples(*args, None, 3).user_weights.shape == (3, length)
    with pytest.raises(ValueError) as info:
        attention_samples(*args, None, 4)
    assert str(info.value) == (
        f"num_samples (--samples) = 4 draws over {length} history items would keep "
        f"{4 * length} floats per site, over the limit MAX_KEPT_DRAWS = {3 * length + 1}: "
        "use num_samples (--samples) <= 3"
    )
    for bad in (0, -2):
        with pytest.raises(ValueError, match=rf"\(--samples\) must be >= 1, got {bad}$"):
            attention_samples(*args, None, bad)


def test_logit_samples_keep_at_most_max_kept_draws(split, monkeypatch):
    from pyro_bamf import predictive

    model = make_model(split)
    args = (model, split.history_items, split.history_lengths, 4)
    monkeypatch.setattr(predictive, "MAX_KEPT_DRAWS", 50)
    assert logit_samples(*args, np.arange(10), 5).shape == (5, 10)
    with pytest.raises(ValueError, match=r"6 draws over 10 candidates .* use num_samples <= 5$"):
        logit_samples(*args, np.arange(10), 6)
    assert logit_samples(*args, np.arange(0), 50).shape == (50, 0)
    with pytest.raises(ValueError, match="use num_samples <= 50$"):
        logit_samples(*args, np.arange(0), 51)  # no candidate still counts as one
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        logit_samples(*args, np.arange(0), 0)  # was an empty (0, 0) array


def test_beta_one_weights_of_every_draw_sum_to_one(split):
    model = make_model(split, beta=1.0)
    samples = attention_samples(model, split.history_items, split.history_lengths, 3, None, 40)
    np.testing.assert_allclose(samples.user_weights.sum(1), 1.0, rtol=1e-5)


def test_logit_samples_cover_every_candidate_and_centre_on_the_expected_logits(split):
    model = make_model(split, guide_sigma=0.001)
    rec = BAMFRecommender(model.config)
    rec.model, rec.split = model, split
    items = np.arange(split.n_items)
    draws = logit_samples(
        model, split.history_items, split.history_lengths, 4, items, 64, max_elements=500
    )
    assert draws.shape == (64, split.n_items)
    np.testing.assert_allclose(
        draws.mean(0), rec.ranking_scores(np.full(items.size, 4), items), atol=2e-3
    )


def test_topk_probability_known_values():
    logits = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 2.0, 3.0, 1.0], [3.0, 1.0, 2.0, 0.0]])
    np.testing.assert_allclose(topk_probability(logits, 1), [2 / 3, 0, 1 / 3, 0])
    np.testing.assert_allclose(topk_probability(logits, 2), [2 / 3, 2 / 3, 2 / 3, 0])
    np.testing.assert_allclose(topk_probability(logits, 9), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="k must be"):
        topk_probability(logits, 0)


def test_summarize_known_values():
    samples = np.arange(101, dtype=float)[:, None]
    summary = summarize(samples)
    assert summary["median"][0] == 50 and summary["mean"][0] == 50
    assert summary["low"][0] == pytest.approx(5) and summary["high"][0] == pytest.approx(95)


def test_recommender_topk_probability_ranks_unseen_items(split):
    config = BAMFConfig(
        data="synthetic", embedding_dim=8, max_epochs=1, max_history=20, warmup_epochs=0
    )
    rec = BAMFRecommender(config)
    rec.fit(split, progress=False)
    items, probability = rec.topk_probability(user=2, k=5, num_samples=20)
    seen = set(split.train.items[split.train.users == 2].tolist())
    assert not seen & set(items.tolist())
    assert len(items) == split.n_items - len(seen)
    assert probability.sum() == pytest.approx(5.0)
    assert np.all(np.diff(probability) <= 0)

    with pytest.raises(ValueError, match="unknown item"):
        rec.score_samples(2, [split.n_items])
    with pytest.raises(ValueError, match="num_samples"):
        rec.attention_samples(2, num_samples=0)


def test_learned_spread_varies_per_weight_and_is_trained(split):
    model = make_model(split, guide_spread="learned", guide_sigma=0.1)
    batch = candidates(split)
    (_, sigma_user), (_, sigma_item) = model.attention_posterior(batch)
    assert sigma_user.shape == (3, 1, batch.mask.shape[-1])
    assert sigma_item.shape == batch.mask.shape
    assert float(sigma_item.detach().std()) > 0  # depends on (q, k) once w_2 is not 0
    labels = np.zeros(tuple(batch.items.shape), dtype=np.float32)
    labels[:, 0] = 1
    batch = Batch(batch.users, batch.items, batch.history, batch.mask, torch.tensor(labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with pyro.validation_enabled(False):
        svi_step(
            model, make_elbo(model.config), optimizer, batch, *loss_scales(model.config, batch, 1.0)
        )
    assert model.user_scorer.out.weight.grad[1].abs().sum() > 0


@pytest.mark.parametrize("sigma", [0.0015, 0.25, 3.0, 10.0])
def test_fresh_learned_spread_equals_guide_sigma(split, sigma):
    config = BAMFConfig(embedding_dim=8, guide_spread="learned", guide_sigma=sigma)
    model = BAMF(split.n_users, split.n_items, config)
    (_, sigma_user), (_, sigma_item) = model.attention_posterior(candidates(split))
    expected = torch.tensor(sigma)
    assert torch.allclose(sigma_user, expected, rtol=1e-5)
    assert torch.allclose(sigma_item, expected, rtol=1e-5)


def test_learned_spread_needs_a_guide_family_taking_a_spread():
    with pytest.raises(ConfigError, match="takes a spread; 'weibull' does not"):
        BAMFConfig(guide_spread="learned", guide_family="weibull")
    with pytest.raises(ConfigError, match="guide_spread"):
        BAMFConfig(guide_spread="wide")


def test_topk_probability_ranks_logits_that_would_saturate_as_probabilities(split, monkeypatch):
    import pyro_bamf.recommender as recommender

    rec = BAMFRecommender(BAMFConfig(embedding_dim=8))
    rec.model, rec.split = make_model(split), split
    draws = np.array([[17.0, 18.0, 25.0]] * 4, dtype=np.float32)  # sigmoid: 1.0 in float32
    monkeypatch.setattr(recommender, "logit_samples", lambda *args: draws)
    items, probability = rec.topk_probability(0, k=1, items=[3, 4, 5])
    assert items[0] == 5 and probability[0] == 1.0


def test_score_interval_figure_lists_every_item_with_its_topk_probability():
    from pyro_bamf import views

    draws = np.random.default_rng(0).random((50, 3))
    figure = views.plot_score_intervals(
        np.array([7, 8, 9]), draws, np.array([0.9, 0.5, 0.1]), {7: "Heat (1995)"}, k=10
    )
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == ["Heat (1995)  [P(top 10) 0.90]", "8  [P(top 10) 0.50]",
                      "9  [P(top 10) 0.10]"]  # fmt: skip
    top_row = max(t.get_position()[1] for t in figure.axes[0].get_yticklabels())
    assert figure.axes[0].get_yticks()[0] == top_row  # the list's first item is drawn on top
