"""Command line: ``pyro-bamf data fetch|describe``, ``train``, ``evaluate``, ``explain``,
``calibrate``, ``uncertainty``, ``baseline``, ``compare``."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import warnings
from pathlib import Path

import torch

from .baselines import MissingExtraError
from .config import BAMFConfig, ConfigError, parse_overrides
from .data import fetch_movielens, load_data
from .kernels import KernelUnavailableError
from .protocols import PROTOCOLS
from .runs import (
    add_missing_records,
    evaluate_run,
    explain_user,
    load_run,
    missing_records,
    train_run,
)
from .training import TrainingCollapsed


def _data_fetch(args: argparse.Namespace) -> int:
    print(fetch_movielens(args.data_dir, replace_invalid=args.replace_invalid))
    return 0


def _data_describe(args: argparse.Namespace) -> int:
    print(json.dumps(load_data(args.data).describe(), indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    if args.resume:
        if args.config or args.set or args.out or args.distributed or args.overwrite:
            raise ConfigError(
                "--resume continues a run with its own config: drop --config/--set/--out/"
                "--overwrite (and --distributed: distributed runs cannot be resumed)"
            )
        metrics = train_run(BAMFConfig(), args.resume, not args.no_progress, resume=True)
    else:
        if not args.out:
            raise ConfigError("train needs --out DIR (or --resume DIR)")
        config = BAMFConfig.from_toml(args.config) if args.config else BAMFConfig()
        config = config.replace(**parse_overrides(args.set))
        metrics = train_run(
            config,
            args.out,
            progress=not args.no_progress,
            distributed=args.distributed,
            overwrite=args.overwrite,
        )
        if not metrics:  # a rank other than 0 of a distributed run
            return 0
    print(json.dumps({k: v for k, v in metrics["test"].items() if k.endswith("@10")}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    scored, saved = evaluate_run(args.run)
    print(json.dumps(scored.means, indent=2))
    drift = {
        f"{protocol}/{key}": (value, saved[protocol].get(key))
        for protocol, fresh in scored.means.items() if protocol in saved
        for key, value in fresh.items() if not _same(value, saved[protocol].get(key))
    }  # fmt: skip
    if drift:
        print(f"differs from metrics.json: {drift}", file=sys.stderr)
        return 1
    print("matches metrics.json", file=sys.stderr)
    missing = missing_records(Path(args.run), saved, scored)
    if missing and args.update:
        add_missing_records(args.run, saved, scored)
        print(f"added {', '.join(missing)} to {args.run}", file=sys.stderr)
    elif missing:
        print(f"the run has no {', '.join(missing)}: pass --update to add them", file=sys.stderr)
    return 0


def _same(fresh: float, saved) -> bool:
    """A re-scored metric equals the saved one up to the last bits of a float mean (a mean
    taken in another order, as older full-ranking runs did, differs there)."""
    return isinstance(saved, int | float) and math.isclose(fresh, saved, rel_tol=1e-12)


def _explain(args: argparse.Namespace) -> int:
    from . import views

    views.check_figure_path(args.out)
    samples, fig, labels = explain_user(
        load_run(args.run), args.user, args.item, args.samples, args.top
    )
    report = {
        "user": args.user,
        "history_items": int(samples.history.size),
        "draws": args.samples,
        "top_attention": [
            {
                "item": labels[int(row.item)],
                **{k: round(float(getattr(row, k)), 5) for k in ("median", "low", "high")},
            }
            for row in samples.summary().head(args.top).itertuples()
        ],  # fmt: skip
    }
    if samples.probabilities is not None:
        report["item"] = args.item
        report["probability"] = _interval(samples.probabilities)
    views.save(fig, args.out)
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _interval(samples) -> dict[str, float]:
    from .predictive import summarize

    return {k: float(v) for k, v in summarize(samples).items()}


def _calibrate(args: argparse.Namespace) -> int:
    from . import views
    from .calibration import calibration_metrics, check_n_bins, reliability_bins

    check_n_bins(args.bins)
    if args.plot:
        views.check_figure_path(args.plot)
    rec = load_run(args.run)
    pool = rec.split.candidates("val", args.negatives)
    probabilities = rec.score(pool.users, pool.items)
    metrics = calibration_metrics(probabilities, pool.labels, args.bins)
    print(json.dumps(metrics, indent=2))
    if args.plot:
        bins = reliability_bins(probabilities, pool.labels, args.bins)
        views.save(views.plot_reliability(bins, metrics), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _uncertainty(args: argparse.Namespace) -> int:
    from .judging import judge_run, report_path

    report = judge_run(
        args.run, args.samples, args.positives, args.method, args.width_users, args.out,
        args.overwrite,
    )  # fmt: skip
    print(json.dumps(report, indent=2))
    print(f"wrote {report_path(args.out or args.run, args.method)} and figures", file=sys.stderr)
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from .baselines.run import baseline_run

    config = BAMFConfig.from_toml(args.config) if args.config else BAMFConfig()
    config = config.replace(**parse_overrides(args.set))
    record = baseline_run(args.method, config, args.out, args.grid, args.overwrite)
    summary = {"method": record["method"], "hyperparameters": record["hyperparameters"]}
    for protocol in PROTOCOLS:
        if protocol in record:
            summary[protocol] = {k: v for k, v in record[protocol].items() if k.endswith("@10")}
    print(json.dumps(summary, indent=2))
    for name in record["grid_edges"]:
        values = record["grid"][name]
        print(
            f"pyro-bamf: note: {name} = {record['hyperparameters'][name]} is at an end of its "
            f"grid ({', '.join(map(str, values))}): the best value may lie beyond; widen it "
            f"with --grid {name}=...",
            file=sys.stderr,
        )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs, format_table

    protocols = tuple(args.protocol or PROTOCOLS)
    frame = compare_runs(args.runs, tuple(args.metric or ["ndcg@10"]), protocols,
                         args.resamples, seed=args.seed)  # fmt: skip
    if args.json:
        print(frame.to_json(orient="records", indent=2))
    else:
        print(format_table(frame))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-bamf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="fetch or describe a data set")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser("fetch", help="download ml-latest-small into the cache")
    fetch.add_argument(
        "--data-dir", help="cache folder (default: $BAMF_DATA_DIR or ~/.cache/pyro-bamf)"
    )
    fetch.add_argument(
        "--replace-invalid",
        action="store_true",
        help="replace an invalid cached zip by a verified download (the old file is renamed "
        "to ml-latest-small.zip.invalid, never deleted)",
    )
    fetch.set_defaults(func=_data_fetch)
    describe = data_commands.add_parser("describe", help="print data statistics as JSON")
    describe.add_argument(
        "--data", required=True, help="a path, movielens, auto, synthetic[:...] or planted[:...]"
    )
    describe.set_defaults(func=_data_describe)

    train = commands.add_parser("train", help="train and evaluate one configuration")
    train.add_argument("--config", help="TOML file (see examples/configs/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--out", help="run directory to write")
    train.add_argument("--resume", metavar="DIR", help="continue an interrupted run")
    train.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out (its files only)"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument(
        "--distributed", action="store_true",
        help="one rank of a data-parallel job: torchrun --nproc-per-node N -m pyro_bamf train",
    )  # fmt: skip
    train.set_defaults(func=_train)

    evaluate = commands.add_parser(
        "evaluate", help="re-score a saved run on its test protocols and check metrics.json"
    )
    evaluate.add_argument("--run", required=True, help="run directory written by train")
    evaluate.add_argument(
        "--update", action="store_true",
        help="add the protocols and per_user.csv that an older run lacks (nothing is replaced)",
    )  # fmt: skip
    evaluate.set_defaults(func=_evaluate)

    explain = commands.add_parser(
        "explain", help="figure of a user's attention uncertainty (posterior predictive)"
    )
    explain.add_argument("--run", required=True, help="run directory written by train")
    explain.add_argument("--user", required=True, help="original user id (e.g. MovieLens userId)")
    explain.add_argument("--item", help="original id of a target item (adds item-side attention)")
    explain.add_argument("--samples", type=int, default=1000, help="posterior draws")
    explain.add_argument("--top", type=int, default=20, help="history items shown")
    explain.add_argument("--out", required=True, help="figure file, .png or .svg")
    explain.set_defaults(func=_explain)

    calibrate = commands.add_parser(
        "calibrate",
        help="ECE, Brier and NLL of the plug-in probabilities sigmoid(x at E[s]) on the "
        "pointwise validation set (JSON)",
    )
    calibrate.add_argument("--run", required=True, help="run directory written by train")
    calibrate.add_argument("--negatives", type=int, default=4, help="negatives per positive")
    calibrate.add_argument("--bins", type=int, default=15, help="reliability bins")
    calibrate.add_argument("--plot", help="also write a reliability diagram (.png or .svg)")
    calibrate.set_defaults(func=_calibrate)

    uncertainty = commands.add_parser(
        "uncertainty",
        help="judge the posterior's uncertainty on the test pool (FCP, AUROC, PAvPU, ECE@10, ...)",
    )
    uncertainty.add_argument("--run", required=True, help="run directory written by train")
    uncertainty.add_argument("--samples", type=int, default=200, help="posterior draws per user")
    uncertainty.add_argument(
        "--positives", type=int, default=1,
        help="each user's first N test positives with their negatives (0: the whole pool)",
    )  # fmt: skip
    uncertainty.add_argument(
        "--width-users", type=int, help="users whose attention width is measured (default all)"
    )
    uncertainty.add_argument(
        "--method", choices=("posterior", "mc_dropout"), default="posterior",
        help="posterior predictive draws, or the MC dropout baseline",
    )  # fmt: skip
    uncertainty.add_argument("--out", help="folder for uncertainty.json and figures (the run's)")
    uncertainty.add_argument("--overwrite", action="store_true", help="replace uncertainty.json")
    uncertainty.set_defaults(func=_uncertainty)

    baseline = commands.add_parser(
        "baseline",
        help="tune a baseline on validation and score it on the split and pools train builds",
    )
    baseline.add_argument(
        "--method", required=True,
        help="popularity, itemknn, ease, ials or bpr (ials, bpr: pip install "
        "'pyro-bamf[implicit]'), or a registered name / 'package.module:Class'",
    )  # fmt: skip
    baseline.add_argument("--config", help="TOML file: its data, seed and pool settings are used")
    baseline.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    baseline.add_argument(
        "--grid", action="append", default=[], metavar="NAME=V1,V2",
        help="replace one axis of the method's grid (one value fixes it)",
    )  # fmt: skip
    baseline.add_argument("--out", required=True, help="run directory to write")
    baseline.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out (its files only)"
    )
    baseline.set_defaults(func=_baseline)

    compare = commands.add_parser(
        "compare",
        help="runs side by side: bootstrap intervals over users, Wilcoxon tests vs the first "
        "run, Holm-corrected",
    )
    compare.add_argument("runs", nargs="+", help="run directories; the first is the reference")
    compare.add_argument(
        "--metric", action="append", help="e.g. ndcg@10 (default), hr@10; repeatable"
    )
    compare.add_argument(
        "--protocol", action="append", choices=PROTOCOLS,
        help="test (the sampled pool) or test_full (full ranking); default both",
    )  # fmt: skip
    compare.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    compare.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    compare.add_argument("--json", action="store_true", help="print JSON records, not tables")
    compare.set_defaults(func=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.func(args)
    except (
        ValueError,
        OSError,
        FloatingPointError,
        KernelUnavailableError,
        TrainingCollapsed,
        MissingExtraError,
    ) as err:
        print(f"pyro-bamf: error: {one_line(err)}", file=sys.stderr)
        return 2
    except (MemoryError, torch.cuda.OutOfMemoryError) as err:
        print(
            f"pyro-bamf: error: out of memory ({type(err).__name__}: {one_line(err)}): lower "
            "batch_size, embedding_dim, max_history or eval_negatives",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("pyro-bamf: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame) -> None:
    """SIGTERM (a scheduler's time limit, torchrun stopping a job) as an exit that unwinds,
    so that a run being overwritten is put back (:func:`pyro_bamf.runs.train_run`)."""
    raise SystemExit(128 + signum)


def one_line(err: BaseException) -> str:
    """The first line of ``err``'s message."""
    return (str(err).strip().splitlines() or [""])[0]
