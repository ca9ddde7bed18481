"""The benchmark's plain-PyTorch step computes the loss of the Pyro step it is compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_bamf.batch import Batch
from pyro_bamf.config import BAMFConfig
from pyro_bamf.data import ImplicitSplit, make_synthetic
from pyro_bamf.model import BAMF
from pyro_bamf.training import loss_scales, make_elbo

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


@pytest.mark.parametrize("score_fn", ["concat", "prod"])
def test_plain_torch_loss_equals_the_pyro_loss_and_its_gradients(score_fn, load_script):
    split = ImplicitSplit.from_interactions(
        make_synthetic(n_users=30, n_items=60, rank=3, mean_interactions=12, seed=0), seed=0
    )
    users = np.array([0, 5, 6, 11])
    positives = np.array([split.train.items[split.train.users == u][0] for u in users])
    items = np.concatenate(
        [positives[:, None], split.sample_negatives(users, 4, np.random.default_rng(0))], 1
    )
    labels = np.zeros(items.shape, dtype=np.float32)
    labels[:, 0] = 1.0
    batch = Batch.build(users, items, split.history_items, split.history_lengths, labels)
    config = BAMFConfig(embedding_dim=8, score_fn=score_fn, fused_scores=True)
    model = BAMF(split.n_users, split.n_items, config)
    scales = loss_scales(config, batch, 0.3)
    losses, grads = [], []
    for loss_of in (
        lambda: make_elbo(config).differentiable_loss(model.model, model.guide, batch, *scales),
        lambda: load_script(BENCH).torch_loss(model, batch, *scales),
    ):
        pyro.set_rng_seed(3)
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
    for plain, pyro_grad in zip(*reversed(grads), strict=True):
        torch.testing.assert_close(plain, pyro_grad, rtol=1e-5, atol=1e-7)
