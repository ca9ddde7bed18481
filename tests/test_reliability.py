"""Reliability: kill and resume, resume refusals, determinism, non-finite losses, checkpoints.

The kill test runs the real command line in subprocesses on small synthetic data; the rest
trains in-process on tinier data. Every training here is a few seconds on one CPU thread.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pyro_bamf import atomic, runs, training
from pyro_bamf.atomic import atomic_path
from pyro_bamf.cli import main
from pyro_bamf.config import BAMFConfig, ConfigError
from pyro_bamf.data import DataError
from pyro_bamf.recommender import BAMFRecommender, CheckpointError
from pyro_bamf.runs import CHECKPOINT, INCOMPLETE, build_split, evaluate_run, train_run
from pyro_bamf.training import TrainState

SETS = [
    "data=synthetic:n_users=80,n_items=150,mean_interactions=20,seed=2",
    "max_epochs=4",
    "max_history=40",
    "warmup_epochs=0",
    "lr=0.01",
]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore",
}
HISTORY_COLUMNS = ["epoch", "nll", "kl", "kl_weight", "loo_ndcg10"]
TIMEOUT = 300

TINY = BAMFConfig(
    data="synthetic:n_users=40,n_items=100,mean_interactions=12,seed=0",
    seed=5,
    max_history=20,
    embedding_dim=8,
    max_epochs=3,
    warmup_epochs=0,
    lr=0.01,
)


def pyro_bamf(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyro_bamf", *map(str, args)]


def train_command(out: Path) -> list[str]:
    command = pyro_bamf("train", "--out", out, "--no-progress")
    for pair in SETS:
        command += ["--set", pair]
    return command


def history(run: Path, columns=HISTORY_COLUMNS) -> list[list[str]]:
    with open(run / "history.csv", newline="") as handle:
        return [[row[c] for c in columns] for row in csv.DictReader(handle)]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def stray_parts(run: Path) -> list[str]:
    return [name for name in os.listdir(run) if name.endswith(".part")]


def load_train_state(run: Path) -> TrainState:
    payload = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    payload.pop("data_fingerprint")
    assert payload.pop("world_size") == 1
    payload.pop("config")
    return TrainState.from_dict(payload)


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# --------------------------------------------------------------------------- kill and resume


@contextlib.contextmanager
def reaped(command: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    """``Popen(command)`` (text mode, ``ENV``), killed if still running, or after ``TIMEOUT``."""
    kwargs.setdefault("stderr", subprocess.DEVNULL)
    process = subprocess.Popen(command, env=ENV, text=True, **kwargs)
    watchdog = threading.Timer(TIMEOUT, process.kill)
    watchdog.start()
    try:
        yield process
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> dict[str, object]:
    """An uninterrupted CLI run, and one SIGKILLed mid-epoch 3 then resumed with --resume.

    The uninterrupted run trains in parallel. A copy of the killed directory, as it was right
    after the kill, is kept in ``"snapshot"``.
    """
    root = tmp_path_factory.mktemp("kill")
    full, killed, snapshot = root / "full", root / "killed", root / "snapshot"
    with contextlib.ExitStack() as stack:
        victim = stack.enter_context(reaped(train_command(killed), stdout=subprocess.PIPE))
        log = stack.enter_context(open(root / "full.log", "w"))
        baseline = stack.enter_context(reaped(train_command(full), stdout=log, stderr=log))
        seen = []
        for line in victim.stdout:  # the epoch line is printed after its checkpoint is saved
            seen.append(line)
            if re.match(r"epoch\s+2\s", line):
                break
        assert (killed / CHECKPOINT).is_file(), seen
        assert len(history(killed)) == 2, seen
        victim.send_signal(signal.SIGKILL)  # now inside epoch 3
        assert victim.wait(TIMEOUT) == -signal.SIGKILL
        shutil.copytree(killed, snapshot)
        resumed = subprocess.run(
            pyro_bamf("train", "--resume", killed, "--no-progress"),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert baseline.wait(TIMEOUT) == 0, (root / "full.log").read_text()
    return {"full": full, "killed": killed, "snapshot": snapshot, "resume_stdout": resumed.stdout}


def test_killed_run_is_marked_incomplete_and_refused_by_evaluate(killed_and_resumed, capsys):
    snapshot = killed_and_resumed["snapshot"]
    names = set(os.listdir(snapshot))
    assert {INCOMPLETE, CHECKPOINT, "config.toml", "history.csv"} <= names
    assert not names & {"metrics.json", "model.pt"}
    assert stray_parts(snapshot) == []
    assert [row[0] for row in history(snapshot)] == ["1", "2"], "not killed during epoch 3"
    assert load_train_state(snapshot).epoch == 2
    assert main(["evaluate", "--run", str(snapshot)]) == 2
    assert "incomplete" in capsys.readouterr().err


def test_resumed_run_ends_with_the_metrics_of_an_uninterrupted_run(killed_and_resumed):
    full, killed = killed_and_resumed["full"], killed_and_resumed["killed"]
    epochs = re.findall(r"^epoch\s+(\d+)", killed_and_resumed["resume_stdout"], re.MULTILINE)
    assert epochs == ["3", "4"], "the resumed run did not continue from epoch 3"
    for run in (full, killed):
        names = set(os.listdir(run))
        assert not names & {INCOMPLETE, CHECKPOINT} and stray_parts(run) == []
    a, b = metrics(full), metrics(killed)
    assert b["test"] == a["test"]
    for key in ("best_epoch", "best_loo_ndcg@10", "epochs_run", "data_fingerprint"):
        assert b[key] == a[key], key
    assert a["epochs_run"] == 4
    assert history(killed) == history(full)
    assert len(history(full)) == 4
    a_state, b_state = state_dict(full / "model.pt"), state_dict(killed / "model.pt")
    assert a_state.keys() == b_state.keys()
    assert all(torch.equal(a_state[k], b_state[k]) for k in a_state)


# --------------------------------------------------------------------------- resume refusals


def test_resume_refuses_a_finished_run(killed_and_resumed, capsys):
    assert main(["train", "--resume", str(killed_and_resumed["full"])]) == 2
    assert "the run already finished" in capsys.readouterr().err


def test_resume_refuses_a_run_without_checkpoint(killed_and_resumed, tmp_path, capsys):
    run = shutil.copytree(killed_and_resumed["snapshot"], tmp_path / "run")
    (run / CHECKPOINT).unlink()
    assert main(["train", "--resume", str(run)]) == 2
    assert "no epoch finished before it stopped" in capsys.readouterr().err


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run\n")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no config.toml (not a run directory)" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_resume_refuses_an_unreadable_checkpoint(killed_and_resumed, tmp_path, capsys, damage):
    run = shutil.copytree(killed_and_resumed["snapshot"], tmp_path / "run")
    raw = (run / CHECKPOINT).read_bytes()
    damaged = {"truncated": raw[: len(raw) // 2], "garbage": b"\x00garbage" * 10, "empty": b""}
    (run / CHECKPOINT).write_bytes(damaged[damage])
    assert main(["train", "--resume", str(run)]) == 2
    assert f"{CHECKPOINT} is unreadable" in capsys.readouterr().err
    assert not (run / "metrics.json").exists()


class _Resumed(Exception):
    """Raised in place of training: the resume went past its checkpoint checks."""


def test_resume_refuses_a_checkpoint_with_corrupted_bytes(
    killed_and_resumed, tmp_path, capsys, monkeypatch
):
    run = shutil.copytree(killed_and_resumed["snapshot"], tmp_path / "run")
    raw = bytearray((run / CHECKPOINT).read_bytes())
    middle = len(raw) // 2  # inside the stored tensors
    raw[middle : middle + 64] = b"\xff" * 64
    (run / CHECKPOINT).write_bytes(bytes(raw))
    assert zipfile.ZipFile(run / CHECKPOINT).testzip() is not None  # the CRC no longer matches

    def accepted(config):
        raise _Resumed(f"resumed {run} from a corrupt {CHECKPOINT}")

    monkeypatch.setattr("pyro_bamf.runs.build_split", accepted)  # no training if accepted
    assert main(["train", "--resume", str(run)]) == 2
    assert CHECKPOINT in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_of_other_data(killed_and_resumed, tmp_path, capsys):
    run = shutil.copytree(killed_and_resumed["snapshot"], tmp_path / "run")
    config = BAMFConfig.from_toml(run / "config.toml").replace(max_history=39)
    (run / "config.toml").write_text(config.to_toml())
    payload = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    torch.save({**payload, "config": config.to_dict()}, run / CHECKPOINT)  # edited alike
    assert main(["train", "--resume", str(run)]) == 2
    assert "trained on other data or another split" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--set", "lr=0.1"], ["--out", "x"], ["--config", "c.toml"]])
def test_resume_with_other_options_exits_2(killed_and_resumed, tmp_path, capsys, extra):
    run = shutil.copytree(killed_and_resumed["snapshot"], tmp_path / "run")
    assert main(["train", "--resume", str(run), *extra]) == 2
    assert "drop --config/--set/--out" in capsys.readouterr().err
    assert load_train_state(run).epoch == 2  # untouched


# --------------------------------------------------------------------------- determinism


def without_timing(record: dict) -> dict:
    return {
        k: v
        for k, v in record.items()
        if k not in ("train_seconds_per_epoch_median", "eval_seconds")
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    train_run(TINY, out, progress=False, log_epochs=False)
    return out


def test_same_seed_twice_gives_identical_metrics_json(tiny_run, tmp_path):
    torch.manual_seed(1234)  # the run reseeds itself: the global state must not matter
    again = tmp_path / "again"
    train_run(TINY, again, progress=False, log_epochs=False)
    assert without_timing(metrics(again)) == without_timing(metrics(tiny_run))
    assert (again / "config.toml").read_bytes() == (tiny_run / "config.toml").read_bytes()
    assert history(again) == history(tiny_run)
    a, b = state_dict(tiny_run / "model.pt"), state_dict(again / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- non-finite loss


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tiny_run, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    real_step = training.svi_step
    after_epoch_1 = []

    def poisoned(model, *args, **kwargs):
        """The real step; at step 2 of epoch 2 a likelihood weight turns NaN first."""
        if (out / CHECKPOINT).exists():
            after_epoch_1.append(True)
            if len(after_epoch_1) == 2:
                with torch.no_grad():
                    model.get_parameter("head.0.weight").fill_(math.nan)
        return real_step(model, *args, **kwargs)

    monkeypatch.setattr(training, "svi_step", poisoned)
    with pytest.raises(FloatingPointError, match=r"^epoch 2, step 2: non-finite loss \(NLL"):
        train_run(TINY, out, progress=False, log_epochs=False)
    names = set(os.listdir(out))
    assert {INCOMPLETE, CHECKPOINT, "config.toml", "history.csv"} <= names
    assert not names & {"metrics.json", "model.pt"} and stray_parts(out) == []
    assert [row[0] for row in history(out)] == ["1"]
    state = load_train_state(out)
    assert state.epoch == 1
    assert all(torch.isfinite(t).all() for t in state.model.values())
    assert all(torch.isfinite(t).all() for t in state.best_model.values())

    monkeypatch.setattr(training, "svi_step", real_step)  # the fault is gone: resume
    resumed = train_run(TINY, out, progress=False, log_epochs=False, resume=True)
    assert without_timing(resumed) == without_timing(metrics(tiny_run))
    assert history(out) == history(tiny_run)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_floating_point_error_exits_2_on_the_command_line(tmp_path, monkeypatch, capsys):
    def failing(*args, **kwargs):
        raise FloatingPointError("non-finite loss (KL term went bad)")

    monkeypatch.setattr(training, "svi_step", failing)
    args = ["train", "--out", str(tmp_path / "run"), "--no-progress"]
    for key, value in TINY.to_dict().items():
        if value != getattr(BAMFConfig(), key):
            args += ["--set", f"{key}={json.dumps(value)}"]
    assert main(args) == 2
    assert "epoch 1, step 1: non-finite loss (KL term went bad)" in capsys.readouterr().err
    assert (tmp_path / "run" / INCOMPLETE).exists()


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("change", [{"max_history": 19}, {"seed": 6}, {"history": "all"}])
def test_model_checkpoint_on_another_split_raises_checkpoint_error(tiny_run, change):
    split = build_split(TINY.replace(**change))
    with pytest.raises(CheckpointError, match="fingerprint"):
        BAMFRecommender.load(tiny_run / "model.pt", split)


def test_model_checkpoint_of_another_format_raises_checkpoint_error(tiny_run, tmp_path):
    payload = torch.load(tiny_run / "model.pt", weights_only=True)
    payload["format"] = 99
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        BAMFRecommender.load(tmp_path / "model.pt", build_split(TINY))
    loaded = BAMFRecommender.load(tiny_run / "model.pt", build_split(TINY))  # the original is fine
    assert loaded.evaluate() == metrics(tiny_run)["test"]


# --------------------------------------------------------------------------- late validation


def test_missing_test_candidates_file_is_refused_before_training(tmp_path):
    out = tmp_path / "run"
    config = TINY.replace(max_epochs=1, test_candidates=str(tmp_path / "missing.npz"))
    with pytest.raises(DataError, match="no such candidates file"):
        train_run(config, out, progress=False, log_epochs=False)
    assert not (out / "history.csv").exists(), "an epoch was trained before the check"


def test_a_checkpoint_without_a_recorded_config_resumes_with_a_warning(
    killed_and_resumed, tmp_path
):
    run = shutil.copytree(killed_and_resumed["snapshot"], tmp_path / "run")
    payload = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    assert BAMFConfig.from_dict(payload.pop("config")) == BAMFConfig.from_toml(run / "config.toml")
    torch.save(payload, run / CHECKPOINT)
    with pytest.warns(UserWarning, match="predates recorded configurations"):
        resumed = train_run(BAMFConfig(), run, progress=False, log_epochs=False, resume=True)
    assert without_timing(resumed) == without_timing(metrics(killed_and_resumed["full"]))


# --------------------------------------------------------------------------- existing runs


def test_overwrite_replaces_only_the_runs_own_files(tiny_run, tmp_path):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    (out / "metrics.json").write_text("{}")  # what the new run must replace
    with pytest.raises(ValueError, match="holds a finished run: pass --overwrite"):
        train_run(TINY, out, progress=False, log_epochs=False)
    assert (out / "metrics.json").read_text() == "{}"
    train_run(TINY, out, progress=False, log_epochs=False, overwrite=True)
    assert without_timing(metrics(out)) == without_timing(metrics(tiny_run))
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(out)) == sorted(os.listdir(tiny_run) + ["notes.txt"])


def test_overwrite_that_fails_in_training_puts_the_old_run_back(tiny_run, tmp_path, monkeypatch):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def failing(*args, **kwargs):
        assert "the run it replaces waits in .replaced/" in (out / INCOMPLETE).read_text()
        assert sorted(os.listdir(out)) == [".replaced", INCOMPLETE, "config.toml"]
        raise FloatingPointError("non-finite loss (NLL term went bad)")

    monkeypatch.setattr(training, "svi_step", failing)
    with pytest.raises(FloatingPointError):
        train_run(TINY, out, progress=False, log_epochs=False, overwrite=True)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["run"]  # .replaced is gone


def test_a_terminated_overwrite_puts_the_old_run_back(tiny_run, tmp_path):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    command = [*train_command(out), "--overwrite"]
    with reaped(command, stdout=subprocess.PIPE) as process:
        for line in process.stdout:  # after epoch 1 the new run has a checkpoint
            if re.match(r"epoch\s+1\s", line):
                break
        assert (out / CHECKPOINT).is_file() and (out / ".replaced" / "metrics.json").is_file()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_a_killed_overwrite_keeps_the_old_run_until_the_new_one_is_resumed_to_its_end(
    killed_and_resumed, tmp_path
):
    run = shutil.copytree(killed_and_resumed["snapshot"], tmp_path / "run")
    (run / ".replaced").mkdir()  # as a SIGKILLed --overwrite leaves it
    (run / ".replaced" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="holds an interrupted run"):  # not a folder of others
        train_run(BAMFConfig(), run, progress=False, log_epochs=False)
    train_run(BAMFConfig(), run, progress=False, log_epochs=False, resume=True)
    assert not (run / ".replaced").exists() and (run / "metrics.json").read_text() != "{}"


def test_a_user_who_has_seen_every_item_is_refused_before_anything_is_written(tmp_path):
    rows = [(u, i) for u in range(1, 30) for i in range(u, u + 8)]  # items 1..36
    rows += [(0, item) for item in range(1, 37)]  # user 0 has seen every one
    table = tmp_path / "table.csv"
    table.write_text("userId,movieId\n" + "".join(f"{u},{i}\n" for u, i in rows))
    config = TINY.replace(data=str(table), eval_protocol="full")
    with pytest.raises(DataError, match=r"user 0 \(original id 0\) has interacted with all"):
        train_run(config, tmp_path / "run", progress=False, log_epochs=False)
    assert not (tmp_path / "run").exists()


def test_sizes_too_large_for_the_machine_together_are_refused_before_writing(tmp_path):
    data = "synthetic:n_users=300,n_items=2000,mean_interactions=120,seed=1"
    config = TINY.replace(data=data, embedding_dim=4096, batch_size=65536, max_history=400)
    with pytest.raises(ConfigError, match=r"^a training step would need ~\d+\.\d GiB, more than"):
        train_run(config, tmp_path / "run", progress=False, log_epochs=False)
    assert not (tmp_path / "run").exists()


def test_pools_too_large_for_the_memory_are_refused(monkeypatch):
    split = build_split(TINY)
    monkeypatch.setattr(runs, "_total_memory", lambda device: 2**16)  # 64 KiB
    with pytest.raises(ConfigError, match=r"test and leave-one-out pools .* lower eval_negatives"):
        runs.check_memory(TINY.replace(embedding_dim=2, batch_size=5), split, torch.device("cpu"))
    monkeypatch.setattr(runs, "_total_memory", lambda device: None)  # unknown: nothing checked
    runs.check_memory(TINY.replace(eval_negatives=100_000), split, torch.device("cpu"))


def test_overwrite_of_a_run_refused_later_keeps_the_run(tiny_run, tmp_path):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(DataError, match="no such candidates file"):
        train_run(
            TINY.replace(test_candidates=str(tmp_path / "missing.npz")),
            out,
            progress=False,
            log_epochs=False,
            overwrite=True,
        )
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_a_relative_data_path_is_recorded_absolute_and_evaluates_anywhere(tmp_path, monkeypatch):
    table = build_split(TINY).data
    frame = "userId,movieId\n" + "".join(
        f"{u},{i}\n" for u, i in zip(table.users.tolist(), table.items.tolist(), strict=True)
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "table.csv").write_text(frame)
    monkeypatch.chdir(tmp_path / "data")
    config = TINY.replace(data="table.csv", max_epochs=1)
    train_run(config, tmp_path / "run", progress=False, log_epochs=False)
    recorded = BAMFConfig.from_toml(tmp_path / "run" / "config.toml").data
    assert recorded == str(tmp_path / "data" / "table.csv")
    monkeypatch.chdir(tmp_path)
    fresh, saved = evaluate_run("run")
    assert fresh.means == {p: saved[p] for p in ("test", "test_full")}


def test_a_distributed_checkpoint_is_not_resumed(killed_and_resumed, tmp_path, capsys):
    run = tmp_path / "ddp"
    shutil.copytree(killed_and_resumed["snapshot"], run)
    payload = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    torch.save({**payload, "world_size": 2}, run / CHECKPOINT)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "distributed runs cannot be resumed" in capsys.readouterr().err


# --------------------------------------------------------------------------- file modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_permissions_of_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        with atomic_path(tmp_path / "new" / "notes.txt") as tmp:
            tmp.write_text("x")
        split = build_split(TINY)
        split.candidates("test", 3).save(tmp_path / "pool.npz", split.fingerprint)
    finally:
        unchanged = os.umask(previous) == umask
    assert unchanged, "atomic_path changed the process umask"
    for written in (tmp_path / "new" / "notes.txt", tmp_path / "pool.npz"):
        assert stat.S_IMODE(written.stat().st_mode) == mode, written
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["new", "notes.txt", "pool.npz"]


def test_atomic_path_takes_another_temporary_name_when_one_is_taken(tmp_path, monkeypatch):
    names = iter(["taken", "free"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda nbytes: next(names))
    taken = tmp_path / ".notes.txt.taken.part"
    taken.write_text("another writer's file")
    with atomic_path(tmp_path / "notes.txt") as tmp:
        assert tmp == tmp_path / ".notes.txt.free.part"
        tmp.write_text("mine")
    assert taken.read_text() == "another writer's file"
    assert (tmp_path / "notes.txt").read_text() == "mine"
