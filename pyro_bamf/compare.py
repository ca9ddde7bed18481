"""``pyro-bamf compare``: runs side by side, per metric and protocol, with bootstrap
intervals over users and paired tests against the first run (:mod:`pyro_bamf.significance`).

Runs are compared only on the same split (their ``data_fingerprint``) and, per protocol, the
same pool (``pool_fingerprints``): the same rows ranked for the same users.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .protocols import PER_USER, PROTOCOLS, read_per_user
from .runs import INCOMPLETE, read_metrics
from .significance import (
    LEVEL,
    RESAMPLES,
    bootstrap_means,
    holm,
    percentile_interval,
    wilcoxon_p,
)


@dataclass(frozen=True)
class ComparedRun:
    """A finished run as compared: its folder, method, fingerprints and per-user table."""

    path: Path
    method: str
    data_fingerprint: str
    pool_fingerprints: dict[str, str]
    per_user: pd.DataFrame


def load_compared(run: str | Path) -> ComparedRun:
    """Read a finished run (BAMF's or a baseline's) for comparison; ``ValueError`` naming what
    is missing."""
    run = Path(run)
    if not run.is_dir():
        raise ValueError(f"run {run} is not a folder")
    if (run / INCOMPLETE).exists():
        raise ValueError(f"run {run} is incomplete (it did not finish)")
    if not (run / "metrics.json").is_file():
        raise ValueError(f"run {run} has no metrics.json: not a finished run")
    saved = read_metrics(run / "metrics.json")
    if not isinstance(saved.get("data_fingerprint"), str):
        raise ValueError(f"{run / 'metrics.json'} has no data_fingerprint: the record is damaged")
    fingerprints = saved.get("pool_fingerprints")
    if not isinstance(fingerprints, dict):
        raise ValueError(
            f"run {run} predates pool fingerprints: add them with "
            f"`pyro-bamf evaluate --run {run} --update`"
        )
    return ComparedRun(run, saved.get("method", "bamf"), saved["data_fingerprint"],
                       fingerprints, read_per_user(run / PER_USER))  # fmt: skip


def check_comparable(runs: list[ComparedRun], protocols: tuple[str, ...]) -> None:
    """``ValueError`` unless every run has the first one's split and, for each of
    ``protocols``, its pool."""
    first = runs[0]
    for run in runs[1:]:
        if run.data_fingerprint != first.data_fingerprint:
            raise ValueError(
                f"runs {first.path} and {run.path} were scored on different splits (data "
                f"fingerprints {first.data_fingerprint[:12]} vs {run.data_fingerprint[:12]}): "
                "only runs of the same data, seed and history settings can be compared"
            )
        for protocol in protocols:
            mine, theirs = (
                first.pool_fingerprints.get(protocol),
                run.pool_fingerprints.get(protocol),
            )
            if mine is None or theirs is None:
                lacking = first.path if mine is None else run.path
                raise ValueError(f"run {lacking} has no {protocol} protocol scored")
            if mine != theirs:
                raise ValueError(
                    f"runs {first.path} and {run.path} ranked different {protocol} pools "
                    f"(fingerprints {mine[:12]} vs {theirs[:12]}): check eval_negatives, "
                    "test_candidates and eval_protocol"
                )


def _aligned(runs: list[ComparedRun], protocol: str, metric: str) -> np.ndarray:
    """``(n_users, n_runs)`` values of ``metric`` under ``protocol``, users in one order."""
    columns, users = [], None
    for run in runs:
        rows = run.per_user[run.per_user["protocol"] == protocol].set_index("user")
        if metric not in rows.columns:
            known = ", ".join(rows.columns[1:6])
            raise ValueError(f"run {run.path} has no metric {metric!r} (e.g. {known})")
        if users is None:
            users = rows.index
        elif not rows.index.sort_values().equals(users.sort_values()):
            raise ValueError(f"run {run.path} scored other users than {runs[0].path}")
        columns.append(rows.loc[users, metric].to_numpy(dtype=np.float64))
    return np.column_stack(columns)


def compare_runs(
    paths: list[str | Path],
    metrics: tuple[str, ...] = ("ndcg@10",),
    protocols: tuple[str, ...] = PROTOCOLS,
    n_resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (metric, protocol, run): the mean over users with its bootstrap
    interval, the difference from the first run with its paired interval, the Wilcoxon
    signed-rank p-value against the first run and its Holm correction over the other runs
    (per metric and protocol). The first run's difference columns are empty."""
    if len(paths) < 2:
        raise ValueError("compare needs at least two runs")
    runs = [load_compared(path) for path in paths]
    check_comparable(runs, protocols)
    rows = []
    for metric in metrics:
        for protocol in protocols:
            values = _aligned(runs, protocol, metric)
            draws = bootstrap_means(values, n_resamples, seed)
            differences = draws[:, 1:] - draws[:, :1]
            pvalues = [wilcoxon_p(values[:, 0], values[:, k]) for k in range(1, len(runs))]
            adjusted = [np.nan, *holm(pvalues)]
            for k, run in enumerate(runs):
                low, high = percentile_interval(draws[:, k], level)
                row = {"metric": metric, "protocol": protocol, "run": str(run.path),
                       "method": run.method, "users": len(values), "mean": values[:, k].mean(),
                       "low": low, "high": high}  # fmt: skip
                if k:
                    diff_low, diff_high = percentile_interval(differences[:, k - 1], level)
                    row |= {"difference": values[:, k].mean() - values[:, 0].mean(),
                            "difference_low": diff_low, "difference_high": diff_high,
                            "p": pvalues[k - 1], "p_holm": adjusted[k]}  # fmt: skip
                rows.append(row)
    return pd.DataFrame(rows)


def format_table(frame: pd.DataFrame, level: float = LEVEL) -> str:
    """The comparison as Markdown tables, one per metric and protocol."""
    percent = f"{level:.0%}"
    blocks = []
    for (metric, protocol), group in frame.groupby(["metric", "protocol"], sort=False):
        lines = [
            f"{metric}, {protocol} ({group['users'].iloc[0]} users)",
            "",
            f"| run | method | mean | {percent} CI | difference vs first | {percent} CI | "
            "Wilcoxon p | Holm p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in group.itertuples():
            ci = f"[{row.low:.4f}, {row.high:.4f}]"
            if pd.isna(row.difference):
                rest = "| - | - | - | - |"
            else:
                interval = f"[{row.difference_low:+.4f}, {row.difference_high:+.4f}]"
                rest = f"| {row.difference:+.4f} | {interval} | {row.p:.2g} | {row.p_holm:.2g} |"
            lines.append(f"| {row.run} | {row.method} | {row.mean:.4f} | {ci} {rest}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
