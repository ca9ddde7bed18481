"""Data-parallel training: 2 gloo processes on this machine, launched by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_bamf.cli import main

WORKER = Path(__file__).with_name("distributed_worker.py")


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", *args]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    done = torchrun([str(WORKER), str(out)], out)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_ranks_train_on_disjoint_halves_of_the_global_batch(ranks):
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert sum(r["shard_groups"] for r in ranks) == ranks[0]["global_groups"]
    shards = [sorted(map(tuple, r["shard_keys"])) for r in ranks]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(map(tuple, ranks[0]["global_keys"]))


def test_summed_shard_loss_matches_the_single_process_loss(ranks):
    for r in ranks:
        assert r["summed_loss"] == pytest.approx(r["single_loss"], rel=1e-5)


def test_synchronised_gradient_is_the_global_batch_gradient(ranks):
    for r in ranks:
        assert r["grad_max_abs_diff"] <= 1e-4 * r["grad_max_abs"]


def test_parameters_stay_identical_across_ranks(ranks):
    for r in ranks:
        assert r["params_identical_across_ranks"] and r["params_changed"]


def test_torchrun_train_writes_one_run_directory(tmp_path):
    out = tmp_path / "run"
    settings = ["data=synthetic:n_users=40,n_items=100,mean_interactions=14,seed=1",
                "max_epochs=2", "warmup_epochs=0", "max_history=20"]  # fmt: skip
    args = ["-m", "pyro_bamf", "train", "--out", str(out), "--no-progress", "--distributed"]
    for setting in settings:
        args += ["--set", setting]
    done = torchrun(args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.toml", "history.csv", "metrics.json", "model.pt", "per_user.csv",
    ]  # fmt: skip
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    assert done.stdout.count('"ndcg@10"') == 1  # only rank 0 reports


def test_distributed_outside_torchrun_is_a_clear_error(tmp_path, capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    args = ["train", "--out", str(tmp_path / "r"), "--distributed", "--set", "data=synthetic"]
    assert main(args) == 2
    assert "torchrun" in capsys.readouterr().err
