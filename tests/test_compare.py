"""``pyro-bamf compare`` and ``evaluate --update`` end to end on small synthetic runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pyro_bamf.cli import main
from pyro_bamf.compare import compare_runs
from pyro_bamf.significance import bootstrap_means, holm, percentile_interval, wilcoxon_p

SETTINGS = ["--set", "data=synthetic:n_users=50,n_items=100,seed=2", "--set", "max_history=30",
            "--set", "eval_negatives=20"]  # fmt: skip


def baseline(out, method, *extra) -> None:
    assert main(["baseline", "--method", method, *SETTINGS, *extra, "--out", str(out)]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    baseline(root / "popularity", "popularity")
    baseline(root / "ease", "ease", "--grid", "l2=10")
    baseline(root / "itemknn", "itemknn", "--grid", "neighbours=10", "--grid", "shrink=0")
    baseline(root / "other_seed", "popularity", "--set", "seed=7")
    baseline(root / "other_pool", "popularity", "--set", "eval_negatives=30")
    return root


def test_compare_tests_each_run_against_the_first(runs):
    paths = [runs / "popularity", runs / "ease", runs / "itemknn"]
    frame = compare_runs(paths, ("ndcg@10",), ("test_full",), n_resamples=2000, seed=5)
    tables = [pd.read_csv(p / "per_user.csv") for p in paths]
    values = np.column_stack([t[t.protocol == "test_full"]["ndcg@10"] for t in tables])
    assert frame["mean"].tolist() == pytest.approx(values.mean(axis=0).tolist())
    pvalues = [wilcoxon_p(values[:, 0], values[:, k]) for k in (1, 2)]
    assert frame["p"].tolist()[1:] == pytest.approx(pvalues)
    assert frame["p_holm"].tolist()[1:] == pytest.approx(holm(pvalues).tolist())
    draws = bootstrap_means(values, 2000, 5)
    assert (frame["low"][1], frame["high"][1]) == percentile_interval(draws[:, 1])
    difference = percentile_interval(draws[:, 2] - draws[:, 0])
    assert (frame["difference_low"][2], frame["difference_high"][2]) == difference
    assert np.isnan(frame["p"][0])


def test_compare_pairs_users_by_id_whatever_the_row_order(runs, tmp_path):
    shuffled = tmp_path / "shuffled"
    shutil.copytree(runs / "ease", shuffled)
    table = pd.read_csv(shuffled / "per_user.csv", dtype={"user": str})
    table.sample(frac=1.0, random_state=0).to_csv(shuffled / "per_user.csv", index=False)
    kept = compare_runs([runs / "popularity", runs / "ease"], n_resamples=300)
    moved = compare_runs([runs / "popularity", shuffled], n_resamples=300)
    columns = ["mean", "difference", "p"]
    pd.testing.assert_frame_equal(kept[columns], moved[columns])


def test_per_user_ids_are_read_as_written(tmp_path):
    from pyro_bamf.protocols import read_per_user

    path = tmp_path / "per_user.csv"
    path.write_text("protocol,user,ndcg@10\ntest,007,0.5\ntest,NA,0.25\ntest,7,1.0\n")
    assert read_per_user(path)["user"].tolist() == ["007", "NA", "7"]
    path.write_text("protocol,user,ndcg@10\ntest,7,0.5\ntest,7,0.25\n")
    with pytest.raises(ValueError, match="lists a user twice"):
        read_per_user(path)


def test_compare_names_a_folder_that_is_not_a_finished_run(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(runs / "popularity"), str(tmp_path / "empty")]) == 2
    assert "has no metrics.json" in capsys.readouterr().err


def test_compare_prints_a_table_per_metric_and_protocol(runs, capsys):
    args = ["compare", str(runs / "popularity"), str(runs / "ease"), "--metric", "ndcg@10",
            "--metric", "hr@10", "--resamples", "500"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    for title in ("ndcg@10, test (", "ndcg@10, test_full (", "hr@10, test (", "hr@10, test_full ("):
        assert title in out
    assert out.count("| Holm p |") == 4


def test_compare_refuses_runs_of_another_split(runs, capsys):
    assert main(["compare", str(runs / "popularity"), str(runs / "other_seed")]) == 2
    assert "different splits" in capsys.readouterr().err


def test_compare_refuses_runs_of_another_pool_but_compares_their_full_ranking(runs, capsys):
    pair = [str(runs / "popularity"), str(runs / "other_pool")]
    assert main(["compare", *pair]) == 2
    assert "different test pools" in capsys.readouterr().err
    assert main(["compare", *pair, "--protocol", "test_full", "--resamples", "200"]) == 0


def test_compare_names_an_unknown_metric_and_a_single_run(runs, capsys):
    assert main(["compare", str(runs / "popularity"), str(runs / "ease"), "--metric", "auc"]) == 2
    assert "no metric 'auc'" in capsys.readouterr().err
    assert main(["compare", str(runs / "popularity")]) == 2
    assert "at least two runs" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bamf_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bamf") / "run"
    args = ["train", "--out", str(out), "--no-progress", *SETTINGS, "--set", "max_epochs=1",
            "--set", "warmup_epochs=0"]  # fmt: skip
    assert main(args) == 0
    return out


def test_evaluate_update_adds_what_an_older_run_lacks_and_nothing_else(bamf_run, tmp_path,
                                                                        capsys):  # fmt: skip
    old = tmp_path / "old"
    shutil.copytree(bamf_run, old)
    (old / "per_user.csv").unlink()
    record = json.loads((old / "metrics.json").read_text())
    complete = dict(record)
    for key in ("test_full", "pool_fingerprints", "eval_seconds", "method"):
        del record[key]
    (old / "metrics.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["evaluate", "--run", str(old)]) == 0
    assert "--update" in capsys.readouterr().err
    assert not (old / "per_user.csv").exists()  # asked for nothing: nothing written
    assert main(["compare", str(old), str(bamf_run)]) == 2
    assert "--update" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(old), "--update"]) == 0
    assert "added test_full, per_user.csv" in capsys.readouterr().err
    updated = json.loads((old / "metrics.json").read_text())
    assert updated["test"] == complete["test"] and updated["test_full"] == complete["test_full"]
    assert updated["pool_fingerprints"] == complete["pool_fingerprints"]
    assert updated["method"] == "bamf" and updated["best_epoch"] == complete["best_epoch"]
    pd.testing.assert_frame_equal(pd.read_csv(old / "per_user.csv"),
                                  pd.read_csv(bamf_run / "per_user.csv"))  # fmt: skip
    assert main(["evaluate", "--run", str(old), "--update"]) == 0
    assert "added" not in capsys.readouterr().err


def test_evaluate_update_refuses_a_run_whose_scores_drifted(bamf_run, tmp_path, capsys):
    drifted = tmp_path / "drifted"
    shutil.copytree(bamf_run, drifted)
    (drifted / "per_user.csv").unlink()
    record = json.loads((drifted / "metrics.json").read_text())
    record["test"]["ndcg@10"] += 0.01
    (drifted / "metrics.json").write_text(json.dumps(record))
    assert main(["evaluate", "--run", str(drifted), "--update"]) == 1
    assert not (drifted / "per_user.csv").exists()
