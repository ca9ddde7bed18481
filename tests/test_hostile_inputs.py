"""Hostile inputs, files and arguments, across the API and the command line.

``CASES`` lists every input as ``(name, target, expected, message_regex)``:

* ``target`` is either a callable ``f(tmp)`` (an API call; ``tmp`` is a fresh folder for any
  files it needs) or a :class:`Cli` whose ``argv(tmp)`` writes its files and returns the
  ``pyro-bamf`` arguments;
* ``expected`` is the exception (or warning) class an API call must raise (or emit), or the
  exit code of the command line;
* ``message_regex`` must match the one-line message the user gets.

``python tests/test_hostile_inputs.py`` runs every case and prints a Markdown table of the
actual messages.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_bamf.cli import main
from pyro_bamf.config import BAMFConfig, ConfigError
from pyro_bamf.data import DataError, ImplicitSplit, from_frame, load_data
from pyro_bamf.metrics import ranking_metrics
from pyro_bamf.model import BAMF
from pyro_bamf.recommender import BAMFRecommender, CheckpointError

TINY_DATA = "synthetic:n_users=20,n_items=60,mean_interactions=10,seed=0"


@dataclass(frozen=True)
class Cli:
    """A ``pyro-bamf`` command line: ``argv(tmp)`` creates its files and returns the arguments."""

    argv: Callable[[Path], list[str]]


# --------------------------------------------------------------------------- helpers


def write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def load_file(name: str, content: str | bytes) -> Callable[[Path], object]:
    """An API case: write ``content`` to ``tmp/name`` and ``load_data`` it."""
    return lambda tmp: load_data(write(tmp, name, content))


def config(**values) -> Callable[[Path], object]:
    return lambda tmp: BAMFConfig(**values)


@cache
def tiny_split() -> ImplicitSplit:
    return ImplicitSplit.from_interactions(load_data(TINY_DATA), seed=0, max_history=10)


@cache
def tiny_recommender() -> BAMFRecommender:
    """An untrained (but complete) recommender on ``tiny_split``: enough to test validation."""
    split = tiny_split()
    recommender = BAMFRecommender(BAMFConfig(data=TINY_DATA, seed=0, max_history=10))
    torch.manual_seed(0)
    recommender.model = BAMF(split.n_users, split.n_items, recommender.config)
    recommender.split = split
    return recommender


def saved_model(tmp: Path, name: str = "model.pt") -> Path:
    path = tmp / name
    tiny_recommender().save(path)
    return path


def corrupt_model(tmp: Path) -> Path:
    """``model.pt`` with 64 bytes in the middle (inside the stored tensors) overwritten."""
    path = saved_model(tmp)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    return path


def model_with_format_99(tmp: Path) -> Path:
    path = saved_model(tmp)
    payload = torch.load(path, weights_only=True)
    payload["format"] = 99
    torch.save(payload, path)
    return path


def too_small_users(tmp: Path) -> ImplicitSplit:
    frame = pd.DataFrame({"userId": [1, 1, 2, 2, 3, 3], "movieId": [1, 2, 1, 3, 2, 3]})
    return ImplicitSplit.from_interactions(from_frame(frame))


def train_argv(tmp: Path, *sets: str, out: str = "run") -> list[str]:
    argv = ["train", "--out", str(tmp / out), "--no-progress", "--set", f"data={TINY_DATA}"]
    for pair in sets:
        argv += ["--set", pair]
    return argv


def with_config(tmp: Path, path: Path) -> list[str]:
    return ["train", "--out", str(tmp / "run"), "--config", str(path)]


def run_dir_with_corrupt_model(tmp: Path) -> list[str]:
    run = tmp / "saved"
    run.mkdir()
    write(run, "config.toml", BAMFConfig(data=TINY_DATA, seed=0, max_history=10).to_toml())
    write(run, "metrics.json", '{"test": {}}\n')
    corrupt_model(run)
    return ["evaluate", "--run", str(run)]


def nan_scores(tmp: Path) -> object:
    users = np.array([0, 0, 1, 1])
    labels = np.array([1, 0, 1, 0])
    return ranking_metrics(users, labels, np.array([0.3, np.nan, 0.1, 0.2]))


# --------------------------------------------------------------------------- the cases

CASES: list[tuple[str, Callable[[Path], object] | Cli, type[BaseException] | int, str]] = [
    # ---- data files
    (
        "malformed CSV (a row with 4 fields under a 2-column header)",
        load_file("bad.csv", "userId,movieId\n1,10\n2,20,5,7\n"),
        DataError,
        r"bad\.csv: malformed table .*Expected 2 fields",
    ),
    (
        "empty file",
        load_file("empty.csv", ""),
        DataError,
        r"empty\.csv: malformed table \(No columns to parse",
    ),
    (
        "header-only CSV",
        load_file("header.csv", "userId,movieId\n"),
        DataError,
        r"interaction table in .*header\.csv is empty",
    ),
    (
        "CSV without a movieId column",
        load_file("items.csv", "userId,itemId\n1,2\n"),
        DataError,
        r"missing column\(s\) 'movieId' .*available: 'userId', 'itemId'",
    ),
    (
        "CSV with a missing (NaN) item id",
        load_file("nan.csv", "userId,movieId\n1,10\n2,\n3,30\n"),
        DataError,
        r"1 row\(s\) .* have a missing id in column 'movieId'",
    ),
    (
        "CSV with a duplicate (user, item) pair",
        load_file("dup.csv", "userId,movieId\n1,10\n1,10\n2,20\n"),
        UserWarning,
        r"removed 1 duplicate \(user, item\) pair",
    ),
    (
        "CSV that is not UTF-8",
        load_file("latin.csv", b"userId,movieId\n\xe9\xff\xfe,1\n"),
        DataError,
        r"latin\.csv: malformed table .*codec can't decode",
    ),
    (
        "a .zip that is not a zip archive",
        load_file("ml-latest-small.zip", b"PK\x03\x04 this is not really a zip"),
        DataError,
        r"not a valid zip archive",
    ),
    (
        "a folder without ratings.csv",
        lambda tmp: load_data(write(tmp, "folder/movies.csv", "movieId,title\n").parent),
        DataError,
        r"folder holds no ratings\.csv: run `pyro-bamf data fetch`",
    ),
    (
        "unknown data spec",
        Cli(lambda tmp: ["data", "describe", "--data", "movielenz"]),
        2,
        r"unknown data spec 'movielenz': no such file or folder",
    ),
    (
        "data path that does not exist",
        Cli(lambda tmp: train_argv(tmp, f"data={tmp / 'nope' / 'ratings.csv'}")),
        2,
        r"unknown data spec '.*nope/ratings\.csv': no such file or folder",
    ),
    (
        "unknown synthetic key",
        lambda tmp: load_data("synthetic:users=50"),
        DataError,
        r"unknown synthetic option 'users'; valid keys: n_users, n_items",
    ),
    (
        "non-numeric synthetic value",
        lambda tmp: load_data("synthetic:n_users=ten"),
        DataError,
        r"synthetic option 'n_users=ten' needs an integer value",
    ),
    (
        "negative synthetic seed",
        lambda tmp: load_data("synthetic:seed=-1"),
        DataError,
        r"seed",
    ),
    (
        "users too small for the split (2 interactions each)",
        too_small_users,
        DataError,
        r"all 3 users have too few interactions",
    ),
    # ---- hyper-parameters
    ("max_history = 0", config(max_history=0), ConfigError, r"max_history must be >= 1, got 0"),
    ("tau = 0.5", config(tau=0.5), ConfigError, r"tau must be >= 1 .*got 0\.5"),
    ("beta = 0", config(beta=0), ConfigError, r"beta must be in \(0, 1\] .*got 0\.0"),
    ("beta = 1.5", config(beta=1.5), ConfigError, r"beta must be in \(0, 1\] .*got 1\.5"),
    ("guide_sigma = 0", config(guide_sigma=0.0), ConfigError, r"guide_sigma must be > 0"),
    ("prior_sigma = -1", config(prior_sigma=-1.0), ConfigError, r"prior_sigma must be > 0"),
    ("dropout = 1.0", config(dropout=1.0), ConfigError, r"dropout must be in \[0, 1\)"),
    ("lr = 0", config(lr=0.0), ConfigError, r"lr must be > 0, got 0\.0"),
    ("batch_size = 1", config(batch_size=1), ConfigError, r"batch_size must be >= 5, got 1"),
    (
        "--set tau=inf",
        Cli(lambda tmp: train_argv(tmp, "tau=inf")),
        2,
        r"tau must be finite, got inf",
    ),
    (
        "unknown config key (typo)",
        Cli(lambda tmp: train_argv(tmp, "kl_anneal_epoch=3")),
        2,
        r"unknown config key 'kl_anneal_epoch'; did you mean 'kl_anneal_epochs'\?",
    ),
    (
        "wrongly typed --set value",
        Cli(lambda tmp: train_argv(tmp, "max_epochs=ten")),
        2,
        r"max_epochs must be int, got 'ten'",
    ),
    (
        "--set without '='",
        Cli(lambda tmp: train_argv(tmp, "max_epochs")),
        2,
        r"--set expects key=value, got 'max_epochs'",
    ),
    (
        "empty TOML config",
        Cli(lambda tmp: with_config(tmp, write(tmp, "e.toml", ""))),
        2,
        r"config file .*e\.toml is empty",
    ),
    (
        "TOML syntax error",
        Cli(lambda tmp: with_config(tmp, write(tmp, "bad.toml", "max_epochs = = 3\n"))),
        2,
        r"config file .*bad\.toml is not valid TOML",
    ),
    (
        "--config path that is a directory",
        Cli(lambda tmp: with_config(tmp, tmp)),
        2,
        r"config file .* is a folder",
    ),
    (
        "--out that is an existing file",
        Cli(lambda tmp: train_argv(write(tmp, "taken", "x").parent, out="taken")),
        2,
        r"--out .*taken is a file, not a run directory",
    ),
    (
        "train without --out",
        Cli(lambda tmp: ["train", "--set", "max_epochs=1"]),
        2,
        r"train needs --out DIR",
    ),
    (
        "--resume combined with --set",
        Cli(lambda tmp: ["train", "--resume", str(tmp), "--set", "lr=0.1"]),
        2,
        r"--resume continues a run with its own config: drop --config/--set/--out",
    ),
    (
        "device = cuda without a GPU",
        Cli(lambda tmp: train_argv(tmp, "device=cuda")),
        2,
        r"device = 'cuda' but torch sees no CUDA device",
    ),
    (
        "evaluate a folder that is not a run",
        Cli(lambda tmp: ["evaluate", "--run", str(tmp)]),
        2,
        r"has no config\.toml: not a pyro-bamf run directory",
    ),
    (
        "evaluate a run whose model.pt is corrupt",
        Cli(run_dir_with_corrupt_model),
        2,
        r"checkpoint .*model\.pt is corrupt: member .* fails its CRC",
    ),
    # ---- checkpoints, recommender and metrics
    (
        "corrupt model.pt (64 bytes overwritten)",
        lambda tmp: BAMFRecommender.load(corrupt_model(tmp), tiny_split()),
        CheckpointError,
        r"model\.pt is corrupt: member .* fails its CRC",
    ),
    (
        "model.pt of checkpoint format 99",
        lambda tmp: BAMFRecommender.load(model_with_format_99(tmp), tiny_split()),
        CheckpointError,
        r"has format 99; this version reads 1",
    ),
    (
        "model.pt loaded on a split with another max_history",
        lambda tmp: BAMFRecommender.load(
            saved_model(tmp),
            ImplicitSplit.from_interactions(load_data(TINY_DATA), seed=0, max_history=9),
        ),
        CheckpointError,
        r"trained on other data or another split \(fingerprint",
    ),
    (
        "score() with an unknown user index",
        lambda tmp: tiny_recommender().score([0, 20], [1, 2]),
        ValueError,
        r"unknown user index \[20\]: valid indices are 0\.\.19",
    ),
    (
        "score() with a negative item index",
        lambda tmp: tiny_recommender().score([0, 1], [-1, 2]),
        ValueError,
        r"unknown item index \[-1\]: valid indices are 0\.\.59",
    ),
    (
        "recommend() for an unknown user",
        lambda tmp: tiny_recommender().recommend(99, k=5),
        ValueError,
        r"unknown user index \[99[,\]].*valid indices are 0\.\.19",
    ),
    (
        "recommend() with k = 0",
        lambda tmp: tiny_recommender().recommend(0, k=0),
        ValueError,
        r"k must be >= 1, got 0",
    ),
    (
        "score() on an unfitted recommender",
        lambda tmp: BAMFRecommender().score([0], [0]),
        RuntimeError,
        r"not fitted: call fit\(\) or load\(\) first",
    ),
    ("NaN scores in ranking_metrics", nan_scores, ValueError, r"1 scores are NaN"),
    (
        "ranking_metrics without any positive",
        lambda tmp: ranking_metrics(np.zeros(3), np.zeros(3), np.arange(3.0)),
        ValueError,
        r"no user has a positive candidate",
    ),
]

XFAIL: dict[str, str] = {}
NEEDS_NO_GPU = {"device = cuda without a GPU"}


# --------------------------------------------------------------------------- the runner


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def run_case(target: Callable[[Path], object] | Cli, tmp: Path) -> tuple[object, str]:
    """Run one case: ``(exception or warning class, or exit code; the one-line message)``."""
    if isinstance(target, Cli):
        argv = target.argv(tmp)
        err = io.StringIO()
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(err),
        ):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse errors
                code = exit_.code
        lines = [line.strip() for line in err.getvalue().splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line]
        return code, (errors or lines or [""])[-1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            target(tmp)
        except Exception as error:  # every type is reported
            return type(error), one_line(str(error))
    if caught:
        return caught[0].category, one_line(str(caught[0].message))
    return None, "(no error)"


def _params():
    for name, target, expected, pattern in CASES:
        marks = []
        if name in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[name]))
        if name in NEEDS_NO_GPU:
            marks.append(pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"))
        yield pytest.param(target, expected, pattern, id=name, marks=marks)


def test_there_are_enough_distinct_cases():
    names = [case[0] for case in CASES]
    assert len(names) == len(set(names)) >= 28
    assert all(isinstance(case[1], Cli) or callable(case[1]) for case in CASES)
    assert set(XFAIL) | NEEDS_NO_GPU <= set(names)


@pytest.mark.parametrize(("target", "expected", "pattern"), list(_params()))
def test_hostile_input_is_refused_with_a_clear_message(target, expected, pattern, tmp_path):
    outcome, message = run_case(target, tmp_path)
    if isinstance(expected, int):
        assert outcome == expected, f"exit code {outcome}: {message}"
    else:
        assert isinstance(outcome, type) and issubclass(outcome, expected), (outcome, message)
    assert re.search(pattern, message), message
    if isinstance(target, Cli):
        assert not (tmp_path / "run").exists(), "a refused command left a run directory"


def test_recommend_names_an_unknown_user_once():
    with pytest.raises(ValueError, match=r"unknown user index \[99\]:"):
        tiny_recommender().recommend(99, k=5)


def test_config_path_that_is_a_directory_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file"):
        BAMFConfig.from_toml(tmp_path)


def markdown_table() -> str:
    rows = ["| # | input | error message |", "|---|---|---|"]
    for number, (name, target, _, _) in enumerate(CASES, 1):
        with tempfile.TemporaryDirectory() as tmp:
            outcome, message = run_case(target, Path(tmp))
            message = message.replace(tmp, "<tmp>")
        kind = f"exit {outcome}" if isinstance(outcome, int) else getattr(outcome, "__name__", "")
        cell = f"{kind}: {message}".replace("|", "\\|")
        rows.append(f"| {number} | {name} | {cell} |")
    return "\n".join(rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(markdown_table())
    sys.exit(0)
