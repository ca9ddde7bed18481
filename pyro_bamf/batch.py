"""Minibatches of BAMF examples grouped by user.

A :class:`Batch` holds ``G`` groups of ``S`` examples; the examples of a group share a user and
that user's history (pointwise: a positive and its negatives; pairwise: ``(pos, neg)``;
evaluation: up to ``S`` candidates of one user). The user-side attention score ``psi(u, j)`` is
then computed once per group while every example keeps its own latent scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


@dataclass(frozen=True)
class Batch:
    """``users (G,)``, ``items (G, S)``, ``history (G, L)``, ``mask (G, S, L)``.

    ``mask[g, s, l]`` is true where history position ``l`` is a real item other than the
    example's target ``items[g, s]`` (``j in R_u+ \\ {i}``). ``labels (G, S)`` are the pointwise
    targets; ``None`` for pairwise batches, where ``items[:, 0]`` is preferred to ``items[:, 1]``.
    """

    users: torch.Tensor
    items: torch.Tensor
    history: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        history_items: np.ndarray,
        history_lengths: np.ndarray,
        labels: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
    ) -> Batch:
        """Gather the users' histories, cut to the longest one in the batch, and mask them.

        ``exclude (G,)``: an item masked out of every example of its group as well (the
        group's positive, with ``pair_history = "positive"``).
        """
        lengths = history_lengths[users]
        width = max(int(lengths.max(initial=0)), 1)
        history = history_items[users, :width]
        present = np.arange(width) < lengths[:, None]
        if exclude is not None:
            present &= history != np.asarray(exclude)[:, None]
        mask = present[:, None, :] & (history[:, None, :] != items[:, :, None])
        return cls(
            users=torch.as_tensor(users, dtype=torch.long),
            items=torch.as_tensor(items, dtype=torch.long),
            history=torch.as_tensor(history, dtype=torch.long),
            mask=torch.as_tensor(mask),
            labels=None if labels is None else torch.as_tensor(labels, dtype=torch.float32),
        )

    @cached_property
    def n_valid(self) -> int:
        """Unmasked ``(example, history item)`` pairs: ``mask.sum()``."""
        return int(self.mask.sum())

    @property
    def n_examples(self) -> int:
        """Examples the likelihood averages over: ``G * S`` pointwise, ``G`` pairwise."""
        groups, size = self.items.shape
        return groups * size if self.labels is not None else groups

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(*(move(getattr(self, f)) for f in self.__dataclass_fields__))


def groups_per_batch(config) -> int:
    """Groups per training batch: ``batch_size`` rows rounded down to whole groups."""
    if config.learning == "pointwise":
        return max(config.batch_size // config.group_size, 1)
    return config.batch_size


def bucketed_order(
    lengths: np.ndarray, groups_per_batch: int, rng: np.random.Generator, pool: int = 0
):
    """Split group indices into batches of similar history length, in random order.

    Groups are shuffled, stably sorted by length (so equal lengths stay shuffled), cut into
    consecutive batches, and the batches shuffled: padding stays small, order stays random.
    ``pool = 0`` sorts the whole epoch at once, so a batch holds the groups of a few users of
    one history length (ml-latest-small, pairwise: a median of 10 users per batch, padding
    +0.2 %); ``pool = n`` sorts within consecutive pools of ``n`` batches of shuffled groups
    instead (``n = 16``: 43 users per batch, padding +4.6 %).
    """
    order = rng.permutation(len(lengths))
    step = len(order) if pool == 0 else pool * groups_per_batch
    batches = []
    for start in range(0, len(order), max(step, 1)):
        chunk = order[start : start + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + groups_per_batch] for i in range(0, len(chunk), groups_per_batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


def training_batches(split, config, rng: np.random.Generator):
    """One epoch of training batches with freshly drawn negatives (a generator of ``Batch``).

    Pointwise: groups ``[pos, neg_1..neg_n]`` with labels ``[1, 0..0]``; pairwise: ``[pos, neg]``.
    ``config.batch_size`` counts examples (pairwise: triples) and is rounded down to whole groups.
    ``config.pair_history``: ``"target"`` scores each example on ``R_u+ \\ {its target}``;
    ``"positive"`` scores every example of a group on ``R_u+ \\ {pos}`` (a BPR pair compares
    two items under one user context).
    """
    users, positives = split.train.users, split.train.items
    negatives = split.sample_negatives(users, config.negatives_per_positive, rng)
    items = np.concatenate([positives[:, None], negatives], axis=1)
    labels = None
    if config.learning == "pointwise":
        labels = np.zeros(items.shape, dtype=np.float32)
        labels[:, 0] = 1.0
    lengths = split.history_lengths[users]
    for idx in bucketed_order(lengths, groups_per_batch(config), rng, config.bucket_pool):
        yield Batch.build(
            users[idx],
            items[idx],
            split.history_items,
            split.history_lengths,
            None if labels is None else labels[idx],
            items[idx, 0] if config.pair_history == "positive" else None,
        )


def candidate_batches(users, items, history_items, history_lengths, group_size=100, budget=2**17):
    """Evaluation batches over candidate rows ``users, items (N,)`` grouped by user.

    Each user's candidates are cut into groups of ``group_size`` (the last one padded, see
    ``rows``); groups are sorted by history length and packed so that
    ``groups * group_size * L <= budget`` (bounded memory). Yields ``(batch, rows)`` where
    ``rows (G, S)`` indexes the candidate rows (-1 for padding).
    """
    users, candidate_items = np.asarray(users), np.asarray(items)
    if len(users) == 0:
        return
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    if np.any(np.diff(users[starts]) < 0) or len(np.unique(users[starts])) != len(starts):
        raise ValueError("candidates must be grouped by user (sorted by user)")
    offset = np.arange(len(users)) - np.repeat(starts, counts)
    n_groups = -(-counts // group_size)
    group = np.repeat(np.cumsum(n_groups) - n_groups, counts) + offset // group_size
    rows = np.full((int(n_groups.sum()), group_size), -1, dtype=np.int64)
    rows[group, offset % group_size] = np.arange(len(users))
    group_users = users[rows[:, 0]]
    order = np.argsort(history_lengths[group_users], kind="stable")
    widths = np.maximum(history_lengths[group_users[order]], 1)
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * group_size * widths[stop] <= budget:
            stop += 1
        block = rows[order[start:stop]]
        items = np.where(block >= 0, candidate_items[np.maximum(block, 0)], 0)
        batch = Batch.build(group_users[order[start:stop]], items, history_items, history_lengths)
        yield batch, block
        start = stop
