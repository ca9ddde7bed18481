"""Matrix factorisation baselines from the ``implicit`` library (an optional extra):
iALS (Hu, Koren & Volinsky, ICDM 2008) and BPR (Rendle et al., UAI 2009)."""

from __future__ import annotations

import abc

import numpy as np
import scipy.sparse as sp

from .base import Baseline

EXTRA = "implicit"


class MissingExtraError(ImportError):
    """A baseline needs an optional package that is not installed."""


def _implicit():
    """The ``implicit`` package, or :class:`MissingExtraError` naming the extra."""
    try:
        import implicit.als
        import implicit.bpr
    except ImportError:
        raise MissingExtraError(
            f"this baseline needs the optional package 'implicit': pip install 'pyro-bamf[{EXTRA}]'"
        ) from None
    return implicit


def _check_positive(strict: bool = True, **values) -> None:
    """``ValueError`` naming the first value that is not > 0 (``>= 0`` unless ``strict``)."""
    for name, value in values.items():
        if not (value > 0 if strict else value >= 0):
            raise ValueError(f"{name} must be {'>' if strict else '>='} 0, got {value}")


class _Factorization(Baseline):
    """``score(u, i) = U[u] . V[i]`` from factors learnt by ``implicit`` on the CPU, with the
    BLAS held to one thread while it fits (as ``implicit`` advises; its own threads run)."""

    @classmethod
    def check_available(cls) -> None:
        _implicit()

    def fit_matrix(self, matrix: sp.csr_matrix) -> None:
        from threadpoolctl import threadpool_limits

        implicit = _implicit()
        with threadpool_limits(1, "blas"):  # implicit checks the BLAS threads when built
            model = self.build(implicit)
            model.fit(matrix, show_progress=False)
        self.user_factors = np.asarray(model.user_factors)
        self.item_factors = np.asarray(model.item_factors)

    @abc.abstractmethod
    def build(self, implicit):
        """The unfitted ``implicit`` model of this instance's hyper-parameters."""

    def user_scores(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T


class IALS(_Factorization):
    """Implicit alternating least squares: minimises over factors ``U, V``::

        sum_{u,i} c_ui (X[u, i] - U[u] . V[i])^2 + regularization (|U|^2 + |V|^2),
        c_ui = alpha if X[u, i] = 1 else 1

    (``implicit``'s weighting: ``alpha`` is the weight of a positive relative to an unobserved
    cell; Hu et al.'s ``1 + alpha'`` is ``alpha = 1 + alpha'``), by ``iterations`` sweeps of
    conjugate-gradient least squares (deterministic given ``seed``)."""

    grid = {
        "factors": (64, 128, 256),
        "regularization": (3.0, 10.0, 30.0),
        "alpha": (0.3, 1.0, 3.0),
    }

    def __init__(
        self, factors: int = 64, regularization: float = 0.1, alpha: float = 1.0,
        iterations: int = 15, seed: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(seed)
        _check_positive(factors=factors, alpha=alpha, iterations=iterations)
        _check_positive(regularization=regularization, strict=False)
        self.factors, self.regularization = int(factors), float(regularization)
        self.alpha, self.iterations = float(alpha), int(iterations)

    def build(self, implicit):
        return implicit.als.AlternatingLeastSquares(
            factors=self.factors, regularization=self.regularization, alpha=self.alpha,
            iterations=self.iterations, random_state=self.seed, use_gpu=False,
        )  # fmt: skip


class BPR(_Factorization):
    """Bayesian personalised ranking: SGD on ``-ln sigmoid(U[u] . (V[i] - V[j]))`` plus
    ``regularization`` times the squared norms, over sampled (user, positive, negative)
    triples, with an item bias; one thread, so that the seed fixes the result (``implicit``'s
    parallel SGD is not deterministic)."""

    grid = {
        "factors": (16, 32, 64),
        "regularization": (0.001, 0.003, 0.01),
        "learning_rate": (0.001, 0.003, 0.01),
    }

    def __init__(
        self, factors: int = 64, regularization: float = 0.01, learning_rate: float = 0.01,
        iterations: int = 100, seed: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(seed)
        _check_positive(factors=factors, learning_rate=learning_rate, iterations=iterations)
        _check_positive(regularization=regularization, strict=False)
        self.factors, self.regularization = int(factors), float(regularization)
        self.learning_rate, self.iterations = float(learning_rate), int(iterations)

    def build(self, implicit):
        return implicit.bpr.BayesianPersonalizedRanking(
            factors=self.factors, learning_rate=self.learning_rate,
            regularization=self.regularization, iterations=self.iterations,
            random_state=self.seed, num_threads=1, use_gpu=False,
        )  # fmt: skip
