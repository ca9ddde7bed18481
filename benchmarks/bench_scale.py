"""Data loading and the split protocol at scale: a 10M-interaction synthetic table.

    python benchmarks/bench_scale.py [--users 100000 --items 20000 --mean 100] [--json F]

Step 1 (this process) generates the table with ``make_synthetic`` and writes it as a CSV
(userId,movieId). Step 2 runs in a fresh process, so that its peak RSS is the loader's and the
protocol's alone: ``load_data`` (the generic loader) on the CSV, ``ImplicitSplit``
(8:1:1 split, TF-IDF history cut to 400), one epoch of training negatives (4 per positive),
and the leave-one-out and test 1:99 candidate pools. Prints one table of seconds per step and
the peak RSS of step 2.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(path: Path, users: int, items: int, mean: float) -> dict:
    from pyro_bamf.data import make_synthetic

    start = time.perf_counter()
    data = make_synthetic(n_users=users, n_items=items, rank=8, mean_interactions=mean, seed=0)
    generated = time.perf_counter() - start
    frame = pd.DataFrame(
        {"userId": data.user_ids[data.users], "movieId": data.item_ids[data.items]}
    )
    frame.to_csv(path, index=False)
    return {"interactions": data.n_interactions, "generate_seconds": generated,
            "csv_mb": path.stat().st_size / 2**20}  # fmt: skip


def protocol(path: Path) -> dict:
    """Step 2, in its own process."""
    from pyro_bamf.data import ImplicitSplit, load_data

    times = {}
    start = time.perf_counter()
    data = load_data(path)
    times["load_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    split = ImplicitSplit.from_interactions(data, seed=42)
    times["split_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    negatives = split.sample_negatives(split.train.users, 4, np.random.default_rng(0))
    times["train_negatives_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    loo = split.candidates("loo", 99)
    times["loo_pool_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    test = split.candidates("test", 99)
    times["test_pool_seconds"] = time.perf_counter() - start
    return {
        **times,
        "users": split.n_users,
        "items": split.n_items,
        "train": len(split.train),
        "train_negatives": int(negatives.size),
        "loo_rows": len(loo),
        "test_rows": len(test),
        "history_cut": split.n_history_cut,
        "history_matrix_mb": split.history_items.nbytes / 2**20,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--mean", type=float, default=100.0, help="interactions per user")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--step2", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step2:
        print(json.dumps(protocol(Path(args.step2))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "interactions.csv"
        figures = generate(path, args.users, args.items, args.mean)
        done = subprocess.run([sys.executable, __file__, "--step2", str(path)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        figures.update(json.loads(done.stdout.strip().splitlines()[-1]))
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:.2f}" if isinstance(value, float) else f"{value:,}"
        print(f"{key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
