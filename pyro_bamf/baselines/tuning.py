"""Choosing a baseline's hyper-parameters on the validation part, over its grid."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

from ..data import ImplicitSplit
from ..protocols import protocol_metrics
from .base import Baseline

SELECTION_METRIC = "ndcg@10"
SELECTION = "NDCG@10 of the full ranking of the validation part (the training part fitted)"


@dataclass
class Selection:
    """The chosen, fitted model and every trial: ``{"hyperparameters": ..., "val_full_ndcg@10":
    ..., "seconds": ...}`` in grid order."""

    model: Baseline
    trials: list[dict[str, Any]]


def grid_points(grid: dict[str, tuple]) -> list[dict[str, Any]]:
    """Every combination of a grid, the last name varying fastest."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def grid_edges(grid: dict[str, tuple], point: dict[str, Any]) -> list[str]:
    """The hyper-parameters whose value in ``point`` is the lowest or highest of a grid axis
    of two or more values: where the best value may lie outside the grid."""
    return [
        name for name, values in grid.items()
        if len(values) > 1 and point[name] in (min(values), max(values))
    ]  # fmt: skip


def select_on_validation(
    factory: type[Baseline], split: ImplicitSplit, grid: dict[str, tuple], seed: int,
    ties: str = "pessimistic",
) -> Selection:  # fmt: skip
    """Fit ``factory(**point, seed=seed)`` on the training part for each grid point and keep
    the one of highest validation NDCG@10, ranking each user's validation positives among
    every item the user never interacted with; the first point in grid order wins a tie."""
    best, best_value, trials = None, -1.0, []
    for point in grid_points(grid):
        start = time.perf_counter()
        model = factory(**point, seed=seed).fit(split)
        value = protocol_metrics(model.ranking_scores, split, None, (10,), ties, part="val")[
            SELECTION_METRIC
        ]
        trials.append({"hyperparameters": point, f"val_full_{SELECTION_METRIC}": value,
                       "seconds": time.perf_counter() - start})  # fmt: skip
        if value > best_value:
            best, best_value = model, value
    return Selection(best, trials)
