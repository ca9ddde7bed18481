"""Figures of attention uncertainty and calibration (matplotlib, no pyplot global state).

Each function returns a :class:`matplotlib.figure.Figure`; :func:`save` writes it as PNG or SVG
(by the file's suffix) atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .atomic import atomic_path
from .predictive import INTERVAL, AttentionSamples, summarize

FORMATS = (".png", ".svg")


def _label(item: int, titles: Mapping[int, str] | None, width: int = 38) -> str:
    text = titles.get(item, str(item)) if titles else str(item)
    return text if len(text) <= width else text[: width - 1] + "…"


def _interval_panel(ax, labels, summary: dict[str, np.ndarray], xlabel: str, title: str):
    """Median (dot) and central interval (bar) per row, first row on top."""
    y = np.arange(len(labels))[::-1]
    ax.hlines(y, summary["low"], summary["high"], color="tab:blue", lw=2.5, alpha=0.6)
    ax.plot(summary["median"], y, "o", color="tab:blue", ms=4)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def plot_attention(
    samples: AttentionSamples,
    titles: Mapping[int, str] | None = None,
    top_n: int = 20,
    user_label: str | None = None,
    item_label: str | None = None,
) -> Figure:
    """Per-user attention over history items: median and 90 % interval of ``alpha_j``, the
    ``top_n`` largest medians, user side (and item side when ``samples`` has a target).

    ``titles`` maps the labels' item keys (``samples.history``) to names (e.g. movie titles);
    ``user_label``/``item_label`` name the user and the target (default: their indices).
    """
    sides = ["user"] + (["item"] if samples.item_weights is not None else [])
    fig = Figure(figsize=(6.5 * len(sides), 0.28 * min(top_n, samples.history.size) + 1.6))
    axes = fig.subplots(1, len(sides), squeeze=False)[0]
    for ax, side in zip(axes, sides, strict=True):
        table = samples.summary(side).head(top_n)
        labels = [_label(int(i), titles) for i in table["item"]]
        summary = {k: table[k].to_numpy() for k in ("low", "median", "high")}
        target = f" for target {item_label or samples.item}" if side == "item" else ""
        _interval_panel(
            ax, labels, summary, "attention weight alpha_j",
            f"{side}-side attention{target}: median, {INTERVAL:.0%} interval",
        )  # fmt: skip
    fig.suptitle(
        f"user {user_label or samples.user}: top {len(labels)} of {samples.history.size} "
        f"history items, {samples.user_weights.shape[0]} posterior draws",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def plot_attention_grid(
    panels: Sequence[Sequence[tuple[str, AttentionSamples]]],
    titles: Mapping[int, str] | None = None,
    top_n: int = 12,
) -> Figure:
    """User-side attention of several users (rows) under several models (columns): each
    panel ``(title, samples)`` shows the median and 90 % interval of the ``top_n`` largest
    median weights and, dotted, the mean median weight over the whole history (what every item
    would get from uniform attention of the same total), on one weight axis per row."""
    rows, cols = len(panels), max(len(row) for row in panels)
    fig = Figure(figsize=(5.2 * cols, (0.24 * top_n + 1.0) * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for row, axes_row in zip(panels, axes, strict=True):
        high = max(float(samples.summary().head(top_n)["high"].max()) for _, samples in row)
        for ax in axes_row[len(row) :]:
            ax.set_visible(False)
        for (title, samples), ax in zip(row, axes_row, strict=False):
            table = samples.summary().head(top_n)
            labels = [_label(int(i), titles, 30) for i in table["item"]]
            summary = {k: table[k].to_numpy() for k in ("low", "median", "high")}
            _interval_panel(ax, labels, summary, "attention weight alpha_j", title)
            ax.axvline(samples.summary()["median"].mean(), ls=":", color="gray", lw=1)
            ax.set_xlim(0, 1.05 * high)
    fig.tight_layout()
    return fig


def plot_score_intervals(
    items: np.ndarray,
    probabilities: np.ndarray,
    topk: np.ndarray | None = None,
    titles: Mapping[int, str] | None = None,
    k: int = 10,
) -> Figure:
    """Score intervals of a top-k list: ``probabilities (N, C)`` draws for ``items (C,)`` in
    list order; ``topk (C,)`` optional ``P(in top k)`` shown beside each label."""
    summary = summarize(probabilities)
    labels = [_label(int(i), titles) for i in items]
    if topk is not None:
        labels = [f"{label}  [P(top {k}) {p:.2f}]" for label, p in zip(labels, topk, strict=True)]
    fig = Figure(figsize=(7.5, 0.3 * len(items) + 1.4))
    ax = fig.subplots()
    _interval_panel(
        ax, labels, summary, "predicted probability",
        f"recommended items: median, {INTERVAL:.0%} interval over {probabilities.shape[0]} draws",
    )  # fmt: skip
    fig.tight_layout()
    return fig


def plot_reliability(bins: Mapping[str, np.ndarray], metrics: Mapping[str, float]) -> Figure:
    """Reliability diagram from :func:`pyro_bamf.calibration.reliability_bins`: positive rate
    against mean predicted probability per bin, with the bins' counts below."""
    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    filled = bins["count"] > 0
    top.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    top.plot(bins["confidence"][filled], bins["accuracy"][filled], "o-", label="model")
    top.set_ylabel("observed positive rate")
    top.set_title(
        f"ECE {metrics['ece']:.4f}  Brier {metrics['brier']:.4f}  NLL {metrics['nll']:.4f}",
        fontsize=9,
    )
    top.legend(fontsize=8)
    edges = bins["edges"]
    bottom.bar(edges[:-1], bins["count"], width=np.diff(edges), align="edge", alpha=0.6)
    bottom.set_yscale("log")
    bottom.set_xlabel("mean predicted probability")
    bottom.set_ylabel("count")
    fig.tight_layout()
    return fig


def plot_rejection(curves: Mapping[str, list]) -> Figure:
    """Accuracy-rejection curves (:func:`pyro_bamf.uncertainty.rejection_curve`): each metric
    against the fraction of the most uncertain pairs or users set aside."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for name, curve in curves.items():
        fractions, values = zip(*curve, strict=True)
        ax.plot(fractions, values, "o-", label=name)
    ax.set_xlabel("most uncertain fraction set aside")
    ax.set_ylabel("metric over the rest")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_width_history(log_length: np.ndarray, width: np.ndarray, rho: float) -> Figure:
    """Each user's relative 90 % attention width against log history length (Spearman
    ``rho``)."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.scatter(log_length, width, s=8, alpha=0.6)
    ax.set_xlabel("log history length")
    ax.set_ylabel("relative 90 % attention width")
    ax.set_title(f"Spearman rho {rho:.3f}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_anchor_recovery(results: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Per configuration, over seeds (:func:`pyro_bamf.diagnostics.anchor_recovery` of each):
    the share of targets whose planted anchor gets the largest attention weight, beside
    chance, and the anchor's weight relative to uniform attention; bars are seed means, dots
    single seeds."""
    names = list(results)
    x = np.arange(len(names))
    fig = Figure(figsize=(2.2 + 1.6 * len(names), 3.5))
    left, right = fig.subplots(1, 2)
    for ax, key, color in ((left, "top1", "tab:blue"), (right, "anchor_weight", "tab:orange")):
        values = [[row[key] for row in results[name]] for name in names]
        ax.bar(x, [np.mean(v) for v in values], color=color, alpha=0.6)
        for position, seeds in zip(x, values, strict=True):
            ax.plot([position] * len(seeds), seeds, "o", color="black", ms=3)
        ax.set_xticks(x, names, fontsize=7, rotation=15)
    chance = [np.mean([row["top1_chance"] for row in results[n]]) for n in names]
    left.plot(x, chance, "_", ms=30, mew=2, color="gray", label="chance (1 / history length)")
    left.set_ylabel("anchor ranked first (share of targets)")
    left.legend(fontsize=7)
    right.axhline(1.0, ls=":", color="gray", label="uniform attention")
    right.set_ylabel("anchor weight / uniform weight")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def check_figure_path(path: str | os.PathLike) -> Path:
    """``path`` if it names a format :func:`save` writes, else ``ValueError`` (check before
    long computations)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"figure file {path} must end in one of {FORMATS}")
    return path


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (``.png`` or ``.svg``) atomically; returns the path."""
    path = check_figure_path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=150, bbox_inches="tight")
    return path
