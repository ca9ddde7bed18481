"""Issue 21's uncertainty study: train the pointwise concat configuration under several
settings to early stopping, judge each run's uncertainty (``pyro-bamf uncertainty``, and the MC
dropout baseline on the same network), and print one table (mean and SD over seeds).

    python examples/uncertainty_study.py --out runs/study --configs a_paper f_normalised \\
        --seeds 42 43 44 45 46

Every configuration starts from examples/configs/pointwise_concat.toml. A finished run under
``--out`` is judged as it is, an interrupted one resumed, and existing reports are reused, so the
study can be stopped and started again. Seed 42 is run ``<name>``, seed ``s`` ``<name>_s<s>``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from pyro_bamf import BAMFConfig
from pyro_bamf.judging import judge_run, report_path
from pyro_bamf.runs import train_run

CONFIG = Path(__file__).parent / "configs" / "pointwise_concat.toml"
GAMMA_SHAPE = 1.0 / math.expm1(1.0)  # the gamma prior's CV matched to the log-normal's
CONFIGS = {
    "a_paper": {},
    "b_learned": {"guide_spread": "learned"},
    "c_learned_elbo": {"guide_spread": "learned", "kl_weight": "elbo"},
    "d_key_learned": {"prior_loc": "key", "guide_spread": "learned"},
    "e_weibull_gamma": {"guide_family": "weibull", "prior_family": "gamma",
                        "prior_shape": GAMMA_SHAPE},
    "f_normalised": {"attention_inputs": "normalised"},
    "g_normalised_learned": {"attention_inputs": "normalised", "guide_spread": "learned"},
    "h_normalised_tau2": {"attention_inputs": "normalised", "tau": 2.0},
}  # fmt: skip
COLUMNS = {  # column -> where it is in (metrics.json, uncertainty.json, mc_dropout report or None)
    "NDCG@10": lambda m, u, d: m["test"]["ndcg@10"],
    "ECE": lambda m, u, d: u["calibration"]["ece"],
    "ECE@10": lambda m, u, d: u["calibration"]["ece@10"],
    "AUROC": lambda m, u, d: u["pairs"]["auroc_misorder"],
    "- margin": lambda m, u, d: u["pairs"]["auroc_misorder"] - u["pairs"]["auroc_misorder_margin"],
    "- MC dropout": lambda m, u, d: (
        d and u["pairs"]["auroc_misorder"] - d["pairs"]["auroc_misorder"]
    ),
    "PAvPU@0.05": lambda m, u, d: u["pairs"]["pavpu@0.05"],
    "rho(width, log L)": lambda m, u, d: u["attention"]["spearman_width_log_history"],
    "cov90": lambda m, u, d: u["calibration"]["coverage90_positives@10"],
    "entropy gap": lambda m, u, d: u["attention"]["entropy_gap"],
    "psi SD": lambda m, u, d: u["attention"]["psi_sd"],
    "best epoch": lambda m, u, d: m["best_epoch"],
}


def run_name(config: str, seed: int) -> str:
    return config if seed == 42 else f"{config}_s{seed}"


def study_run(out: Path, config: str, seed: int, samples: int, baseline: bool) -> dict:
    """Train (or resume, or reuse) one run, judge it (and by MC dropout if ``baseline``); the
    table's values."""
    run = out / run_name(config, seed)
    if not (run / "metrics.json").exists():
        settings = BAMFConfig.from_toml(CONFIG).replace(seed=seed, **CONFIGS[config])
        resume = (run / "checkpoint.pt").exists()
        train_run(settings, run, progress=False, log_epochs=False, resume=resume)
    reports = {"mc_dropout": None}
    for method in ("posterior", "mc_dropout") if baseline else ("posterior",):
        path = report_path(run, method)
        if not path.exists():
            judge_run(run, samples, method=method)
        reports[method] = json.loads(path.read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return {name: read(metrics, reports["posterior"], reports["mc_dropout"])
            for name, read in COLUMNS.items()}  # fmt: skip


def cell(values: list[float | None]) -> str:
    """``mean`` for one seed, ``mean ± SD`` for several (over the runs that have a value)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    digits = 0 if all(float(v).is_integer() for v in values) else 3
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/study"))
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--samples", type=int, default=200, help="draws per user and method")
    parser.add_argument("--baseline-seeds", nargs="*", type=int, default=[42],
                        help="seeds whose runs are also judged by MC dropout")  # fmt: skip
    args = parser.parse_args()
    print(f"| configuration | seeds | {' | '.join(COLUMNS)} |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for config in args.configs:
        rows = [study_run(args.out, config, seed, args.samples, seed in args.baseline_seeds)
                for seed in args.seeds]  # fmt: skip
        cells = [cell([row[name] for row in rows]) for name in COLUMNS]
        print(f"| {config} | {len(rows)} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
