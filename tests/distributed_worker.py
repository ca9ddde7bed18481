"""One rank of tests/test_distributed.py, launched by torchrun (2 processes, gloo).

Writes ``rank<r>.json`` into the folder given as the first argument.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyro
import torch
from torch.nn.parallel import DistributedDataParallel

from pyro_bamf import BAMF, BAMFConfig
from pyro_bamf.batch import training_batches
from pyro_bamf.data import ImplicitSplit, make_synthetic
from pyro_bamf.distributed import finish_distributed, init_distributed
from pyro_bamf.training import NegativeELBO, loss_scales, make_elbo, svi_step


def keys(batch) -> list[list[int]]:
    """(user, item of each example) per group."""
    return [[int(u), *map(int, row)] for u, row in zip(batch.users, batch.items, strict=True)]


def flat(values) -> torch.Tensor:
    return torch.cat([v.detach().reshape(-1) for v in values])


def main(out: Path) -> None:
    torch.set_num_threads(1)
    context = init_distributed(torch.device("cpu"))
    # dropout off and a tiny guide sigma: the ranks' different latent draws barely matter
    config = BAMFConfig(embedding_dim=8, dropout=0.0, guide_sigma=1e-5, batch_size=60)
    data = make_synthetic(n_users=40, n_items=80, rank=3, mean_interactions=14, seed=1)
    split = ImplicitSplit.from_interactions(data, seed=1, max_history=20)
    batches = list(training_batches(split, config, np.random.default_rng(0)))[:4]

    def fresh() -> BAMF:
        pyro.set_rng_seed(0)
        return BAMF(split.n_users, split.n_items, config)

    single = NegativeELBO(fresh(), make_elbo(config))
    model = fresh()
    ddp = DistributedDataParallel(
        NegativeELBO(model, make_elbo(config)), find_unused_parameters=True
    )
    batch = batches[0]
    scales = loss_scales(config, batch, 0.5)
    ranks = context.world_size

    # the global-batch loss and gradient against the ranks' shards
    single_loss = single(batch, *scales)
    single_loss.backward()
    shard_loss = ddp(context.shard(batch), *(ranks * s for s in scales))
    shard_loss.backward()
    summed_loss = context.sum([shard_loss.item()])[0] / ranks
    single_grad = flat(p.grad for p in single.model.parameters())
    ddp_grad = flat(p.grad for p in model.parameters())

    # a few optimiser steps: every rank must hold the same parameters
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    elbo = make_elbo(config)
    for step_batch in batches:
        step_scales = tuple(ranks * s for s in loss_scales(config, step_batch, 0.5))
        svi_step(model, elbo, optimizer, context.shard(step_batch), *step_scales, objective=ddp)
    params = flat(model.parameters())
    gathered = [torch.empty_like(params) for _ in range(ranks)]
    torch.distributed.all_gather(gathered, params)
    result = {
        "rank": context.rank,
        "world_size": ranks,
        "shard_groups": len(context.shard(batch).users),
        "global_groups": len(batch.users),
        "shard_keys": keys(context.shard(batch)),
        "global_keys": keys(batch),
        "single_loss": single_loss.item(),
        "summed_loss": summed_loss,
        "grad_max_abs_diff": float((single_grad - ddp_grad).abs().max()),
        "grad_max_abs": float(single_grad.abs().max()),
        "params_identical_across_ranks": all(torch.equal(params, g) for g in gathered),
        "params_changed": not torch.equal(params, flat(fresh().parameters())),
    }
    (out / f"rank{context.rank}.json").write_text(json.dumps(result))
    finish_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
