"""Top-k ranking metrics for multi-positive candidate lists, computed per user then averaged.

For a user with ``P`` relevant candidates, ranks ``r = 1, 2, ...`` and binary relevance
``rel_r``, at cut-off ``k``::

    hits@k      = sum_{r<=k} rel_r
    HR@k        = 1[hits@k > 0]
    precision@k = hits@k / k
    recall@k    = hits@k / P
    MAP@k       = (1 / min(k, P)) sum_{r<=k} rel_r * hits@r / r
    NDCG@k      = DCG@k / IDCG@k,  DCG@k = sum_{r<=k} rel_r / log2(r + 1),
                  IDCG@k = sum_{r<=min(k, P)} 1 / log2(r + 1)

Ties are broken pessimistically by default (a positive ranks after every negative with the
same score); ``ties="optimistic"`` does the opposite.
"""

from __future__ import annotations

import numpy as np

KS = (5, 10, 15, 20, 25, 50, 100)
METRICS = ("hr", "precision", "recall", "map", "ndcg")


def ranking_metrics(
    users: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    ks: tuple[int, ...] = KS,
    ties: str = "pessimistic",
) -> dict[str, float]:
    """Mean over users of each metric at each ``k``: keys ``"hr@10"``, ``"ndcg@5"``, ...

    ``users, labels, scores (N,)``; users without a positive candidate are left out (a user
    with no relevant item has no defined recall or NDCG). Raises on NaN scores or no positives.
    """
    _, values = per_user_metrics(users, labels, scores, ks, ties)
    return {name: float(np.mean(column)) for name, column in values.items()}


def per_user_metrics(
    users: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    ks: tuple[int, ...] = KS,
    ties: str = "pessimistic",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each metric at each ``k`` for each user with a positive candidate: the sorted user ids
    ``(U,)`` and ``{"hr@10": (U,), ...}`` (what :func:`ranking_metrics` averages)."""
    users = np.asarray(users)
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if not (users.shape == labels.shape == scores.shape) or users.ndim != 1:
        raise ValueError(
            f"users, labels and scores must be 1-d of one length, got shapes "
            f"{users.shape}, {labels.shape}, {scores.shape}"
        )
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} scores are NaN")
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")
    if ks and min(ks) < 1:
        raise ValueError(f"cut-offs must be >= 1, got {ks}")
    tie_key = labels if ties == "pessimistic" else -labels
    order = np.lexsort((tie_key, -scores, users))
    users, rel = users[order], labels[order]
    ids, starts, user_index, counts = np.unique(
        users, return_index=True, return_inverse=True, return_counts=True
    )
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    n_pos = np.bincount(user_index, weights=rel)
    keep = n_pos > 0
    if not keep.any():
        raise ValueError("no user has a positive candidate")
    cum_hits = np.cumsum(rel)
    cum_hits -= np.repeat(cum_hits[starts] - rel[starts], counts)
    discount = 1.0 / np.log2(np.arange(2, max(len(users), max(ks, default=1)) + 2))
    ideal = np.cumsum(discount)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        top = rel * (rank < k)
        hits = np.bincount(user_index, weights=top)[keep]
        dcg = np.bincount(user_index, weights=top * discount[rank])[keep]
        ap = np.bincount(user_index, weights=top * cum_hits / (rank + 1))[keep]
        depth = np.minimum(k, n_pos[keep]).astype(np.int64)
        out[f"hr@{k}"] = (hits > 0).astype(np.float64)
        out[f"precision@{k}"] = hits / k
        out[f"recall@{k}"] = hits / n_pos[keep]
        out[f"map@{k}"] = ap / depth
        out[f"ndcg@{k}"] = dcg / ideal[depth - 1]
    return ids[keep], out
