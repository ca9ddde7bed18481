"""Judge a finished run's uncertainty: ``uncertainty.json`` and its figures, as
``pyro-bamf uncertainty`` writes them (:func:`pyro_bamf.uncertainty.uncertainty_report`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import views
from .protocols import evaluation_pool
from .runs import load_run, write_text
from .uncertainty import METHODS, first_positives, uncertainty_report


def report_path(out: str | Path, method: str = "posterior") -> Path:
    """Where :func:`judge_run` writes the report of ``method`` in ``out``."""
    prefix = "" if method == "posterior" else f"{method}_"
    return Path(out) / f"{prefix}uncertainty.json"


def judge_run(
    run: str | Path,
    samples: int = 200,
    positives: int = 1,
    method: str = "posterior",
    width_users: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Judge the run directory ``run`` on ``positives`` test positives per user (0: all) with
    ``samples`` draws of ``method``; write the report and its figures (reliability, rejection,
    width against history) to ``out`` (the run's folder) and return the report.

    Checked before anything is computed or written: an existing report is refused unless
    ``overwrite``, and so are impossible counts and a run evaluated by full ranking.
    """
    out = Path(out or run)
    path = report_path(out, method)
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists: pass --overwrite to replace it")
    if positives < 0:
        raise ValueError(f"--positives must be >= 0 (0: all), got {positives}")
    if width_users is not None and width_users < 2:
        raise ValueError(f"--width-users must be >= 2 (a correlation), got {width_users}")
    if samples < 2:
        raise ValueError(f"--samples must be >= 2 (a paired t-test over draws), got {samples}")
    rec = load_run(run)
    pool = evaluation_pool(rec.config, rec.split)
    if pool is None:
        raise ValueError("the run evaluates by full ranking; the uncertainty suite needs a pool")
    if positives:
        pool = first_positives(pool, positives)
    start = time.perf_counter()
    report = uncertainty_report(
        rec.model, rec.split, pool, samples, width_users=width_users,
        seed=rec.config.seed, ties=rec.config.ties, method=method,
    )  # fmt: skip
    report["seconds"] = time.perf_counter() - start
    report["positives_per_user"] = positives or "all"
    prefix = path.name.removesuffix("uncertainty.json")
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        f"{prefix}reliability.png": views.plot_reliability(
            {key: np.array(value) for key, value in report.pop("bins").items()},
            report["calibration"],
        ),
        f"{prefix}rejection.png": views.plot_rejection(report["rejection"]),
    }
    if "width_history" in report:
        figures["width_history.png"] = views.plot_width_history(
            **report.pop("width_history"),
            rho=report["attention"]["spearman_width_log_history"],
        )
    for name, fig in figures.items():
        views.save(fig, out / name)
    write_text(path, json.dumps(report, indent=2) + "\n")
    return report
