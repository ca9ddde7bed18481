"""BAMF trained with Pyro's own loop: ``SVI(bamf.model, bamf.guide, pyro.optim.Adam, ELBO)``.

    python examples/svi.py --data movielens --epochs 2

The model and guide are :class:`pyro_bamf.BAMF`'s, the batches the package's (a positive and
its negatives per group, fresh negatives every epoch), and the loss the paper's: the
batch-mean NLL plus the KL per attention weight, annealed over ``kl_anneal_epochs``. Both
weights reach Pyro as the ``obs_scale`` and ``kl_scale`` arguments of ``model`` and ``guide``,
which apply them as ``poutine.scale`` factors (``loss_scales`` computes them). The analytic
KL of ``TraceMeanField_ELBO`` is the paper's; ``--elbo trace`` samples it (``Trace_ELBO``).
Each epoch prints its mean loss and the leave-one-out NDCG@10. ``pyro_bamf.training.fit``
takes the same steps, with early stopping, checkpoints and NaN checks, and with Pyro's
validation off (here it is on, as Pyro's default: the same values, more slowly).
"""

from __future__ import annotations

import argparse

import numpy as np
import pyro
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

from pyro_bamf import BAMFConfig
from pyro_bamf.batch import training_batches
from pyro_bamf.evaluation import score_candidates
from pyro_bamf.fastpaths import build_model
from pyro_bamf.metrics import ranking_metrics
from pyro_bamf.runs import build_split
from pyro_bamf.training import kl_lambda, loss_scales


def main(argv: list[str] | None = None) -> list[tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="movielens", help="a data spec (see README)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--elbo", choices=("meanfield", "trace"), default="meanfield")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    config = BAMFConfig(data=args.data, seed=args.seed, elbo=args.elbo)  # the defaults
    pyro.set_rng_seed(config.seed)
    pyro.clear_param_store()
    split = build_split(config)
    # BAMF(split.n_users, split.n_items, config) with the faster implementations of its score
    # networks that this machine has (pyro_bamf.fastpaths): the same model, the same sites
    bamf = build_model(split.n_users, split.n_items, config, "cpu")
    optimizer = Adam({"lr": config.lr, "weight_decay": config.weight_decay})
    elbo = TraceMeanField_ELBO() if config.elbo == "meanfield" else Trace_ELBO()
    svi = SVI(bamf.model, bamf.guide, optimizer, elbo)

    loo = split.candidates("loo", config.eval_negatives)
    negatives = np.random.default_rng([config.seed, 1])  # as fit draws them
    history = []
    for epoch in range(1, args.epochs + 1):
        bamf.train()
        weight = kl_lambda(config, epoch)
        losses = [
            svi.step(batch, *loss_scales(config, batch, weight))
            for batch in training_batches(split, config, negatives)
        ]
        bamf.eval()
        scores = score_candidates(
            bamf, loo.users, loo.items, split.history_items, split.history_lengths
        )
        ndcg = ranking_metrics(loo.users, loo.labels, scores, ks=(10,))["ndcg@10"]
        print(f"epoch {epoch}  loss {np.mean(losses):.4f}  LOO ndcg@10 {ndcg:.4f}", flush=True)
        history.append((float(np.mean(losses)), ndcg))
    return history


if __name__ == "__main__":
    main()
