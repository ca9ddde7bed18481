"""Training fingerprint: a short hash of what a fixed synthetic training computes.

    python benchmarks/fingerprint.py

Trains two epochs of pointwise concat, pairwise prod and pointwise prod (paper settings but a
synthetic data set and K = 16) and hashes, per row, every epoch's NLL, KL and leave-one-out
NDCG@10 and every parameter's sum, all printed with 17 significant digits. A change that leaves
the training arithmetic bit for bit (a refactor, a faster path) leaves the three hashes as
they are; any change of a value, however small, changes them. Compare hashes from the same
machine and library versions.
"""

from __future__ import annotations

import hashlib
import warnings

import torch

from pyro_bamf import BAMFConfig, BAMFRecommender
from pyro_bamf.data import ImplicitSplit, load_data

DATA = "synthetic:n_users=120,n_items=300,mean_interactions=25,seed=3"
ROWS = {
    "pointwise concat": dict(learning="pointwise", score_fn="concat"),
    "pairwise prod": dict(learning="pairwise", score_fn="prod"),
    "pointwise prod": dict(learning="pointwise", score_fn="prod"),
}


def fingerprint(**settings) -> str:
    """The hash of two epochs of training under ``settings`` (16 hex digits)."""
    config = BAMFConfig(
        data=DATA, embedding_dim=16, max_history=50, max_epochs=2, warmup_epochs=0,
        eval_negatives=49, lr=1e-3, **settings,
    )  # fmt: skip
    split = ImplicitSplit.from_interactions(
        load_data(config.data), seed=config.seed, max_history=config.max_history
    )
    recommender = BAMFRecommender(config)
    result = recommender.fit(split, progress=False)
    lines = [f"{r.epoch} {r.nll:.17g} {r.kl:.17g} {r.loo_ndcg10:.17g}" for r in result.history]
    parameters = recommender.model.named_parameters()
    lines += [f"{name} {float(value.double().sum()):.17g}" for name, value in parameters]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the small synthetic pools repeat negatives, and say so
    for name, settings in ROWS.items():
        print(f"{name:18s} {fingerprint(**settings)}", flush=True)


if __name__ == "__main__":
    main()
