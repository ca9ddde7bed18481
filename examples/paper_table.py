"""Print the paper-reproduction table from run directories, beside the paper's figures.

    python examples/paper_table.py runs/pointwise_concat runs/pointwise_prod \
        runs/pairwise_concat runs/pairwise_prod [runs/pointwise_concat_elbo]

Runs of one row with different seeds (``--set seed=N``) are also summarised: the mean, standard
deviation and range of their test NDCG@10 beside the paper's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tomllib
from collections import defaultdict
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


def load(run: Path) -> tuple[dict, dict]:
    config = tomllib.loads((run / "config.toml").read_text())
    return config, json.loads((run / "metrics.json").read_text())


def label(config: dict) -> str:
    reduction = config.get("loss_reduction", "mean")  # runs older than the key used the mean
    head = "" if config.get("head", "affine") == "affine" else f", {config['head']} head"
    settings = f"KL {config['kl_weight']}, {reduction}{head}"
    return f"{config['learning']} {config['score_fn']} ({settings})"


def row(config: dict, metrics: dict) -> str:
    key = (config["learning"], config["score_fn"])
    ours = [metrics["test"][c] for c in COLUMNS]
    loo = f"{metrics['best_loo_ndcg@10']:.4f} (epoch {metrics['best_epoch']})"
    seed = "" if config["seed"] == 42 else f", seed {config['seed']}"
    cells = [label(config) + seed, loo]
    cells += [f"{v:.4f}" for v in ours]
    cells += [f"{metrics['epochs_run']}", f"{metrics['train_seconds_per_epoch_median']:.0f}"]
    if key in PAPER and config["kl_weight"] == "mean":
        paper = PAPER[key]
        cells += [f"{paper[0]:.4f} ({paper[1]})"] + [f"{v:.4f}" for v in paper[2:]]
    else:
        cells += ["-"] * 5
    return "| " + " | ".join(cells) + " |"


def seed_summary(runs: list[tuple[dict, dict]]) -> list[str]:
    """Table lines summarising test NDCG@10 over runs (``(config, metrics)``) whose settings
    differ only in the seed."""
    groups = defaultdict(list)
    for config, metrics in runs:
        setting = json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)
        groups[setting].append((config["seed"], config, metrics["test"]["ndcg@10"]))
    studies = [sorted(g, key=lambda r: r[0]) for g in groups.values() if len({r[0] for r in g}) > 1]
    if not studies:
        return []
    lines = ["", "| row, seeds varied | seeds | mean ndcg@10 | SD | min | max | paper ndcg@10 |"]
    lines.append("|---|---|---|---|---|---|---|")
    for study in studies:
        config, values = study[0][1], [value for _, _, value in study]
        key = (config["learning"], config["score_fn"])
        paper = f"{PAPER[key][3]:.4f}" if key in PAPER and config["kl_weight"] == "mean" else "-"
        cells = [label(config), ", ".join(str(seed) for seed, _, _ in study)]
        cells += [f"{statistics.mean(values):.4f}", f"{statistics.stdev(values):.4f}"]
        cells += [f"{min(values):.4f}", f"{max(values):.4f}", paper]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    head = ["row", "best LOO NDCG@10", *COLUMNS, "epochs", "s/epoch"]
    head += ["paper LOO", *(f"paper {c}" for c in COLUMNS)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    runs = [load(run) for run in args.runs]
    for config, metrics in runs:
        print(row(config, metrics))
    for line in seed_summary(runs):
        print(line)


if __name__ == "__main__":
    main()
