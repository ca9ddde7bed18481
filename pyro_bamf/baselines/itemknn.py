"""ItemKNN: item-based nearest neighbours on cosine similarity with shrinkage, as tuned in
Dacrema et al. (RecSys 2019, "Are we really making much progress?")."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .base import Baseline, cooccurrence


class ItemKNN(Baseline):
    """Scores ``score(u, j) = sum_{i in N_k(j)} X[u, i] S_ij`` with the shrunk cosine::

        S_ij = <x_i, x_j> / (||x_i|| ||x_j|| + shrink)   (i != j; S_jj = 0)

    ``x_i`` the column of item ``i`` in the binary training matrix ``X``, and ``N_k(j)`` the
    ``neighbours`` items of highest ``S_ij`` for item ``j`` (ties to the lower item index).
    The similarity is held dense (``n_items^2`` floats) while the neighbours are chosen.
    """

    grid = {"neighbours": (20, 50, 100, 200, 500), "shrink": (0.0, 10.0, 100.0)}

    def __init__(self, neighbours: int = 100, shrink: float = 10.0, seed: int = 0) -> None:
        super().__init__(seed)
        if neighbours < 1 or shrink < 0:
            raise ValueError(f"ItemKNN needs neighbours >= 1 and shrink >= 0, got "
                             f"{neighbours} and {shrink}")  # fmt: skip
        self.neighbours, self.shrink = int(neighbours), float(shrink)

    def fit_matrix(self, matrix: sp.csr_matrix) -> None:
        n_items = matrix.shape[1]
        overlap = cooccurrence(matrix)
        norms = np.sqrt(np.diag(overlap))
        denominator = np.outer(norms, norms) + self.shrink
        similarity = np.divide(
            overlap, denominator, out=np.zeros_like(overlap), where=denominator > 0
        )  # an item without interactions has no overlap: 0, not 0 / 0
        del overlap, denominator
        np.fill_diagonal(similarity, 0.0)
        k = min(self.neighbours, n_items)
        rows = np.argsort(-similarity, axis=0, kind="stable")[:k]  # (k, n_items) neighbours
        values = np.take_along_axis(similarity, rows, axis=0)
        self.weights = sp.csc_matrix(
            (values.ravel(order="F"), rows.ravel(order="F"), np.arange(0, (n_items + 1) * k, k)),
            shape=(n_items, n_items),
        )

    def user_scores(self, users: np.ndarray) -> np.ndarray:
        return (self.matrix[users] @ self.weights).toarray().astype(np.float32, copy=False)
