"""Speed benchmark of BAMF training and evaluation on ml-latest-small (paper settings).

    python benchmarks/bench_train.py --data movielens [--score-fn concat|prod] [--repeats 3]
        [--quick] [--json F]

Prints one table: seconds per full pointwise training epoch (batching and negative sampling
included), training examples per second, leave-one-out and 1:99 test evaluation seconds, peak
RSS, and the ratio of one SVI step as ``fit`` takes it (with its per-step NaN/inf checks and
logged terms) to a plain-PyTorch step of the same loss on the same batch, in a process whose
allocator keeps freed memory as ``fit`` sets it (``retain_freed_memory``);
``# pyro_step_over_torch`` gives the ratio for Pyro's part alone (loss, backward, Adam).
Figures are medians over ``--repeats`` runs; within a run each step ratio is the median over
20 rounds of one round's ratio, a round timing the three steps back to back in a random order
on the same 8 random batches of the epoch (so short and long histories weigh as they do in an
epoch). ``--quick`` times 40 training steps instead of a whole epoch (the epoch time is then
extrapolated and marked so) and a tenth of the test pool.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import time

import numpy as np
import pyro
import torch

from pyro_bamf import BAMF, BAMFConfig
from pyro_bamf.allocator import retain_freed_memory
from pyro_bamf.batch import groups_per_batch, training_batches
from pyro_bamf.data import ImplicitSplit, load_data
from pyro_bamf.distributions import lognormal_kl
from pyro_bamf.evaluation import score_candidates
from pyro_bamf.fastpaths import build_model
from pyro_bamf.training import (
    NegativeELBO,
    kl_lambda,
    loss_scales,
    make_elbo,
    make_optimizer,
    svi_step,
)

ROUNDS = 20  # timed rounds of the three steps over the same 8 batches, per repeat


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """Median over rounds of ``times[r] / reference[r]``: each round times the steps back to
    back in a random order, so the ratio of one round cancels the machine's slow drift
    (single timings on these VMs spread by +-20 %) and no step always runs first."""
    return statistics.median(a / b for a, b in zip(times, reference, strict=True))


def torch_loss(model: BAMF, batch, obs_scale: float, kl_scale: float) -> torch.Tensor:
    """The objective of ``model.model``/``guide`` written in plain PyTorch (no Pyro): the same
    random draws in the same order and the same arithmetic (``lognormal_kl``), on tensors."""
    config = model.config
    psi_user, psi_item = model.attention_logits(batch)
    shape = batch.mask.shape
    sigma = torch.tensor(config.guide_sigma)
    prior_sigma = torch.tensor(config.prior_sigma)
    prior_loc = torch.tensor(config.prior_log_mean) - 0.5 * config.prior_sigma**2
    loss = 0.0
    log_scores = []
    for psi in (psi_user, psi_item):
        loc = (psi - 0.5 * config.guide_sigma**2).expand(shape)
        kl = lognormal_kl(loc, sigma, prior_loc, prior_sigma)
        loss = loss + kl_scale * torch.where(batch.mask, kl, 0.0).sum()
        scores = torch.exp(loc + torch.randn(shape) * sigma)
        log_scores.append(scores.log())
    weights = [model.weights(s, batch.mask) for s in log_scores]
    logits = model.logits(batch, *weights)
    nll = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, batch.labels, reduction="sum"
    )
    return loss + obs_scale * nll


def time_steps(config, split, step, n_steps, rng):
    times, examples = [], 0
    for i, batch in enumerate(training_batches(split, config, rng)):
        if n_steps is not None and i >= n_steps:
            break
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
        examples += batch.n_examples
    return times, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="movielens")
    parser.add_argument("--score-fn", default="concat", choices=("concat", "prod"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    config = BAMFConfig(  # with the paper configs' compile_eval and retain_freed_memory
        data=args.data, score_fn=args.score_fn, compile_eval=True, retain_freed_memory=True
    )
    retained = config.retain_freed_memory and retain_freed_memory()  # as fit() does
    pyro.set_rng_seed(0)
    pyro.enable_validation(False)
    split = ImplicitSplit.from_interactions(load_data(config.data), seed=config.seed)
    loo = split.candidates("loo", config.eval_negatives)
    test = split.candidates("test", config.eval_negatives)
    if args.quick:
        keep = test.users < np.quantile(test.users, 0.1)
        test_users, test_items = test.users[keep], test.items[keep]
    else:
        test_users, test_items = test.users, test.items
    model = build_model(split.n_users, split.n_items, config, "cpu")  # as fit() builds it
    elbo = make_elbo(config)
    optimizer = make_optimizer(model, config)
    weight = kl_lambda(config, 11)

    objective = NegativeELBO(model, elbo)

    def svi(batch):  # as fit() steps: one NegativeELBO
        svi_step(model, elbo, optimizer, batch, *loss_scales(config, batch, weight), objective)

    def pyro_only(batch):  # Pyro's part of it: loss, backward, Adam; no checks, no logged terms
        optimizer.zero_grad(set_to_none=True)
        scales = loss_scales(config, batch, weight)
        elbo.differentiable_loss(model.model, model.guide, batch, *scales).backward()
        optimizer.step()

    def plain(batch):
        optimizer.zero_grad(set_to_none=True)
        torch_loss(model, batch, *loss_scales(config, batch, weight)).backward()
        optimizer.step()

    n_steps = 40 if args.quick else None
    n_batches = -(-len(split.train) // groups_per_batch(config))
    epoch_s, rate, ratios, pyro_ratios = [], [], [], []
    for repeat in range(args.repeats):
        rng = np.random.default_rng([repeat, 1])
        start = time.perf_counter()
        times, examples = time_steps(config, split, svi, n_steps, rng)
        wall = time.perf_counter() - start
        epoch_s.append(wall * (n_batches / len(times)))
        rate.append(examples / wall)
        chosen = set(np.random.default_rng(repeat).choice(n_batches, 8, replace=False).tolist())
        batches = training_batches(split, config, np.random.default_rng(repeat))
        sample = [batch for i, batch in enumerate(batches) if i in chosen]  # holds 8, not all
        steps = (svi, pyro_only, plain)
        for step in steps:  # warm-up, untimed
            step(sample[0])
        rounds = {step: [] for step in steps}
        order_rng = random.Random(repeat)
        for _ in range(ROUNDS):
            order = list(steps)
            order_rng.shuffle(order)
            for step in order:
                start = time.perf_counter()
                for batch in sample:
                    step(batch)
                rounds[step].append(time.perf_counter() - start)
        ratios.append(paired_ratio(rounds[svi], rounds[plain]))
        pyro_ratios.append(paired_ratio(rounds[pyro_only], rounds[plain]))

    def evaluate(users, items):
        start = time.perf_counter()
        score_candidates(model, users, items, split.history_items, split.history_lengths)
        return time.perf_counter() - start

    compile_s = evaluate(loo.users, loo.items)
    loo_s = statistics.median(evaluate(loo.users, loo.items) for _ in range(args.repeats))
    test_s = statistics.median(evaluate(test_users, test_items) for _ in range(args.repeats))

    figures = {
        "epoch_seconds": statistics.median(epoch_s),
        "examples_per_second": statistics.median(rate),
        "loo_eval_seconds": loo_s,
        "test_eval_seconds": test_s,
        "peak_rss_mb": peak_rss_mb(),
        "svi_over_torch": statistics.median(ratios),
    }
    info = {
        "score_fn": args.score_fn,
        "quick": args.quick,
        "epoch_extrapolated_from_steps": n_steps,
        "epoch_seconds_each_repeat": [round(v, 3) for v in epoch_s],
        "svi_over_torch_each_repeat": [round(v, 4) for v in ratios],
        "pyro_step_over_torch": statistics.median(pyro_ratios),
        "pyro_step_over_torch_each_repeat": [round(v, 4) for v in pyro_ratios],
        "test_rows": int(len(test_users)),
        "first_eval_seconds_with_compile": compile_s,
        "threads": torch.get_num_threads(),
        "retain_freed_memory": retained,
        "torch": str(torch.__version__),
        "pyro": str(pyro.__version__),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    print(f"{'figure':<24}{'value':>12}")
    for key, value in figures.items():
        print(f"{key:<24}{value:>12.3f}")
    for key, value in info.items():
        print(f"# {key}: {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({**figures, "info": info}, handle, indent=2)


if __name__ == "__main__":
    main()
