"""Baselines: each method against its definition, tuning, and run directories on the same
split and pools as BAMF's."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyro_bamf.baselines import (
    BASELINES,
    BPR,
    EASE,
    IALS,
    Baseline,
    ItemKNN,
    MissingExtraError,
    Popularity,
    grid_edges,
    grid_points,
    select_on_validation,
    train_matrix,
)
from pyro_bamf.baselines import base as baseline_base
from pyro_bamf.baselines.run import parse_grid
from pyro_bamf.cli import main
from pyro_bamf.config import ConfigError
from pyro_bamf.data import ImplicitSplit, make_synthetic
from pyro_bamf.protocols import protocol_metrics

DATA = "synthetic:n_users=60,n_items=120,seed=1"
SETTINGS = ["--set", f"data={DATA}", "--set", "max_history=30", "--set", "eval_negatives=20"]


@pytest.fixture(scope="module")
def split() -> ImplicitSplit:
    data = make_synthetic(n_users=60, n_items=120, rank=4, mean_interactions=20, seed=3)
    return ImplicitSplit.from_interactions(data, seed=5, max_history=30)


def tiny_matrix() -> sp.csr_matrix:
    """7 users x 6 items, binary, item 4 never interacted with (a cold item)."""
    rng = np.random.default_rng(11)
    dense = (rng.random((7, 6)) < 0.5).astype(np.float32)
    dense[:, 4] = 0.0
    dense[0, :2] = 1.0
    return sp.csr_matrix(dense)


def fitted(model: Baseline, matrix: sp.csr_matrix) -> Baseline:
    model.matrix = matrix
    model.fit_matrix(matrix)
    return model


def test_ease_is_the_ridge_regression_of_each_item_on_the_others():
    matrix, l2 = tiny_matrix(), 3.0
    X = matrix.toarray().astype(np.float64)
    n = X.shape[1]
    expected = np.zeros((n, n))
    for j in range(n):  # the constrained problem, column by column: ridge on the other items
        others = [i for i in range(n) if i != j]
        A = X[:, others]
        expected[others, j] = np.linalg.solve(A.T @ A + l2 * np.eye(n - 1), A.T @ X[:, j])
    model = fitted(EASE(l2=l2), matrix)
    users = np.arange(X.shape[0])
    np.testing.assert_allclose(model.user_scores(users), X @ expected, atol=1e-5)
    np.testing.assert_array_equal(model.user_scores(users)[:, 4], 0.0)  # the cold item


def test_itemknn_matches_a_brute_force_neighbourhood():
    matrix = tiny_matrix()
    X = matrix.toarray().astype(np.float64)
    n = X.shape[1]
    for neighbours, shrink in ((2, 0.0), (3, 1.5), (10, 0.0)):
        similarity = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                norm = np.linalg.norm(X[:, i]) * np.linalg.norm(X[:, j]) + shrink
                if i != j and norm > 0:
                    similarity[i, j] = X[:, i] @ X[:, j] / norm
        kept = np.zeros((n, n))
        for j in range(n):  # the neighbours of item j: highest similarity, lower index first
            for i in sorted(range(n), key=lambda i, j=j: (-similarity[i, j], i))[:neighbours]:
                kept[i, j] = similarity[i, j]
        model = fitted(ItemKNN(neighbours=neighbours, shrink=shrink), matrix)
        np.testing.assert_allclose(model.user_scores(np.arange(7)), X @ kept, rtol=1e-6)


def test_popularity_scores_every_user_by_the_items_training_counts(split):
    model = Popularity().fit(split)
    counts = np.bincount(split.train.items, minlength=split.n_items)
    np.testing.assert_array_equal(model.user_scores(np.array([0, 7])), [counts, counts])


def test_train_matrix_holds_exactly_the_training_part(split):
    matrix = train_matrix(split)
    rows, columns = matrix.nonzero()
    keys = np.sort(rows * split.n_items + columns)
    np.testing.assert_array_equal(keys, split.train.users * split.n_items + split.train.items)
    assert matrix.dtype == np.float32 and set(np.unique(matrix.data)) == {1.0}


def test_ranking_scores_in_small_chunks_gather_the_dense_scores(split, monkeypatch):
    model = EASE(l2=10.0).fit(split)
    pool = split.candidates("test", 7)
    whole = model.ranking_scores(pool.users, pool.items)
    np.testing.assert_array_equal(whole, model.user_scores(pool.users)[np.arange(len(pool)),
                                                                      pool.items])  # fmt: skip
    monkeypatch.setattr(baseline_base, "MAX_DENSE_CELLS", 3 * split.n_items)
    np.testing.assert_array_equal(model.ranking_scores(pool.users, pool.items), whole)


def test_an_unfitted_baseline_refuses_to_score():
    with pytest.raises(RuntimeError, match="not fitted"):
        EASE().ranking_scores(np.array([0]), np.array([0]))


@pytest.mark.parametrize("method", [IALS, BPR])
def test_factorisations_are_fixed_by_the_seed(split, method):
    pytest.importorskip("implicit")
    first = method(factors=8, seed=4).fit(split).user_scores(np.arange(5))
    again = method(factors=8, seed=4).fit(split).user_scores(np.arange(5))
    other = method(factors=8, seed=5).fit(split).user_scores(np.arange(5))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == (5, split.n_items) and np.isfinite(first).all()


def test_a_missing_extra_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "implicit", None)  # makes `import implicit` fail
    with pytest.raises(MissingExtraError, match=r"pip install 'pyro-bamf\[implicit\]'"):
        IALS.check_available()
    out = tmp_path / "ials"
    assert main(["baseline", "--method", "bpr", *SETTINGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pyro-bamf[implicit]" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


class Scaled(Baseline):
    """Popularity times ``weight``: a negative weight ranks the least popular first."""

    grid = {"weight": (-1.0, 2.0, 1.0)}

    def __init__(self, weight: float = 1.0, seed: int = 0) -> None:
        super().__init__(seed)
        self.weight = weight

    def fit_matrix(self, matrix):
        self.counts = np.asarray(matrix.sum(axis=0)).ravel()

    def user_scores(self, users):
        return np.tile(self.weight * self.counts, (len(users), 1)).astype(np.float32)


def test_validation_picks_the_best_grid_point_and_the_first_on_a_tie(split):
    selection = select_on_validation(Scaled, split, Scaled.grid, seed=0)
    values = [trial["val_full_ndcg@10"] for trial in selection.trials]
    expected = [
        protocol_metrics(Scaled(w).fit(split).ranking_scores, split, None, (10,), part="val")[
            "ndcg@10"
        ]
        for w in Scaled.grid["weight"]
    ]
    assert values == expected
    assert values[1] == values[2] > values[0]  # a positive scale ranks alike
    assert selection.model.weight == 2.0
    assert [t["hyperparameters"] for t in selection.trials] == grid_points(Scaled.grid)


def test_grid_points_and_overrides():
    assert grid_points({"a": (1, 2), "b": (0.5,)}) == [{"a": 1, "b": 0.5}, {"a": 2, "b": 0.5}]
    assert parse_grid(ItemKNN, ["neighbours=5,7"])["neighbours"] == (5, 7)
    assert parse_grid(ItemKNN, ["shrink=3"]) == {"neighbours": ItemKNN.grid["neighbours"],
                                                 "shrink": (3.0,)}  # fmt: skip
    for bad, message in (("alpha=1", "not a hyper-parameter"), ("shrink", "NAME=V1"),
                         ("neighbours=a", "are not int")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            parse_grid(ItemKNN, [bad])


def test_grid_edges_name_choices_at_an_end_of_an_axis():
    grid = {"a": (1, 2, 3), "b": (5,), "c": (0.1, 0.2, 0.3)}
    assert grid_edges(grid, {"a": 3, "b": 5, "c": 0.1}) == ["a", "c"]
    assert grid_edges(grid, {"a": 2, "b": 5, "c": 0.2}) == []


def test_registered_methods_are_baselines():
    assert set(BASELINES.names) >= {"popularity", "itemknn", "ease", "ials", "bpr"}
    assert all(issubclass(BASELINES.resolve(name), Baseline) for name in BASELINES.names)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A BAMF run and an EASE run (a two-point grid) of one configuration."""
    root = tmp_path_factory.mktemp("compared")
    bamf = ["train", "--out", str(root / "bamf"), "--no-progress", *SETTINGS,
            "--set", "max_epochs=2", "--set", "warmup_epochs=0"]  # fmt: skip
    assert main(bamf) == 0
    ease = ["baseline", "--method", "ease", *SETTINGS, "--grid", "l2=5,50",
            "--out", str(root / "ease")]  # fmt: skip
    assert main(ease) == 0
    return root


def test_a_baseline_run_scores_the_pools_bamf_scored(runs):
    bamf = json.loads((runs / "bamf" / "metrics.json").read_text())
    ease = json.loads((runs / "ease" / "metrics.json").read_text())
    assert ease["data_fingerprint"] == bamf["data_fingerprint"]
    assert ease["pool_fingerprints"] == bamf["pool_fingerprints"]
    assert set(ease["pool_fingerprints"]) == {"test", "test_full"}
    bamf_rows = pd.read_csv(runs / "bamf" / "per_user.csv")[["protocol", "user"]]
    ease_rows = pd.read_csv(runs / "ease" / "per_user.csv")[["protocol", "user"]]
    pd.testing.assert_frame_equal(bamf_rows, ease_rows)


def test_a_baseline_run_records_its_choice_and_times(runs):
    names = {path.name for path in (runs / "ease").iterdir()}
    assert names == {"config.toml", "metrics.json", "per_user.csv"}
    record = json.loads((runs / "ease" / "metrics.json").read_text())
    assert record["method"] == "ease"
    assert [t["hyperparameters"] for t in record["trials"]] == [{"l2": 5.0}, {"l2": 50.0}]
    best = max(record["trials"], key=lambda t: t["val_full_ndcg@10"])
    assert record["hyperparameters"] == best["hyperparameters"]
    assert record["grid"] == {"l2": [5.0, 50.0]} and record["grid_edges"] == ["l2"]
    assert record["fit_seconds"] > 0 and record["tuning_seconds"] > 0
    per_user = pd.read_csv(runs / "ease" / "per_user.csv")
    for protocol in ("test", "test_full"):
        rows = per_user[per_user["protocol"] == protocol]
        assert rows["ndcg@10"].mean() == pytest.approx(record[protocol]["ndcg@10"], rel=1e-12)


def test_a_baseline_run_is_not_overwritten_unasked(runs, capsys):
    out = runs / "ease"
    before = (out / "metrics.json").read_text()
    args = ["baseline", "--method", "popularity", *SETTINGS, "--out", str(out)]
    assert main(args) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before


@pytest.mark.parametrize(
    ("method", "grid", "message"),
    [("ease", "l2=0", "l2 > 0"), ("itemknn", "neighbours=0", "neighbours >= 1"),
     ("ials", "factors=-1", "factors must be > 0")],
)  # fmt: skip
def test_a_refused_grid_point_is_named_before_anything_is_written(
    tmp_path, capsys, method, grid, message
):
    out = tmp_path / method
    assert main(["baseline", "--method", method, *SETTINGS, "--grid", grid, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--grid point" in err and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_failed_baseline_leaves_nothing_and_puts_back_the_run_it_replaced(
    runs, tmp_path, monkeypatch, capsys
):
    def fail(self, matrix):
        raise FloatingPointError("diverged")

    monkeypatch.setattr(EASE, "fit_matrix", fail)
    new = tmp_path / "new"
    assert main(["baseline", "--method", "ease", *SETTINGS, "--out", str(new)]) == 2
    assert "diverged" in capsys.readouterr().err
    assert not new.exists()
    kept = tmp_path / "kept"
    shutil.copytree(runs / "ease", kept)
    before = {p.name: p.read_bytes() for p in kept.iterdir()}
    args = ["baseline", "--method", "ease", *SETTINGS, "--out", str(kept), "--overwrite"]
    assert main(args) == 2
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before


def test_evaluate_refuses_a_baseline_run(runs, capsys):
    assert main(["evaluate", "--run", str(runs / "ease")]) == 2
    assert "holds a baseline (ease)" in capsys.readouterr().err
