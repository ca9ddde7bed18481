"""The command line end to end on small synthetic data."""

from __future__ import annotations

import csv
import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest

from pyro_bamf.cli import main
from pyro_bamf.config import BAMFConfig
from pyro_bamf.metrics import KS, METRICS

OVERRIDES = [
    "data=synthetic:n_users=60,n_items=120,seed=1",
    "max_epochs=2",
    "max_history=30",
    "warmup_epochs=0",
]


def train_args(out) -> list[str]:
    args = ["train", "--out", str(out), "--no-progress"]
    for pair in OVERRIDES:
        args += ["--set", pair]
    return args


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "synthetic"
    assert main(train_args(out)) == 0
    return out


def test_train_writes_a_complete_run_directory(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.toml", "history.csv", "model.pt", "metrics.json", "per_user.csv"} <= names
    assert "INCOMPLETE" not in names
    assert not [n for n in names if n.endswith(".part")], "temporary files left behind"


def test_train_saves_the_resolved_config(run_dir):
    saved = BAMFConfig.from_toml(run_dir / "config.toml")
    expected = BAMFConfig().replace(
        data="synthetic:n_users=60,n_items=120,seed=1",
        max_epochs=2,
        max_history=30,
        warmup_epochs=0,
    )
    assert saved == expected


def test_train_writes_one_history_row_per_epoch(run_dir):
    with open(run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = ["epoch", "nll", "kl", "kl_weight", "loo_ndcg10", "seconds", "kl_method"]
    assert list(rows[0]) == header
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {r["kl_method"] for r in rows} == {"analytic"}  # log-normal guide and prior
    assert [float(r["kl_weight"]) for r in rows] == [0.0, 0.01]  # annealed over 100 epochs
    for row in rows:
        assert float(row["nll"]) > 0 and float(row["kl"]) > 0 and float(row["seconds"]) > 0
        assert 0.0 <= float(row["loo_ndcg10"]) <= 1.0


def test_train_writes_metrics_for_every_cutoff(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test", "best_epoch", "epochs_run", "train_seconds_per_epoch_median"} <= set(metrics)
    assert metrics["method"] == "bamf"
    assert set(metrics["test"]) == {f"{m}@{k}" for m in METRICS for k in KS}
    assert set(metrics["test_full"]) == set(metrics["test"])
    protocols = {"test", "test_full"}
    assert set(metrics["pool_fingerprints"]) == set(metrics["eval_seconds"]) == protocols
    assert KS == (5, 10, 15, 20, 25, 50, 100)
    assert all(0.0 <= v <= 1.0 for v in metrics["test"].values())
    test = metrics["test"]
    for small, large in zip(KS, KS[1:], strict=False):
        assert test[f"hr@{small}"] <= test[f"hr@{large}"]
        assert test[f"recall@{small}"] <= test[f"recall@{large}"]
    assert all(test[f"recall@{k}"] <= test[f"hr@{k}"] for k in KS)
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] in (1, 2)
    assert metrics["train_seconds_per_epoch_median"] > 0
    with open(run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    best = max(rows, key=lambda r: float(r["loo_ndcg10"]))
    assert metrics["best_epoch"] == int(best["epoch"])


def test_evaluate_reproduces_the_saved_metrics(run_dir, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run_dir)]) == 0
    captured = capsys.readouterr()
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert json.loads(captured.out) == {p: saved[p] for p in ("test", "test_full")}
    assert "matches metrics.json" in captured.err
    assert "--update" not in captured.err  # nothing is missing from a run trained now


def test_evaluate_reports_drift_from_metrics_json(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["test"]["ndcg@10"] += 0.125
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert main(["evaluate", "--run", str(copy)]) == 1
    assert "differs from metrics.json" in capsys.readouterr().err


def test_evaluate_refuses_incomplete_or_foreign_directories(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "INCOMPLETE").write_text("")
    assert main(["evaluate", "--run", str(copy)]) == 2
    assert "incomplete" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "not a pyro-bamf run directory" in capsys.readouterr().err


def test_unknown_set_key_exits_2_with_a_suggestion(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--out", str(out), "--set", "max_epoch=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'max_epoch'" in err and "did you mean 'max_epochs'" in err
    assert not out.exists()


def test_missing_compiler_exits_2_naming_the_setting_and_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    from pyro_bamf import kernels

    monkeypatch.setattr(kernels, "_libraries", {})
    monkeypatch.setenv("BAMF_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("CC", "no-such-compiler-bamf")
    out = tmp_path / "never"
    assert main([*train_args(out), "--set", "fused_scores=true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-bamf: error:") and "fused_scores = false" in err
    assert not out.exists()


def test_collapsed_training_exits_2_and_leaves_the_run_marked_incomplete(
    tmp_path, monkeypatch, capsys
):
    """Every leave-one-out list tied (one score per user) for ``patience`` epochs: the run
    stops with the collapse named, its history kept and no metrics.json."""
    from pyro_bamf import training

    monkeypatch.setattr(
        training, "score_candidates", lambda model, users, *rest: users.astype("float32")
    )
    out = tmp_path / "collapsed"
    args = [*train_args(out), "--set", "max_epochs=4", "--set", "patience=2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-bamf: error: epoch 2: for 2 epochs") and "collapsed" in err
    assert (out / "INCOMPLETE").exists() and not (out / "metrics.json").exists()
    with open(out / "history.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]


def test_wrongly_typed_set_value_exits_2(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x"), "--set", "dropout=high"]) == 2
    assert "dropout" in capsys.readouterr().err


def test_data_describe_prints_json_statistics(capsys):
    assert main(["data", "describe", "--data", "synthetic:n_users=50,n_items=100,seed=2"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert set(described) == {
        "n_users",
        "n_items",
        "n_interactions",
        "density",
        "max_user_interactions",
        "mean_user_interactions",
    }
    assert described["n_users"] == 50 and described["n_items"] == 100
    assert described["density"] == pytest.approx(described["n_interactions"] / 5000)


def test_data_describe_default_synthetic(capsys):
    assert main(["data", "describe", "--data", "synthetic"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert len(described) == 6 and described["n_users"] == 300


def test_bad_data_spec_exits_2(capsys):
    assert main(["data", "describe", "--data", "synthetic:n_userz=3"]) == 2
    assert "unknown synthetic option 'n_userz'" in capsys.readouterr().err


def test_explain_writes_a_figure_and_prints_intervals(run_dir, tmp_path, capsys):
    from pyro_bamf.runs import load_run

    rec = load_run(run_dir)
    user = rec.split.data.user_ids[3]
    item = rec.split.data.item_ids[int(rec.split.history_items[3, 0])]
    out = tmp_path / "explain.png"
    args = ["explain", "--run", str(run_dir), "--user", str(user), "--item", str(item)]
    assert main([*args, "--samples", "40", "--top", "5", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(capsys.readouterr().out)
    assert len(report["top_attention"]) == 5
    # synthetic items have no titles: they are named by their original ids
    original = {str(i) for i in rec.split.data.item_ids.tolist()}
    assert all(row["item"] in original for row in report["top_attention"])
    assert report["history_items"] == rec.split.history_lengths[3] - 1  # the target is dropped
    interval = report["probability"]
    assert 0 < interval["low"] <= interval["median"] <= interval["high"] < 1
    svg = tmp_path / "user.svg"
    assert main(["explain", "--run", str(run_dir), "--user", str(user), "--out", str(svg)]) == 0
    assert svg.read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--user", "999999"], "unknown user id"),
        (["--user", "abc"], "not an integer"),
        (["--user", "1", "--samples", "0"], "num_samples"),
        (["--user", "1", "--top", "0"], "top must be >= 1"),
    ],
)
def test_explain_bad_arguments_exit_2_and_write_nothing(run_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "x.png"
    assert main(["explain", "--run", str(run_dir), *extra, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_explain_refuses_an_unknown_figure_format(run_dir, tmp_path, capsys):
    out = tmp_path / "x.pdf"
    assert main(["explain", "--run", str(run_dir), "--user", "1", "--out", str(out)]) == 2
    assert ".png" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_calibrate_prints_metrics_and_a_reliability_diagram(run_dir, tmp_path, capsys):
    plot = tmp_path / "reliability.png"
    from pyro_bamf.runs import load_run

    assert main(["calibrate", "--run", str(run_dir), "--plot", str(plot)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics == pytest.approx(load_run(run_dir).calibration())
    assert metrics["positive_rate"] == pytest.approx(0.2)  # 1 positive : 4 negatives
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_refuses_a_bad_plot_name_before_printing(run_dir, tmp_path, capsys):
    assert main(["calibrate", "--run", str(run_dir), "--plot", str(tmp_path / "r.jpg")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and ".png" in captured.err


def test_user_groups_example_reports_the_runs_test_ndcg(run_dir, monkeypatch, capsys):
    script = Path(__file__).resolve().parents[1] / "examples" / "user_groups.py"
    monkeypatch.setattr(sys, "argv", ["user_groups.py", str(run_dir)])
    runpy.run_path(str(script), run_name="__main__")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    header, run_row, popularity_row = rows
    assert "all" in header and run_row.startswith(f"| {run_dir} |")
    cells = [None if c == "-" else float(c) for c in run_row.strip(" |").split(" | ")[1:]]
    saved = json.loads((run_dir / "metrics.json").read_text())["test"]["ndcg@10"]
    assert cells[3] == pytest.approx(saved, abs=5e-5)  # the "all users" column
    assert all(0.0 <= value <= 1.0 for value in cells[:4] if value is not None)
    assert -1.0 <= cells[4] <= 1.0
    assert popularity_row.split(" | ")[-1].strip(" |") == "1.000"


def test_paper_table_summarises_runs_that_differ_only_in_the_seed(
    run_dir, tmp_path, monkeypatch, capsys
):
    config = (run_dir / "config.toml").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    runs = []
    for seed, ndcg in [(42, 0.50), (43, 0.46), (44, 0.48), (45, 0.99)]:
        run = tmp_path / f"s{seed}"
        run.mkdir()
        text = re.sub(r"(?m)^seed = \d+", f"seed = {seed}", config)
        if seed == 45:  # another setting: not part of the study
            text = re.sub(r"(?m)^tau = [\d.]+", "tau = 2.0", text)
        (run / "config.toml").write_text(text)
        changed = {**metrics, "test": {**metrics["test"], "ndcg@10": ndcg}}
        (run / "metrics.json").write_text(json.dumps(changed))
        runs.append(str(run))
    script = Path(__file__).resolve().parents[1] / "examples" / "paper_table.py"
    monkeypatch.setattr(sys, "argv", ["paper_table.py", *runs])
    runpy.run_path(str(script), run_name="__main__")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 4 + 1 + 1  # header, four runs, summary header, one study
    assert ", seed 43 |" in lines[2].split("(KL")[1] and ", seed" not in lines[1]
    cells = lines[-1].strip(" |").split(" | ")
    assert cells[1] == "42, 43, 44"
    assert [float(c) for c in cells[2:6]] == pytest.approx([0.48, 0.02, 0.46, 0.50], abs=1e-4)
