"""Synthetic implicit feedback with planted low-rank preferences, for tests and offline demos.

Each user's items are drawn without replacement with probability proportional to
``exp(popularity_i + strength * <u_user, v_item> / sqrt(rank))`` (Gumbel-top-k), so a model that
recovers the factors ranks held-out items clearly better than popularity alone.
"""

from __future__ import annotations

import numpy as np

from pyro_bamf.data.interactions import DataError, Interactions

MIN_USER_INTERACTIONS = 8
PREFERENCE_STRENGTH = 2.0
ZIPF_EXPONENT = 1.0
ACTIVITY_SIGMA = 1.0
_CHUNK_CELLS = 1 << 22


def planted_preferences(
    n_users: int, n_items: int, rank: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The generator's ground truth for ``make_synthetic`` with the same arguments.

    Returns:
        user_factors float32 (n_users, rank), item_factors float32 (n_items, rank), both N(0, 1),
        and item popularity logits float32 (n_items,): ``-ZIPF_EXPONENT * ln(1 + r_i)`` for a
        random popularity rank ``r_i`` of each item (Zipf-like, unrelated to the item index).
    """
    rng = np.random.default_rng([seed, 0])
    user_factors = rng.standard_normal((n_users, rank), dtype=np.float32)
    item_factors = rng.standard_normal((n_items, rank), dtype=np.float32)
    popularity_rank = rng.permutation(n_items)
    popularity = (-ZIPF_EXPONENT * np.log1p(popularity_rank)).astype(np.float32)
    return user_factors, item_factors, popularity


def _activity(n_users: int, mean: float, cap: int, rng: np.random.Generator) -> np.ndarray:
    """int64 (n_users,): log-normal interaction counts clipped to [MIN_USER_INTERACTIONS, cap].

    The log-scale location is tuned by bisection so the clipped counts average ``mean``.
    """
    z = ACTIVITY_SIGMA * rng.standard_normal(n_users)

    def counts(mu: float) -> np.ndarray:
        return np.clip(np.rint(np.exp(mu + z)), MIN_USER_INTERACTIONS, cap).astype(np.int64)

    lo, hi = np.log(MIN_USER_INTERACTIONS) - 10.0, np.log(cap) + 10.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if counts(mid).mean() < mean else (lo, mid)
    return counts(0.5 * (lo + hi))


def make_synthetic(
    n_users: int = 300,
    n_items: int = 1000,
    rank: int = 8,
    mean_interactions: float = 40,
    seed: int = 0,
) -> Interactions:
    """Sample a synthetic implicit-feedback data set.

    User activity is heavy-tailed (log-normal, about ``mean_interactions`` on average), at least
    MIN_USER_INTERACTIONS and below ``n_items / 2`` per user. Items are sampled per user without
    replacement by Gumbel-top-k over the planted scores, in chunks of users so memory stays bounded
    (it scales to millions of interactions). The catalogue holds exactly ``n_items`` items (a few
    unpopular ones may have no interaction). The same arguments give identical output.
    """
    cap = (n_items - 1) // 2
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    if n_users < 1 or rank < 1:
        raise DataError(f"need n_users >= 1 and rank >= 1, got n_users={n_users}, rank={rank}")
    if cap < MIN_USER_INTERACTIONS:
        raise DataError(f"n_items={n_items} is too small: need > {2 * MIN_USER_INTERACTIONS}")
    if not MIN_USER_INTERACTIONS <= mean_interactions <= cap:
        raise DataError(
            f"mean_interactions={mean_interactions} must lie in [{MIN_USER_INTERACTIONS}, {cap}] "
            f"for n_items={n_items}"
        )
    user_factors, item_factors, popularity = planted_preferences(n_users, n_items, rank, seed)
    rng = np.random.default_rng([seed, 1])
    counts = _activity(n_users, mean_interactions, cap, rng)
    scale = np.float32(PREFERENCE_STRENGTH / np.sqrt(rank))
    chunk = max(1, _CHUNK_CELLS // n_items)
    picked = []
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        k = counts[start:stop]
        scores = popularity + scale * (user_factors[start:stop] @ item_factors.T)
        with np.errstate(divide="ignore"):
            keys = np.log(rng.standard_exponential(scores.shape, dtype=np.float32)) - scores
        k_max = int(k.max())
        top = np.argpartition(keys, k_max - 1, axis=1)[:, :k_max]
        top = np.take_along_axis(top, np.argsort(np.take_along_axis(keys, top, 1), 1), 1)
        picked.append(top[np.arange(k_max) < k[:, None]])
    return Interactions(
        users=np.repeat(np.arange(n_users, dtype=np.int64), counts),
        items=np.concatenate(picked),
        user_ids=np.arange(n_users, dtype=np.int64),
        item_ids=np.arange(n_items, dtype=np.int64),
        source=(
            f"synthetic(n_users={n_users},n_items={n_items},rank={rank},"
            f"mean_interactions={mean_interactions},seed={seed})"
        ),
    )
