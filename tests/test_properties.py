"""Property-based tests (hypothesis) of the split and the ranking metrics.

Random interaction tables, with integer or string ids in any row order, must keep every
invariant of the paper's split; random score/label pools must give metrics in [0, 1] that do
not depend on the row order, obey the orderings between metrics, and equal hand-worked values
when each user has a single positive.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pyro_bamf.data import ImplicitSplit, from_frame
from pyro_bamf.metrics import ranking_metrics

PARTS = ("train", "val", "test", "loo")
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)  # the same cases every run


# --------------------------------------------------------------------------- the split


@st.composite
def interaction_tables(draw) -> pd.DataFrame:
    """4..30 users, 10..60 items, every user 4+ distinct items, never all the items of the
    table (an item no one chose is not in it, so that is checked on the drawn rows).

    Ids are sparse integers or strings; the rows are shuffled.
    """
    n_users = draw(st.integers(4, 30))
    n_items = draw(st.integers(10, 60))
    sizes = draw(st.lists(st.integers(4, n_items - 1), min_size=n_users, max_size=n_users))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), sizes)
    items = np.concatenate([rng.choice(n_items, size, replace=False) for size in sizes])
    assume(max(sizes) < np.unique(items).size)  # every user has an unseen item to sample
    user_ids = rng.choice(10 * n_users + 100, n_users, replace=False) + 1
    item_ids = rng.choice(10 * n_items + 100, n_items, replace=False) + 1
    if draw(st.booleans()):
        user_ids = np.array([f"user-{i}" for i in user_ids], dtype=object)
        item_ids = np.array([f"item/{i}" for i in item_ids], dtype=object)
    order = rng.permutation(users.size)
    return pd.DataFrame({"userId": user_ids[users][order], "movieId": item_ids[items][order]})


def original_pairs(split: ImplicitSplit, part) -> set[tuple]:
    data = split.data
    return set(
        zip(data.user_ids[part.users].tolist(), data.item_ids[part.items].tolist(), strict=True)
    )


def seen_keys(split: ImplicitSplit) -> np.ndarray:
    return split.data.users * split.n_items + split.data.items


@SETTINGS
@given(
    interaction_tables(),
    st.integers(0, 2**31 - 1),
    st.sampled_from([("all", 400), ("tfidf", 3), ("tfidf", 40)]),
)
def test_split_invariants_hold_for_random_tables(frame, seed, history):
    mode, max_history = history
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicates and no dropped users here
        data = from_frame(frame)
        split = ImplicitSplit.from_interactions(
            data, seed=seed, history=mode, max_history=max_history
        )
    assert split.n_dropped_users == 0
    n_users, n_items = split.n_users, split.n_items
    assert n_users == frame["userId"].nunique()

    keys = {p: getattr(split, p).users * n_items + getattr(split, p).items for p in PARTS}
    union = np.concatenate(list(keys.values()))
    assert union.size == np.unique(union).size, "the parts overlap"
    assert np.array_equal(np.sort(union), seen_keys(split)), "the parts do not cover the data"
    rows = set(zip(frame["userId"].tolist(), frame["movieId"].tolist(), strict=True))
    assert set().union(*(original_pairs(split, getattr(split, p)) for p in PARTS)) == rows
    for part in PARTS:
        users = getattr(split, part).users
        assert np.array_equal(np.unique(users), np.arange(n_users)), f"a user lacks {part}"
    assert np.array_equal(split.loo.users, np.arange(n_users)), "not one LOO item per user"

    n_train = np.bincount(split.train.users, minlength=n_users)
    expected_lengths = n_train if mode == "all" else np.minimum(n_train, max_history)
    assert np.array_equal(split.history_lengths, expected_lengths)
    for user in range(n_users):
        history = split.history_items[user, : split.history_lengths[user]]
        train_items = split.train.items[split.train.users == user]
        assert np.all(np.isin(history, train_items))
        if mode == "all":
            assert np.array_equal(history, np.sort(train_items))
    assert np.all(split.history_items[~split.history_mask] == 0)

    for part in ("val", "test", "loo"):
        pool = split.candidates(part, 7)
        negative = pool.labels == 0
        assert negative.sum() == 7 * len(getattr(split, part))
        assert not np.isin(
            pool.users[negative] * n_items + pool.items[negative], seen_keys(split)
        ).any(), "a negative is one of the user's positives"
    rng = np.random.default_rng(seed)
    drawn_for = rng.integers(0, n_users, 50)
    drawn = split.sample_negatives(drawn_for, 5, rng)
    assert not np.isin(drawn_for[:, None] * n_items + drawn, seen_keys(split)).any()


@SETTINGS
@given(interaction_tables(), st.integers(0, 2**31 - 1))
def test_same_seed_gives_the_same_split_whatever_the_row_order(frame, seed):
    first = ImplicitSplit.from_interactions(from_frame(frame), seed=seed, max_history=5)
    shuffled = frame.sample(frac=1.0, random_state=seed % 1000).reset_index(drop=True)
    second = ImplicitSplit.from_interactions(from_frame(shuffled), seed=seed, max_history=5)
    assert first.fingerprint == second.fingerprint
    for part in PARTS:
        a, b = getattr(first, part), getattr(second, part)
        assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items), part
    assert np.array_equal(first.history_items, second.history_items)
    for part in ("val", "test", "loo"):
        a, b = first.candidates(part, 4), second.candidates(part, 4)
        assert np.array_equal(a.items, b.items) and np.array_equal(a.labels, b.labels)


# --------------------------------------------------------------------------- the metrics


@st.composite
def pools(draw, single_positive: bool = False):
    """(users, labels, scores): 1..8 users with 1..15 candidates each, at least one positive.

    Scores are small integers (many ties) or floats. With ``single_positive`` every user has
    exactly one positive.
    """
    n_users = draw(st.integers(1, 8))
    sizes = draw(st.lists(st.integers(1, 15), min_size=n_users, max_size=n_users))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    user_ids = rng.choice(1000, n_users, replace=False)
    users = np.repeat(user_ids, sizes)
    if single_positive:
        labels = np.zeros(users.size)
        starts = np.cumsum(sizes) - np.asarray(sizes)
        labels[starts + (rng.random(n_users) * np.asarray(sizes)).astype(int)] = 1.0
    else:
        labels = (rng.random(users.size) < draw(st.floats(0.05, 0.9))).astype(np.float64)
        labels[rng.integers(users.size)] = 1.0
    if draw(st.booleans()):
        scores = rng.integers(0, 4, users.size).astype(np.float64)
    else:
        scores = rng.standard_normal(users.size)
    order = rng.permutation(users.size)
    return users[order], labels[order], scores[order]


cutoffs = st.lists(st.integers(1, 20), min_size=1, max_size=5, unique=True).map(sorted)
ties = st.sampled_from(["pessimistic", "optimistic"])


@SETTINGS
@given(pools(), cutoffs, ties, st.randoms(use_true_random=False))
def test_metrics_lie_in_unit_interval_and_ignore_row_order(pool, ks, tie, random):
    users, labels, scores = pool
    out = ranking_metrics(users, labels, scores, ks=tuple(ks), ties=tie)
    assert all(0.0 <= value <= 1.0 for value in out.values()), out
    perm = np.array(random.sample(range(users.size), users.size))
    shuffled = ranking_metrics(users[perm], labels[perm], scores[perm], ks=tuple(ks), ties=tie)
    assert shuffled == out


@SETTINGS
@given(pools(), cutoffs, ties)
def test_metric_orderings(pool, ks, tie):
    out = ranking_metrics(*pool, ks=tuple(ks), ties=tie)
    for k in ks:
        assert out[f"hr@{k}"] >= out[f"precision@{k}"]
        assert out[f"hr@{k}"] >= out[f"recall@{k}"]
    for small, large in zip(ks, ks[1:], strict=False):
        assert out[f"recall@{small}"] <= out[f"recall@{large}"]
        assert out[f"hr@{small}"] <= out[f"hr@{large}"]


@SETTINGS
@given(pools(single_positive=True), cutoffs, ties)
def test_single_positive_metrics_equal_hand_worked_values(pool, ks, tie):
    users, labels, scores = pool
    ranks = []
    for user in np.unique(users):
        rows = users == user
        positive = scores[rows & (labels == 1)][0]
        negatives = scores[rows & (labels == 0)]
        beaten_by = negatives >= positive if tie == "pessimistic" else negatives > positive
        ranks.append(1 + int(beaten_by.sum()))
    out = ranking_metrics(users, labels, scores, ks=tuple(ks), ties=tie)
    for k in ks:
        ndcg = np.mean([1 / math.log2(r + 1) if r <= k else 0.0 for r in ranks])
        hr = np.mean([r <= k for r in ranks])
        ap = np.mean([1 / r if r <= k else 0.0 for r in ranks])
        assert math.isclose(out[f"ndcg@{k}"], ndcg, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(out[f"hr@{k}"], hr, rel_tol=1e-12)
        assert math.isclose(out[f"recall@{k}"], hr, rel_tol=1e-12)
        assert math.isclose(out[f"precision@{k}"], hr / k, rel_tol=1e-12)
        assert math.isclose(out[f"map@{k}"], ap, rel_tol=1e-12, abs_tol=1e-12)
