"""Test NDCG@10 of finished runs by the users' number of test positives, beside popularity.

    python examples/user_groups.py runs/pointwise_concat runs/pairwise_concat [...]

Prints one row per run (and one for ranking by training popularity): NDCG@10 on the 1:99 test
pools for users with <= 2, 3-9 and >= 10 test positives and for all users, and the rank
correlation of the run's candidate scores with the items' training popularity. All runs must
share one split (same data and seed) and the 1:99 test protocol; ties are broken as each run's
``ties`` says (popularity: as the first run's).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import rankdata

from pyro_bamf.evaluation import score_candidates
from pyro_bamf.metrics import ranking_metrics
from pyro_bamf.protocols import evaluation_pool
from pyro_bamf.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories written by pyro-bamf train")
    args = parser.parse_args()
    scores, ties, pool, split = {}, {}, None, None
    for run in args.runs:
        recommender = load_run(run)
        if recommender.config.eval_protocol != "sampled":
            parser.error(f"{run}: eval_protocol is {recommender.config.eval_protocol!r}; "
                         "the groups need the 1:99 test pools ('sampled')")  # fmt: skip
        if split is not None and recommender.split.fingerprint != split.fingerprint:
            parser.error(f"{run} was trained on another split than {args.runs[0]}")
        split, pool = recommender.split, evaluation_pool(recommender.config, recommender.split)
        history = (split.history_items, split.history_lengths)
        scores[run] = score_candidates(recommender.model, pool.users, pool.items, *history)
        ties[run] = recommender.config.ties
    popularity = np.bincount(split.train.items, minlength=split.n_items)[pool.items]
    scores["popularity (training counts)"] = popularity.astype(np.float64)
    ties["popularity (training counts)"] = ties[args.runs[0]]
    positives = np.bincount(pool.users, weights=pool.labels, minlength=split.n_users)[pool.users]
    groups = {"<= 2": positives <= 2, "3-9": (positives > 2) & (positives < 10)}
    groups |= {">= 10": positives >= 10, "all": np.ones_like(positives, dtype=bool)}
    counts = {name: len(np.unique(pool.users[rows])) for name, rows in groups.items()}
    header = [f"{name} ({counts[name]} users)" for name in groups] + ["rank corr. popularity"]
    print("| run | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for name, score in scores.items():
        cells = []
        for rows in groups.values():
            if not rows.any():  # no user in this group
                cells.append("-")
                continue
            metrics = ranking_metrics(
                pool.users[rows], pool.labels[rows], score[rows], ks=(10,), ties=ties[name]
            )
            cells.append(f"{metrics['ndcg@10']:.4f}")
        corr = np.corrcoef(*(rankdata(v, method="ordinal") for v in (score, popularity)))[0, 1]
        print(f"| {name} | " + " | ".join(cells) + f" | {corr:.3f} |")


if __name__ == "__main__":
    main()
