"""The test protocols every run is scored on, kept per user so that runs can be compared.

``"test"``: the configuration's test protocol, by default the sampled pool (each test
positive with ``eval_negatives`` negatives drawn from the items its user never interacted with,
or the saved ``test_candidates``); full ranking under ``eval_protocol = "full"``.

``"test_full"``: full ranking, each user's test positives among every item the user never
interacted with in any part (``config.full_ranking``, on by default).

Any model is scored the same way: through a ``ranking_scores(users, items) -> (N,)`` callable
whose higher values rank first (BAMF's expected logits, a baseline's scores). A pool's rows are
fingerprinted, so that two runs can be shown to have ranked the same rows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .config import BAMFConfig
from .data import Candidates, ImplicitSplit
from .evaluation import full_ranking_blocks
from .metrics import KS, per_user_metrics

PROTOCOLS = ("test", "test_full")
PER_USER = "per_user.csv"

RankingScores = Callable[[np.ndarray, np.ndarray], np.ndarray]


def evaluation_pool(config: BAMFConfig, split: ImplicitSplit) -> Candidates | None:
    """The pool of the ``"test"`` protocol: the saved candidate file named by
    ``config.test_candidates``, else a fresh sampled pool; ``None`` (full ranking) under
    ``eval_protocol = "full"``."""
    if config.eval_protocol == "full":
        return None
    if config.test_candidates:
        return Candidates.load(config.test_candidates, fingerprint=split.fingerprint)
    return split.candidates("test", config.eval_negatives)


def protocol_pools(config: BAMFConfig, split: ImplicitSplit) -> dict[str, Candidates | None]:
    """``{"test": pool, "test_full": None}`` (``None`` is full ranking); without
    ``config.full_ranking``, only ``"test"``."""
    pools = {"test": evaluation_pool(config, split)}
    if config.full_ranking:
        pools["test_full"] = None
    return pools


def pool_fingerprint(pool: Candidates | None, split: ImplicitSplit) -> str:
    """sha256 hex of a pool's rows (users, items, labels), or of the split and the word
    ``full`` for full ranking, whose rows the split fixes."""
    digest = hashlib.sha256(split.fingerprint.encode())
    if pool is None:
        digest.update(b";full-ranking")
    else:
        for column in (pool.users, pool.items, pool.labels):
            digest.update(np.ascontiguousarray(column).tobytes())
    return digest.hexdigest()


def pool_blocks(
    pool: Candidates | None, split: ImplicitSplit, part: str = "test"
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(users, items, labels)`` blocks of a pool grouped by user: the pool itself, or the
    full ranking of ``part`` in blocks of users (:func:`full_ranking_blocks`)."""
    if pool is None:
        yield from full_ranking_blocks(split, part)
    else:
        yield pool.users, pool.items, pool.labels


@dataclass(frozen=True)
class Scored:
    """A model scored on each protocol.

    Attributes:
        per_user: one row per (protocol, user with a positive): ``protocol``, ``user`` (the
            original user id), then one column per metric (``hr@10``, ``ndcg@10``, ...).
        means: protocol -> metric -> mean over that protocol's users.
        seconds: protocol -> seconds spent scoring and ranking.
        pool_fingerprints: protocol -> :func:`pool_fingerprint`.
    """

    per_user: pd.DataFrame
    means: dict[str, dict[str, float]]
    seconds: dict[str, float]
    pool_fingerprints: dict[str, str]


def score_protocols(
    ranking_scores: RankingScores,
    split: ImplicitSplit,
    pools: dict[str, Candidates | None],
    ks: tuple[int, ...] = KS,
    ties: str = "pessimistic",
    part: str = "test",
) -> Scored:
    """Rank each protocol's pool by ``ranking_scores(users, items)`` and keep every user's
    metrics (:func:`~pyro_bamf.metrics.per_user_metrics`); a metric's mean is over the users
    with a positive in the pool. A full-ranking pool (``None``) ranks the positives of
    ``part`` (``"val"`` to tune on)."""
    tables, means, seconds, fingerprints, scored = [], {}, {}, {}, {}
    for protocol, pool in pools.items():
        fingerprint = fingerprints[protocol] = pool_fingerprint(pool, split)
        if fingerprint not in scored:  # a pool listed twice (both full ranking) is ranked once
            start = time.perf_counter()
            blocks = []
            for users, items, labels in pool_blocks(pool, split, part):
                scores = ranking_scores(users, items)
                ids, values = per_user_metrics(users, labels, scores, ks, ties)
                blocks.append(pd.DataFrame({"user": split.data.user_ids[ids], **values}))
            if not blocks:
                raise ValueError(f"the {protocol} protocol found no user with a {part} positive")
            scored[fingerprint] = (pd.concat(blocks, ignore_index=True),
                                   time.perf_counter() - start)  # fmt: skip
        table, seconds[protocol] = scored[fingerprint]
        means[protocol] = {n: float(np.mean(table[n].to_numpy())) for n in table.columns[1:]}
        tables.append(table.assign(protocol=protocol))
    per_user = pd.concat(tables, ignore_index=True)
    per_user = per_user[["protocol", *per_user.columns[:-1]]]
    return Scored(per_user, means, seconds, fingerprints)


def protocol_metrics(
    ranking_scores: RankingScores,
    split: ImplicitSplit,
    pool: Candidates | None,
    ks: tuple[int, ...] = KS,
    ties: str = "pessimistic",
    part: str = "test",
) -> dict[str, float]:
    """Mean metrics of one pool (``None``: the full ranking of ``part``) ranked by
    ``ranking_scores``."""
    return score_protocols(ranking_scores, split, {part: pool}, ks, ties, part).means[part]


def write_per_user(path: Path, per_user: pd.DataFrame) -> None:
    """``per_user.csv``, atomically."""
    with atomic_path(path) as tmp:
        per_user.to_csv(tmp, index=False)


def read_per_user(path: Path) -> pd.DataFrame:
    """A run's ``per_user.csv``; ``ValueError`` when it is missing or not such a table."""
    if not path.is_file():
        raise ValueError(
            f"{path} is missing: the run predates per-user metrics; add them with "
            f"`pyro-bamf evaluate --run {path.parent} --update`"
        )
    try:  # ids as written: "007" stays "007", "NA" stays "NA"
        table = pd.read_csv(
            path, dtype={"protocol": str, "user": str}, keep_default_na=False, na_values={}
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a per-user table ({err})") from None
    if list(table.columns[:2]) != ["protocol", "user"] or len(table.columns) < 3:
        raise ValueError(f"{path} is not a per-user table (columns protocol, user, metrics...)")
    if table.duplicated(["protocol", "user"]).any():
        raise ValueError(f"{path} lists a user twice under one protocol: the table is damaged")
    return table
