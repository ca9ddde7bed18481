"""Summaries of a trained model's attention posterior, for prior/guide studies.

For a batch of examples with unmasked history positions ``j``:

    KL per weight   = sum_j [KL(q(s^u_j) || p(s^u_j)) + KL(q(s^i_j) || p(s^i_j))] / (2 n_valid)
    entropy         = -sum_j a_j log a_j,  a_j = alpha_j / sum_l alpha_l at s = E[s] = exp(psi)
    interval width  = q95(alpha_j) - q05(alpha_j) over posterior draws (per user, no target)
"""

from __future__ import annotations

import numpy as np
import torch
from pyro import poutine

from .batch import Batch
from .model import BAMF
from .predictive import attention_samples
from .training import step_terms


def example_batch(split, part: str = "loo") -> Batch:
    """Every positive of ``part`` as one pointwise example of its user, labels 1."""
    positives = getattr(split, part)
    labels = np.ones((len(positives), 1), dtype=np.float32)
    users, items = np.array(positives.users), np.array(positives.items)[:, None]
    return Batch.build(users, items, split.history_items, split.history_lengths, labels)


@torch.no_grad()
def kl_per_weight(model: BAMF, batch: Batch) -> float:
    """Mean ``KL(guide || prior)`` per unmasked attention weight (closed form where one is
    registered, else the one-draw estimate the ELBO uses), networks in eval mode."""
    was_training = model.training
    model.eval()
    try:
        guide_trace = poutine.trace(model.guide).get_trace(batch)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
    finally:
        model.train(was_training)
    terms = step_terms(model_trace, guide_trace, batch, 0.0)
    return terms.kl / max(terms.n_weights, 1)


@torch.no_grad()
def attention_entropy(model: BAMF, batch: Batch) -> float:
    """Mean entropy (nats) of the normalised expected attention, over both modules and every
    example with a non-empty history."""
    was_training = model.training
    model.eval()
    try:
        psi_user, psi_item = model.attention_logits(batch)
    finally:
        model.train(was_training)
    entropies = []
    for psi in (psi_user.expand_as(batch.mask), psi_item):
        logits = (model.config.tau * psi).masked_fill(~batch.mask, -torch.inf)
        log_a = torch.log_softmax(logits, dim=-1)
        terms = torch.where(batch.mask, log_a.exp() * log_a, 0.0)
        valid = batch.mask.any(-1)
        entropies.append(-terms.sum(-1)[valid])
    return float(torch.cat(entropies).mean())


def interval_widths(
    model: BAMF, split, users: np.ndarray, num_samples: int = 200
) -> dict[str, np.ndarray]:
    """Per user (no target): mean 90 % interval width of the user-side weights, absolute and
    relative to the median weight. Returns ``{"absolute": (U,), "relative": (U,)}``."""
    absolute, relative = [], []
    for user in np.asarray(users).tolist():
        samples = attention_samples(
            model, split.history_items, split.history_lengths, user, None, num_samples
        )
        table = samples.summary()
        absolute.append(table["width"].mean())
        relative.append((table["width"] / table["median"]).mean())
    return {"absolute": np.array(absolute), "relative": np.array(relative)}
