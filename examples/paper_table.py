"""Print the paper-reproduction table from run directories, beside the paper's figures.

    python examples/paper_table.py runs/pointwise_concat runs/pointwise_prod \
        runs/pairwise_concat runs/pairwise_prod [runs/pointwise_concat_elbo]
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

# The authors' figures (the paper's repository README): best LOO NDCG@10 (epoch), HR@10,
# NDCG@10, MAP@10, recall@10.
PAPER = {
    ("pointwise", "concat"): (0.6051, 4, 0.9426, 0.4770, 0.2751, 0.4158),
    ("pointwise", "prod"): (0.6040, 10, 0.9557, 0.5126, 0.2969, 0.4412),
    ("pairwise", "concat"): (0.5737, 22, 0.9361, 0.4715, 0.2638, 0.4135),
    ("pairwise", "prod"): (0.5745, 16, 0.9246, 0.4538, 0.2542, 0.4030),
}
COLUMNS = ("hr@10", "ndcg@10", "map@10", "recall@10")


def row(run: Path) -> str:
    config = tomllib.loads((run / "config.toml").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    key = (config["learning"], config["score_fn"])
    ours = [metrics["test"][c] for c in COLUMNS]
    loo = f"{metrics['best_loo_ndcg@10']:.4f} (epoch {metrics['best_epoch']})"
    reduction = config.get("loss_reduction", "mean")  # runs older than the key used the mean
    label = f"{config['learning']} {config['score_fn']} (KL {config['kl_weight']}, {reduction})"
    cells = [label, loo]
    cells += [f"{v:.4f}" for v in ours]
    cells += [f"{metrics['epochs_run']}", f"{metrics['train_seconds_per_epoch_median']:.0f}"]
    if key in PAPER and config["kl_weight"] == "mean":
        paper = PAPER[key]
        cells += [f"{paper[0]:.4f} ({paper[1]})"] + [f"{v:.4f}" for v in paper[2:]]
    else:
        cells += ["-"] * 5
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    head = ["row", "best LOO NDCG@10", *COLUMNS, "epochs", "s/epoch"]
    head += ["paper LOO", *(f"paper {c}" for c in COLUMNS)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for run in args.runs:
        print(row(run))


if __name__ == "__main__":
    main()
