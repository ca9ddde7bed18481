"""Your own prior, guide, score network and baseline: the four recipes of docs/extending.md.

    python examples/extending.py --data synthetic --epochs 2

Each is a plain function or ``nn.Module`` registered under a name, as the built-ins are.
Importing this module registers them; a configuration can also name them by import path
(``"extending:lognormal_mixture"`` with ``examples/`` on ``PYTHONPATH``), which works in a new
process (``pyro-bamf train``, ``evaluate``, ``--resume``) without importing anything first.
"""

from __future__ import annotations

import argparse

import numpy as np
import pyro.distributions as dist
import torch
from torch import nn

from pyro_bamf import BAMFConfig, register_guide, register_prior, register_score_network
from pyro_bamf.baselines import BASELINES, Baseline
from pyro_bamf.runs import build_split


@register_prior("lognormal_mixture")
def lognormal_mixture(log_mean: torch.Tensor, sigma: float, narrow: float = 0.25):
    """Half ``LogNormal(m - narrow^2/2, narrow)``, half ``LogNormal(m - sigma^2/2, sigma)``:
    both of mean ``exp(m)``, so the mixture is too; a spike of weights near their mean and a
    heavy-tailed slab (``sigma`` is ``prior_sigma``)."""
    spreads = torch.tensor([narrow, sigma], dtype=log_mean.dtype, device=log_mean.device)
    locs = log_mean.unsqueeze(-1) - 0.5 * spreads**2
    halves = dist.Categorical(logits=torch.zeros_like(locs))
    return dist.MixtureSameFamily(halves, dist.LogNormal(locs, spreads))


@register_guide("gamma")
def gamma_guide(psi: torch.Tensor, spread):
    """``Gamma(1 / spread^2, rate = 1 / (spread^2 exp(psi)))``: mean ``exp(psi)`` and
    coefficient of variation ``spread`` (``guide_sigma``, or the learned spread)."""
    concentration = torch.ones_like(psi) / spread**2
    return dist.Gamma(concentration, concentration / psi.exp())


@register_score_network("mlp")
class MLPScores(nn.Module):
    """``psi = MLP([q, k, q * k])``: ``query (..., K)``, ``keys (..., L, K)`` -> ``(..., L)``
    (``(..., L, 2)`` with ``outputs = 2``: psi and the raw learned spread)."""

    def __init__(self, dim: int, outputs: int = 1, dropout: float = 0.0, hidden: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(3 * dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, outputs)
        )

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        query, keys = torch.broadcast_tensors(query.unsqueeze(-2), keys)
        psi = self.layers(torch.cat([query, keys, query * keys], dim=-1))
        return psi.squeeze(-1) if psi.shape[-1] == 1 else psi


@BASELINES.register("random")
class Random(Baseline):
    """Uniform random scores: the floor every method must clear."""

    grid = {}

    def fit_matrix(self, matrix):
        self.scores = np.random.default_rng(self.seed).random(matrix.shape[1], dtype=np.float32)

    def user_scores(self, users):
        return np.broadcast_to(self.scores, (len(users), self.scores.size))


RECIPES = {
    "prior": {"prior_family": lognormal_mixture},
    "guide": {"guide_family": gamma_guide, "guide_spread": "learned"},
    "score network": {"score_fn": MLPScores},
}


def main() -> None:
    from pyro_bamf import BAMFRecommender

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    for name, changes in RECIPES.items():
        config = BAMFConfig(data=args.data, max_epochs=args.epochs, **changes)
        split = build_split(config)
        recommender = BAMFRecommender(config)
        result = recommender.fit(split, progress=False)
        last = result.history[-1]
        recorded = ", ".join(f"{key} = {getattr(config, key)!r}" for key in changes)
        test = recommender.evaluate()["ndcg@10"]
        print(
            f"{name:14s} {recorded} KL {last.kl_method}, LOO NDCG@10 "
            f"{last.loo_ndcg10:.4f}, test NDCG@10 {test:.4f}"
        )


if __name__ == "__main__":
    main()
