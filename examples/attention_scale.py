"""Why a trained BAMF's attention is (nearly) uniform: the scale of what its score networks read,
and the forces on their weights.

For a finished run, over ``--batches`` training batches at the run's last KL weight:

- the RMS of the embeddings (user ``p``, target ``q``, history ``h``), and of the three terms
  of the user score network's first layer ``W_q p + W_k h + b`` (concat);
- per parameter group, the RMS of the mean gradient of the likelihood term, of the KL term
  (scaled as training takes them) and of Adam's coupled weight decay ``weight_decay * theta``.

    python examples/attention_scale.py runs/study/a_paper runs/study/f_normalised
"""

from __future__ import annotations

import argparse
import csv

import numpy as np
import torch

from pyro_bamf.batch import training_batches
from pyro_bamf.runs import load_run
from pyro_bamf.training import NegativeELBO, kl_lambda, loss_scales, make_elbo

GROUPS = {  # name -> parameter-name prefixes
    "embeddings": (
        "user_embedding",
        "target_embedding",
        "history_embedding",
        "item_embedding",
        "target_map",
        "history_map",
    ),  # fmt: skip
    "score networks": ("user_scorer", "item_scorer"),
    "key priors": ("user_prior", "item_prior"),
    "layer norms, head": ("user_norm", "item_norm", "head"),
}


def rms(x: torch.Tensor) -> float:
    return float(x.detach().double().pow(2).mean().sqrt())


def scale_report(run: str, batches: int) -> None:
    rec = load_run(run)
    model, config, split = rec.model, rec.config, rec.split
    with open(f"{run}/history.csv", newline="") as handle:
        epochs = len(list(csv.DictReader(handle)))
    weight = kl_lambda(config, epochs)
    objective = NegativeELBO(model, make_elbo(config))
    model.train()
    params = dict(model.named_parameters())
    grads = {part: {n: torch.zeros_like(p) for n, p in params.items()} for part in ("nll", "kl")}
    first = None
    rng = np.random.default_rng([config.seed, 99])
    for _, batch in zip(range(batches), training_batches(split, config, rng), strict=False):
        first = first or batch
        obs_scale, kl_scale = loss_scales(config, batch, weight)
        for part, scales in (("nll", (obs_scale, 0.0)), ("kl", (obs_scale, kl_scale))):
            model.zero_grad()
            torch.manual_seed(len(first.users))  # the same draws in both passes
            objective(batch, *scales).backward()
            for name, p in params.items():
                if p.grad is not None:
                    grads[part][name] += p.grad / batches
    for name in params:
        grads["kl"][name] -= grads["nll"][name]  # total minus likelihood
    print(f"\n{run} ({config.attention_inputs} attention inputs, KL weight {weight:.2f})")
    scorer = model.user_scorer
    with torch.no_grad():
        p = model.attention_inputs(model.user_embedding.weight[first.users])
        keys = model.attention_inputs(model.history_vectors()[first.history[first.mask[:, 0]]])
        terms = {"W_q p": rms(scorer.query(p) - scorer.query.bias), "b": rms(scorer.query.bias)}
        if scorer.key is not None:
            terms["W_k h"] = rms(scorer.key(keys))
    tables = {"p": model.user_embedding.weight, "h": model.history_vectors()}
    if config.item_embeddings == "role":
        tables["q"] = model.target_embedding.weight
    print("embedding RMS: " + ", ".join(f"{k} {rms(v):.4f}" for k, v in tables.items()))
    print("user score network, first layer RMS: "
          + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()))  # fmt: skip
    print("| parameters | RMS | gradient RMS: likelihood | KL | weight decay |")
    print("|---|---|---|---|---|")
    for group, prefixes in GROUPS.items():
        names = [n for n in params if n.startswith(prefixes)]
        if not names:
            continue
        theta = torch.cat([params[n].detach().flatten() for n in names])
        nll, kl = (torch.cat([grads[part][n].flatten() for n in names]) for part in grads)
        print(f"| {group} | {rms(theta):.4f} | {rms(nll):.2e} | {rms(kl):.2e} | "
              f"{rms(config.weight_decay * theta):.2e} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories")
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    for run in args.runs:
        scale_report(run, args.batches)


if __name__ == "__main__":
    main()
