"""Calibration of predicted probabilities: ECE, Brier score, NLL and reliability bins.

With ``B`` equal-width bins over [0, 1], ``n_b`` predictions in bin ``b``, their mean
probability ``conf_b`` and positive rate ``acc_b``::

    ECE   = sum_b (n_b / n) |acc_b - conf_b|
    Brier = mean (p - y)^2
    NLL   = -mean [y log p + (1 - y) log(1 - p)]
"""

from __future__ import annotations

import numpy as np


def _check(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"probabilities and labels differ in length: {p.size} vs {y.size}")
    if p.size == 0:
        raise ValueError("no predictions to calibrate")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("probabilities must lie in [0, 1] (NaN is not allowed)")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return p, y


def check_n_bins(n_bins: int) -> None:
    """``ValueError`` unless there is at least one reliability bin."""
    if n_bins < 1:
        raise ValueError(f"the number of reliability bins (--bins) must be >= 1, got {n_bins}")


def reliability_bins(probabilities, labels, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per bin ``b`` (equal width; ``p = 1`` falls in the last): ``count``, mean probability
    ``confidence`` and positive rate ``accuracy`` (NaN for empty bins), and the bin ``edges``."""
    check_n_bins(n_bins)
    p, y = _check(probabilities, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=p, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=y, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": confidence, "accuracy": accuracy}


def calibration_metrics(probabilities, labels, n_bins: int = 15) -> dict[str, float]:
    """``{"ece", "brier", "nll", "n", "positive_rate", "mean_probability"}`` (module doc)."""
    p, y = _check(probabilities, labels)
    bins = reliability_bins(p, y, n_bins)
    filled = bins["count"] > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    clipped = np.clip(p, 1e-12, 1 - 1e-12)
    return {
        "ece": float(np.sum(bins["count"][filled] * gap) / p.size),
        "brier": float(np.mean((p - y) ** 2)),
        "nll": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log1p(-clipped))),
        "n": int(p.size),
        "positive_rate": float(y.mean()),
        "mean_probability": float(p.mean()),
    }
