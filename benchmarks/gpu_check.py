"""Short accelerator check: CPU/GPU agreement of the scores, then a few training epochs on CUDA.

    python benchmarks/gpu_check.py --data PATH [--epochs 2] [--score-fn concat|prod]
        [--learning pointwise|pairwise]

Prints the largest CPU-vs-CUDA difference of the expected logits on the leave-one-out pool
(same weights), then per epoch: seconds, NLL, KL per weight and LOO NDCG@10, and the 1:99 test
NDCG@10/HR@10 at the end. Exits non-zero when CUDA is unavailable or the scores disagree.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import pyro
import torch

from pyro_bamf import BAMF, BAMFConfig, BAMFRecommender
from pyro_bamf.data import ImplicitSplit, load_data
from pyro_bamf.evaluation import score_candidates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="movielens")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--score-fn", default="concat", choices=("concat", "prod"))
    parser.add_argument("--learning", default="pointwise", choices=("pointwise", "pairwise"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name()
    print(f"device: {name}  torch {torch.__version__}  pyro {pyro.__version__}")
    config = BAMFConfig(
        data=args.data,
        score_fn=args.score_fn,
        learning=args.learning,
        max_epochs=args.epochs,
        device="cuda",
    )
    split = ImplicitSplit.from_interactions(load_data(config.data), seed=config.seed)
    loo = split.candidates("loo", config.eval_negatives)

    pyro.set_rng_seed(0)
    cpu_model = BAMF(split.n_users, split.n_items, config)
    gpu_model = copy.deepcopy(cpu_model).cuda()
    history = (split.history_items, split.history_lengths)
    cpu = score_candidates(cpu_model, loo.users, loo.items, *history)
    gpu = score_candidates(gpu_model, loo.users, loo.items, *history)
    gap = float(np.abs(cpu - gpu).max())
    print(f"max |CPU - CUDA| expected logit on the LOO pool: {gap:.2e}")

    recommender = BAMFRecommender(config)
    start = time.perf_counter()
    recommender.fit(split, progress=False, on_epoch=lambda row, _: print(row, flush=True))
    print(f"training wall time {time.perf_counter() - start:.1f} s")
    metrics = recommender.evaluate()
    print(f"test ndcg@10 {metrics['ndcg@10']:.4f}  hr@10 {metrics['hr@10']:.4f}")
    return 0 if gap < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
