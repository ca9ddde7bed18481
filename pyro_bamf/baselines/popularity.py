"""Popularity: every user gets the items ranked by their number of training interactions."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import Baseline


class Popularity(Baseline):
    """``score(u, i) = sum_v X[v, i]``, the same ranking for every user."""

    def fit_matrix(self, matrix: sp.csr_matrix) -> None:
        self.counts = np.asarray(matrix.sum(axis=0), dtype=np.float32).ravel()

    def user_scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), self.counts.size))
