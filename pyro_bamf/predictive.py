"""Posterior predictive sampling of BAMF with ``pyro.infer.Predictive``.

A draw runs the guide, ``s_j ~ q(s_j | psi_j, sigma_j)``, replays the model on those scores and
records its deterministic sites::

    alpha_j = s_j^tau / (sum_l s_l^tau)^beta           ("user_weights", "item_weights")
    x = h^T(W(LN(p_u * c_u) * LN(q_i * c_i)) + b)      ("_RETURN", the logit)
    y_hat = sigmoid(x)

Draws are vectorised (``parallel=True``: one extra leading sample axis) and taken in chunks of
at most ``max_elements`` floats per tensor, counting the ``(G, S, L)`` score and weight tensors
and the ``(G, S, K)`` context tensors of each draw (a handful of each are alive at once). The
networks run in eval mode (no dropout: dropout regularises training, it is not posterior
uncertainty).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from pyro.infer import Predictive

from .batch import Batch, candidate_batches
from .model import BAMF

INTERVAL = 0.9
SITES = ("user_scores", "item_scores", "user_weights", "item_weights", "_RETURN")
MAX_KEPT_DRAWS = 2**26  # floats kept per site by attention_samples and logit_samples (256 MB)


@torch.no_grad()
def predictive_samples(
    model: BAMF,
    batch: Batch,
    num_samples: int,
    sites: tuple[str, ...] = ("user_weights", "item_weights", "_RETURN"),
    max_elements: int = 2**22,
) -> dict[str, torch.Tensor]:
    """``num_samples`` posterior predictive draws of ``sites`` for ``batch``.

    Returns ``{site: (num_samples, G, S, L)}`` for the score and weight sites and
    ``(num_samples, G, S)`` for ``"_RETURN"`` (the logits). ``batch.labels`` may be ``None``
    (zeros are used: the likelihood site is not among the returned ones).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    unknown = set(sites) - set(SITES)
    if unknown:
        raise ValueError(f"unknown sites {sorted(unknown)}: choose from {SITES}")
    if batch.labels is None:
        batch = Batch(batch.users, batch.items, batch.history, batch.mask,
                      torch.zeros(batch.items.shape, device=batch.items.device))  # fmt: skip
    groups, size, length = batch.mask.shape
    per_draw = groups * size * max(length, model.config.embedding_dim, 1)
    chunk = max(1, min(num_samples, max_elements // per_draw))
    draws: dict[str, list[torch.Tensor]] = defaultdict(list)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, num_samples, chunk):
            n = min(chunk, num_samples - start)
            predictive = Predictive(
                model.model, guide=model.guide, num_samples=n, parallel=True, return_sites=sites
            )
            for site, value in predictive(batch).items():
                draws[site].append(value.reshape(n, *value.shape[-_site_dims(site, batch) :]))
    finally:
        model.train(was_training)
    return {site: torch.cat(values) for site, values in draws.items()}


def _site_dims(site: str, batch: Batch) -> int:
    return 2 if site == "_RETURN" else batch.mask.dim()


def summarize(samples: np.ndarray, interval: float = INTERVAL) -> dict[str, np.ndarray]:
    """Mean, median and the central ``interval`` (default 90 %) over the first axis."""
    if not 0 < interval < 1:
        raise ValueError(f"interval must lie in (0, 1), got {interval}")
    tail = (1.0 - interval) / 2
    low, median, high = np.quantile(samples, [tail, 0.5, 1.0 - tail], axis=0)
    return {"mean": samples.mean(0), "median": median, "low": low, "high": high}


@dataclass(frozen=True)
class AttentionSamples:
    """Posterior predictive draws for one user (and optionally one target item).

    ``history (L,)``: the attended history items (the target removed); ``user_weights (N, L)``
    and ``item_weights (N, L)`` (``None`` without a target): the weights ``alpha_j`` of each
    draw; ``logits (N,)``: ``x(u, i)`` (``None`` without a target).
    """

    user: int
    item: int | None
    history: np.ndarray
    user_weights: np.ndarray
    item_weights: np.ndarray | None
    logits: np.ndarray | None

    @property
    def probabilities(self) -> np.ndarray | None:
        """``sigmoid(x)`` of each draw."""
        return None if self.logits is None else 1.0 / (1.0 + np.exp(-self.logits))

    def summary(self, side: str = "user", interval: float = INTERVAL) -> pd.DataFrame:
        """One row per history item: mean, median, interval ends and width of ``alpha_j``,
        sorted by median weight (largest first)."""
        weights = self.user_weights if side == "user" else self.item_weights
        if side not in ("user", "item") or weights is None:
            raise ValueError(f"no {side!r} weights: side is 'user' or 'item' (with a target)")
        table = pd.DataFrame({"item": self.history, **summarize(weights, interval)})
        table["width"] = table["high"] - table["low"]
        return table.sort_values("median", ascending=False, kind="stable", ignore_index=True)


def attention_samples(
    model: BAMF,
    history_items: np.ndarray,
    history_lengths: np.ndarray,
    user: int,
    item: int | None = None,
    num_samples: int = 1000,
) -> AttentionSamples:
    """Draw the attention weights of ``user`` (and, with a target ``item``, the item-side
    weights and the logit) ``num_samples`` times; at most :data:`MAX_KEPT_DRAWS` floats kept
    per site (``num_samples`` times the history length)."""
    _check_kept(num_samples, int(history_lengths[user]), "history items", "num_samples (--samples)")
    target = 0 if item is None else item
    batch = Batch.build(np.array([user]), np.array([[target]]), history_items, history_lengths)
    if item is None:
        present = torch.arange(batch.history.shape[-1]) < int(history_lengths[user])
        batch = Batch(batch.users, batch.items, batch.history, present.expand_as(batch.mask))
    device = next(model.parameters()).device
    draws = predictive_samples(model, batch.to(device), num_samples)
    keep = batch.mask[0, 0].numpy()

    def weights(site: str) -> np.ndarray:
        return draws[site][:, 0, 0].cpu().numpy()[:, keep]

    return AttentionSamples(
        user=user,
        item=item,
        history=batch.history[0].numpy()[keep],
        user_weights=weights("user_weights"),
        item_weights=None if item is None else weights("item_weights"),
        logits=None if item is None else draws["_RETURN"][:, 0, 0].cpu().numpy(),
    )


def logit_samples(
    model: BAMF,
    history_items: np.ndarray,
    history_lengths: np.ndarray,
    user: int,
    items: np.ndarray,
    num_samples: int = 200,
    max_elements: int = 2**22,
) -> np.ndarray:
    """Draws of ``x(user, i)`` for every candidate in ``items (C,)``: ``float32 (N, C)``, at
    most :data:`MAX_KEPT_DRAWS` floats."""

    def draw(batch: Batch) -> torch.Tensor:
        return predictive_samples(model, batch, num_samples, ("_RETURN",), max_elements)["_RETURN"]

    return _candidate_draws(model, history_items, history_lengths, user, items, num_samples, draw)


@torch.no_grad()
def dropout_logit_samples(
    model: BAMF,
    history_items: np.ndarray,
    history_lengths: np.ndarray,
    user: int,
    items: np.ndarray,
    num_samples: int = 200,
    max_elements: int = 2**22,
) -> np.ndarray:
    """MC dropout, the uncertainty baseline: ``num_samples`` draws of the deterministic
    network's logits (every attention score at its mean ``exp(psi)``) with the score networks'
    dropout on at test time, for every candidate in ``items (C,)``: ``float32 (N, C)``.

    A draw is a copy of the candidates' groups with its own dropout mask; copies are batched,
    at most ``max_elements`` pair features ``(G, S, L, K)`` at once (one copy when a single
    one is larger).
    """

    def draw(batch: Batch) -> torch.Tensor:
        per_draw = batch.mask.numel() * model.config.embedding_dim
        chunk = max(1, min(num_samples, max_elements // per_draw))
        logits = []
        for start in range(0, num_samples, chunk):
            n = min(chunk, num_samples - start)
            copies = Batch(batch.users.repeat(n), batch.items.repeat(n, 1),
                           batch.history.repeat(n, 1), batch.mask.repeat(n, 1, 1))  # fmt: skip
            logits.append(model.expected_logits(copies).reshape(n, *batch.items.shape))
        return torch.cat(logits)

    was_training = model.training
    model.train()
    try:
        return _candidate_draws(
            model, history_items, history_lengths, user, items, num_samples, draw
        )
    finally:
        model.train(was_training)


def _candidate_draws(
    model: BAMF, history_items, history_lengths, user: int, items, num_samples: int, draw
) -> np.ndarray:
    """``draw(batch) -> (N, G, S)`` logits over the candidate batches of ``user``'s ``items``,
    gathered as ``float32 (N, C)`` in the order of ``items``."""
    items = np.asarray(items, dtype=np.int64)
    _check_kept(num_samples, items.size, "candidates")
    device = next(model.parameters()).device
    out = np.empty((num_samples, items.size), dtype=np.float32)
    for batch, rows in candidate_batches(
        np.full(items.size, user), items, history_items, history_lengths
    ):
        logits = draw(batch.to(device)).cpu().numpy()
        valid = rows >= 0
        out[:, rows[valid]] = logits[:, valid]
    return out


def _check_kept(num_samples: int, width: int, what: str, name: str = "num_samples") -> None:
    """``ValueError`` unless ``1 <= num_samples`` and ``num_samples * max(width, 1)``, the
    floats kept per site for ``width`` ``what``, is at most :data:`MAX_KEPT_DRAWS`; ``name``
    is how the message calls ``num_samples``."""
    if num_samples < 1:
        raise ValueError(f"{name} must be >= 1, got {num_samples}")
    largest = MAX_KEPT_DRAWS // max(width, 1)
    if num_samples > largest:
        raise ValueError(
            f"{name} = {num_samples} draws over {width} {what} would keep "
            f"{num_samples * max(width, 1)} floats per site, over the limit MAX_KEPT_DRAWS = "
            f"{MAX_KEPT_DRAWS}: use {name} <= {largest}"
        )


def topk_probability(logits: np.ndarray, k: int) -> np.ndarray:
    """``P(item c in the top k)`` from draws ``logits (N, C)``: the fraction of draws in which
    c ranks among the ``k`` highest (ties broken by position). Returns ``(C,)``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, c = logits.shape
    top = np.argsort(-logits, axis=1, kind="stable")[:, : min(k, c)]
    return np.bincount(top.ravel(), minlength=c) / n
