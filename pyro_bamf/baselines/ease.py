"""EASE (Steck, WWW 2019, "Embarrassingly shallow autoencoders for sparse data")."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from .base import Baseline, cooccurrence


class EASE(Baseline):
    """An item-item linear model with a zero diagonal, in closed form::

        B = argmin_B ||X - X B||_F^2 + l2 ||B||_F^2   subject to   diag(B) = 0
        P = (X^T X + l2 I)^-1,   B_ij = -P_ij / P_jj  (i != j),   score(u, .) = X[u] B

    ``X`` is the binary training matrix (``n_users x n_items``). Items without a training
    interaction have zero rows and columns in ``B`` (their scores are 0), so ``P`` is taken
    over the other items only, in float64: ``O(n_items^3)`` time and ``n_items^2`` memory.
    """

    grid = {"l2": (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)}

    def __init__(self, l2: float = 500.0, seed: int = 0) -> None:
        super().__init__(seed)
        if not l2 > 0:
            raise ValueError(f"EASE needs l2 > 0, got {l2}")
        self.l2 = float(l2)

    def fit_matrix(self, matrix: sp.csr_matrix) -> None:
        gram = cooccurrence(matrix).astype(np.float64)
        self.warm = np.flatnonzero(np.diag(gram) > 0)
        gram = gram[np.ix_(self.warm, self.warm)]
        gram[np.diag_indices_from(gram)] += self.l2
        precision = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        weights = precision / -np.diag(precision)
        np.fill_diagonal(weights, 0.0)
        self.weights = weights.astype(np.float32)  # B restricted to the warm items

    def user_scores(self, users: np.ndarray) -> np.ndarray:
        scores = np.zeros((len(users), self.matrix.shape[1]), dtype=np.float32)
        scores[:, self.warm] = self.matrix[users][:, self.warm] @ self.weights
        return scores
