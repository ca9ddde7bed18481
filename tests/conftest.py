"""Shared fixtures."""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_bamf.data import Interactions, make_synthetic


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global random state."""
    np.random.seed(0)  # noqa: NPY002 - seeds code that uses the global legacy state
    random.seed(0)
    yield


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """$BAMF_DATA_DIR, which must hold ml-latest-small/ (skipped when the variable is unset)."""
    value = os.environ.get("BAMF_DATA_DIR")
    if not value:
        pytest.skip("BAMF_DATA_DIR is unset: point it at a folder holding ml-latest-small/")
    root = Path(value).expanduser()
    if not (root / "ml-latest-small" / "ratings.csv").is_file():
        pytest.fail(f"BAMF_DATA_DIR={value} holds no ml-latest-small/ratings.csv")
    return root


@pytest.fixture(scope="session")
def small_data() -> Interactions:
    """A small synthetic data set (120 users, 300 items, ~20 interactions per user)."""
    return make_synthetic(n_users=120, n_items=300, rank=4, mean_interactions=20, seed=0)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Pyro's global parameter store is emptied and torch/numpy/random seeded for every test."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The models under test are tiny: one intra-op thread avoids contention on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def load_script():
    """``load_script(path)``: a script of the repository (an example, a benchmark) imported as
    a module, so that tests call its functions."""

    def load(path: Path):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
