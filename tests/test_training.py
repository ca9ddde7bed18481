"""Training: KL schedule and scales, early stopping, NaN guards, a short fit, determinism."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyro
import pytest
import torch

from pyro_bamf import training
from pyro_bamf.batch import Batch, bucketed_order, training_batches
from pyro_bamf.config import BAMFConfig
from pyro_bamf.data import ImplicitSplit, make_synthetic
from pyro_bamf.evaluation import evaluate_candidates, ranks_nothing
from pyro_bamf.metrics import ranking_metrics
from pyro_bamf.model import BAMF
from pyro_bamf.recommender import BAMFRecommender
from pyro_bamf.training import (
    EarlyStopping,
    TrainingCollapsed,
    kl_lambda,
    loss_scales,
    make_elbo,
    make_optimizer,
    svi_step,
)

# --------------------------------------------------------------------------- KL weight


@pytest.mark.parametrize(
    ("anneal", "epoch", "expected"),
    [
        (100, 1, 0.0),
        (100, 2, 0.01),
        (100, 51, 0.5),
        (100, 100, 0.99),
        (100, 101, 1.0),
        (100, 500, 1.0),
        (4, 3, 0.5),
        (1, 1, 0.0),
        (1, 2, 1.0),
        (0, 1, 1.0),
        (0, 7, 1.0),
    ],
)
def test_kl_lambda_schedule(anneal, epoch, expected):
    assert kl_lambda(BAMFConfig(kl_anneal_epochs=anneal), epoch) == pytest.approx(expected)


def test_kl_lambda_is_nondecreasing_and_capped_at_one():
    config = BAMFConfig(kl_anneal_epochs=7)
    values = [kl_lambda(config, epoch) for epoch in range(1, 30)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert max(values) == 1.0 and values[0] == 0.0


def hand_batch(labels: bool) -> Batch:
    """Two groups of three examples; 4 + 3 + 2 + 5 + 0 + 1 = 15 unmasked weights."""
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    for (g, s), n in zip(
        [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)], [4, 3, 2, 5, 0, 1], strict=True
    ):
        mask[g, s, :n] = True
    return Batch(
        users=torch.tensor([0, 1]),
        items=torch.zeros(2, 3, dtype=torch.long),
        history=torch.zeros(2, 5, dtype=torch.long),
        mask=mask,
        labels=torch.zeros(2, 3) if labels else None,
    )


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
def test_loss_scales_mean_weighting(weight):
    pointwise = hand_batch(labels=True)
    assert pointwise.n_examples == 6
    obs, kl = loss_scales(BAMFConfig(kl_weight="mean"), pointwise, weight)
    assert obs == pytest.approx(1 / 6)
    # lambda * (KL_user + KL_item) / (2 * 15 unmasked weights per module)
    assert kl == pytest.approx(weight / 30)
    pairwise = hand_batch(labels=False)
    assert pairwise.n_examples == 2  # one (pos, neg) triple per group
    obs, kl = loss_scales(BAMFConfig(kl_weight="mean", learning="pairwise"), pairwise, weight)
    assert obs == pytest.approx(1 / 2)
    assert kl == pytest.approx(weight / 30)


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
def test_loss_scales_elbo_weighting(weight):
    obs, kl = loss_scales(BAMFConfig(kl_weight="elbo"), hand_batch(labels=True), weight)
    assert (obs, kl) == pytest.approx((1 / 6, weight / 6))
    config = BAMFConfig(kl_weight="elbo", learning="pairwise")
    obs, kl = loss_scales(config, hand_batch(labels=False), weight)
    assert (obs, kl) == pytest.approx((1 / 2, weight / 2))


@pytest.mark.parametrize("kl_weight", ["mean", "elbo"])
@pytest.mark.parametrize("labels", [True, False])
def test_summed_loss_is_the_mean_loss_times_the_batch_size(kl_weight, labels):
    batch = hand_batch(labels=labels)
    learning = "pointwise" if labels else "pairwise"
    mean = loss_scales(BAMFConfig(kl_weight=kl_weight, learning=learning), batch, 0.3)
    summed = BAMFConfig(kl_weight=kl_weight, learning=learning, loss_reduction="sum")
    assert loss_scales(summed, batch, 0.3) == pytest.approx(
        tuple(batch.n_examples * s for s in mean)
    )


def test_loss_scales_mean_weighting_survives_a_batch_without_history():
    batch = hand_batch(labels=True)
    empty = Batch(
        batch.users, batch.items, batch.history, torch.zeros_like(batch.mask), batch.labels
    )
    obs, kl = loss_scales(BAMFConfig(), empty, 1.0)
    assert math.isfinite(kl) and obs == pytest.approx(1 / 6)


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    stopper = EarlyStopping(patience=2, min_delta=0.0, warmup=0)
    assert stopper.update(1, 0.3) and not stopper.stop
    assert stopper.update(2, 0.4) and not stopper.stop
    assert not stopper.update(3, 0.4) and not stopper.stop  # equal is not better
    assert not stopper.update(4, 0.1) and stopper.stop
    assert stopper.best == 0.4 and stopper.best_epoch == 2


def test_early_stopping_improvement_resets_the_counter():
    stopper = EarlyStopping(patience=2, min_delta=0.0, warmup=0)
    stopper.update(1, 0.3)
    stopper.update(2, 0.2)
    assert stopper.waited == 1
    assert stopper.update(3, 0.35)
    assert stopper.waited == 0 and stopper.best_epoch == 3
    stopper.update(4, 0.1)
    assert not stopper.stop


def test_early_stopping_min_delta_requires_a_clear_improvement():
    stopper = EarlyStopping(patience=2, min_delta=0.01, warmup=0)
    stopper.update(1, 0.30)
    assert not stopper.update(2, 0.305)  # within min_delta: not an improvement
    assert stopper.best == 0.30 and stopper.best_epoch == 1
    assert stopper.update(3, 0.32)
    assert stopper.best == 0.32 and stopper.best_epoch == 3
    assert not stopper.update(4, 0.325)
    assert not stopper.update(5, 0.329)
    assert stopper.stop


def test_early_stopping_warmup_holds_the_counter_at_zero():
    stopper = EarlyStopping(patience=1, min_delta=0.0, warmup=3)
    stopper.update(1, 0.5)
    for epoch in (2, 3):
        assert not stopper.update(epoch, 0.1)
        assert stopper.waited == 0 and not stopper.stop
    assert not stopper.update(4, 0.1)  # first epoch after warm-up counts
    assert stopper.stop
    assert stopper.best_epoch == 1  # warm-up epochs can still be the best


# --------------------------------------------------------------------------- NaN guard


@pytest.fixture(scope="module")
def tiny_split() -> ImplicitSplit:
    data = make_synthetic(n_users=30, n_items=60, rank=3, mean_interactions=12, seed=0)
    return ImplicitSplit.from_interactions(data, seed=0)


def tiny_batch(split: ImplicitSplit) -> Batch:
    users = np.array([0, 5, 6])
    positives = np.array([split.train.items[split.train.users == u][0] for u in users])
    negatives = split.sample_negatives(users, 4, np.random.default_rng(0))
    items = np.concatenate([positives[:, None], negatives], axis=1)
    labels = np.zeros(items.shape, dtype=np.float32)
    labels[:, 0] = 1.0
    return Batch.build(users, items, split.history_items, split.history_lengths, labels)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize(
    ("parameter", "term"),
    [("head.0.weight", "NLL"), ("user_embedding.weight", "NLL"), ("user_prior.net.0.bias", "KL")],
)
def test_svi_step_raises_floating_point_error_naming_the_bad_term(tiny_split, parameter, term):
    config = BAMFConfig(embedding_dim=8, prior_loc="key")
    model = BAMF(tiny_split.n_users, tiny_split.n_items, config)
    with torch.no_grad():
        model.get_parameter(parameter).fill_(math.nan)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = tiny_batch(tiny_split)
    with pyro.validation_enabled(False), pytest.raises(FloatingPointError, match=term):
        svi_step(model, make_elbo(config), optimizer, batch, *loss_scales(config, batch, 1.0))
    for key, value in model.state_dict().items():  # no step was taken
        assert torch.equal(value, state[key]) or torch.isnan(state[key]).any(), key


def test_svi_step_raises_on_a_non_finite_gradient_naming_the_parameter(tiny_split):
    config = BAMFConfig(embedding_dim=8)
    model = BAMF(tiny_split.n_users, tiny_split.n_items, config)
    model.head[1].weight.register_hook(lambda grad: torch.full_like(grad, math.inf))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = tiny_batch(tiny_split)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient of head\.1\.weight"):
        svi_step(model, make_elbo(config), optimizer, batch, *loss_scales(config, batch, 1.0))
    for key, value in model.state_dict().items():  # no step was taken
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_gradients_finite_flags_any_non_finite_element_and_keeps_every_value(bad):
    special = torch.tensor([0.0, -0.0, 1e-45, -3e38, 3e38, 1.5])  # signed zero, subnormal, huge
    grads = [special.clone(), torch.randn(4, 3, dtype=torch.float64), torch.randn(7)]
    before = [grad.clone() for grad in grads]
    assert training.gradients_finite(grads)
    for grad, old in zip(grads, before, strict=True):  # bit for bit, the sign of zero included
        assert torch.equal(grad.view(-1).view(torch.uint8), old.view(-1).view(torch.uint8))
    grads[1][2, 1] = bad
    assert not training.gradients_finite(grads)
    assert not training.gradients_finite([grads[1]])
    assert training.gradients_finite([grads[0], grads[2]])
    assert training.gradients_finite([])


def test_gradients_finite_works_under_a_float64_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert training.gradients_finite([torch.ones(3), torch.ones(2, dtype=torch.float32)])
        assert not training.gradients_finite([torch.ones(2), torch.tensor([math.inf])])
    finally:
        torch.set_default_dtype(previous)


def test_make_optimizer_is_fused_adam_taking_the_single_tensor_step(tiny_split):
    config = BAMFConfig(embedding_dim=8, lr=1e-2, weight_decay=1e-3)
    model = BAMF(tiny_split.n_users, tiny_split.n_items, config)
    twin = BAMF(tiny_split.n_users, tiny_split.n_items, config)
    twin.load_state_dict(model.state_dict())
    start = [p.detach().clone() for p in model.parameters()]
    fused = make_optimizer(model, config)
    group = fused.param_groups[0]
    assert group["fused"] and group["lr"] == 1e-2 and group["weight_decay"] == 1e-3
    assert len(group["params"]) == len(start)
    single = torch.optim.Adam(twin.parameters(), lr=1e-2, weight_decay=1e-3, foreach=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=generator) for p in start]
        for optimizer, net in ((fused, model), (single, twin)):
            for p, grad in zip(net.parameters(), grads, strict=True):
                p.grad = grad.clone()
            optimizer.step()
    for p, q, p0 in zip(model.parameters(), twin.parameters(), start, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert not torch.equal(p, p0)  # three steps of lr 1e-2 moved every parameter


def test_svi_step_returns_unscaled_terms(tiny_split):
    config = BAMFConfig(embedding_dim=8, dropout=0.0)
    model = BAMF(tiny_split.n_users, tiny_split.n_items, config)
    batch = tiny_batch(tiny_split)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    obs_scale, kl_scale = loss_scales(config, batch, 0.5)
    terms = svi_step(model, make_elbo(config), optimizer, batch, obs_scale, kl_scale)
    assert terms.n_examples == 15 and terms.n_weights == 2 * int(batch.mask.sum())
    # analytic KL with guide and prior sigma 0.1 and 1.0: at least ln 10 + 0.005 - 0.5 per weight
    assert terms.kl >= terms.n_weights * (math.log(10) + 0.005 - 0.5) - 1e-3
    assert terms.loss == pytest.approx(obs_scale * terms.nll + kl_scale * terms.kl, rel=1e-5)


# --------------------------------------------------------------------------- a short fit


FIT_CONFIG = dict(
    data="synthetic",
    seed=0,
    embedding_dim=16,
    max_history=20,
    lr=1e-2,
    max_epochs=6,
    warmup_epochs=6,
    patience=6,
    kl_anneal_epochs=0,
)


@pytest.fixture(scope="module")
def fitted():
    data = make_synthetic(n_users=150, n_items=300, rank=4, mean_interactions=30, seed=0)
    config = BAMFConfig(**FIT_CONFIG)
    split = ImplicitSplit.from_interactions(data, seed=0, max_history=config.max_history)
    recommender = BAMFRecommender(config)
    result = recommender.fit(split, progress=False)
    return recommender, split, result


def test_short_fit_beats_item_popularity_on_the_test_pool(fitted):
    recommender, split, result = fitted
    assert len(result.history) == 6
    test = split.candidates("test", 99)
    model_ndcg = recommender.evaluate(test, ks=(10,))["ndcg@10"]
    popularity = np.bincount(split.train.items, minlength=split.n_items).astype(np.float64)
    pop_ndcg = ranking_metrics(test.users, test.labels, popularity[test.items], ks=(10,))
    pop_ndcg = pop_ndcg["ndcg@10"]
    random_ndcg = ranking_metrics(
        test.users, test.labels, np.random.default_rng(0).random(len(test)), ks=(10,)
    )["ndcg@10"]
    assert pop_ndcg > random_ndcg + 0.05  # popularity is a real baseline here
    assert model_ndcg > pop_ndcg + 0.05, (model_ndcg, pop_ndcg)


def test_fit_logs_every_epoch_and_keeps_the_best_epoch_weights(fitted):
    recommender, split, result = fitted
    history = result.history
    assert [row.epoch for row in history] == list(range(1, 7))
    assert all(row.kl_weight == 1.0 for row in history)  # no annealing configured
    assert all(math.isfinite(row.nll) and row.nll > 0 and row.kl > 0 for row in history)
    assert history[-1].nll < history[0].nll  # the likelihood improved
    best = max(history, key=lambda row: row.loo_ndcg10)
    assert result.best_epoch == best.epoch
    assert result.best_loo_ndcg10 == best.loo_ndcg10
    loo = split.candidates("loo", recommender.config.eval_negatives)
    again = evaluate_candidates(recommender.model, split, loo, ks=(10,))["ndcg@10"]
    assert again == best.loo_ndcg10, "the restored weights are not those of the best epoch"


def test_ranks_nothing_is_true_only_when_every_user_has_one_score():
    users = np.array([3, 1, 3, 1, 2])
    assert ranks_nothing(users, np.array([0.5, 2.0, 0.5, 2.0, -1.0]))  # constant per user
    assert not ranks_nothing(users, np.array([0.5, 2.0, 0.5, 2.5, -1.0]))  # user 1 is ordered
    assert not ranks_nothing(users, np.array([0.5, 2.0, 0.6, 2.0, -1.0]))  # user 3 is ordered
    assert ranks_nothing(np.array([4]), np.array([1.0]))
    assert not ranks_nothing(np.array([], dtype=int), np.array([]))


@pytest.mark.parametrize("learning", ["pointwise", "pairwise"])
def test_fit_raises_training_collapsed_after_patience_epochs_of_tied_scores(monkeypatch, learning):
    """Tied LOO scores (one score per user) in epochs 1, 3, 4: the counter restarts after
    epoch 2 and fit raises at epoch 4 (patience 2), after ``on_epoch`` saw every epoch."""
    data = make_synthetic(n_users=40, n_items=100, rank=3, mean_interactions=12, seed=0)
    config = BAMFConfig(
        data="synthetic", learning=learning, embedding_dim=8, max_history=15, max_epochs=8,
        patience=2, warmup_epochs=8, kl_anneal_epochs=0,
    )  # fmt: skip
    split = ImplicitSplit.from_interactions(data, seed=0, max_history=15)
    real_scores, calls = training.score_candidates, []

    def scores(model, users, *args):
        calls.append(1)
        if len(calls) == 2:  # epoch 2 ranks
            return real_scores(model, users, *args)
        return users.astype(np.float32)  # one score per user

    monkeypatch.setattr(training, "score_candidates", scores)
    seen = []
    model = BAMF(split.n_users, split.n_items, config)
    with pytest.raises(TrainingCollapsed, match=r"epoch 4: for 2 epochs .* collapsed"):
        training.fit(
            model, split, config, split.candidates("loo", 99), progress=False,
            on_epoch=lambda row, state: seen.append(row.epoch),
        )  # fmt: skip
    assert seen == [1, 2, 3, 4]


def small_fit(seed: int, learning: str):
    data = make_synthetic(n_users=50, n_items=120, rank=3, mean_interactions=15, seed=0)
    config = BAMFConfig(
        data="synthetic",
        seed=seed,
        learning=learning,
        embedding_dim=8,
        max_history=15,
        lr=1e-2,
        max_epochs=2,
        warmup_epochs=0,
        kl_anneal_epochs=2,
    )
    split = ImplicitSplit.from_interactions(data, seed=0, max_history=15)
    recommender = BAMFRecommender(config)
    result = recommender.fit(split, progress=False)
    rows = [dataclasses.asdict(row) for row in result.history]
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    scores = recommender.score(np.repeat(np.arange(10), 3), np.tile([1, 50, 99], 10))
    return rows, recommender.evaluate(), scores


@pytest.mark.parametrize("learning", ["pointwise", "pairwise"])
def test_same_seed_gives_identical_history_and_metrics(learning):
    first = small_fit(seed=3, learning=learning)
    torch.manual_seed(123)  # fit reseeds from config.seed: the global state must not matter
    np.random.seed(7)  # noqa: NPY002
    second = small_fit(seed=3, learning=learning)
    assert first[0] == second[0]
    assert first[1] == second[1]
    np.testing.assert_array_equal(first[2], second[2])
    assert [row["kl_weight"] for row in first[0]] == [0.0, 0.5]
    other = small_fit(seed=4, learning=learning)
    assert other[0] != first[0]


# --------------------------------------------------------------------------- training batches


@pytest.mark.parametrize("learning", ["pointwise", "pairwise"])
def test_training_batches_cover_each_positive_once_with_unseen_negatives(tiny_split, learning):
    split = tiny_split
    config = BAMFConfig(learning=learning, batch_size=20)
    size = 5 if learning == "pointwise" else 2
    seen = {(u, i) for u, i in zip(split.data.users, split.data.items, strict=True)}
    positives = []
    for batch in training_batches(split, config, np.random.default_rng(0)):
        groups = batch.items.shape[0]
        assert batch.items.shape == (groups, size)
        assert groups <= (4 if learning == "pointwise" else 20)  # 20 examples / pairs
        if learning == "pointwise":
            expected = torch.zeros(groups, size)
            expected[:, 0] = 1.0
            assert torch.equal(batch.labels, expected)
            assert batch.n_examples == groups * size
        else:
            assert batch.labels is None and batch.n_examples == groups
        for g in range(groups):
            user = int(batch.users[g])
            positives.append((user, int(batch.items[g, 0])))
            for item in batch.items[g, 1:].tolist():
                assert (user, item) not in seen, "a negative the user interacted with"
            length = int(split.history_lengths[user])
            np.testing.assert_array_equal(
                batch.history[g, :length].numpy(), split.history_items[user, :length]
            )
    expected = sorted(zip(split.train.users.tolist(), split.train.items.tolist(), strict=True))
    assert sorted(positives) == expected


def test_bucketed_order_partitions_groups_into_length_buckets():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=103)
    batches = bucketed_order(lengths, 10, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    assert sorted(len(b) for b in batches) == [3] + [10] * 10
    spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches)
    for (_, high), (low, _) in zip(spans, spans[1:], strict=False):
        assert high <= low  # consecutive length ranges: padding stays small
    again = bucketed_order(lengths, 10, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = bucketed_order(lengths, 10, np.random.default_rng(2))
    assert any(not np.array_equal(a, b) for a, b in zip(batches, other, strict=True))


def test_bucketed_order_pools_sort_within_pools_of_shuffled_groups():
    lengths = np.random.default_rng(0).integers(1, 50, size=103)
    batches = bucketed_order(lengths, 10, np.random.default_rng(1), pool=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    assert sorted(len(b) for b in batches) == [3] + [10] * 10
    # the same draws as pool = 0: one permutation of the groups, then one of the batches
    rng = np.random.default_rng(1)
    shuffled = rng.permutation(103)
    pools = [shuffled[i : i + 30] for i in range(0, 103, 30)]
    for batch in batches:
        home = [p for p in pools if np.isin(batch, p).all()]
        assert len(home) == 1, "a batch takes its groups from one pool"
        assert np.all(np.diff(lengths[batch]) >= 0)

    def as_lists(order):
        return [b.tolist() for b in order]

    whole = bucketed_order(lengths, 10, np.random.default_rng(1), pool=0)
    assert as_lists(whole) != as_lists(batches)
    wide = bucketed_order(lengths, 10, np.random.default_rng(1), pool=100)
    assert as_lists(wide) == as_lists(whole)  # one pool larger than the epoch: the whole sort


def test_pair_history_positive_masks_the_pairs_positive_in_both_examples(tiny_split):
    """With ``pair_history = "positive"`` the negative of a BPR pair is scored on the same
    history as its positive (``R_u+ \\ {pos}``); ``"target"`` masks only each own target."""
    base = BAMFConfig(learning="pairwise", batch_size=64, embedding_dim=8)
    for pair_history in ("target", "positive"):
        config = base.replace(pair_history=pair_history)
        rng = np.random.default_rng(0)
        batch = next(iter(training_batches(tiny_split, config, rng)))
        history, items, mask = batch.history, batch.items, batch.mask
        present = torch.arange(history.shape[1]) < torch.as_tensor(
            tiny_split.history_lengths[batch.users.numpy()]
        ).unsqueeze(1)
        positive_there = (history == items[:, :1]) & present  # every positive is in R_u+
        assert positive_there.sum(1).eq(1).all()
        assert not mask[:, 0][positive_there].any()
        if pair_history == "positive":
            assert not mask[:, 1][positive_there].any()
            assert torch.equal(mask[:, 0], mask[:, 1] & (history != items[:, 1:]))
        else:
            assert mask[:, 1][positive_there].all()
