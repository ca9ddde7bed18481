"""Intervals and paired tests for per-user metrics.

* Percentile bootstrap over users: resample the ``n`` users with replacement ``B`` times and
  take the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means. Two
  runs compared on the same users are resampled with the same draws, so the interval of their
  difference is paired.
* Wilcoxon signed-rank test of paired per-user values (two-sided, scipy's): zero differences
  are dropped; the exact null distribution for up to 50 non-zero differences without ties,
  otherwise the normal approximation with the tie correction (the method is chosen here, not
  by scipy's version-dependent ``"auto"``). It tests whether the differences are centred on
  zero (a median effect), while the reported effect is the mean difference with its interval:
  the two can disagree when a few users carry a large difference.
* Holm's step-down correction of several p-values: with ``p_(1) <= ... <= p_(m)``,
  ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

RESAMPLES = 10_000
LEVEL = 0.95
EXACT_PAIRS = 50
RESAMPLES_PER_DRAW = 256  # resamples whose row indices are drawn at once, from their own stream


def bootstrap_means(values: np.ndarray, n_resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Means of ``n_resamples`` bootstrap resamples of the rows of ``values (n,)`` or
    ``(n, m)``: ``(n_resamples,)`` or ``(n_resamples, m)``, every column resampled with the
    same rows. Resamples are drawn ``RESAMPLES_PER_DRAW`` at a time, block ``b`` from the
    stream ``default_rng([seed, b])``, so a resample depends only on ``seed``, ``n`` and its
    index (asking for more resamples adds draws and changes none), in bounded memory."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n < 1 or n_resamples < 1:
        raise ValueError(f"bootstrap needs >= 1 value and resample, got {n} and {n_resamples}")
    if not np.isfinite(values).all():
        raise ValueError("bootstrap values must be finite")
    means = []
    for block, first in enumerate(range(0, n_resamples, RESAMPLES_PER_DRAW)):
        size = (min(RESAMPLES_PER_DRAW, n_resamples - first), n)
        rows = np.random.default_rng([seed, block]).integers(0, n, size=size)
        means.append(values[rows].mean(axis=1))
    return np.concatenate(means)


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap ``draws (B,)``."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def wilcoxon_p(first: np.ndarray, second: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired values ``first, second (n,)`` (see
    the module doc for the method); 1.0 when every pair is equal (no evidence of a
    difference)."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"paired values must be 1-d of one length, got {first.shape}, "
                         f"{second.shape}")  # fmt: skip
    difference = second - first
    difference = difference[difference != 0]
    if difference.size == 0:
        return 1.0
    magnitudes = np.abs(difference)
    tied = np.unique(magnitudes).size < magnitudes.size
    method = "exact" if difference.size <= EXACT_PAIRS and not tied else "approx"
    return float(stats.wilcoxon(difference, method=method).pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values, in the order given (see the module doc)."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or np.isnan(p).any():
        raise ValueError(f"p-values must be a 1-d array in [0, 1], got {pvalues!r}")
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted
