"""``pyro-bamf baseline``: fit a tuned baseline and write its run directory."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..config import BAMFConfig, ConfigError
from ..data import resolve_spec
from ..protocols import PER_USER, protocol_pools, score_protocols, write_per_user
from ..runs import (
    INCOMPLETE,
    REPLACED,
    RUN_FILES,
    build_split,
    put_back,
    run_files_to_replace,
    scored_record,
    set_aside,
    write_text,
)
from . import BASELINES, SELECTION, grid_edges, grid_points, select_on_validation
from .base import Baseline


def parse_grid(factory: type[Baseline], overrides: list[str]) -> dict[str, tuple]:
    """``factory.grid`` with the axes given as ``"name=v1,v2,..."`` replaced (a single value
    fixes one), each value parsed as the grid's default values are (int or float)."""
    grid = dict(factory.grid)
    for item in overrides:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--grid expects NAME=V1,V2,..., got {item!r}")
        if name not in grid:
            known = ", ".join(grid) or "none: it has no hyper-parameters"
            raise ConfigError(f"--grid {name!r} is not a hyper-parameter of this method ({known})")
        kind = type(grid[name][0]) if grid[name] else float
        try:
            grid[name] = tuple(_parse(kind, value.strip()) for value in values.split(","))
        except ValueError:
            raise ConfigError(f"--grid {name}: {values!r} are not {kind.__name__} values") from None
    return grid


def _parse(kind: type, text: str):
    """``text`` as a value of ``kind``; booleans are ``true`` or ``false``."""
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(text)
        return text.lower() == "true"
    return kind(text)


def check_grid(factory: type[Baseline], grid: dict[str, tuple], seed: int) -> None:
    """``ConfigError`` naming the first grid point the method refuses (building each is
    cheap: nothing is fitted)."""
    for point in grid_points(grid):
        try:
            factory(**point, seed=seed)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"--grid point {point} is refused: {err}") from None


def baseline_run(
    method: str, config: BAMFConfig, out: str | Path, grid_overrides: list[str] = (),
    overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Tune ``method`` on the validation part of ``config``'s split, score it on the same test
    protocols and pools as ``pyro-bamf train`` of that config, and write ``out``:
    ``config.toml`` (the split's and pools' settings), ``per_user.csv`` and ``metrics.json``
    (``"method"``, the chosen ``"hyperparameters"``, the ``"grid"``, the ``"grid_edges"`` the
    choice lies on, every ``"trials"`` entry, each protocol's means, the pools' fingerprints,
    ``"fit_seconds"``, ``"tuning_seconds"``, ``"eval_seconds"``). Returns that record.

    Everything is checked before the first file is written (the method and its extra, every
    grid point, ``out``, the data); ``out`` is refused if it holds a run, unless ``overwrite``.
    A baseline has nothing to resume: if it fails or is interrupted its files are removed, and
    a run it was replacing comes back, as with ``train``.
    """
    out = Path(out)
    factory = BASELINES.resolve(method)
    if not (isinstance(factory, type) and issubclass(factory, Baseline)):
        raise ConfigError(f"baseline {method!r} is not a pyro_bamf.baselines.Baseline subclass")
    factory.check_available()
    grid = parse_grid(factory, list(grid_overrides))
    check_grid(factory, grid, config.seed)
    stale = run_files_to_replace(out, overwrite)
    config = config.replace(
        data=resolve_spec(config.data),
        test_candidates=config.test_candidates and str(Path(config.test_candidates).resolve()),
    )
    split = build_split(config)
    pools = protocol_pools(config, split)
    aside = set_aside(out, stale) if stale else None
    created = not out.exists()
    try:
        record = _run_in(method, factory, grid, config, out, split, pools, aside)
    except BaseException:  # nothing to resume: remove this run's files, return the old run's
        if aside is not None:
            put_back(out, aside)
        else:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
    shutil.rmtree(out / REPLACED, ignore_errors=True)
    return record


def _run_in(method, factory, grid, config, out, split, pools, aside) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    kept = "" if aside is None else f"; the run it replaces waits in {REPLACED}/ until then"
    write_text(out / INCOMPLETE, f"the baseline has not finished; run it again{kept}\n")
    write_text(out / "config.toml", config.to_toml())
    start = time.perf_counter()
    selection = select_on_validation(factory, split, grid, config.seed, config.ties)
    tuning_seconds = time.perf_counter() - start
    model = selection.model
    start = time.perf_counter()
    model.fit(split)  # timed alone: what the chosen method costs to fit once
    fit_seconds = time.perf_counter() - start
    scored = score_protocols(model.ranking_scores, split, pools, ties=config.ties)
    write_per_user(out / PER_USER, scored.per_user)
    record = {
        "method": method,
        "hyperparameters": model.hyperparameters,
        "selection": SELECTION,
        "grid": grid,
        "grid_edges": grid_edges(grid, model.hyperparameters),
        "trials": selection.trials,
        **scored_record(scored),
        "fit_seconds": fit_seconds,
        "tuning_seconds": tuning_seconds,
        "data": split.data.source,
        "data_fingerprint": split.fingerprint,
    }
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    (out / INCOMPLETE).unlink()
    return record
