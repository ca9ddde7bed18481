"""Implicit-feedback interactions: a validated set of distinct (user, item) pairs.

Users and items are re-indexed to ``0..n-1`` in sorted order of their original ids; the original
ids are kept so results can be mapped back. Rows are always held sorted by (user, item).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class DataError(ValueError):
    """Invalid, missing or corrupt input data."""


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array`` (the caller's array stays writable)."""
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class Interactions:
    """Distinct positive (user, item) pairs, sorted by (user, item).

    Attributes:
        users: int64 (n,) user index of each interaction, in ``0..n_users-1``.
        items: int64 (n,) item index of each interaction, in ``0..n_items-1``.
        user_ids: (n_users,) original ids; ``user_ids[k]`` is the original id of user ``k``.
        item_ids: (n_items,) original ids; ``item_ids[k]`` is the original id of item ``k``.
        source: human-readable origin of the data.

    Construction validates shapes and index ranges, rejects duplicate pairs and sorts the rows;
    all arrays are stored read-only.
    """

    users: np.ndarray
    items: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        users = np.asarray(self.users, dtype=np.int64).ravel()
        items = np.asarray(self.items, dtype=np.int64).ravel()
        user_ids, item_ids = np.asarray(self.user_ids), np.asarray(self.item_ids)
        if users.shape != items.shape:
            raise DataError(f"users ({users.size}) and items ({items.size}) differ in length")
        for name, index, ids in (("user", users, user_ids), ("item", items, item_ids)):
            if ids.ndim != 1:
                raise DataError(f"{name}_ids must be one-dimensional, got shape {ids.shape}")
            bad = int(np.count_nonzero((index < 0) | (index >= ids.size)))
            if bad:
                raise DataError(f"{bad} {name} indices outside 0..{ids.size - 1}")
        keys = users * max(item_ids.size, 1) + items
        if np.any(keys[1:] < keys[:-1]):
            order = np.argsort(keys, kind="stable")
            users, items, keys = users[order], items[order], keys[order]
        n_dup = int(np.count_nonzero(keys[1:] == keys[:-1]))
        if n_dup:
            raise DataError(f"{n_dup} duplicate (user, item) pairs; use from_frame to de-duplicate")
        for name, value in (
            ("users", users),
            ("items", items),
            ("user_ids", user_ids),
            ("item_ids", item_ids),
        ):
            object.__setattr__(self, name, _frozen(value))

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    @property
    def n_interactions(self) -> int:
        return int(self.users.size)

    def __len__(self) -> int:
        return self.n_interactions

    def __repr__(self) -> str:
        return (
            f"Interactions(n_users={self.n_users}, n_items={self.n_items}, "
            f"n_interactions={self.n_interactions}, source={self.source!r})"
        )

    def user_counts(self) -> np.ndarray:
        """int64 (n_users,): number of interactions of each user."""
        return np.bincount(self.users, minlength=self.n_users).astype(np.int64)

    def item_counts(self) -> np.ndarray:
        """int64 (n_items,): number of interactions of each item."""
        return np.bincount(self.items, minlength=self.n_items).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        """Summary counts: sizes, density and per-user activity (plain Python numbers)."""
        counts = self.user_counts()
        cells = self.n_users * self.n_items
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": self.n_interactions,
            "density": self.n_interactions / cells if cells else 0.0,
            "max_user_interactions": int(counts.max()) if counts.size else 0,
            "mean_user_interactions": float(counts.mean()) if counts.size else 0.0,
        }

    def fingerprint(self) -> str:
        """sha256 hex digest of the index arrays and the catalogue sizes (stable across runs)."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.users, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.items, dtype="<i8").tobytes())
        digest.update(f"n_users={self.n_users};n_items={self.n_items}".encode())
        return digest.hexdigest()

    def user_index(self, original_ids: Any) -> np.ndarray:
        """int64 (m,): user indices of the given original user ids; DataError on unknown ids."""
        return _lookup(self.user_ids, original_ids, "user")

    def item_index(self, original_ids: Any) -> np.ndarray:
        """int64 (m,): item indices of the given original item ids; DataError on unknown ids."""
        return _lookup(self.item_ids, original_ids, "item")


def _lookup(ids: np.ndarray, original_ids: Any, kind: str) -> np.ndarray:
    """Positions of ``original_ids`` in ``ids``; DataError naming the ids that are absent."""
    query = np.atleast_1d(np.asarray(original_ids))
    index = pd.Index(ids).get_indexer(query)
    unknown = query[index < 0]
    if unknown.size:
        shown = ", ".join(repr(v) for v in unknown[:10].tolist())
        more = f" (and {unknown.size - 10} more)" if unknown.size > 10 else ""
        raise DataError(f"{unknown.size} unknown {kind} id(s): {shown}{more}")
    return index.astype(np.int64)


def from_frame(
    df: pd.DataFrame,
    user_col: str = "userId",
    item_col: str = "movieId",
    source: str = "",
) -> Interactions:
    """Build Interactions from a table with one (user, item) pair per row.

    Ids may be of any sortable hashable type (ints, strings). Duplicate pairs are removed with a
    warning giving their count. Raises DataError on missing columns, an empty table or missing ids.
    """
    label = f" in {source}" if source else ""
    missing = [c for c in (user_col, item_col) if c not in df.columns]
    if missing:
        available = ", ".join(repr(str(c)) for c in df.columns)
        raise DataError(
            f"missing column(s) {', '.join(map(repr, missing))}{label}; available: {available}"
        )
    if len(df) == 0:
        raise DataError(f"the interaction table{label} is empty")
    for col in (user_col, item_col):
        n_nan = int(df[col].isna().sum())
        if n_nan:
            raise DataError(f"{n_nan} row(s){label} have a missing id in column {col!r}")
    try:
        users, user_ids = pd.factorize(df[user_col], sort=True)
        items, item_ids = pd.factorize(df[item_col], sort=True)
    except TypeError as err:
        raise DataError(f"ids{label} cannot be sorted: {err}") from err
    keys, first = np.unique(users.astype(np.int64) * len(item_ids) + items, return_index=True)
    n_dup = len(df) - keys.size
    if n_dup:
        warnings.warn(
            f"removed {n_dup} duplicate (user, item) pair(s){label}", UserWarning, stacklevel=2
        )
    return Interactions(
        users=users[first],
        items=items[first],
        user_ids=np.asarray(user_ids),
        item_ids=np.asarray(item_ids),
        source=source,
    )


_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_PARQUET = {".parquet", ".pq"}


def _sniff_separator(path: Path) -> str:
    """Separator of a .txt/.dat file guessed from its first line: '::', tab, ',' or whitespace."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    for sep in ("::", "\t", ","):
        if sep in first:
            return sep
    return r"\s+"


def load_table(
    path: str | os.PathLike,
    user_col: str = "userId",
    item_col: str = "movieId",
    sep: str | None = None,
) -> Interactions:
    """Load (user, item) pairs from a delimited text file (with a header row) or a Parquet file.

    The separator is inferred from the extension (.csv ',', .tsv/.tab tab, .txt/.dat from the
    first line) unless ``sep`` is given. Extra columns are ignored. Raises DataError naming the file
    when it is missing, malformed, or lacks the id columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in _PARQUET:
        df = _read_parquet(path)
    else:
        if sep is None:
            sep = _SEPARATORS.get(suffix) or _sniff_separator(path)
        engine = "python" if len(sep) > 1 and sep != r"\s+" else "c"
        try:
            df = pd.read_csv(path, sep=sep, engine=engine)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: malformed table ({' '.join(str(err).split())})") from err
    return from_frame(df, user_col=user_col, item_col=item_col, source=str(path))


def _read_parquet(path: Path) -> pd.DataFrame:
    """Read a Parquet file with pandas; DataError when no engine is installed or it is corrupt."""
    try:
        return pd.read_parquet(path)
    except ImportError as err:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow or fastparquet (pip install pyarrow): {err}"
        ) from err
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: malformed Parquet file ({err})") from err
