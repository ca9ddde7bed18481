"""The interface every baseline implements, and the training matrix they are fitted on."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from ..data import ImplicitSplit

MAX_DENSE_CELLS = 2**24  # user x item scores held at once by ranking_scores


def train_matrix(split: ImplicitSplit) -> sp.csr_matrix:
    """The binary training matrix ``X``: ``float32 (n_users, n_items)`` CSR, ``X[u, i] = 1``
    for each training interaction (the part BAMF trains on; validation, test and the
    leave-one-out item are held out)."""
    ones = np.ones(len(split.train), dtype=np.float32)
    shape = (split.n_users, split.n_items)
    return sp.csr_matrix((ones, (split.train.users, split.train.items)), shape=shape)


def cooccurrence(matrix: sp.csr_matrix) -> np.ndarray:
    """``X^T X`` of the binary training matrix: ``float32 (n_items, n_items)`` dense, entry
    ``(i, j)`` the number of users with both items (the diagonal: each item's count; exact
    below 2^24 users)."""
    return (matrix.T @ matrix).toarray()


class Baseline(abc.ABC):
    """A recommender fitted on a split's training matrix and ranked by the same test
    protocols as BAMF (:mod:`pyro_bamf.protocols`), after Cornac's ``Recommender``.

    A subclass takes its hyper-parameters as keyword arguments (stored as attributes of the
    same names), lists the values tried on validation in ``grid`` (:mod:`.tuning`), and
    implements :meth:`fit_matrix` and :meth:`user_scores`. ``seed`` fixes any randomness.
    """

    grid: ClassVar[dict[str, tuple]] = {}

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.matrix: sp.csr_matrix | None = None

    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`~pyro_bamf.baselines.MissingExtraError` when an optional package the
        method needs is missing (none by default)."""
        return None

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The values of the ``grid``'s hyper-parameters this instance was built with."""
        return {name: getattr(self, name) for name in self.grid}

    def fit(self, split: ImplicitSplit) -> Baseline:
        """Fit on ``split``'s training matrix (:func:`train_matrix`); returns ``self``."""
        self.matrix = train_matrix(split)
        self.fit_matrix(self.matrix)
        return self

    @abc.abstractmethod
    def fit_matrix(self, matrix: sp.csr_matrix) -> None:
        """Fit on the binary ``float32 (n_users, n_items)`` CSR training matrix."""

    @abc.abstractmethod
    def user_scores(self, users: np.ndarray) -> np.ndarray:
        """Scores of every item for ``users (U,)``: ``float32 (U, n_items)``, higher first."""

    def ranking_scores(self, users, items) -> np.ndarray:
        """The score of each candidate row ``users, items (N,)``: ``float32 (N,)``; users are
        scored in chunks of at most ``MAX_DENSE_CELLS`` user x item cells."""
        if self.matrix is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() first")
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        unique, row = np.unique(users, return_inverse=True)
        scores = np.empty(len(users), dtype=np.float32)
        per_chunk = max(1, MAX_DENSE_CELLS // self.matrix.shape[1])
        for first in range(0, len(unique), per_chunk):
            rows = np.flatnonzero((row >= first) & (row < first + per_chunk))
            dense = self.user_scores(unique[first : first + per_chunk])
            scores[rows] = dense[row[rows] - first, items[rows]]
        return scores
