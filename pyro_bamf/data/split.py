"""The paper's implicit-feedback split: leave-one-out, per-user 8:1:1, train histories, negatives.

Protocol of the BAMF paper's experiments:

1. one interaction per user, drawn at random, is set aside first (leave-one-out, early stopping);
2. the rest is split per user at random into train / validation / test (8:1:1 by default), so
   every user appears in every part;
3. user histories are built from the training part only, optionally cut to the ``max_history``
   items of highest tf-idf weight (the user's least popular training items).

Negatives are drawn uniformly, with replacement, from the items a user never interacted with in
any part.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pyro_bamf.atomic import atomic_path
from pyro_bamf.data.interactions import DataError, Interactions, _frozen

PARTS = ("train", "val", "test", "loo")
CANDIDATE_PARTS = ("val", "test", "loo")
HISTORY_MODES = ("tfidf", "all")
_PART_STREAM = {"val": 1, "test": 2, "loo": 3}


def _pairs_from_keys(keys: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode sorted ``user * n_items + item`` keys into (users, items) int64 arrays."""
    return keys // n_items, keys % n_items


@dataclass(frozen=True, eq=False)
class Positives:
    """Positive (user, item) pairs of one part: int64 arrays (n,), sorted by (user, item)."""

    users: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        users = np.asarray(self.users, dtype=np.int64)
        items = np.asarray(self.items, dtype=np.int64)
        if users.ndim != 1 or users.shape != items.shape:
            raise DataError(f"users {users.shape} and items {items.shape} must be equal 1-d shapes")
        object.__setattr__(self, "users", _frozen(users))
        object.__setattr__(self, "items", _frozen(items))

    def __len__(self) -> int:
        return int(self.users.size)

    def __repr__(self) -> str:
        return f"Positives(n={len(self)})"


@dataclass(frozen=True, eq=False)
class Candidates:
    """A ranking pool: positives and sampled negatives, grouped by user.

    Attributes:
        users: int64 (N,) user index of each row, sorted (each user's rows are contiguous).
        items: int64 (N,) candidate item of each row.
        labels: float32 (N,) 1.0 for a positive, 0.0 for a negative.
    """

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        users = np.asarray(self.users, dtype=np.int64)
        items = np.asarray(self.items, dtype=np.int64)
        labels = np.asarray(self.labels, dtype=np.float32)
        if users.ndim != 1 or not users.shape == items.shape == labels.shape:
            raise DataError(
                f"users {users.shape}, items {items.shape} and labels {labels.shape} "
                "must be equal 1-d shapes"
            )
        if np.any(users[1:] < users[:-1]):
            raise DataError("candidate rows must be grouped by user (sorted by user)")
        for name, value in (("users", users), ("items", items), ("labels", labels)):
            object.__setattr__(self, name, _frozen(value))

    def __len__(self) -> int:
        return int(self.users.size)

    def __repr__(self) -> str:
        return f"Candidates(n={len(self)}, positives={int(self.labels.sum())})"

    def save(self, path: str | os.PathLike, fingerprint: str) -> None:
        """Write an uncompressed .npz (users, items, labels, fingerprint) atomically to ``path``."""
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                users=self.users,
                items=self.items,
                labels=self.labels,
                fingerprint=np.array(fingerprint),
            )

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: str | None = None) -> Candidates:
        """Read a file written by ``save``; DataError if corrupt or its fingerprint differs."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in ("users", "items", "labels", "fingerprint")}
        except FileNotFoundError as err:
            raise DataError(f"{path}: no such candidates file") from err
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            raise DataError(f"{path}: corrupt or truncated candidates file ({err})") from err
        stored = str(arrays.pop("fingerprint"))
        if fingerprint is not None and stored != fingerprint:
            raise DataError(
                f"{path}: fingerprint mismatch (file {stored[:12]}..., expected "
                f"{fingerprint[:12]}...): it was built from other data or split settings"
            )
        return cls(**arrays)


def _part_sizes(n: np.ndarray, ratios: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Per-user (n_train, n_val, n_test) for ``n`` interactions left after leave-one-out.

    ``n_val = max(1, round(n * r_val / sum))``, ``n_test`` likewise, the rest is training.
    """
    total = sum(ratios)
    n_val = np.maximum(1, np.rint(n * ratios[1] / total)).astype(np.int64)
    n_test = np.maximum(1, np.rint(n * ratios[2] / total)).astype(np.int64)
    return n - n_val - n_test, n_val, n_test


def _drop_small_users(
    data: Interactions, ratios: tuple[float, float, float]
) -> tuple[Interactions, int]:
    """Remove users too small for leave-one-out plus a non-empty train/val/test each.

    Kept users are re-indexed ``0..n-1`` in original-id order; item indexing is unchanged.
    Returns the filtered data and the number of users dropped (warned about when > 0).
    """
    counts = data.user_counts()
    n_train, _, _ = _part_sizes(counts - 1, ratios)
    keep = n_train >= 1
    n_dropped = int(np.count_nonzero(~keep))
    if n_dropped == 0:
        return data, 0
    need = (
        f"each needs one interaction for leave-one-out and at least one in each part of a "
        f"{':'.join(f'{r:g}' for r in ratios)} train:val:test split"
    )
    if n_dropped == data.n_users:
        raise DataError(f"all {data.n_users} users have too few interactions ({need})")
    warnings.warn(
        f"dropped {n_dropped} of {data.n_users} users with too few interactions ({need})",
        UserWarning,
        stacklevel=3,
    )
    new_index = np.cumsum(keep) - 1
    rows = keep[data.users]
    filtered = Interactions(
        users=new_index[data.users[rows]],
        items=data.items[rows],
        user_ids=data.user_ids[keep],
        item_ids=data.item_ids,
        source=f"{data.source} [{n_dropped} users with too few interactions dropped]",
    )
    return filtered, n_dropped


def _group_starts(sorted_users: np.ndarray, n_users: int) -> np.ndarray:
    """int64 (n_users,): offset of each user's first row in an array sorted by user."""
    counts = np.bincount(sorted_users, minlength=n_users)
    return np.cumsum(counts) - counts


def _history(
    train: Positives, n_users: int, n_items: int, mode: str, max_history: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Padded training histories.

    Returns:
        items int64 (n_users, L_max), left-aligned and sorted by item within a row, 0-padded;
        lengths int64 (n_users,); the number of users whose history was cut to ``max_history``.
    """
    users, items = train.users, train.items
    n_train = np.bincount(users, minlength=n_users)
    n_cut = 0
    if mode == "tfidf":
        # Binary tf and idf = ln((1+n_users)/(1+df)) + 1 decreasing in df: highest tf-idf
        # first means lowest training document frequency first, ties by item index.
        df = np.bincount(items, minlength=n_items)
        order = np.lexsort((items, df[items], users))
        rank = np.arange(users.size) - _group_starts(users, n_users)[users]
        rows = np.sort(order[rank < max_history])
        users, items = users[rows], items[rows]
        n_cut = int(np.count_nonzero(n_train > max_history))
    lengths = np.bincount(users, minlength=n_users).astype(np.int64)
    matrix = np.zeros((n_users, int(lengths.max(initial=0))), dtype=np.int64)
    matrix[users, np.arange(users.size) - _group_starts(users, n_users)[users]] = items
    return matrix, lengths, n_cut


@dataclass(frozen=True, eq=False)
class ImplicitSplit:
    """Train / validation / test / leave-one-out parts, histories and negative sampling.

    Build with ``ImplicitSplit.from_interactions``.

    Attributes:
        data: the Interactions after dropping users too small to split (users re-indexed).
        seed: the seed of the split (and default seed of candidate pools).
        fingerprint: sha256 hex of the source data's fingerprint and the split settings.
        train, val, test, loo: Positives of each part.
        history_items: int64 (n_users, L_max) training history per user, left-aligned, sorted
            by item index, padded with 0 (see ``history_mask``).
        history_lengths: int64 (n_users,) number of history items per user.
        n_history_cut: users whose history was truncated to ``max_history``.
        n_dropped_users: users removed for having too few interactions.
    """

    data: Interactions
    seed: int
    fingerprint: str
    train: Positives
    val: Positives
    test: Positives
    loo: Positives
    history_items: np.ndarray
    history_lengths: np.ndarray
    n_history_cut: int
    n_dropped_users: int

    @classmethod
    def from_interactions(
        cls,
        data: Interactions,
        seed: int = 42,
        ratios: tuple[float, float, float] = (8, 1, 1),
        history: str = "tfidf",
        max_history: int = 400,
    ) -> ImplicitSplit:
        """Split ``data`` following the paper's protocol (see the module docstring)."""
        if len(ratios) != 3 or min(ratios) <= 0:
            raise DataError(f"ratios must be three positive numbers (train:val:test), not {ratios}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {seed!r}")
        if history not in HISTORY_MODES:
            raise DataError(f"history must be one of {HISTORY_MODES}, got {history!r}")
        if max_history < 1:
            raise DataError(f"max_history must be >= 1, got {max_history}")
        ratios = tuple(float(r) for r in ratios)
        settings = f"seed={seed};ratios={ratios};history={history};max_history={max_history}"
        fingerprint = hashlib.sha256(f"{data.fingerprint()};{settings}".encode()).hexdigest()
        data, n_dropped = _drop_small_users(data, ratios)

        n, n_items = data.n_interactions, data.n_items
        counts = data.user_counts()
        _, n_val, n_test = _part_sizes(counts - 1, ratios)
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(n), data.users))
        users = data.users[order]
        position = np.arange(n) - _group_starts(users, data.n_users)[users]
        bounds = np.cumsum(np.stack([np.ones_like(n_val), n_val, n_test]), axis=0)[:, users]
        part_of_row = (position[None, :] >= bounds).sum(axis=0)  # 0 loo, 1 val, 2 test, 3 train
        keys = users * n_items + data.items[order]
        parts = {}
        for code, name in enumerate(("loo", "val", "test", "train")):
            parts[name] = Positives(*_pairs_from_keys(np.sort(keys[part_of_row == code]), n_items))
        history_items, history_lengths, n_cut = _history(
            parts["train"], data.n_users, n_items, history, max_history
        )
        return cls(
            data=data,
            seed=seed,
            fingerprint=fingerprint,
            history_items=_frozen(history_items),
            history_lengths=_frozen(history_lengths),
            n_history_cut=n_cut,
            n_dropped_users=n_dropped,
            **parts,
        )

    @property
    def n_users(self) -> int:
        return self.data.n_users

    @property
    def n_items(self) -> int:
        return self.data.n_items

    @property
    def history_mask(self) -> np.ndarray:
        """bool (n_users, L_max): True where ``history_items`` holds a real item."""
        width = self.history_items.shape[1]
        return np.arange(width)[None, :] < self.history_lengths[:, None]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{p}={len(getattr(self, p))}" for p in PARTS)
        return f"ImplicitSplit(n_users={self.n_users}, n_items={self.n_items}, {sizes})"

    @cached_property
    def _complement_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Index over every user's seen items (all parts) for sampling from the complement.

        Returns (sorted keys ``user * (n_items + 1) + b_j``, where ``b_j`` counts the user's
        unseen items below their j-th seen item; each user's first row in it; unseen counts).
        """
        users, items = self.data.users, self.data.items
        starts = _group_starts(users, self.n_users)
        unseen_below = items - (np.arange(users.size) - starts[users])
        keys = users * (self.n_items + 1) + unseen_below
        unseen = self.n_items - self.data.user_counts()
        return keys, starts, unseen

    def sample_negatives(self, users: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` negatives per entry of ``users``, uniformly with replacement.

        Negatives are items the user never interacted with in any part (train, val, test, LOO).
        Each draw picks a uniform rank ``r`` among the user's unseen items and maps it to the
        item exactly with one ``searchsorted`` over the seen items, so no draw is rejected.

        Args:
            users: int (m,) user indices. n: negatives per user. rng: the random source.
        Returns:
            int64 (m, n) item indices; deterministic given the rng state.
        """
        users = np.asarray(users, dtype=np.int64).ravel()
        if n < 0:
            raise DataError(f"n must be >= 0, got {n}")
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise DataError(f"user indices must lie in 0..{self.n_users - 1}")
        keys, starts, unseen = self._complement_index
        full = users[unseen[users] == 0]
        if full.size:
            u = int(full[0])
            raise DataError(
                f"user {u} (original id {self._original_user(u)!r}) has interacted with all "
                f"{self.n_items} items: no negatives to sample"
            )
        available = unseen[users][:, None]
        rank = np.minimum((rng.random((users.size, n)) * available).astype(np.int64), available - 1)
        query = (users * (self.n_items + 1))[:, None] + rank
        seen_below = np.searchsorted(keys, query, side="right") - starts[users][:, None]
        return rank + seen_below

    def _original_user(self, user: int):
        """The original id of user index ``user`` as a plain Python value (``5``, ``"a"``)."""
        return self.data.user_ids[user : user + 1].tolist()[0]

    def _check_enough_unseen(self, users: np.ndarray, n_negatives: int) -> None:
        """DataError if ``n_negatives < 1``; a warning if a user has fewer unseen items than
        ``n_negatives`` (the pool then repeats negatives).

        Users without any unseen item are left to ``sample_negatives``, which names them.
        """
        if n_negatives < 1:
            raise DataError(f"n_negatives must be >= 1, got {n_negatives}")
        unseen = self._complement_index[2]
        users = np.unique(users)
        short = users[(unseen[users] > 0) & (unseen[users] < n_negatives)]
        if short.size:
            user = int(short[np.argmin(unseen[short])])
            original = self._original_user(user)
            warnings.warn(
                f"{short.size} user(s) have fewer unseen items than the {n_negatives} negatives "
                f"asked for, e.g. user {user} (original id {original!r}) has only "
                f"{unseen[user]}: their pools must repeat negatives (eval_negatives, or "
                "calibrate --negatives, sets how many)",
                UserWarning,
                stacklevel=3,
            )

    def candidates(self, part: str, n_negatives: int, seed: int | None = None) -> Candidates:
        """Ranking pool of one part: each positive plus ``n_negatives`` negatives of its user.

        Rows are grouped by user (a user's positives first, then their negatives). The pool is
        fixed by ``seed`` (default: the split's seed) and the part. Negatives are drawn with
        replacement; a user with fewer unseen items than ``n_negatives`` gets a warning, as
        the pool must then repeat them (``n_negatives < 1`` is a DataError).
        """
        if part not in CANDIDATE_PARTS:
            raise DataError(f"part must be one of {CANDIDATE_PARTS}, got {part!r}")
        positives: Positives = getattr(self, part)
        self._check_enough_unseen(positives.users, n_negatives)
        rng = np.random.default_rng([self.seed if seed is None else seed, _PART_STREAM[part]])
        negatives = self.sample_negatives(positives.users, n_negatives, rng)
        users = np.concatenate([positives.users, np.repeat(positives.users, n_negatives)])
        items = np.concatenate([positives.items, negatives.ravel()])
        labels = np.zeros(users.size, dtype=np.float32)
        labels[: len(positives)] = 1.0
        order = np.argsort(users, kind="stable")
        return Candidates(users=users[order], items=items[order], labels=labels[order])

    def describe(self) -> dict[str, Any]:
        """Part sizes, history length statistics, truncations, drops and cold items."""
        lengths = self.history_lengths
        train_counts = np.bincount(self.train.items, minlength=self.n_items)
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            **{f"n_{p}": len(getattr(self, p)) for p in PARTS},
            "history_min": int(lengths.min()),
            "history_median": float(np.median(lengths)),
            "history_mean": float(lengths.mean()),
            "history_max": int(lengths.max()),
            "n_history_cut": self.n_history_cut,
            "n_dropped_users": self.n_dropped_users,
            "n_cold_items": int(np.count_nonzero(train_counts == 0)),
        }
