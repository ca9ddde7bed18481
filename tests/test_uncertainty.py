"""The uncertainty metrics against hand-worked cases and scipy."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import stats

from pyro_bamf import evaluation
from pyro_bamf.cli import main
from pyro_bamf.predictive import dropout_logit_samples
from pyro_bamf.runs import load_run
from pyro_bamf.uncertainty import (
    auroc,
    ece_at_k,
    fcp,
    first_positives,
    interval_coverage,
    pair_statistics,
    pavpu,
    pool_blocks,
    rejection_curve,
    uncertainty_report,
    uri,
)


def test_auroc_of_a_perfect_a_reversed_a_blind_and_a_random_detector():
    wrong = np.array([True, True, False, False, False])
    assert auroc([0.9, 0.8, 0.1, 0.2, 0.3], wrong) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8, 0.7], wrong) == 0.0
    assert auroc([0.5] * 5, wrong) == 0.5  # ties count one half
    rng = np.random.default_rng(0)
    u, labels = rng.random(20_000), rng.random(20_000) < 0.3
    assert auroc(u, labels) == pytest.approx(0.5, abs=0.015)
    assert np.isnan(auroc([0.1, 0.2], [False, False]))


def test_auroc_is_mann_whitneys_u_over_the_pairs():
    rng = np.random.default_rng(1)
    u = rng.integers(0, 5, 300).astype(float)  # many ties
    wrong = rng.random(300) < 0.4
    u_stat = stats.mannwhitneyu(u[wrong], u[~wrong]).statistic
    assert auroc(u, wrong) == pytest.approx(u_stat / (wrong.sum() * (~wrong).sum()))


def test_fcp_on_a_tiny_pool():
    # margins of 5 pairs: two concordant, one tie (not concordant), two discordant
    assert fcp([0.3, 1.0, 0.0, -0.2, -5.0]) == pytest.approx(0.4)


def test_pair_statistics_of_constructed_draws():
    positive = np.array([[2.0, 0.0, 1.0, 0.0], [3.0, 0.0, -1.0, 0.0], [4.0, 0.0, 1.0, 0.0]])
    negative = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    out = pair_statistics(positive, negative)
    np.testing.assert_array_equal(out["misordered"], [False, True, False, True])
    np.testing.assert_allclose(out["margin"], [3.0, -1.0, 1 / 3, 0.0])
    np.testing.assert_allclose(out["p_misorder"], [0.0, 1.0, 1 / 3, 1.0])
    np.testing.assert_allclose(out["uncertainty"], [0.0, 0.0, 1 / 3, 0.0])
    # pair 0: differences 2, 3, 4 (mean 3, sd 1): t = 3 sqrt(3), 2 degrees of freedom
    assert out["p_value"][0] == pytest.approx(2 * stats.t.sf(3 * np.sqrt(3), 2))
    assert out["p_value"][1] == 0.0  # every draw -1: certain
    assert out["p_value"][3] == 1.0  # every draw 0: no evidence of any order
    assert out["p_value"][2] == pytest.approx(stats.ttest_1samp([1.0, -1.0, 1.0], 0).pvalue)
    with pytest.raises(ValueError, match="at least 2 draws"):
        pair_statistics(positive[:1], negative[:1])


def test_pavpu_on_a_constructed_example():
    misordered = np.array([False, False, True, True, False])
    p_value = np.array([0.001, 0.2, 0.3, 0.001, 0.04])
    # alpha 0.05: accurate&certain {0, 4}, inaccurate&uncertain {2}: 3 of 5
    assert pavpu(misordered, p_value, 0.05) == pytest.approx(0.6)
    # alpha 0.01: accurate&certain {0}, inaccurate&uncertain {2}: 2 of 5
    assert pavpu(misordered, p_value, 0.01) == pytest.approx(0.4)


def test_rejection_curve_sets_the_most_uncertain_aside():
    values = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    uncertainty = np.array([0.1, 0.9, 0.2, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    curve = rejection_curve(values, uncertainty, fractions=(0.0, 0.1, 0.2, 0.5))
    assert curve == [(0.0, 0.8), (0.1, pytest.approx(8 / 9)), (0.2, 1.0), (0.5, 1.0)]
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        rejection_curve(values, uncertainty, fractions=(1.0,))


def test_ece_at_k_uses_each_users_top_k_only():
    users = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([0.9, 0.2, 0.05, 0.05, 0.7, 0.1])
    labels = np.array([1, 0, 0, 0, 0, 0])
    # top 1 of each user: (0.9, y=1) and (0.7, y=0), one per bin: ECE = (0.1 + 0.7) / 2
    assert ece_at_k(probabilities, labels, users, k=1, n_bins=10) == pytest.approx(0.4)
    order = np.random.default_rng(2).permutation(6)  # rows in any order
    shuffled = ece_at_k(probabilities[order], labels[order], users[order], k=1, n_bins=10)
    assert shuffled == pytest.approx(0.4)


def test_interval_coverage_of_draws_from_a_known_distribution():
    rng = np.random.default_rng(3)
    draws = rng.normal(size=(4000, 3000))
    observed = rng.normal(size=3000)
    assert interval_coverage(draws, observed, 0.9) == pytest.approx(0.9, abs=0.02)
    assert interval_coverage(draws, observed, 0.5) == pytest.approx(0.5, abs=0.03)
    assert interval_coverage(draws, observed + 10, 0.9) == 0.0


def test_interval_coverage_of_counts_is_at_least_the_level():
    rng = np.random.default_rng(4)
    draws = rng.binomial(10, 0.3, size=(2000, 4000))
    observed = rng.binomial(10, 0.3, size=4000)
    for level in (0.5, 0.9):
        assert level <= interval_coverage(draws, observed, level) <= level + 0.25


def test_a_pool_in_another_layout_is_refused():
    users = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([1, 0, 0, 0, 1, 0])  # user 1's positive is not first
    with pytest.raises(ValueError, match="user 1's candidates are not P positives"):
        pool_blocks(users, labels)
    assert [(r.tolist(), p, n) for r, p, n in pool_blocks(users[:3], labels[:3])] == [
        ([0, 1, 2], 1, 2)
    ]


def test_uri_is_positive_when_hits_are_the_certain_recommendations():
    u = np.array([0.1, 0.2, 0.9, 0.8, 0.5, 0.5])
    recommended = np.array([True, True, True, True, False, False])
    hits = np.array([True, True, False, False, False, True])
    expected = (u[:4].mean() - u[:2].mean()) / u.std()
    assert uri(u, hits, recommended) == pytest.approx(expected) and expected > 0
    assert np.isnan(uri(u, np.zeros(6, bool), recommended))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    sets = ["data=synthetic:n_users=30,n_items=70,mean_interactions=12,seed=1", "max_epochs=1",
            "embedding_dim=8", "eval_negatives=19", "warmup_epochs=0"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny pools repeat negatives, and say so
        assert (
            main(
                [
                    "train",
                    "--out",
                    str(out),
                    "--no-progress",
                    *sum([["--set", s] for s in sets], []),
                ]
            )
            == 0
        )
    return out


def test_the_command_writes_the_report_and_figures_and_refuses_to_overwrite(tiny_run, capsys):
    out = tiny_run.parent / "judged"
    assert main(["uncertainty", "--run", str(tiny_run), "--samples", "20", "--out", str(out)]) == 0
    report = json.loads((out / "uncertainty.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert {p.name for p in out.iterdir()} == {
        "uncertainty.json",
        "reliability.png",
        "rejection.png",
        "width_history.png",
    }
    users = report["users"]
    assert report["pairs"]["n"] == users * 19  # one positive and 19 negatives per user
    assert 0 <= report["pairs"]["fcp"] <= 1 and 0 <= report["pairs"]["auroc_misorder"] <= 1
    assert set(report["pairs"]) >= {"pavpu@0.01", "pavpu@0.05", "pavpu@0.1"}
    assert set(report["calibration"]) == {
        "ece",
        "brier",
        "nll",
        "ece@10",
        "coverage50_positives@10",
        "coverage90_positives@10",
    }
    assert [f for f, _ in report["rejection"]["fcp"]] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert report["attention"]["users"] == users and report["seconds"] > 0
    attention = report["attention"]
    assert attention["entropy_gap"] == pytest.approx(
        attention["uniform_entropy"] - attention["entropy"]
    )
    again = ["uncertainty", "--run", str(tiny_run), "--samples", "20", "--out", str(out)]
    assert main(again) == 2
    assert "uncertainty.json exists: pass --overwrite" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 0
    assert main(["uncertainty", "--run", str(tiny_run), "--samples", "1"]) == 2
    assert "--samples must be >= 2" in capsys.readouterr().err


def test_the_report_holds_with_one_draw_per_chunk(tiny_run):
    """``max_elements`` bounds the drawn tensors: at 1 every draw is its own chunk."""
    rec = load_run(tiny_run)
    pool = rec.split.candidates("test", 19)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = uncertainty_report(rec.model, rec.split, pool, 8, width_users=3, max_elements=1)
        large = uncertainty_report(rec.model, rec.split, pool, 8, width_users=3)
    pairs = int(pool.labels.sum()) * 19  # every positive with the 19 negatives drawn for it
    assert small["pairs"]["n"] == large["pairs"]["n"] == pairs
    assert small["attention"]["users"] == 3
    for report in (small, large):
        assert all(np.isfinite(v) for v in report["calibration"].values())


def test_first_positives_keeps_each_users_first_positives_and_their_negatives(tiny_run):
    rec = load_run(tiny_run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pool = rec.split.candidates("test", 19)
    one = first_positives(pool, 1)
    for user in np.unique(pool.users):
        mine, whole = one.users == user, pool.users == user
        assert one.labels[mine].tolist() == [1.0] + [0.0] * 19
        # the first positive and the first 19 negatives of the user's block
        positives = int(pool.labels[whole].sum())
        block = pool.items[whole]
        np.testing.assert_array_equal(
            one.items[mine], np.r_[block[:1], block[positives : positives + 19]]
        )
    assert len(first_positives(pool, 10_000)) == len(pool)


def test_mc_dropout_draws_are_the_deterministic_network_with_dropout_on(tiny_run):
    rec = load_run(tiny_run)
    model, split = rec.model, rec.split
    history = (split.history_items, split.history_lengths)
    items = np.arange(12)
    model.eval()
    draws = dropout_logit_samples(model, *history, 3, items, num_samples=40, max_elements=1)
    assert draws.shape == (40, 12) and not model.training  # the mode is restored
    assert np.unique(draws[:, 0]).size > 20  # every draw its own dropout mask
    expected = evaluation.score_candidates(model, np.full(12, 3), items, *history)
    dropout = model.user_scorer.dropout.p
    try:  # without dropout every draw is the deterministic network's logit
        model.user_scorer.dropout.p = model.item_scorer.dropout.p = 0.0
        plain = dropout_logit_samples(model, *history, 3, items, num_samples=5)
    finally:
        model.user_scorer.dropout.p = model.item_scorer.dropout.p = dropout
    np.testing.assert_allclose(plain, np.broadcast_to(expected, (5, 12)), rtol=1e-5, atol=1e-5)


def test_the_command_judges_the_mc_dropout_baseline_beside_the_posterior(tiny_run, capsys):
    out = tiny_run.parent / "baseline"
    args = ["uncertainty", "--run", str(tiny_run), "--samples", "20", "--out", str(out)]
    assert main([*args, "--method", "mc_dropout"]) == 0
    report = json.loads((out / "mc_dropout_uncertainty.json").read_text())
    assert report["method"] == "mc_dropout" and "attention" not in report
    assert {p.name for p in out.iterdir()} == {
        "mc_dropout_uncertainty.json",
        "mc_dropout_reliability.png",
        "mc_dropout_rejection.png",
    }
    assert 0 <= report["pairs"]["auroc_misorder"] <= 1
