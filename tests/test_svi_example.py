"""``examples/svi.py``: BAMF under Pyro's own ``SVI`` loop, and its loss against ``fit``'s."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

from pyro_bamf import BAMF, BAMFConfig
from pyro_bamf.batch import training_batches
from pyro_bamf.runs import build_split
from pyro_bamf.training import loss_scales, make_elbo, make_optimizer, svi_step

DATA = "synthetic:n_users=40,n_items=120,mean_interactions=12,seed=2"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "svi.py"


@pytest.mark.filterwarnings("ignore:.*pools repeat negatives")
def test_the_example_trains_and_reports_each_epoch(capsys, load_script):
    history = load_script(EXAMPLE).main(["--data", DATA, "--epochs", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1"], ["epoch", "2"]]
    assert len(history) == 2 and all(
        math.isfinite(loss) and 0 <= ndcg <= 1 for loss, ndcg in history
    )


@pytest.mark.parametrize(
    ("kind", "pyro_elbo"), [("meanfield", TraceMeanField_ELBO), ("trace", Trace_ELBO)]
)
def test_an_svi_step_has_fits_loss_on_the_same_batch_and_draws(kind, pyro_elbo):
    config = BAMFConfig(data=DATA, seed=3, embedding_dim=8, max_history=20, elbo=kind)
    split = build_split(config)
    batch = next(training_batches(split, config, np.random.default_rng(0)))
    scales = loss_scales(config, batch, weight=0.3)
    losses, changed = [], []
    for take_step in ("svi", "fit"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model = BAMF(split.n_users, split.n_items, config)
        before = [p.detach().clone() for p in model.parameters()]
        pyro.set_rng_seed(7)  # the same dropout masks and latent draws
        if take_step == "svi":
            svi = SVI(model.model, model.guide, Adam({"lr": config.lr}), pyro_elbo())
            losses.append(svi.step(batch, *scales))
        else:
            elbo, optimizer = make_elbo(config), make_optimizer(model, config)
            losses.append(svi_step(model, elbo, optimizer, batch, *scales).loss)
        after = list(model.parameters())
        changed.append(sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True)))
    # SVI sums the terms' floats in double precision, fit one float32 tensor: ~1 ulp apart
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert changed[0] == changed[1] > 10  # Pyro's optimiser found every trained parameter
