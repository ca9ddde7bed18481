"""Train and evaluate BAMF on MovieLens from Python, through the public API.

    python examples/train_movielens.py --config examples/configs/pointwise_concat.toml \
        --data movielens --max-epochs 30 --save runs/pc.pt
"""

from __future__ import annotations

import argparse
import json

from pyro_bamf import BAMFConfig, BAMFRecommender
from pyro_bamf.data import ImplicitSplit, load_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/configs/pointwise_concat.toml")
    parser.add_argument("--data", help="data path or spec (overrides the config's data)")
    parser.add_argument("--max-epochs", type=int, help="override max_epochs")
    parser.add_argument("--seed", type=int, help="override seed")
    parser.add_argument("--save", help="write the trained model to this checkpoint file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    config = BAMFConfig.from_toml(args.config)
    overrides = {"data": args.data, "max_epochs": args.max_epochs, "seed": args.seed}
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})

    data = load_data(config.data)
    split = ImplicitSplit.from_interactions(
        data, seed=config.seed, history=config.history, max_history=config.max_history
    )
    print(json.dumps(split.describe(), indent=2))
    recommender = BAMFRecommender(config)
    result = recommender.fit(
        split, progress=not args.no_progress, on_epoch=lambda row, _: print(row, flush=True)
    )
    metrics = recommender.evaluate()
    print(f"best epoch {result.best_epoch} (LOO NDCG@10 {result.best_loo_ndcg10:.4f})")
    print(json.dumps({k: round(v, 4) for k, v in metrics.items() if k.endswith("@10")}, indent=2))
    if args.save:
        recommender.save(args.save)


if __name__ == "__main__":
    main()
