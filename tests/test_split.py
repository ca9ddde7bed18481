"""The implicit-feedback split: invariants, histories, negatives, candidate pools, bad inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_bamf.data import (
    Candidates,
    DataError,
    ImplicitSplit,
    Interactions,
    Positives,
    from_frame,
    load_movielens,
)

PARTS = ("train", "val", "test", "loo")


def keys(part: Positives | Interactions, n_items: int) -> np.ndarray:
    return part.users * n_items + part.items


def check_split(split: ImplicitSplit, max_history: int | None) -> None:
    """Every structural invariant of a split (max_history None means history="all")."""
    n_users, n_items = split.n_users, split.n_items
    part_keys = {p: keys(getattr(split, p), n_items) for p in PARTS}
    for name, k in part_keys.items():
        part = getattr(split, name)
        assert part.users.dtype == np.int64 and part.items.dtype == np.int64
        assert np.all(np.diff(k) > 0), f"{name} not sorted by (user, item) or has duplicates"
        assert np.array_equal(np.unique(part.users), np.arange(n_users)), f"a user lacks {name}"
    union = np.concatenate(list(part_keys.values()))
    assert union.size == np.unique(union).size, "parts overlap"
    assert np.array_equal(np.sort(union), keys(split.data, n_items)), "parts do not cover the data"
    assert np.array_equal(split.loo.users, np.arange(n_users))

    remaining = split.data.user_counts() - 1
    for name in ("val", "test"):
        expected = np.maximum(1, np.rint(remaining / 10))
        assert np.array_equal(np.bincount(getattr(split, name).users), expected)

    n_train = np.bincount(split.train.users, minlength=n_users)
    lengths = split.history_lengths
    assert np.array_equal(
        lengths, n_train if max_history is None else np.minimum(n_train, max_history)
    )
    assert split.history_items.shape == (n_users, lengths.max())
    assert np.array_equal(split.history_mask.sum(axis=1), lengths)
    assert np.all(split.history_items[~split.history_mask] == 0)
    df = np.bincount(split.train.items, minlength=n_items)
    starts = np.cumsum(n_train) - n_train
    for u in range(n_users):
        row = split.history_items[u, : lengths[u]]
        train_items = split.train.items[starts[u] : starts[u] + n_train[u]]
        assert np.all(np.diff(row) > 0), "history not sorted by item"
        if max_history is None or n_train[u] <= max_history:
            assert np.array_equal(row, train_items)
        else:  # the least popular training items, ties broken by item index
            kept = np.isin(train_items, row)
            assert kept.sum() == max_history
            rank = np.lexsort((train_items, df[train_items]))
            assert np.array_equal(np.sort(train_items[rank[:max_history]]), row)
    expected_cut = 0 if max_history is None else int(np.sum(n_train > max_history))
    assert split.n_history_cut == expected_cut


@pytest.fixture(scope="module")
def ml_data(movielens_dir) -> Interactions:
    return load_movielens(movielens_dir / "ml-latest-small")


@pytest.fixture(scope="module")
def ml_split(ml_data) -> ImplicitSplit:
    return ImplicitSplit.from_interactions(ml_data, seed=42, history="tfidf", max_history=400)


@pytest.mark.parametrize(("history", "max_history"), [("all", None), ("tfidf", 30), ("tfidf", 5)])
def test_invariants_on_synthetic(small_data, history, max_history):
    split = ImplicitSplit.from_interactions(
        small_data, seed=1, history=history, max_history=max_history or 400
    )
    check_split(split, max_history)
    assert split.data is small_data and split.n_dropped_users == 0


def test_invariants_on_movielens(ml_split):
    check_split(ml_split, 400)
    summary = ml_split.describe()
    assert summary["n_users"] == 610 and summary["n_items"] == 9724
    assert summary["n_loo"] == 610
    assert summary["n_train"] + summary["n_val"] + summary["n_test"] + 610 == 100_836
    assert summary["n_val"] == summary["n_test"] == 10_024
    assert summary["history_max"] == 400
    assert summary["n_history_cut"] == 43  # as in the paper's seed-42 split
    assert 650 < summary["n_cold_items"] < 900  # the paper reports 798
    assert summary["n_dropped_users"] == 0


def test_same_seed_same_split_different_seed_different_split(small_data):
    a = ImplicitSplit.from_interactions(small_data, seed=7)
    b = ImplicitSplit.from_interactions(small_data, seed=7)
    c = ImplicitSplit.from_interactions(small_data, seed=8)
    for part in PARTS:
        assert np.array_equal(getattr(a, part).items, getattr(b, part).items)
    assert np.array_equal(a.history_items, b.history_items)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not np.array_equal(a.test.items, c.test.items)
    pool_a, pool_b = a.candidates("test", 9), b.candidates("test", 9)
    assert np.array_equal(pool_a.items, pool_b.items)
    assert not np.array_equal(pool_a.items, c.candidates("test", 9).items)
    assert not np.array_equal(pool_a.items, a.candidates("test", 9, seed=8).items)
    assert np.array_equal(a.candidates("test", 9, seed=7).items, pool_a.items)


def test_fingerprint_depends_on_settings(small_data):
    base = ImplicitSplit.from_interactions(small_data).fingerprint
    assert ImplicitSplit.from_interactions(small_data, max_history=10).fingerprint != base
    assert ImplicitSplit.from_interactions(small_data, history="all").fingerprint != base


def seen_keys(split: ImplicitSplit) -> np.ndarray:
    return keys(split.data, split.n_items)


def test_negatives_are_never_positives(ml_split):
    rng = np.random.default_rng(0)
    users = rng.integers(0, ml_split.n_users, 20_000)
    negatives = ml_split.sample_negatives(users, 20, rng)
    assert negatives.shape == (20_000, 20) and negatives.dtype == np.int64
    assert negatives.min() >= 0 and negatives.max() < ml_split.n_items
    assert not np.isin(users[:, None] * ml_split.n_items + negatives, seen_keys(ml_split)).any()


def test_negatives_are_uniform_over_the_unseen_items():
    # User 0 has seen items 1, 3, 4, 6 of 8 and user 1 the other four.
    items = np.array([1, 3, 4, 6, 0, 2, 5, 7])
    data = Interactions(np.repeat([0, 1], 4), items, np.arange(2), np.arange(8))
    split = ImplicitSplit.from_interactions(data, history="all")
    draws = split.sample_negatives(np.zeros(40_000, dtype=np.int64), 1, np.random.default_rng(1))
    counts = np.bincount(draws.ravel(), minlength=8)
    assert np.all(counts[[1, 3, 4, 6]] == 0)
    assert np.allclose(counts[[0, 2, 5, 7]] / 40_000, 0.25, atol=0.01)
    user1 = split.sample_negatives(np.ones(1000, dtype=np.int64), 3, np.random.default_rng(1))
    assert set(np.unique(user1).tolist()) == {1, 3, 4, 6}


def test_negatives_are_deterministic_given_the_rng(small_data):
    split = ImplicitSplit.from_interactions(small_data)
    users = np.arange(split.n_users)
    first = split.sample_negatives(users, 4, np.random.default_rng(3))
    assert np.array_equal(first, split.sample_negatives(users, 4, np.random.default_rng(3)))
    assert not np.array_equal(first, split.sample_negatives(users, 4, np.random.default_rng(4)))


def test_user_who_saw_every_item_cannot_get_negatives():
    frame = pd.DataFrame(
        {"userId": ["a"] * 6 + ["b"] * 4, "movieId": list(range(6)) + [0, 1, 2, 3]}
    )
    split = ImplicitSplit.from_interactions(from_frame(frame))
    assert split.sample_negatives(np.array([1]), 2, np.random.default_rng(0)).shape == (1, 2)
    with pytest.raises(DataError, match=r"user 0 \(original id 'a'\) has interacted with all 6"):
        split.sample_negatives(np.array([1, 0]), 2, np.random.default_rng(0))
    with pytest.raises(DataError, match="user 0"):
        split.candidates("test", 1)


@pytest.mark.parametrize("n_negatives", [0, -1])
def test_candidates_need_at_least_one_negative(small_data, n_negatives):
    split = ImplicitSplit.from_interactions(small_data)
    with pytest.raises(DataError, match=rf"^n_negatives must be >= 1, got {n_negatives}$"):
        split.candidates("val", n_negatives)


def test_candidates_warn_when_a_user_has_fewer_unseen_items_than_negatives():
    # Of 10 items, user "a" saw 6 (4 unseen) and user "b" saw 4 (6 unseen).
    frame = pd.DataFrame({"userId": ["a"] * 6 + ["b"] * 4, "movieId": range(10)})
    split = ImplicitSplit.from_interactions(from_frame(frame))
    with pytest.warns(UserWarning) as caught:
        pool = split.candidates("test", 5)
    assert str(caught[0].message) == (
        "1 user(s) have fewer unseen items than the 5 negatives asked for, e.g. user 0 "
        "(original id 'a') has only 4: their pools must repeat negatives (eval_negatives, or "
        "calibrate --negatives, sets how many)"
    )
    assert np.count_nonzero((pool.users == 0) & (pool.labels == 0)) == 5  # repeated, as warned
    with pytest.warns(UserWarning, match=r"^2 user\(s\) .* 7 negatives .* user 0 .* only 4:"):
        split.candidates("val", 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as many negatives as unseen items: no warning
        pool = split.candidates("loo", 4)
    negatives = pool.items[(pool.users == 0) & (pool.labels == 0)]
    assert negatives.size == 4 and set(negatives.tolist()) <= {6, 7, 8, 9}
    # Training draws are not limited by the number of unseen items.
    assert split.sample_negatives(np.array([0]), 9, np.random.default_rng(0)).shape == (1, 9)


@pytest.mark.parametrize("part", ["val", "test", "loo"])
def test_candidate_pools(ml_split, part):
    pool = ml_split.candidates(part, 99)
    positives = getattr(ml_split, part)
    assert len(pool) == 100 * len(positives)
    assert pool.labels.dtype == np.float32 and pool.users.dtype == np.int64
    assert np.all(np.diff(pool.users) >= 0), "not grouped by user"
    per_user = np.bincount(pool.users, minlength=ml_split.n_users)
    assert np.array_equal(per_user, 100 * np.bincount(positives.users, minlength=ml_split.n_users))
    is_pos = pool.labels == 1.0
    assert np.array_equal(
        np.sort(pool.users[is_pos] * ml_split.n_items + pool.items[is_pos]),
        keys(positives, ml_split.n_items),
    )
    negative_keys = pool.users[~is_pos] * ml_split.n_items + pool.items[~is_pos]
    assert not np.isin(negative_keys, seen_keys(ml_split)).any()
    assert set(np.unique(pool.labels)) == {0.0, 1.0}


def test_candidates_unknown_part(small_data):
    split = ImplicitSplit.from_interactions(small_data)
    with pytest.raises(DataError, match="part must be one of"):
        split.candidates("train", 4)


def test_candidates_round_trip(small_data, tmp_path):
    split = ImplicitSplit.from_interactions(small_data)
    pool = split.candidates("test", 5)
    path = tmp_path / "pools" / "test.npz"
    pool.save(path, split.fingerprint)
    assert [p.name for p in path.parent.iterdir()] == ["test.npz"]
    loaded = Candidates.load(path, split.fingerprint)
    for name in ("users", "items", "labels"):
        assert np.array_equal(getattr(loaded, name), getattr(pool, name))
        assert getattr(loaded, name).dtype == getattr(pool, name).dtype
    assert len(Candidates.load(path)) == len(pool)
    with pytest.raises(DataError, match="fingerprint mismatch"):
        Candidates.load(path, "0" * 64)


def test_truncated_and_corrupt_candidate_files(small_data, tmp_path):
    split = ImplicitSplit.from_interactions(small_data)
    path = tmp_path / "pool.npz"
    split.candidates("val", 3).save(path, split.fingerprint)
    content = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match="truncated.npz: corrupt or truncated"):
        Candidates.load(truncated)
    corrupt = tmp_path / "corrupt.npz"
    middle = len(content) // 2
    corrupt.write_bytes(content[:middle] + bytes(64) + content[middle + 64 :])
    with pytest.raises(DataError, match="corrupt or truncated"):
        Candidates.load(corrupt)
    with pytest.raises(DataError, match="no such candidates file"):
        Candidates.load(tmp_path / "absent.npz")


def test_small_users_are_dropped_with_a_count():
    rows = [(10, i) for i in range(6)] + [(20, 0), (20, 1), (20, 2)] + [(30, i) for i in range(4)]
    data = from_frame(pd.DataFrame(rows, columns=["userId", "movieId"]))
    with pytest.warns(UserWarning, match="dropped 1 of 3 users with too few interactions"):
        split = ImplicitSplit.from_interactions(data)
    assert split.n_dropped_users == 1 and split.describe()["n_dropped_users"] == 1
    assert split.data.user_ids.tolist() == [10, 30]
    assert split.n_users == 2 and split.n_items == data.n_items == 6
    assert np.array_equal(split.data.item_ids, data.item_ids)
    assert split.fingerprint != ImplicitSplit.from_interactions(split.data).fingerprint
    check_split(split, 400)


def test_no_user_large_enough():
    data = from_frame(pd.DataFrame({"userId": [1, 1, 2], "movieId": [1, 2, 3]}))
    with pytest.raises(DataError, match="all 2 users have too few interactions"):
        ImplicitSplit.from_interactions(data)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_history": 0}, "max_history must be >= 1"),
        ({"history": "bm25"}, "history must be one of"),
        ({"ratios": (8, 0, 1)}, "ratios"),
        ({"ratios": (8, 1)}, "ratios"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": None}, "seed must be a non-negative integer"),
    ],
)
def test_bad_settings(small_data, kwargs, match):
    with pytest.raises(DataError, match=match):
        ImplicitSplit.from_interactions(small_data, **kwargs)


def test_describe_matches_the_parts(small_data):
    split = ImplicitSplit.from_interactions(small_data, max_history=10)
    summary = split.describe()
    assert [summary[f"n_{p}"] for p in PARTS] == [len(getattr(split, p)) for p in PARTS]
    assert summary["history_max"] == 10 and summary["history_min"] >= 1
    train_items = np.unique(split.train.items)
    assert summary["n_cold_items"] == split.n_items - train_items.size


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(1, 25), min_size=1, max_size=12),
    st.integers(0, 2**16),
    st.integers(1, 6),
)
def test_invariants_hold_for_any_data(user_sizes, seed, max_history):
    rng = np.random.default_rng(seed)
    n_items = 30
    users = np.repeat(np.arange(len(user_sizes)), user_sizes)
    items = np.concatenate([rng.choice(n_items, size, replace=False) for size in user_sizes])
    data = Interactions(users, items, np.arange(len(user_sizes)), np.arange(n_items))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if max(user_sizes) < 4:
            with pytest.raises(DataError):
                ImplicitSplit.from_interactions(data, seed=seed)
            return
        split = ImplicitSplit.from_interactions(data, seed=seed, max_history=max_history)
    check_split(split, max_history)
    pool = split.candidates("loo", 3)
    negatives = pool.users[pool.labels == 0] * n_items + pool.items[pool.labels == 0]
    assert not np.isin(negatives, seen_keys(split)).any()
