"""Synthetic implicit feedback with planted attention: each user's items are driven by a few
anchor items of their history, so that an attention over the history has something to find.

Items ``0 .. n_anchors - 1`` are anchors; every other item is a follower with one parent
anchor (each anchor has about ``(n_items - n_anchors) / n_anchors`` followers). Each user
holds ``anchors_per_user`` anchors, ``followers_per_anchor`` followers of each, drawn among
that anchor's followers, and ``noise`` followers of other anchors, drawn uniformly. A
follower's own anchor is the one item of its user's history that predicts it; the
``noise`` items (most of the history) say nothing about it.
"""

from __future__ import annotations

import numpy as np

from pyro_bamf.data.interactions import DataError, Interactions


def planted_anchors(n_items: int, n_anchors: int, seed: int) -> np.ndarray:
    """The generator's ground truth for :func:`make_planted` with the same arguments:
    int64 ``(n_items,)``, the parent anchor of each follower and ``-1`` for an anchor."""
    rng = np.random.default_rng([seed, 0])
    followers = n_items - n_anchors
    parent = np.full(n_items, -1, dtype=np.int64)
    parent[n_anchors:] = rng.permutation(np.arange(followers) % n_anchors)
    return parent


def make_planted(
    n_users: int = 1500,
    n_items: int = 300,
    n_anchors: int = 30,
    anchors_per_user: int = 2,
    followers_per_anchor: int = 3,
    noise: int = 10,
    seed: int = 0,
) -> Interactions:
    """Sample the planted-attention data set (module doc); the same arguments give identical
    output. Every user holds ``anchors_per_user * (1 + followers_per_anchor) + noise`` items."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(f"planted seed must be a non-negative integer, got {seed!r}")
    if min(n_users, anchors_per_user, followers_per_anchor) < 1 or noise < 0:
        raise DataError(
            "planted data needs n_users, anchors_per_user, followers_per_anchor >= 1 and "
            f"noise >= 0, got {n_users}, {anchors_per_user}, {followers_per_anchor}, {noise}"
        )
    if not anchors_per_user < n_anchors or n_items - n_anchors < n_anchors * (
        followers_per_anchor + 1
    ):
        raise DataError(
            f"n_anchors={n_anchors} must exceed anchors_per_user={anchors_per_user}, and "
            f"n_items={n_items} must leave each anchor more than followers_per_anchor="
            f"{followers_per_anchor} followers"
        )
    parent = planted_anchors(n_items, n_anchors, seed)
    children = [np.flatnonzero(parent == a) for a in range(n_anchors)]
    fewest_others = n_items - n_anchors - sum(sorted(map(len, children))[-anchors_per_user:])
    if noise > fewest_others:
        raise DataError(
            f"noise={noise} exceeds the {fewest_others} followers of other anchors that every "
            "user is sure to have"
        )
    rng = np.random.default_rng([seed, 1])
    rows = []
    for _ in range(n_users):
        anchors = rng.choice(n_anchors, anchors_per_user, replace=False)
        driven = [rng.choice(children[a], followers_per_anchor, replace=False) for a in anchors]
        others = np.flatnonzero((parent >= 0) & ~np.isin(parent, anchors))
        rows.append(np.concatenate([anchors, *driven, rng.choice(others, noise, replace=False)]))
    items = np.concatenate(rows)
    return Interactions(
        users=np.repeat(np.arange(n_users, dtype=np.int64), [len(r) for r in rows]),
        items=items,
        user_ids=np.arange(n_users, dtype=np.int64),
        item_ids=np.arange(n_items, dtype=np.int64),
        source=(
            f"planted(n_users={n_users},n_items={n_items},n_anchors={n_anchors},"
            f"anchors_per_user={anchors_per_user},followers_per_anchor={followers_per_anchor},"
            f"noise={noise},seed={seed})"
        ),
    )
