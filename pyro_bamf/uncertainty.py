"""Whether a posterior's uncertainty means anything: metrics over posterior predictive draws.

A test pool gives each user ``u`` positives ``i``, each with its own sampled negatives ``j``;
``N`` posterior draws give logits ``x^n`` for every candidate. Per (positive, negative) pair,
with the expected logits ``x = mean_n x^n``::

    misordered        x_i <= x_j                                 (at the expected scores)
    FCP               mean over pairs of [x_i > x_j]             (Coscrato & Bridge, 2023)
    P(misorder)       p = mean_n [x^n_j >= x^n_i]
    uncertainty       u = min(p, 1 - p)    the posterior's doubt about its own expected order
    margin baseline   u = -|x_i - x_j|     (a deterministic model's doubt: a small margin)
    AUROC             P(u of a misordered pair > u of a well-ordered one), ties counting 1/2
    PAvPU             (n_accurate&certain + n_inaccurate&uncertain) / n   (Fan et al., 2020),
                      "certain" when a paired t-test of x^n_i - x^n_j over the draws rejects a
                      zero mean at level alpha

Calibration uses the predictive probabilities ``P = mean_n sigmoid(x^n)``: ECE, Brier and NLL
over the whole pool (:mod:`pyro_bamf.calibration`), and ECE@k over each user's top ``k`` by
``P`` only (Sato, RecSys 2024: the top of a list is where miscalibration matters). URI (Coscrato
& Bridge) compares the uncertainty of the recommended items that are hits with that of all
recommended items, in units of the uncertainty's spread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from scipy import stats
from scipy.special import expit

from .calibration import calibration_metrics, reliability_bins
from .diagnostics import attention_uniformity, example_batches, interval_widths
from .metrics import per_user_metrics
from .predictive import dropout_logit_samples, logit_samples

ALPHAS = (0.01, 0.05, 0.1)
METHODS = {"posterior": logit_samples, "mc_dropout": dropout_logit_samples}


def auroc(uncertainty, wrong) -> float:
    """``P(u_wrong > u_right)`` (ties count 1/2): the area under the ROC curve of
    ``uncertainty (n,)`` as a detector of ``wrong (n,)`` (bool); NaN if either class is
    empty. Mann-Whitney's U over the average ranks."""
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    wrong = np.asarray(wrong, dtype=bool).ravel()
    if u.shape != wrong.shape:
        raise ValueError(f"uncertainty and wrong differ in length: {u.size} vs {wrong.size}")
    n_wrong, n_right = int(wrong.sum()), int((~wrong).sum())
    if n_wrong == 0 or n_right == 0:
        return float("nan")
    ranks = stats.rankdata(u)
    return float((ranks[wrong].sum() - n_wrong * (n_wrong + 1) / 2) / (n_wrong * n_right))


def fcp(margin) -> float:
    """The fraction of concordant pairs: ``mean([x_i - x_j > 0])`` over expected ``margin``."""
    return float(np.mean(np.asarray(margin) > 0))


def pair_statistics(positive, negative) -> dict[str, np.ndarray]:
    """Per pair, from draws ``positive (N, P)`` and ``negative (N, P)`` of the two logits:
    ``misordered`` (bool, at the expected logits), ``margin`` (expected ``x_i - x_j``),
    ``p_misorder`` and ``uncertainty`` (module doc), and the paired t-test's two-sided
    ``p_value`` (1 where every draw gives the same margin and it is 0; 0 where it is not)."""
    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    if positive.shape != negative.shape or positive.ndim != 2:
        raise ValueError(
            f"positive and negative draws must both be (N, P), got {positive.shape} and "
            f"{negative.shape}"
        )
    n = positive.shape[0]
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 draws, got {n}")
    difference = positive - negative
    margin = difference.mean(0)
    p_misorder = (difference <= 0).mean(0)
    spread = difference.std(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = margin / (spread / np.sqrt(n))
    p_value = np.where(spread > 0, 2 * stats.t.sf(np.abs(t), df=n - 1), (margin == 0) * 1.0)
    return {
        "misordered": margin <= 0,
        "margin": margin,
        "p_misorder": p_misorder,
        "uncertainty": np.minimum(p_misorder, 1 - p_misorder),
        "p_value": p_value,
    }


def pavpu(misordered, p_value, alpha: float) -> float:
    """``(n_ac + n_iu) / n``: pairs accurate (not ``misordered``) and certain (``p_value <
    alpha``) plus pairs inaccurate and uncertain, over all pairs."""
    misordered = np.asarray(misordered, dtype=bool)
    certain = np.asarray(p_value) < alpha
    return float(np.mean((~misordered & certain) | (misordered & ~certain)))


def rejection_curve(
    values, uncertainty, fractions=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5), seed: int = 0
) -> list:
    """``mean(values)`` after setting aside the ``fraction`` most uncertain entries, for each
    fraction: ``[(fraction, mean), ...]``. Among equal uncertainties the order is random
    (``seed``), so ties do not favour any position."""
    values = np.asarray(values, dtype=np.float64)
    tie_break = np.random.default_rng(seed).random(values.size)
    order = np.lexsort((tie_break, -np.asarray(uncertainty, dtype=np.float64)))
    curve = []
    for fraction in fractions:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"a rejected fraction must be in [0, 1), got {fraction}")
        kept = order[int(round(fraction * values.size)) :]
        curve.append((float(fraction), float(values[kept].mean())))
    return curve


def ece_at_k(probabilities, labels, users, k: int = 10, n_bins: int = 15) -> float:
    """The ECE of the predictions in each user's top ``k`` by ``probabilities`` (rows grouped
    by ``users`` in any order; ties broken by position)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    users = np.asarray(users)
    order = np.lexsort((-probabilities, users))  # by user, then most probable first
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    position = np.arange(users.size) - np.repeat(starts, np.diff(np.r_[starts, users.size]))
    top = order[position < k]
    return calibration_metrics(probabilities[top], np.asarray(labels)[top], n_bins)["ece"]


def interval_coverage(draws, observed, level: float) -> float:
    """The fraction of columns whose ``observed (C,)`` value lies in the central ``level``
    interval of its ``draws (N, C)``: bounds are draws (the lower and upper empirical
    quantiles) and included, so discrete draws (counts) cover at least ``level`` when
    calibrated."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"an interval level must be in (0, 1), got {level}")
    draws = np.asarray(draws)
    low = np.quantile(draws, (1 - level) / 2, axis=0, method="lower")
    high = np.quantile(draws, (1 + level) / 2, axis=0, method="higher")
    observed = np.asarray(observed)
    return float(np.mean((observed >= low) & (observed <= high)))


def uri(uncertainty, hits, recommended) -> float:
    """``(mean u over recommended - mean u over recommended hits) / sd(u)``: how much less
    uncertain the hits among the recommended items are (Coscrato & Bridge); NaN without a
    hit. All arguments are ``(n,)`` over candidates, ``hits`` and ``recommended`` bool."""
    u = np.asarray(uncertainty, dtype=np.float64)
    recommended = np.asarray(recommended, dtype=bool)
    hit = recommended & np.asarray(hits, dtype=bool)
    if not hit.any():
        return float("nan")
    return float((u[recommended].mean() - u[hit].mean()) / u.std())


def pool_blocks(users, labels) -> list[tuple[np.ndarray, int, int]]:
    """``(rows, P, n)`` per user of a pool laid out as
    :meth:`pyro_bamf.data.ImplicitSplit.candidates` writes it: the user's ``P`` positives first,
    then ``n`` negatives drawn for each positive, in the positives' order; ``ValueError`` for a
    pool laid out otherwise."""
    users, labels = np.asarray(users), np.asarray(labels)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    blocks = []
    for rows in np.split(np.arange(users.size), starts[1:]):
        positives = int(labels[rows].sum())
        negatives = (rows.size - positives) // max(positives, 1)
        layout = labels[rows[:positives]].all() and rows.size == positives * (1 + negatives)
        if positives == 0 or negatives == 0 or not layout:
            raise ValueError(
                f"user {users[rows[0]]}'s candidates are not P positives followed by the same "
                "number of negatives for each (the layout of split.candidates)"
            )
        blocks.append((rows, positives, negatives))
    return blocks


def first_positives(candidates, per_user: int):
    """The pool restricted to each user's first ``per_user`` positives and the negatives drawn
    for them (:meth:`pyro_bamf.data.ImplicitSplit.candidates` puts a user's positives first,
    then each positive's negatives in the same order)."""
    from .data import Candidates

    users, labels = np.asarray(candidates.users), np.asarray(candidates.labels)
    keep = []
    for block, positives, negatives in pool_blocks(users, labels):
        kept = min(per_user, positives)
        keep.append(block[:kept])
        keep.append(block[positives : positives + kept * negatives])
    rows = np.concatenate(keep)
    return Candidates(users=users[rows], items=np.asarray(candidates.items)[rows],
                      labels=labels[rows])  # fmt: skip


def uncertainty_report(
    model,
    split,
    candidates,
    num_samples: int = 200,
    k: int = 10,
    n_bins: int = 15,
    width_users: int | None = None,
    seed: int = 0,
    ties: str = "pessimistic",
    max_elements: int = 2**22,
    method: str = "posterior",
) -> dict:
    """Every metric of the module doc on a candidate pool, from ``num_samples`` posterior
    predictive draws per user (one user's draws at a time: memory is bounded by the largest
    user, ``num_samples x`` their candidates, and ``max_elements`` per drawn tensor; the
    per-pair statistics of all users are kept). Each positive is paired with the negatives
    drawn for it (:func:`pool_blocks`); every ranking (NDCG, the recommended top ``k``, ECE@k)
    is by the predictive probability.

    Returns a JSON-ready dict: ``"pairs"`` (FCP, AUROC of the posterior's and of the margin's
    uncertainty for misordered pairs, PAvPU at :data:`ALPHAS`), ``"calibration"`` (ECE, Brier,
    NLL over the pool, ECE@k, and the coverage of the 50 % and 90 % predictive intervals of
    each user's number of positives in their top ``k``), ``"uri"``, ``"rejection"`` (FCP over
    pairs and NDCG@k over users with the most uncertain 0-50 % set aside), ``"attention"``
    (the expected attention's distance from uniform over the leave-one-out examples,
    :func:`~pyro_bamf.diagnostics.attention_uniformity`, and the Spearman correlation of the
    users' relative 90 % attention width with log history length and with NDCG@k, over
    ``width_users`` random users, all if ``None``), and ``"bins"``,
    ``"users"`` for the figures. Draws come from torch's generator and a NumPy generator, both
    seeded by ``seed`` inside (the global torch state is restored after).

    ``method``: ``"posterior"`` (posterior predictive draws,
    :func:`~pyro_bamf.predictive.logit_samples`) or ``"mc_dropout"``, the baseline (the
    deterministic network with its dropout on at test time,
    :func:`~pyro_bamf.predictive.dropout_logit_samples`; no attention section: its attention
    has no posterior).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    draw = METHODS[method]
    users = np.asarray(candidates.users)
    labels = np.asarray(candidates.labels, dtype=np.float64)
    items = np.asarray(candidates.items)
    rng = np.random.default_rng(seed)
    probability, spread = np.empty(users.size), np.empty(users.size)
    recommended = np.zeros(users.size, dtype=bool)
    pairs, counts, observed = [], [], []
    history = (split.history_items, split.history_lengths)
    with torch_seeded(seed):
        for rows, n_positives, n_negatives in pool_blocks(users, labels):
            user = int(users[rows[0]])
            draws = draw(model, *history, user, items[rows], num_samples, max_elements)
            draws = draws.astype(np.float64)
            probabilities = expit(draws)
            probability[rows], spread[rows] = probabilities.mean(0), probabilities.std(0)
            top = np.argsort(-probability[rows], kind="stable")[:k]
            recommended[rows[top]] = True
            counts.append((rng.random((num_samples, top.size)) < probabilities[:, top]).sum(1))
            observed.append(labels[rows[top]].sum())
            for column in range(n_positives):  # each positive with its own negatives
                first = n_positives + column * n_negatives
                negative = draws[:, first : first + n_negatives]
                positive_draws = np.broadcast_to(draws[:, [column]], negative.shape)
                pairs.append(pair_statistics(positive_draws, negative))
                pairs[-1]["user"] = np.full(n_negatives, user)
    pair = {key: np.concatenate([p[key] for p in pairs]) for key in pairs[0]}
    ids, per_user = per_user_metrics(users, labels, probability, ks=(k,), ties=ties)
    ndcg = per_user[f"ndcg@{k}"]
    pair_index = np.searchsorted(ids, pair["user"])
    user_doubt = np.bincount(pair_index, pair["uncertainty"], ids.size) / np.bincount(
        pair_index, minlength=ids.size
    )
    calibration = calibration_metrics(probability, labels, n_bins)
    counts, observed = np.stack(counts, 1), np.array(observed)
    report = {
        "method": method,
        "draws": num_samples,
        "users": int(ids.size),
        "pairs": {
            "n": int(pair["margin"].size),
            "fcp": fcp(pair["margin"]),
            "auroc_misorder": auroc(pair["uncertainty"], pair["misordered"]),
            "auroc_misorder_margin": auroc(-np.abs(pair["margin"]), pair["misordered"]),
            **{f"pavpu@{a:g}": pavpu(pair["misordered"], pair["p_value"], a) for a in ALPHAS},
        },
        "calibration": {
            **{key: calibration[key] for key in ("ece", "brier", "nll")},
            f"ece@{k}": ece_at_k(probability, labels, users, k, n_bins),
            f"coverage50_positives@{k}": interval_coverage(counts, observed, 0.5),
            f"coverage90_positives@{k}": interval_coverage(counts, observed, 0.9),
        },
        "uri": uri(spread, labels == 1, recommended),
        f"ndcg@{k}": float(ndcg.mean()),
        "rejection": {
            "fcp": rejection_curve(~pair["misordered"], pair["uncertainty"], seed=seed),
            f"ndcg@{k}": rejection_curve(ndcg, user_doubt, seed=seed),
        },
    }
    bins = reliability_bins(probability, labels, n_bins)
    report["bins"] = {key: value.tolist() for key, value in bins.items()}
    if method != "posterior":
        return report
    with_history = ids[split.history_lengths[ids] > 0]
    if width_users is not None and width_users < with_history.size:
        with_history = np.sort(rng.choice(with_history, width_users, replace=False))
    with torch_seeded(seed):
        widths = interval_widths(model, split, with_history, num_samples)["relative"]
    log_length = np.log(split.history_lengths[with_history])
    loo = example_batches(split, "loo", dim=model.config.embedding_dim)
    report["attention"] = {
        **attention_uniformity(model, loo),
        "users": int(with_history.size),
        "spearman_width_log_history": float(stats.spearmanr(widths, log_length).statistic),
        f"spearman_width_ndcg@{k}": float(
            stats.spearmanr(widths, ndcg[np.searchsorted(ids, with_history)]).statistic
        ),
    }
    report["width_history"] = {"log_length": log_length.tolist(), "width": widths.tolist()}
    return report


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Torch's generators seeded with ``seed`` inside, restored to their state after."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield
