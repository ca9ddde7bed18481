"""Hostile inputs, files and arguments, across the API and the command line.

``CASES`` lists every input as ``(name, target, expected, message_regex)``:

* ``target`` is either a callable ``f(tmp)`` (an API call; ``tmp`` is a fresh folder for any
  files it needs) or a :class:`Cli` whose ``argv(tmp)`` writes its files and returns the
  ``pyro-bamf`` arguments;
* ``expected`` is the exception (or warning) class an API call must raise (or emit), or the
  exit code of the command line;
* ``message_regex`` must match the one-line message the user gets.

Every case must also leave nothing behind: no file or folder created or changed under its
folder by the call itself. For a :class:`Cli` case that is every path that differs after the
command from what ``argv(tmp)`` wrote; an API case writes its inputs inside the call, so there
it is every half-written file (``*.part``) and every run directory (``INCOMPLETE`` or
``config.toml``) that is not among the case's declared inputs.

``python tests/test_hostile_inputs.py`` runs every case and prints a Markdown table of the
actual messages and of the files left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_bamf import kernels
from pyro_bamf.cli import main
from pyro_bamf.config import BAMFConfig, ConfigError
from pyro_bamf.data import DataError, ImplicitSplit, fetch_movielens, from_frame, load_data
from pyro_bamf.metrics import ranking_metrics
from pyro_bamf.model import BAMF
from pyro_bamf.recommender import BAMFRecommender, CheckpointError
from pyro_bamf.runs import train_run

TINY_DATA = "synthetic:n_users=20,n_items=60,mean_interactions=10,seed=0"


@dataclass(frozen=True)
class Cli:
    """A ``pyro-bamf`` command line: ``argv(tmp)`` creates its files and returns the arguments.

    ``env``: environment variables set while it runs (``{tmp}`` in a value is the case's
    folder); with any, no kernel library stays loaded from earlier cases.
    """

    argv: Callable[[Path], list[str]]
    env: dict[str, str] = field(default_factory=dict)


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
    write(run, "metrics.json", '{"test": {"ndcg@10": 0.5}}\n')
    corrupt_model(run)
    return ["evaluate", "--run", str(run)]


_FOLDERS: dict[str, tempfile.TemporaryDirectory] = {}
RUN_CONFIG = BAMFConfig(
    data=TINY_DATA, seed=0, max_history=10, embedding_dim=8, max_epochs=1, eval_negatives=20
)


def finished_run(tmp: Path) -> Path:
    """``tmp/run`` laid out as a finished run (its files' names are what ``train`` checks)."""
    for name in ("config.toml", "history.csv", "model.pt", "metrics.json"):
        write(tmp, f"run/{name}", "kept\n")
    return tmp / "run"


@cache
def _interrupted_run() -> Path:
    """A real run stopped after its first epoch's checkpoint (built once per process, in a
    folder removed when the process ends)."""
    out = Path(_FOLDERS.setdefault("interrupted", tempfile.TemporaryDirectory()).name) / "run"
    with (
        mock.patch.object(BAMFRecommender, "save", side_effect=KeyboardInterrupt),
        warnings.catch_warnings(),
        contextlib.suppress(KeyboardInterrupt),
    ):
        warnings.simplefilter("ignore")
        train_run(RUN_CONFIG, out, progress=False, log_epochs=False)
    return out


def interrupted_run(tmp: Path, **edits: str) -> Path:
    """A copy of the interrupted run in ``tmp/run``, its config.toml lines ``key = value``
    replaced by ``edits``."""
    run = Path(shutil.copytree(_interrupted_run(), tmp / "run"))
    lines = (run / "config.toml").read_text().splitlines()
    for key, value in edits.items():
        lines = [f"{key} = {value}" if line.startswith(f"{key} = ") else line for line in lines]
    (run / "config.toml").write_text("\n".join(lines) + "\n")
    return run


def run_with_metrics(tmp: Path, metrics: str) -> list[str]:
    """``evaluate`` of a run whose model is sound and whose metrics.json is ``metrics``."""
    run = tmp / "saved"
    write(run, "config.toml", BAMFConfig(data=TINY_DATA, seed=0, max_history=10).to_toml())
    write(run, "metrics.json", metrics)
    saved_model(run)
    return ["evaluate", "--run", str(run)]


def float_id_run(tmp: Path) -> Path:
    """A finished (untrained) run on a table whose user and item ids are 0.5, 1.5, ..."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"userId": np.repeat(np.arange(20) + 0.5, 8), "movieId": rng.permutation(160) % 40 + 0.5}
    ).drop_duplicates()
    data = write(tmp, "float_ids.csv", frame.to_csv(index=False))
    config = BAMFConfig(data=str(data), seed=0, max_history=10, embedding_dim=8)
    split = ImplicitSplit.from_interactions(load_data(data), seed=0, max_history=10)
    recommender = BAMFRecommender(config)
    recommender.model, recommender.split = BAMF(split.n_users, split.n_items, config), split
    run = tmp / "floats"
    recommender.save(run / "model.pt")
    write(run, "config.toml", config.to_toml())
    write(run, "metrics.json", json.dumps({"test": {"ndcg@10": 0.5}}))
    return run


def explain_argv(run: Path, user: str) -> list[str]:
    return ["explain", "--run", str(run), "--user", user, "--out", str(run.parent / "u.png")]


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
    ("max_history = 0", config(max_history=0), ConfigError, r"max_history must be in \[1, "),
    ("tau = 0.5", config(tau=0.5), ConfigError, r"tau must be in \[1, 10\] .*got 0\.5"),
    ("beta = 0", config(beta=0), ConfigError, r"beta must be in \(0, 1\] .*got 0\.0"),
    ("beta = 1.5", config(beta=1.5), ConfigError, r"beta must be in \(0, 1\] .*got 1\.5"),
    (
        "guide_sigma = 0",
        config(guide_sigma=0.0),
        ConfigError,
        r"guide_sigma must be in \[1e-06, 10\]",
    ),
    ("prior_sigma = -1", config(prior_sigma=-1.0), ConfigError, r"prior_sigma must be in \[0\.0"),
    ("dropout = 1.0", config(dropout=1.0), ConfigError, r"dropout must be in \[0, 1\)"),
    ("lr = 0", config(lr=0.0), ConfigError, r"lr must be in \(0, 0\.01\] .*got 0\.0"),
    ("batch_size = 1", config(batch_size=1), ConfigError, r"batch_size must be in \[2, 65536\]"),
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
    # ---- round two: data files, fetch, pools and file modes
    (
        "data fetch over an invalid cached zip (offline: refused, file kept)",
        Cli(
            lambda tmp: [
                "data",
                "fetch",
                "--data-dir",
                str(write(tmp, "cache/ml-latest-small.zip", b"garbage").parent),
            ]
        ),
        2,
        r"the cached .*ml-latest-small\.zip is invalid: not a zip archive \(7 bytes.*nothing was "
        r"changed: run `pyro-bamf data fetch --replace-invalid`",
    ),
    (
        "fetch with replace_invalid whose download fails (file kept)",
        lambda tmp: fetch_movielens(
            write(tmp, "cache/ml-latest-small.zip", b"garbage").parent,
            url=(tmp / "absent.zip").as_uri(),
            replace_invalid=True,
        ),
        DataError,
        r"could not fetch MovieLens from file:.*absent\.zip: download failed .*; the cached "
        r".*ml-latest-small\.zip was left as it was$",
    ),
    (
        "data = auto over an invalid cached zip",
        lambda tmp: load_data("auto", data_dir=write(tmp, "ml-latest-small.zip", b"x").parent),
        UserWarning,
        r"FALLING BACK TO SYNTHETIC DATA.*the cached .*ml-latest-small\.zip is invalid: not a zip "
        r"archive .*--replace-invalid",
    ),
    (
        "empty data spec (train --set data=)",
        Cli(lambda tmp: train_argv(tmp, "data=")),
        2,
        r"data is empty: expected a path \(MovieLens zip or folder.*planted",
    ),
    (
        "empty data spec (data describe --data '')",
        Cli(lambda tmp: ["data", "describe", "--data", ""]),
        2,
        r"the data spec is empty: expected a path \(MovieLens zip or folder",
    ),
    (
        "blank data spec (load_data('  '))",
        lambda tmp: load_data("  "),
        DataError,
        r"^the data spec is empty: expected a path",
    ),
    (
        "candidate pool without negatives (calibrate --negatives 0)",
        lambda tmp: tiny_split().candidates("val", 0),
        DataError,
        r"^n_negatives must be >= 1, got 0$",
    ),
    (
        "more eval negatives than a user's unseen items",
        lambda tmp: tiny_split().candidates("test", 55),
        UserWarning,
        r"\d+ user\(s\) have fewer unseen items than the 55 negatives asked for, e\.g\. user \d+ "
        r"\(original id \d+\) has only \d+: their pools must repeat negatives",
    ),
    # ---- round two: kernels, explain and calibrate
    (
        "train with a C compiler that fails (CC=false)",
        Cli(
            lambda tmp: train_argv(write(tmp, "kernels/.keep", "").parent.parent),
            env={"CC": "false", "BAMF_KERNEL_CACHE": "{tmp}/kernels"},
        ),
        2,
        r"error: building the fused_scores kernel concat_scores\.c with .*false failed "
        r"\(exit 1: no message\): install a working C compiler .* or set fused_scores = false",
    ),
    (
        "train with a kernel cache that is a file",
        Cli(
            lambda tmp: train_argv(write(tmp, "cache", "not a folder").parent),
            env={"BAMF_KERNEL_CACHE": "{tmp}/cache"},
        ),
        2,
        r"error: the kernel cache folder .*cache cannot be written \(File exists\): set "
        r"BAMF_KERNEL_CACHE to a writable folder, or set fused_scores = false",
    ),
    (
        "attention_samples() with 10^9 draws",
        lambda tmp: tiny_recommender().attention_samples(0, num_samples=10**9),
        ValueError,
        r"num_samples \(--samples\) = 1000000000 draws over \d+ history items would keep \d+ "
        r"floats per site, over the limit MAX_KEPT_DRAWS = 67108864: use num_samples "
        r"\(--samples\) <= \d+$",
    ),
    (
        "attention_samples() with 0 draws",
        lambda tmp: tiny_recommender().attention_samples(0, num_samples=0),
        ValueError,
        r"num_samples \(--samples\) must be >= 1, got 0",
    ),
    (
        "score_samples() with 10^7 draws of 60 items",
        lambda tmp: tiny_recommender().score_samples(0, np.arange(60), num_samples=10**7),
        ValueError,
        r"num_samples = 10000000 draws over 60 candidates would keep 600000000 floats per site, "
        r"over the limit MAX_KEPT_DRAWS = 67108864: use num_samples <= 1118481$",
    ),
    (
        "calibrate --bins 0",
        Cli(lambda tmp: ["calibrate", "--run", str(tmp), "--bins", "0"]),
        2,
        r"error: the number of reliability bins \(--bins\) must be >= 1, got 0$",
    ),
    # ---- round two: run directories, resume and configuration ranges
    (
        "train --out on a finished run",
        Cli(lambda tmp: train_argv(finished_run(tmp).parent)),
        2,
        r"--out .*run holds a finished run: pass --overwrite to replace it, or choose another",
    ),
    (
        "train --out on an interrupted run",
        Cli(lambda tmp: train_argv(interrupted_run(tmp).parent)),
        2,
        r"--out .*run holds an interrupted run: continue it with `pyro-bamf train --resume .*run`"
        r", or pass --overwrite to start it again",
    ),
    (
        "train --out on a folder of other files",
        Cli(lambda tmp: train_argv(write(tmp, "run/notes.txt", "mine").parent.parent)),
        2,
        r"--out .*run is a folder of other files \(notes\.txt\), not a run: choose a new or empty",
    ),
    (
        "train --out on a folder holding only a config.toml",
        Cli(lambda tmp: train_argv(write(tmp, "run/config.toml", "seed = 1\n").parent.parent)),
        2,
        r"--out .*run holds part of a run \(config\.toml\): pass --overwrite to replace those",
    ),
    (
        "train --out on a run stopped before its first epoch finished",
        Cli(lambda tmp: train_argv(write(finished_run(tmp), "INCOMPLETE", "").parent.parent)),
        2,
        r"--out .*run holds a run stopped before it could be resumed .*: pass --overwrite",
    ),
    (
        "--resume combined with --overwrite",
        Cli(lambda tmp: ["train", "--resume", str(interrupted_run(tmp)), "--overwrite"]),
        2,
        r"--resume continues a run with its own config: drop --config/--set/--out/--overwrite",
    ),
    (
        "--resume after editing the learning rate in config.toml",
        Cli(lambda tmp: ["train", "--resume", str(interrupted_run(tmp, lr="0.005"))]),
        2,
        r"cannot resume .*run: config\.toml was edited after training started: lr = 0\.005 \(the "
        r"checkpoint's: 0\.0001\); restore it, or start a new run with --out",
    ),
    (
        "--resume after editing embedding_dim in config.toml",
        Cli(lambda tmp: ["train", "--resume", str(interrupted_run(tmp, embedding_dim="16"))]),
        2,
        r"config\.toml was edited after training started: embedding_dim = 16 \(the checkpoint's",
    ),
    (
        "evaluate a run whose metrics.json is not JSON",
        Cli(lambda tmp: run_with_metrics(tmp, '{"test": {"ndcg@10": 0.5')),
        2,
        r"metrics\.json is not valid JSON \(.*\): the run's record is damaged",
    ),
    (
        "evaluate a run whose metrics.json is a list",
        Cli(lambda tmp: run_with_metrics(tmp, "[1, 2]")),
        2,
        r"metrics\.json has no \"test\" table of metric values: the run's record is damaged",
    ),
    (
        "evaluate a run whose metrics.json holds text for numbers",
        Cli(lambda tmp: run_with_metrics(tmp, '{"test": {"ndcg@10": "high"}}')),
        2,
        r"metrics\.json has no \"test\" table of metric values",
    ),
    (
        "explain --user that is not a number, on float ids",
        Cli(lambda tmp: explain_argv(float_id_run(tmp), "abc")),
        2,
        r"user id 'abc' is not a number",
    ),
    (
        "embedding_dim = 10^9",
        Cli(lambda tmp: train_argv(tmp, "embedding_dim=1000000000")),
        2,
        r"embedding_dim must be in \[2, 4096\] .*got 1000000000",
    ),
    (
        "embedding_dim = 1 (LayerNorm of one feature is constant)",
        Cli(lambda tmp: train_argv(tmp, "embedding_dim=1")),
        2,
        r"embedding_dim must be in \[2, 4096\] \(LayerNorm of one feature is constant",
    ),
    (
        "prior_sigma = 1e300",
        Cli(lambda tmp: train_argv(tmp, "prior_sigma=1e300")),
        2,
        r"prior_sigma must be in \[0\.001, 10\] \(a log-scale spread\), got 1e\+300",
    ),
    (
        "guide_sigma = 1e300",
        Cli(lambda tmp: train_argv(tmp, "guide_sigma=1e300")),
        2,
        r"guide_sigma must be in \[1e-06, 10\] \(a log-scale spread\), got 1e\+300",
    ),
    (
        "prior_shape = 1e-300 (gamma prior)",
        Cli(lambda tmp: train_argv(tmp, "prior_family=gamma", "prior_shape=1e-300")),
        2,
        r"prior_shape must be in \[0\.1, 100\] \(a gamma or Weibull shape\), got 1e-300",
    ),
    (
        "guide_shape = 1e6 (Weibull guide)",
        Cli(lambda tmp: train_argv(tmp, "guide_family=weibull", "guide_shape=1e6")),
        2,
        r"guide_shape must be in \[1, 100\] \(a Weibull shape; .*got 1000000\.0",
    ),
    (
        "Weibull prior of shape 10 (its Monte Carlo KL overflows)",
        Cli(lambda tmp: train_argv(tmp, "prior_family=weibull", "prior_shape=10")),
        2,
        r"a Weibull prior needs prior_shape <= 3, got 10\.0: its density's \(s / scale\)\^k",
    ),
    (
        "prior_log_mean = 1000",
        Cli(lambda tmp: train_argv(tmp, "prior_log_mean=1000")),
        2,
        r"prior_log_mean must be in \[-10, 10\] \(the log of the prior's mean score\)",
    ),
    (
        "seed = 2^32 (beyond numpy's seeds)",
        Cli(lambda tmp: train_argv(tmp, "seed=4294967296")),
        2,
        r"seed must be in \[0, 4294967295\] \(the range numpy's and Pyro's seeds take\)",
    ),
    (
        "tau = 10^6",
        Cli(lambda tmp: train_argv(tmp, "tau=1e6")),
        2,
        r"tau must be in \[1, 10\] \(a sharpening factor; s\^tau must stay finite\)",
    ),
    (
        "batch_size = 10^9",
        Cli(lambda tmp: train_argv(tmp, "batch_size=1000000000")),
        2,
        r"batch_size must be in \[2, 65536\] .*got 1000000000",
    ),
    (
        "max_epochs = 10^12",
        Cli(lambda tmp: train_argv(tmp, "max_epochs=1000000000000")),
        2,
        r"max_epochs must be in \[1, 100000\], got 1000000000000",
    ),
]

XFAIL: dict[str, str] = {}
NEEDS_NO_GPU = {"device = cuda without a GPU"}


# --------------------------------------------------------------------------- the runner


def files(tmp: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``tmp`` -> (size, modification time) for files, (-1, 0) for folders."""
    state = {}
    for path in sorted(tmp.rglob("*")):
        info = path.stat()
        state[str(path.relative_to(tmp))] = (
            (info.st_size, info.st_mtime_ns) if path.is_file() else (-1, 0)
        )
    return state


def half_written(tmp: Path) -> list[str]:
    """Half-written files and unfinished runs under ``tmp`` (what an API case may leave)."""
    return sorted(
        str(path.relative_to(tmp))
        for path in tmp.rglob("*")
        if path.name.endswith((".part", ".tmp")) or path.name == "INCOMPLETE"
    )


def run_case(target: Callable[[Path], object] | Cli, tmp: Path) -> tuple[object, str, list[str]]:
    """Run one case: ``(exception or warning class, or exit code; the one-line message; the
    paths it left behind or changed)``."""
    if isinstance(target, Cli):
        argv = target.argv(tmp)
        before = files(tmp)
        err = io.StringIO()
        env = {key: value.format(tmp=tmp) for key, value in target.env.items()}
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(err),
            mock.patch.dict(os.environ, env),
            mock.patch.dict(kernels._libraries, clear=bool(env)),
        ):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse errors
                code = exit_.code
        after = files(tmp)
        left = sorted(
            path for path in after.keys() | before.keys() if after.get(path) != before.get(path)
        )
        lines = [line.strip() for line in err.getvalue().splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line or "Traceback" in line]
        return code, "\n".join(errors or lines[-1:] or [""]), left
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            target(tmp)
        except Exception as error:  # every type is reported
            return type(error), str(error).strip(), half_written(tmp)
    if caught:
        return caught[0].category, str(caught[0].message).strip(), half_written(tmp)
    return None, "(no error)", half_written(tmp)


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
    assert len(names) == len(set(names)) >= 60
    assert all(isinstance(case[1], Cli) or callable(case[1]) for case in CASES)
    assert set(XFAIL) | NEEDS_NO_GPU <= set(names)


@pytest.mark.parametrize(("target", "expected", "pattern"), list(_params()))
def test_hostile_input_is_refused_with_a_clear_message(target, expected, pattern, tmp_path):
    outcome, message, left = run_case(target, tmp_path)
    if isinstance(expected, int):
        assert outcome == expected, f"exit code {outcome}: {message}"
    else:
        assert isinstance(outcome, type) and issubclass(outcome, expected), (outcome, message)
    assert "\n" not in message, f"not one line: {message}"
    assert re.search(pattern, message), message
    assert left == [], f"left behind or changed: {left}"


def test_recommend_names_an_unknown_user_once():
    with pytest.raises(ValueError, match=r"unknown user index \[99\]:"):
        tiny_recommender().recommend(99, k=5)


def test_explain_finds_a_user_whose_ids_are_non_integer_numbers(tmp_path, capsys):
    run = float_id_run(tmp_path)
    assert main(explain_argv(run, "2.5") + ["--samples", "20", "--top", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["user"] == "2.5"
    assert (tmp_path / "u.png").stat().st_size > 0


def test_config_path_that_is_a_directory_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file"):
        BAMFConfig.from_toml(tmp_path)


def markdown_table() -> str:
    rows = ["| # | input | error message | files left behind |", "|---|---|---|---|"]
    for number, (name, target, _, _) in enumerate(CASES, 1):
        with tempfile.TemporaryDirectory() as tmp:
            outcome, message, left = run_case(target, Path(tmp))
            message = message.replace(tmp, "<tmp>")
        kind = f"exit {outcome}" if isinstance(outcome, int) else getattr(outcome, "__name__", "")
        cell = f"{kind}: {message}".replace("|", "\\|")
        rows.append(f"| {number} | {name} | {cell} | {', '.join(left) or 'none'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(markdown_table())
    sys.exit(0)
