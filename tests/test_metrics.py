"""Ranking metrics against hand-worked rankings and a naive per-user reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pyro_bamf.metrics import KS, METRICS, per_user_metrics, ranking_metrics

LOG2_3 = math.log2(3)


def test_one_user_hand_worked_ranking():
    # scores rank the candidates as given: negative, positive, negative, positive (P = 2)
    out = ranking_metrics(
        np.zeros(4, dtype=int), np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6]), ks=(1, 2, 4)
    )
    # k = 1: only the negative is in the top 1
    assert out["hr@1"] == 0.0
    assert out["precision@1"] == 0.0
    assert out["recall@1"] == 0.0
    assert out["map@1"] == 0.0
    assert out["ndcg@1"] == 0.0
    # k = 2: one hit at rank 2
    assert out["hr@2"] == 1.0
    assert out["precision@2"] == pytest.approx(1 / 2)
    assert out["recall@2"] == pytest.approx(1 / 2)
    # AP@2 = (1 / min(2, P)) * (hits@2 / 2) = (1/2) * (1/2)
    assert out["map@2"] == pytest.approx(0.25)
    # DCG@2 = 1 / log2(3); IDCG@2 = 1 / log2(2) + 1 / log2(3)
    assert out["ndcg@2"] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
    # k = 4: both hits, at ranks 2 and 4
    assert out["hr@4"] == 1.0
    assert out["precision@4"] == pytest.approx(2 / 4)
    assert out["recall@4"] == pytest.approx(1.0)
    # AP@4 = (1/2) * (1/2 + 2/4)
    assert out["map@4"] == pytest.approx(0.5)
    # DCG@4 = 1/log2(3) + 1/log2(5); IDCG@4 = 1 + 1/log2(3)
    assert out["ndcg@4"] == pytest.approx((1 / LOG2_3 + 1 / math.log2(5)) / (1 + 1 / LOG2_3))
    assert set(out) == {f"{m}@{k}" for m in METRICS for k in (1, 2, 4)}


def test_default_cutoffs_are_the_papers():
    assert KS == (5, 10, 15, 20, 25, 50, 100)
    out = ranking_metrics(np.zeros(3, dtype=int), np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3]))
    assert set(out) == {f"{m}@{k}" for m in METRICS for k in KS}
    # the positive is last of 3: inside every cut-off >= 5, at rank 3
    assert out["hr@5"] == 1.0 and out["ndcg@5"] == pytest.approx(1 / math.log2(4))
    assert out["precision@100"] == pytest.approx(1 / 100)


def test_ties_pessimistic_puts_the_positive_last_optimistic_first():
    users, labels, scores = np.zeros(4, dtype=int), np.array([0, 0, 1, 0]), np.full(4, 0.5)
    low = ranking_metrics(users, labels, scores, ks=(1, 3, 4), ties="pessimistic")
    assert low["hr@1"] == 0.0 and low["hr@3"] == 0.0 and low["hr@4"] == 1.0
    assert low["ndcg@4"] == pytest.approx(1 / math.log2(5))
    high = ranking_metrics(users, labels, scores, ks=(1, 3, 4), ties="optimistic")
    assert high["hr@1"] == 1.0 and high["ndcg@1"] == 1.0 and high["map@1"] == 1.0
    # the default is pessimistic
    assert ranking_metrics(users, labels, scores, ks=(1, 3, 4)) == low


def test_ties_only_reorder_equal_scores():
    # the positive ties with one negative, below a strictly better negative
    users, labels = np.zeros(4, dtype=int), np.array([0, 1, 0, 0])
    scores = np.array([0.5, 0.5, 0.9, 0.1])
    low = ranking_metrics(users, labels, scores, ks=(2, 3), ties="pessimistic")
    high = ranking_metrics(users, labels, scores, ks=(2, 3), ties="optimistic")
    assert low["hr@2"] == 0.0 and low["ndcg@3"] == pytest.approx(1 / 2)  # rank 3
    assert high["hr@2"] == 1.0 and high["ndcg@2"] == pytest.approx(1 / LOG2_3)  # rank 2


def test_metrics_are_averaged_over_users():
    # user 7: positive at rank 1; user 3: positive at rank 2 of 3
    users = np.array([7, 7, 3, 3, 3])
    labels = np.array([1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.8, 0.5, 0.2])
    out = ranking_metrics(users, labels, scores, ks=(1, 2))
    assert out["hr@1"] == pytest.approx(0.5)
    assert out["hr@2"] == pytest.approx(1.0)
    assert out["ndcg@2"] == pytest.approx((1 + 1 / LOG2_3) / 2)
    assert out["map@2"] == pytest.approx((1 + 1 / 2) / 2)
    assert out["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_users_without_positives_are_left_out():
    users = np.array([0, 0, 1, 1, 2, 2])
    labels = np.array([1, 0, 0, 0, 0, 1])
    scores = np.array([0.9, 0.1, 0.7, 0.6, 0.8, 0.2])
    with_empty = ranking_metrics(users, labels, scores, ks=(1, 2))
    without = ranking_metrics(
        users[[0, 1, 4, 5]], labels[[0, 1, 4, 5]], scores[[0, 1, 4, 5]], (1, 2)
    )
    assert with_empty == without
    assert with_empty["hr@1"] == pytest.approx(0.5)  # (1 + 0) / 2, not / 3
    with pytest.raises(ValueError, match="no user has a positive"):
        ranking_metrics(users, np.zeros(6), scores)


@pytest.mark.parametrize(
    ("users", "labels", "scores", "message"),
    [
        ([0, 0], [1, 0], [0.5, np.nan], "NaN"),
        ([0, 0, 0], [1, 0], [0.5, 0.1], "shapes"),
        ([0, 0], [1, 0, 0], [0.5, 0.1], "shapes"),
        ([[0, 0]], [[1, 0]], [[0.5, 0.1]], "1-d"),
    ],
)
def test_bad_inputs_raise_value_error(users, labels, scores, message):
    with pytest.raises(ValueError, match=message):
        ranking_metrics(np.array(users), np.array(labels), np.array(scores))


def test_bad_ties_and_cutoffs_raise_value_error():
    args = np.zeros(2, dtype=int), np.array([1, 0]), np.array([0.2, 0.1])
    with pytest.raises(ValueError, match="ties"):
        ranking_metrics(*args, ties="x")
    with pytest.raises(ValueError, match="cut-offs"):
        ranking_metrics(*args, ks=(0, 5))


def naive_metrics(users, labels, scores, ks, ties):
    """Per-user sorting and the textbook formulas, averaged over users with a positive."""
    per_user = {f"{m}@{k}": [] for m in METRICS for k in ks}
    labels = np.asarray(labels, dtype=np.float64)
    for user in np.unique(users):
        rows = np.flatnonzero(users == user)
        rel = labels[rows]
        n_pos = int(rel.sum())
        if n_pos == 0:
            continue
        tie = 1 if ties == "pessimistic" else -1
        ranked = sorted(range(rows.size), key=lambda r: (-scores[rows][r], tie * rel[r]))
        rel = rel[ranked]
        for k in ks:
            top = rel[:k]
            hits = top.sum()
            per_user[f"hr@{k}"].append(float(hits > 0))
            per_user[f"precision@{k}"].append(hits / k)
            per_user[f"recall@{k}"].append(hits / n_pos)
            precisions = [top[: r + 1].sum() / (r + 1) for r in range(top.size) if top[r]]
            per_user[f"map@{k}"].append(sum(precisions) / min(k, n_pos))
            dcg = sum(top[r] / math.log2(r + 2) for r in range(top.size))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, n_pos)))
            per_user[f"ndcg@{k}"].append(dcg / idcg)
    return {key: float(np.mean(values)) for key, values in per_user.items()}


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("seed", range(4))
def test_random_pools_match_a_naive_reference(seed, ties):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, size=12)
    users = np.repeat(rng.permutation(100)[:12], counts)
    labels = (rng.random(users.size) < 0.25).astype(np.float32)
    scores = rng.integers(0, 6, size=users.size).astype(np.float32)  # many ties
    ks = (1, 3, 5, 10, 40)
    out = ranking_metrics(users, labels, scores, ks=ks, ties=ties)
    expected = naive_metrics(users, labels, scores, ks, ties)
    assert out.keys() == expected.keys()
    for key in out:
        assert out[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key


def test_row_permutation_does_not_change_the_metrics():
    rng = np.random.default_rng(5)
    users = np.repeat(np.arange(20), 15)
    labels = (rng.random(users.size) < 0.2).astype(np.float32)
    labels[::15] = 1.0
    scores = rng.integers(0, 4, size=users.size).astype(np.float64)
    base = ranking_metrics(users, labels, scores)
    for _ in range(3):
        perm = rng.permutation(users.size)
        shuffled = ranking_metrics(users[perm], labels[perm], scores[perm])
        assert shuffled.keys() == base.keys()
        for key in base:
            assert shuffled[key] == pytest.approx(base[key], rel=1e-12), key


def test_metrics_lie_in_unit_interval_and_perfect_ranking_scores_one():
    rng = np.random.default_rng(6)
    users = np.repeat(np.arange(30), 12)
    labels = (rng.random(users.size) < 0.3).astype(np.float32)
    labels[::12] = 1.0
    for scores in (rng.random(users.size), -labels + 0.01 * rng.random(users.size)):
        for value in ranking_metrics(users, labels, scores).values():
            assert 0.0 <= value <= 1.0
    perfect = ranking_metrics(users, labels, labels + 0.01 * rng.random(users.size), ks=(1, 12))
    for metric in ("hr", "ndcg", "map"):
        assert perfect[f"{metric}@1"] == pytest.approx(1.0)
        assert perfect[f"{metric}@12"] == pytest.approx(1.0)
    assert perfect["recall@12"] == pytest.approx(1.0)
    worst = ranking_metrics(users, labels, -labels, ks=(1,))
    assert worst["hr@1"] == 0.0  # every user here has a negative to rank first


def test_per_user_metrics_are_what_ranking_metrics_averages():
    users = np.array([3, 3, 3, 1, 1, 1, 7, 7])
    labels = np.array([0, 1, 0, 1, 0, 0, 0, 0])  # user 7 has no positive
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.8, 0.3, 0.5, 0.4])
    ids, values = per_user_metrics(users, labels, scores, ks=(1, 2))
    np.testing.assert_array_equal(ids, [1, 3])
    # user 1's positive ranks third, user 3's second
    np.testing.assert_allclose(values["ndcg@2"], [0.0, 1 / np.log2(3)])
    np.testing.assert_allclose(values["hr@1"], [0.0, 0.0])
    means = ranking_metrics(users, labels, scores, ks=(1, 2))
    assert means == {name: float(np.mean(column)) for name, column in values.items()}
