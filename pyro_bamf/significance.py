"""Intervals and paired tests for per-user metrics.

* Percentile bootstrap over users: resample the ``n`` users with replacement ``B`` times and
  take the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means. Two
  runs compared on the same users are resampled with the same draws, so the interval of their
  difference is paired.
* Wilcoxon signed-rank test of paired per-user values (scipy's, two-sided; zero differences
  are dropped, the normal approximation with tie correction beyond 50 pairs).
* Holm's step-down correction of several p-values: with ``p_(1) <= ... <= p_(m)``,
  ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

RESAMPLES = 10_000
LEVEL = 0.95
_CHUNK_CELLS = 2**23  # resampled indices drawn at a time


def bootstrap_means(values: np.ndarray, n_resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Means of ``n_resamples`` bootstrap resamples of the rows of ``values (n,)`` or
    ``(n, m)``: ``(n_resamples,)`` or ``(n_resamples, m)``, every column resampled with the
    same rows. The draws depend only on ``seed``, ``n`` and ``n_resamples``."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n < 1 or n_resamples < 1:
        raise ValueError(f"bootstrap needs >= 1 value and resample, got {n} and {n_resamples}")
    if not np.isfinite(values).all():
        raise ValueError("bootstrap values must be finite")
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_CELLS // n)
    means = [
        values[rng.integers(0, n, size=(min(per_chunk, n_resamples - first), n))].mean(axis=1)
        for first in range(0, n_resamples, per_chunk)
    ]
    return np.concatenate(means)


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap ``draws (B,)``."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_interval(
    values: np.ndarray, n_resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values (n,)``."""
    return percentile_interval(bootstrap_means(values, n_resamples, seed), level)


def wilcoxon_p(first: np.ndarray, second: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired values ``first, second (n,)``;
    1.0 when every pair is equal (no evidence of a difference)."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"paired values must be 1-d of one length, got {first.shape}, "
                         f"{second.shape}")  # fmt: skip
    difference = second - first
    if not np.any(difference):
        return 1.0
    return float(stats.wilcoxon(difference, zero_method="wilcox").pvalue)


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
