"""The recipes of docs/extending.md (examples/extending.py): a user's prior, guide and score
network train, evaluate and survive save, load, resume and new processes; a user's baseline
runs on the pools of ``train``."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_bamf import (
    BAMF,
    BAMFConfig,
    BAMFRecommender,
    CheckpointError,
    ConfigError,
    register_prior,
)
from pyro_bamf import runs as runs_module
from pyro_bamf.families import PRIORS
from pyro_bamf.registry import RegistryError
from pyro_bamf.runs import build_split, load_run, train_run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = "synthetic:n_users=40,n_items=80,mean_interactions=12,seed=1"


@pytest.fixture(scope="module")
def recipes():
    """examples/extending.py imported as the module ``extending`` (as a user's own module)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("extending")
    finally:
        sys.path.remove(str(EXAMPLES))


def small(**changes) -> BAMFConfig:
    settings = dict(data=DATA, embedding_dim=8, max_epochs=1, warmup_epochs=0, eval_negatives=19)
    return BAMFConfig(**{**settings, **changes})


def fitted(config: BAMFConfig) -> tuple[BAMFRecommender, list]:
    recommender = BAMFRecommender(config)
    history = recommender.fit(build_split(config), progress=False).history
    assert all(math.isfinite(row.nll) and math.isfinite(row.kl) for row in history)
    return recommender, history


def test_recipe_prior_a_lognormal_mixture_of_the_prior_mean(recipes, tmp_path):
    log_mean = torch.tensor([-0.5, 0.0, 1.2])
    mixture = recipes.lognormal_mixture(log_mean, sigma=1.0)
    torch.testing.assert_close(mixture.mean, log_mean.exp())
    config = small(prior_family=recipes.lognormal_mixture)
    assert config.prior_family == "extending:lognormal_mixture"  # any process can import it
    recommender, history = fitted(config)
    assert [row.kl_method for row in history] == ["monte_carlo"]  # no closed-form KL
    assert recommender.model.user_prior.family.func is recipes.lognormal_mixture
    recommender.save(tmp_path / "model.pt")
    loaded = BAMFRecommender.load(tmp_path / "model.pt", recommender.split)
    assert loaded.model.user_prior.family.func is recipes.lognormal_mixture
    users, items = np.array([0, 0, 3]), np.array([1, 2, 5])
    np.testing.assert_array_equal(loaded.score(users, items), recommender.score(users, items))


def test_recipe_guide_a_gamma_of_mean_exp_psi_with_a_learned_spread(recipes):
    psi, spread = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([0.1, 0.3, 0.5])
    guide = recipes.gamma_guide(psi, spread)
    torch.testing.assert_close(guide.mean, psi.exp())
    torch.testing.assert_close(guide.stddev / guide.mean, spread)
    config = small(guide_family=recipes.gamma_guide, guide_spread="learned")
    assert config.guide_family == "extending:gamma_guide"
    assert small(guide_family="gamma").guide_family == "gamma"  # a name stays as given
    recommender, history = fitted(config)
    assert [row.kl_method for row in history] == ["monte_carlo"]
    spread_row = recommender.model.user_scorer.out.weight[1]
    assert spread_row.abs().sum() > 0  # the learned spread trained from its zero start


@pytest.mark.parametrize("spread", ["fixed", "learned"])
def test_recipe_score_network_an_mlp_runs_in_training_and_evaluation(recipes, spread):
    config = small(score_fn=recipes.MLPScores, guide_spread=spread)
    assert config.score_fn == "extending:MLPScores"
    split = build_split(config)
    pyro.set_rng_seed(config.seed)  # as fit seeds the model it builds
    initial = BAMF(split.n_users, split.n_items, config).user_scorer.layers[0].weight.detach()
    recommender, _ = fitted(config)
    scorer = recommender.model.user_scorer
    assert type(scorer) is recipes.MLPScores  # no fast path replaces a user's network
    assert not torch.equal(scorer.layers[0].weight, initial)  # it trained
    metrics = recommender.evaluate()
    assert 0.0 <= metrics["ndcg@10"] <= 1.0


def test_recipe_baseline_random_runs_on_the_pools_of_train(recipes, tmp_path):
    import json

    from pyro_bamf.baselines.run import baseline_run

    records = {
        method: baseline_run(method, small(), tmp_path / method.replace(":", "_"))
        for method in ("random", "extending:Random", "popularity")
    }
    assert records["random"]["test"] == records["extending:Random"]["test"]
    assert records["random"]["pool_fingerprints"] == records["popularity"]["pool_fingerprints"]
    assert records["random"]["test"]["ndcg@10"] < records["popularity"]["test"]["ndcg@10"]
    saved = json.loads((tmp_path / "extending_Random" / "metrics.json").read_text())
    assert saved["method"] == "extending:Random"


def test_the_prior_study_runs_the_user_defined_prior(recipes, load_script):
    study = load_script(EXAMPLES / "prior_study.py")
    assert "lognormal/lognormal_mixture" in study.DEFAULT_PAIRS
    for changes in study.PAIRS.values():
        BAMFConfig(**changes)  # every pair's families resolve
    family = BAMFConfig(**study.PAIRS["lognormal/lognormal_mixture"]).prior_family
    assert PRIORS.resolve(family) is recipes.lognormal_mixture


def test_families_named_by_import_path_survive_resume_and_new_processes(recipes, tmp_path):
    out = tmp_path / "run"
    config = small(prior_family="extending:lognormal_mixture", max_epochs=2)
    write_history = runs_module.write_history

    def interrupted(path, rows):
        write_history(path, rows)
        if len(rows) == 2:
            raise KeyboardInterrupt  # in the second epoch, after the first one's checkpoint

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs_module, "write_history", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_run(config, out, progress=False, log_epochs=False)
    assert 'prior_family = "extending:lognormal_mixture"' in (out / "config.toml").read_text()
    train_run(config, out, progress=False, log_epochs=False, resume=True)
    assert load_run(out).model.user_prior.family.func is recipes.lognormal_mixture
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pyro_bamf", "evaluate", "--run", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ndcg@10" in done.stdout


def test_a_family_that_cannot_be_imported_at_load_is_named(tmp_path):
    module = tmp_path / "gone_priors.py"
    module.write_text(
        "import pyro.distributions as dist\n\n"
        "def wide(log_mean, sigma):\n"
        "    return dist.LogNormal(log_mean - 2.0, 2.0)\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        recommender, _ = fitted(small(prior_family="gone_priors:wide"))
        recommender.save(tmp_path / "model.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gone_priors")
    module.unlink()
    with pytest.raises(CheckpointError, match=r"prior family 'gone_priors:wide' cannot be imp"):
        BAMFRecommender.load(tmp_path / "model.pt", recommender.split)


def test_what_cannot_be_recorded_or_bound_is_refused_with_the_way_on():
    with pytest.raises(ConfigError, match=r"cannot be recorded .*register_prior\(name"):
        BAMFConfig(prior_family=lambda log_mean: None)
    with pytest.raises(ConfigError, match=r"unknown guide family 'gama'.*register_guide"):
        BAMFConfig(guide_family="gama")
    with pytest.raises(ConfigError, match=r"score_fn: .*'nowhere.mod:f' cannot be imported"):
        BAMFConfig(score_fn="nowhere.mod:f")
    with pytest.raises(RegistryError, match="'lognormal' is already registered"):
        register_prior("lognormal", lambda log_mean: None)
    register_prior("needs_nu", _needs_nu, replace=True)
    with pytest.raises(RegistryError, match="requires nu, which BAMF does not supply"):
        BAMFRecommender(small(prior_family="needs_nu")).fit(build_split(small()), progress=False)


def _needs_nu(log_mean, sigma, nu):
    raise AssertionError("never called")
