"""Synthetic data: determinism, shape of the distributions, learnability, the spec parser."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_bamf.data import DataError, ImplicitSplit, load_data, make_synthetic, planted_preferences
from pyro_bamf.data import synthetic as synthetic_module


def test_same_seed_same_data_different_seed_different_data():
    a, b = make_synthetic(seed=5), make_synthetic(seed=5)
    assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
    assert a.fingerprint() == b.fingerprint()
    assert make_synthetic(seed=6).fingerprint() != a.fingerprint()
    assert a.source == "synthetic(n_users=300,n_items=1000,rank=8,mean_interactions=40,seed=5)"


def test_chunking_does_not_change_the_output(monkeypatch):
    expected = make_synthetic(n_users=50, n_items=200, seed=1).fingerprint()
    monkeypatch.setattr(synthetic_module, "_CHUNK_CELLS", 1000)  # 5 users per chunk
    assert make_synthetic(n_users=50, n_items=200, seed=1).fingerprint() == expected


def test_sizes_and_activity():
    data = make_synthetic(n_users=400, n_items=600, mean_interactions=30, seed=2)
    counts = data.user_counts()
    assert (data.n_users, data.n_items) == (400, 600)
    assert data.user_ids.tolist() == list(range(400))
    assert counts.min() >= 8 and counts.max() < 600 / 2
    assert counts.mean() == pytest.approx(30, rel=0.02)
    assert counts.max() > 4 * np.median(counts)  # heavy-tailed activity


def test_item_popularity_is_skewed():
    items = make_synthetic(seed=3).item_counts()
    top_tenth = np.sort(items)[::-1][: items.size // 10]
    assert top_tenth.sum() > 0.3 * items.sum()


def test_factors_beat_popularity_on_held_out_items():
    """Ranking leave-one-out candidates (1 positive, 99 negatives) by the planted scores."""
    data = make_synthetic(seed=0)
    split = ImplicitSplit.from_interactions(data, seed=0)
    pool = split.candidates("loo", 99)
    user_f, item_f, popularity = planted_preferences(300, 1000, 8, seed=0)
    true = np.einsum("nk,nk->n", user_f[pool.users], item_f[pool.items]) + popularity[pool.items]
    train_popularity = np.bincount(split.train.items, minlength=1000)[pool.items]
    noise = np.random.default_rng(0).random(len(pool)) * 1e-3  # random tie-breaking

    def hit_ratio_at_10(score: np.ndarray) -> float:
        score = score.reshape(split.n_users, 100)
        labels = pool.labels.reshape(split.n_users, 100)
        positive = score[labels == 1]
        return float(np.mean((score > positive[:, None]).sum(axis=1) < 10))

    by_factors = hit_ratio_at_10(true + noise)
    by_popularity = hit_ratio_at_10(train_popularity + noise)
    assert by_factors > by_popularity + 0.15, (by_factors, by_popularity)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_items": 16}, "too small"),
        ({"mean_interactions": 5}, "mean_interactions"),
        ({"n_items": 100, "mean_interactions": 60}, "mean_interactions"),
        ({"rank": 0}, "rank"),
        ({"n_users": 0}, "n_users"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        make_synthetic(**kwargs)


def test_spec_overrides():
    data = load_data("synthetic:n_users=50, n_items=100,seed=3,mean_interactions=12.5")
    expected = make_synthetic(n_users=50, n_items=100, seed=3, mean_interactions=12.5)
    assert data.fingerprint() == expected.fingerprint()
    assert load_data("synthetic").fingerprint() == make_synthetic().fingerprint()


def test_spec_unknown_key_lists_the_valid_ones():
    with pytest.raises(DataError, match="unknown synthetic option 'users'.*n_users, n_items, rank"):
        load_data("synthetic:users=5")


def test_spec_bad_value():
    with pytest.raises(DataError, match="needs an integer value"):
        load_data("synthetic:seed=x")
    with pytest.raises(DataError, match="needs an integer value"):
        load_data("synthetic:seed")
