"""Calibration metrics against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pyro_bamf.calibration import calibration_metrics, reliability_bins


def test_hand_worked_two_bin_example():
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.9, 1.0])
    y = np.array([0, 0, 1, 1, 1, 0])
    bins = reliability_bins(p, y, n_bins=2)
    np.testing.assert_array_equal(bins["count"], [3, 3])
    np.testing.assert_allclose(bins["confidence"], [0.2, 2.5 / 3])
    np.testing.assert_allclose(bins["accuracy"], [1 / 3, 2 / 3])
    metrics = calibration_metrics(p, y, n_bins=2)
    assert metrics["ece"] == pytest.approx(0.5 * abs(1 / 3 - 0.2) + 0.5 * abs(2 / 3 - 2.5 / 3))
    assert metrics["brier"] == pytest.approx(np.mean((p - y) ** 2))
    expected_nll = -np.mean([math.log(0.9), math.log(0.8), math.log(0.3), math.log(0.6),
                             math.log(0.9), math.log(1e-12)])  # fmt: skip
    assert metrics["nll"] == pytest.approx(expected_nll)
    assert metrics["n"] == 6 and metrics["positive_rate"] == pytest.approx(0.5)


def test_calibrated_predictions_have_small_ece():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(float)
    assert calibration_metrics(p, y)["ece"] < 0.01
    assert calibration_metrics(np.clip(p + 0.2, 0, 1), y)["ece"] > 0.1


def test_empty_bins_are_nan_and_ignored():
    bins = reliability_bins([0.05, 0.07], [0, 1], n_bins=4)
    assert np.isnan(bins["accuracy"][1:]).all()
    assert calibration_metrics([0.05, 0.07], [0, 1], n_bins=4)["ece"] == pytest.approx(0.44)


@pytest.mark.parametrize(
    ("p", "y", "message"),
    [
        ([0.5, np.nan], [0, 1], r"\[0, 1\]"),
        ([0.5, 1.5], [0, 1], r"\[0, 1\]"),
        ([0.5], [0, 1], "differ in length"),
        ([], [], "no predictions"),
        ([0.5, 0.5], [0, 2], "0 or 1"),
    ],
)
def test_bad_inputs_are_named(p, y, message):
    with pytest.raises(ValueError, match=message):
        calibration_metrics(p, y)
    with pytest.raises(ValueError, match=r"reliability bins \(--bins\) must be >= 1"):
        reliability_bins([0.5], [1], n_bins=0)


@pytest.mark.parametrize("bins", [0, -3])
def test_too_few_bins_are_refused_by_the_api_and_by_calibrate_before_any_run_is_read(
    bins, tmp_path, capsys
):
    from pyro_bamf.cli import main

    with pytest.raises(ValueError, match=rf"bins \(--bins\) must be >= 1, got {bins}$"):
        calibration_metrics([0.5, 0.25], [1, 0], n_bins=bins)
    missing = tmp_path / "no-run"  # the bins are named, not the missing run
    assert main(["calibrate", "--run", str(missing), "--bins", str(bins)]) == 2
    assert capsys.readouterr().err == (
        f"pyro-bamf: error: the number of reliability bins (--bins) must be >= 1, got {bins}\n"
    )
    assert not missing.exists()
