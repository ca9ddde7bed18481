"""Bootstrap intervals, the paired test and Holm's correction against independent
computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from pyro_bamf.significance import (
    bootstrap_means,
    holm,
    percentile_interval,
    wilcoxon_p,
)


def test_bootstrap_interval_agrees_with_scipys_percentile_bootstrap():
    values = np.random.default_rng(1).exponential(size=200)
    ours = percentile_interval(bootstrap_means(values, n_resamples=20_000, seed=3))
    theirs = stats.bootstrap((values,), np.mean, n_resamples=20_000, method="percentile",
                             random_state=np.random.default_rng(4)).confidence_interval  # fmt: skip
    # two Monte Carlo estimates of the same quantiles: within a small share of the width
    width = theirs.high - theirs.low
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.03 * width)


def test_bootstrap_is_fixed_by_the_seed_and_pairs_the_columns():
    values = np.random.default_rng(2).random((50, 2))
    draws = bootstrap_means(values, 500, seed=7)
    np.testing.assert_array_equal(draws, bootstrap_means(values, 500, seed=7))
    assert not np.array_equal(draws, bootstrap_means(values, 500, seed=8))
    shifted = values.copy()
    shifted[:, 1] = shifted[:, 0] + 0.25  # a constant paired difference has no spread
    paired = bootstrap_means(shifted, 500, seed=7)
    np.testing.assert_allclose(paired[:, 1] - paired[:, 0], 0.25)
    np.testing.assert_allclose(paired[:, 0], draws[:, 0])  # the same draws per column


def test_more_resamples_add_draws_and_change_none():
    values = np.random.default_rng(3).random(40)
    few = bootstrap_means(values, 300, seed=1)
    many = bootstrap_means(values, 700, seed=1)  # three blocks of draws, the last one short
    np.testing.assert_array_equal(many[:300], few)
    assert len(many) == 700 and len(np.unique(many)) > 600


def test_percentile_interval_of_known_draws():
    assert percentile_interval(np.arange(1001.0), 0.9) == pytest.approx((50.0, 950.0))
    with pytest.raises(ValueError, match="level"):
        percentile_interval(np.arange(3.0), 1.0)


def exact_signed_rank_p(differences: np.ndarray) -> float:
    """Two-sided p of the signed-rank statistic by enumerating every sign pattern."""
    ranks = stats.rankdata(np.abs(differences))
    observed = ranks[differences > 0].sum()
    mean = ranks.sum() / 2
    patterns = itertools.product((False, True), repeat=len(ranks))
    totals = [ranks[list(signs)].sum() for signs in patterns]
    return float(np.mean(np.abs(np.array(totals) - mean) >= abs(observed - mean) - 1e-12))


def test_wilcoxon_matches_the_exact_null_distribution():
    first = np.array([0.1, 0.4, 0.35, 0.8, 0.05, 0.6, 0.22, 0.9, 0.5, 0.13])
    second = first + np.array([0.31, -0.02, 0.17, 0.26, 0.11, -0.07, 0.4, 0.03, 0.21, 0.14])
    p = wilcoxon_p(first, second)
    assert p == pytest.approx(exact_signed_rank_p(second - first), rel=1e-9)
    assert p == pytest.approx(stats.wilcoxon(second - first).pvalue, rel=1e-12)
    assert wilcoxon_p(second, first) == pytest.approx(p)  # two-sided


def test_wilcoxon_drops_zero_differences_and_equal_runs_give_one():
    first = np.array([0.0, 0.5, 1.0, 0.2, 0.3, 0.7, 0.9, 0.4])
    second = first + np.array([0.0, 0.0, 0.1, 0.3, -0.05, 0.2, 0.15, 0.25])
    nonzero = (second - first) != 0
    assert wilcoxon_p(first, second) == pytest.approx(
        exact_signed_rank_p((second - first)[nonzero]), rel=1e-9
    )
    assert wilcoxon_p(first, first) == 1.0
    with pytest.raises(ValueError, match="paired"):
        wilcoxon_p(first, second[:-1])


def test_wilcoxon_with_tied_differences_uses_the_normal_approximation():
    first = np.zeros(60)
    second = np.tile([0.1, 0.2, -0.1, 0.3, 0.0, 0.2], 10)  # ties and zeros, as NDCG gives
    nonzero = second[second != 0]
    expected = stats.wilcoxon(nonzero, method="approx").pvalue
    assert wilcoxon_p(first, second) == pytest.approx(expected, rel=1e-12)
    z = stats.norm.isf(wilcoxon_p(first, second) / 2)
    ranks = stats.rankdata(np.abs(nonzero))
    mean, n = ranks.sum() / 2, nonzero.size
    _, counts = np.unique(np.abs(nonzero), return_counts=True)
    variance = n * (n + 1) * (2 * n + 1) / 24 - (counts**3 - counts).sum() / 48
    assert z == pytest.approx(abs(ranks[nonzero > 0].sum() - mean) / np.sqrt(variance), rel=1e-9)


def test_holm_on_a_known_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    assert holm([0.2]).tolist() == [0.2]
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])
