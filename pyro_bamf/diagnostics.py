"""Summaries of a trained model's attention posterior, for prior/guide studies.

For a batch of examples with unmasked history positions ``j``:

    KL per weight   = sum_j [KL(q(s^u_j) || p(s^u_j)) + KL(q(s^i_j) || p(s^i_j))] / (2 n_valid)
    entropy         = -sum_j a_j log a_j,  a_j = alpha_j / sum_l alpha_l at s = E[s] = exp(psi)
    entropy gap     = log n_valid - entropy    (0 for uniform attention)
    psi SD          = the standard deviation of psi_j over a row's history (0: constant scores)
    interval width  = q95(alpha_j) - q05(alpha_j) over posterior draws (per user, no target)
    anchor rank     = 1 + #{j != anchor : psi_j >= psi_anchor}, item side (planted data)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from pyro import poutine

from .batch import Batch
from .model import BAMF
from .predictive import attention_samples
from .training import step_terms


def example_batches(
    split, part: str = "loo", max_elements: int = 2**20, dim: int = 32
) -> Iterator[Batch]:
    """Every positive of ``part`` as a pointwise example of its user (label 1), in batches of
    at most ``max_elements`` (example, history position, embedding) cells for embeddings of
    size ``dim`` (the model's ``embedding_dim``)."""
    positives = getattr(split, part)
    width = max(int(split.history_lengths.max(initial=1)), 1)
    per_batch = max(1, max_elements // (width * dim))
    for start in range(0, len(positives), per_batch):
        users = np.array(positives.users[start : start + per_batch])
        items = np.array(positives.items[start : start + per_batch])[:, None]
        labels = np.ones(items.shape, dtype=np.float32)
        yield Batch.build(users, items, split.history_items, split.history_lengths, labels)


@torch.no_grad()
def kl_per_weight(model: BAMF, batches: Iterable[Batch]) -> float:
    """Mean ``KL(guide || prior)`` per unmasked attention weight over ``batches`` (closed form
    where one is registered, else the one-draw estimate the ELBO uses), in eval mode."""
    kl, n_weights = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            guide_trace = poutine.trace(model.guide).get_trace(batch)
            replayed = poutine.replay(model.model, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(batch)
            terms = step_terms(model_trace, guide_trace, batch, 0.0)
            kl, n_weights = kl + terms.kl, n_weights + terms.n_weights
    finally:
        model.train(was_training)
    if n_weights == 0:
        raise ValueError("no attention weight to average: every history is empty")
    return kl / n_weights


def attention_entropy(model: BAMF, batches: Iterable[Batch]) -> float:
    """Mean entropy (nats) of the normalised expected attention, over both modules and every
    example with a non-empty history in ``batches``."""
    return attention_uniformity(model, batches)["entropy"]


@torch.no_grad()
def attention_uniformity(model: BAMF, batches: Iterable[Batch]) -> dict[str, float]:
    """How far the expected attention is from uniform, over both modules and every example
    with a non-empty history in ``batches``: means of its ``entropy``, of the
    ``uniform_entropy`` ``log n_valid``, of their difference ``entropy_gap``, and of the
    within-history ``psi_sd`` (module doc)."""
    rows = {"entropy": [], "uniform_entropy": [], "psi_sd": []}
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            psi_user, psi_item = model.attention_logits(batch)
            valid = batch.mask.any(-1)
            count = batch.mask.sum(-1)
            for psi in (psi_user.expand_as(batch.mask), psi_item):
                logits = (model.config.tau * psi).masked_fill(~batch.mask, -torch.inf)
                log_a = torch.log_softmax(logits, dim=-1)
                terms = torch.where(batch.mask, log_a.exp() * log_a, 0.0)
                rows["entropy"].append(-terms.sum(-1)[valid])
                rows["uniform_entropy"].append(count[valid].double().log())
                mean = torch.where(batch.mask, psi, 0.0).sum(-1) / count.clamp(min=1)
                square = torch.where(batch.mask, (psi - mean.unsqueeze(-1)) ** 2, 0.0).sum(-1)
                rows["psi_sd"].append((square / count.clamp(min=1)).sqrt()[valid])
    finally:
        model.train(was_training)
    if not rows["entropy"] or torch.cat(rows["entropy"]).numel() == 0:
        raise ValueError("no example with a non-empty history: the entropy is undefined")
    out = {name: float(torch.cat(values).double().mean()) for name, values in rows.items()}
    out["entropy_gap"] = out["uniform_entropy"] - out["entropy"]
    return out


def interval_widths(
    model: BAMF, split, users: np.ndarray, num_samples: int = 200
) -> dict[str, np.ndarray]:
    """Per user (no target): mean 90 % interval width of the user-side weights, absolute and
    relative to the median weight. Returns ``{"absolute": (U,), "relative": (U,)}``."""
    absolute, relative = [], []
    for user in np.asarray(users).tolist():
        if split.history_lengths[user] == 0:
            raise ValueError(f"user {user} has an empty history: no attention to summarise")
        samples = attention_samples(
            model, split.history_items, split.history_lengths, user, None, num_samples
        )
        table = samples.summary()
        absolute.append(table["width"].mean())
        relative.append((table["width"] / table["median"]).mean())
    return {"absolute": np.array(absolute), "relative": np.array(relative)}


@torch.no_grad()
def anchor_recovery(model: BAMF, split, parent: np.ndarray, part: str = "test") -> dict:
    """Whether the item-side attention finds each target's planted anchor, over the positives
    of ``part`` whose anchor ``parent[item]`` is in the user's history (module doc).

    Returns the number of such targets ``n``, the share whose anchor ranks first ``top1`` (and
    its chance level ``top1_chance``, the mean of ``1 / n_valid``), the mean of
    ``(rank - 1) / (n_valid - 1)`` (``rank_share``: 0 first, 1 last, 0.5 for a random order;
    ties count against the anchor, so a constant ``psi`` gives 1), and the mean
    ``anchor_weight`` ``n_valid * a_anchor`` of the normalised expected attention (1 for
    uniform weights). ``parent``: int ``(n_items,)``, as :func:`pyro_bamf.data.planted_anchors`.
    """
    if part not in ("loo", "val", "test"):
        raise ValueError(f"part must be 'loo', 'val' or 'test', got {part!r}")
    if len(parent) != split.n_items:
        raise ValueError(f"parent has {len(parent)} entries; the split has {split.n_items} items")
    ranks, lengths, weights = [torch.zeros(0)], [torch.zeros(0)], []
    was_training = model.training
    model.eval()
    try:
        for batch in example_batches(split, part, dim=model.config.embedding_dim):
            _, psi = model.attention_logits(batch)
            psi, mask = psi[:, 0], batch.mask[:, 0]
            anchors = torch.as_tensor(parent, device=psi.device)[batch.items[:, 0]]
            at_anchor = (batch.history == anchors.unsqueeze(-1)) & mask & (anchors >= 0)[:, None]
            found = at_anchor.any(-1)
            psi_anchor = torch.where(at_anchor, psi, 0.0).sum(-1, keepdim=True)
            above = ((psi >= psi_anchor) & mask & ~at_anchor).sum(-1)
            log_a = torch.log_softmax((model.config.tau * psi).masked_fill(~mask, -torch.inf), -1)
            count = mask.sum(-1)
            ranks.append((1 + above)[found])
            lengths.append(count[found])
            weights.append((count * torch.where(at_anchor, log_a, -torch.inf).exp().sum(-1))[found])
    finally:
        model.train(was_training)
    rank, length = torch.cat(ranks).double(), torch.cat(lengths).double()
    if rank.numel() == 0:
        raise ValueError(f"no positive of {part!r} has its planted anchor in its history")
    return {
        "n": int(rank.numel()),
        "top1": float((rank == 1).double().mean()),
        "top1_chance": float((1 / length).mean()),
        "rank_share": float(((rank - 1) / (length - 1).clamp(min=1)).mean()),
        "anchor_weight": float(torch.cat(weights).double().mean()),
    }
