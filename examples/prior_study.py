"""Prior/guide study: train the pointwise model under several prior and guide families and
print one table (NDCG@10, HR@10, ECE, mean KL per weight, mean attention entropy, mean 90 %
interval width of the weights, seconds).

    python examples/prior_study.py --data movielens --epochs 2 \
        --out runs/prior_study

Every pair starts from examples/configs/pointwise_concat.toml with the KL weight at full
strength from the first epoch (``kl_anneal_epochs = 0``: with the paper's 100-epoch annealing
a short study would hardly see the prior). Each pair's run directory is kept under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np

from pyro_bamf import BAMFConfig
from pyro_bamf.config import parse_overrides
from pyro_bamf.diagnostics import (
    attention_entropy,
    example_batches,
    interval_widths,
    kl_per_weight,
)
from pyro_bamf.runs import load_run, train_run

# Gamma shape matched to the log-normal prior's coefficient of variation (sigma = 1).
GAMMA_SHAPE = 1.0 / math.expm1(1.0)

PAIRS = {
    "lognormal/lognormal": {},
    "lognormal-learned/lognormal": {"guide_spread": "learned"},
    "weibull/gamma": {"guide_family": "weibull", "prior_family": "gamma",
                      "prior_shape": GAMMA_SHAPE},
    "weibull/exponential": {"guide_family": "weibull", "prior_family": "exponential"},
    "lognormal/halfnormal": {"prior_family": "halfnormal"},
    # a user-defined prior (docs/extending.md): a two-component log-normal mixture
    "lognormal/lognormal_mixture": {"prior_family": "extending:lognormal_mixture"},
}  # fmt: skip
DEFAULT_PAIRS = [*list(PAIRS)[:4], "lognormal/lognormal_mixture"]


def last_kl_method(history: Path) -> str:
    """How the last epoch took the KL (``history.csv``'s ``kl_method``: torch's KL registry
    decides it for the run's own distributions)."""
    with open(history, newline="") as handle:
        return list(csv.DictReader(handle))[-1]["kl_method"]


def study_row(name: str, config: BAMFConfig, out: Path, users: int, samples: int) -> dict:
    """Train one pair and measure it."""
    start = time.perf_counter()
    metrics = train_run(config, out, progress=False)
    seconds = time.perf_counter() - start
    rec = load_run(out)
    rng = np.random.default_rng(config.seed)
    with_history = np.flatnonzero(rec.split.history_lengths > 0)
    chosen = rng.choice(with_history, size=min(users, with_history.size), replace=False)
    widths = interval_widths(rec.model, rec.split, chosen, samples)
    loo = list(example_batches(rec.split, "loo", dim=config.embedding_dim))
    return {
        "pair": name,
        "kl_method": last_kl_method(out / "history.csv"),
        "ndcg@10": metrics["test"]["ndcg@10"],
        "hr@10": metrics["test"]["hr@10"],
        "ece": rec.calibration()["ece"],
        "kl_per_weight": kl_per_weight(rec.model, loo),
        "entropy": attention_entropy(rec.model, loo),
        "width90": float(widths["absolute"].mean()),
        "relative_width90_mean": float(widths["relative"].mean()),
        "relative_width90_sd_across_users": float(widths["relative"].std()),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/configs/pointwise_concat.toml")
    parser.add_argument("--data", help="data path or spec (overrides the config's data)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per pair")
    parser.add_argument("--pairs", default=",".join(DEFAULT_PAIRS),
                        help=f"comma-separated guide/prior pairs from {list(PAIRS)}")  # fmt: skip
    parser.add_argument("--users", type=int, default=50, help="users for the interval widths")
    parser.add_argument("--samples", type=int, default=200, help="posterior draws per user")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/prior_study")
    args = parser.parse_args()

    names = [name.strip() for name in args.pairs.split(",")]
    unknown = [name for name in names if name not in PAIRS]
    if unknown:
        parser.error(f"unknown pairs {unknown}; choose from {list(PAIRS)}")
    base = BAMFConfig.from_toml(args.config).replace(max_epochs=args.epochs, kl_anneal_epochs=0)
    base = base.replace(**parse_overrides(args.set))
    if args.data:
        base = base.replace(data=args.data)
    out = Path(args.out)
    rows = []
    for name in names:
        config = base.replace(**PAIRS[name])
        print(f"=== {name}", flush=True)
        rows.append(study_row(name, config, out / name.replace("/", "__"), args.users,
                              args.samples))  # fmt: skip
        (out / "prior_study.json").write_text(json.dumps(rows, indent=2) + "\n")

    print(f"\n{args.epochs} epochs each, KL weight 1 from the start; widths over {args.users} "
          f"users x {args.samples} draws (relative: width / median weight)\n")  # fmt: skip
    head = ("| guide/prior | KL | NDCG@10 | HR@10 | ECE | KL/weight | entropy | 90% width "
            "| rel. width (sd across users) | seconds |")  # fmt: skip
    print(head)
    print("|" + "---|" * 10)
    for r in rows:
        print(
            f"| {r['pair']} | {r['kl_method'].replace('_', ' ')} "
            f"| {r['ndcg@10']:.4f} | {r['hr@10']:.4f} | {r['ece']:.4f} "
            f"| {r['kl_per_weight']:.4f} | {r['entropy']:.3f} | {r['width90']:.5f} "
            f"| {r['relative_width90_mean']:.3f} ({r['relative_width90_sd_across_users']:.4f}) "
            f"| {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
