"""The test protocols: per-user tables, their means and the pools' fingerprints."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_bamf.data import Candidates, ImplicitSplit, make_synthetic
from pyro_bamf.evaluation import full_ranking_candidates
from pyro_bamf.metrics import per_user_metrics, ranking_metrics
from pyro_bamf.protocols import pool_fingerprint, score_protocols


@pytest.fixture(scope="module")
def split() -> ImplicitSplit:
    data = make_synthetic(n_users=40, n_items=90, rank=4, mean_interactions=15, seed=2)
    return ImplicitSplit.from_interactions(data, seed=3, max_history=30)


def by_item(users, items):
    """Scores that favour low item indices, with ties (a shared score every 3 items)."""
    return -(np.asarray(items) // 3).astype(np.float32)


def test_each_protocol_keeps_every_users_metrics_and_their_mean(split):
    pool = split.candidates("test", 20)
    scored = score_protocols(by_item, split, {"test": pool, "test_full": None}, ks=(5, 10))
    test = scored.per_user[scored.per_user["protocol"] == "test"]
    expected = ranking_metrics(pool.users, pool.labels, by_item(pool.users, pool.items), (5, 10))
    assert scored.means["test"] == expected
    ids, values = per_user_metrics(pool.users, pool.labels, by_item(pool.users, pool.items),
                                   (5, 10))  # fmt: skip
    np.testing.assert_array_equal(test["user"], split.data.user_ids[ids])
    np.testing.assert_array_equal(test["ndcg@10"], values["ndcg@10"])
    users, items, labels = full_ranking_candidates(split, "test")
    full = ranking_metrics(users, labels, by_item(users, items), (5, 10))
    assert scored.means["test_full"] == pytest.approx(full, rel=1e-12)
    assert list(scored.per_user.columns[:2]) == ["protocol", "user"]
    assert set(scored.seconds) == set(scored.pool_fingerprints) == {"test", "test_full"}


def test_a_pools_fingerprint_names_its_rows_and_split(split):
    pool = split.candidates("test", 20)
    same = split.candidates("test", 20)
    assert pool_fingerprint(pool, split) == pool_fingerprint(same, split)
    items = pool.items.copy()
    items[-1] = (items[-1] + 1) % split.n_items
    moved = Candidates(pool.users, items, pool.labels)
    assert pool_fingerprint(moved, split) != pool_fingerprint(pool, split)
    other = ImplicitSplit.from_interactions(split.data, seed=4, max_history=30)
    assert pool_fingerprint(None, other) != pool_fingerprint(None, split)
    assert pool_fingerprint(None, split) != pool_fingerprint(pool, split)


def test_validation_full_ranking_ranks_the_validation_positives(split):
    scored = score_protocols(by_item, split, {"val": None}, ks=(10,), part="val")
    users, items, labels = full_ranking_candidates(split, "val")
    assert scored.means["val"] == pytest.approx(
        ranking_metrics(users, labels, by_item(users, items), (10,)), rel=1e-12
    )
