"""Run directories: train a configuration end to end, and re-score a saved run.

A run directory holds ``config.toml`` (resolved), ``history.csv`` (one row per epoch),
``model.pt`` (checkpoint) and ``metrics.json``. While training, a file ``INCOMPLETE`` marks
it; it is removed only after ``metrics.json`` is written. Every file is written atomically.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import fields
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .config import BAMFConfig
from .data import Candidates, ImplicitSplit, load_data
from .recommender import BAMFRecommender
from .training import EpochLog

INCOMPLETE = "INCOMPLETE"


def build_split(config: BAMFConfig) -> ImplicitSplit:
    """Load ``config.data`` and split it with the config's seed and history settings."""
    data = load_data(config.data)
    return ImplicitSplit.from_interactions(
        data, seed=config.seed, history=config.history, max_history=config.max_history
    )


def test_candidates(config: BAMFConfig, split: ImplicitSplit) -> Candidates | None:
    """The saved candidate file named by ``config.test_candidates``, else a fresh pool.

    ``None`` under the full-ranking protocol.
    """
    if config.eval_protocol == "full":
        return None
    if config.test_candidates:
        return Candidates.load(config.test_candidates, fingerprint=split.fingerprint)
    return split.candidates("test", config.eval_negatives)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_history(path: Path, rows: list[EpochLog]) -> None:
    names = [f.name for f in fields(EpochLog)]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in rows:
            writer.writerow([getattr(row, name) for name in names])


def train_run(
    config: BAMFConfig, out: str | Path, progress: bool = True, log_epochs: bool = True
) -> dict[str, Any]:
    """Train ``config`` and write the run directory ``out``; returns the metrics record.

    ``progress`` shows tqdm bars per epoch; ``log_epochs`` prints one line per epoch.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / INCOMPLETE, "training has not finished; this run is not usable yet\n")
    write_text(out / "config.toml", config.to_toml())
    split = build_split(config)
    recommender = BAMFRecommender(config)
    rows: list[EpochLog] = []

    def on_epoch(row: EpochLog) -> None:
        rows.append(row)
        write_history(out / "history.csv", rows)
        if log_epochs:
            print(
                f"epoch {row.epoch:3d}  nll {row.nll:.4f}  kl/weight {row.kl:.4f}  "
                f"lambda {row.kl_weight:.2f}  LOO ndcg@10 {row.loo_ndcg10:.4f}  "
                f"{row.seconds:.1f}s",
                flush=True,
            )

    result = recommender.fit(split, progress=progress, on_epoch=on_epoch)
    recommender.save(out / "model.pt")
    metrics = {
        "test": recommender.evaluate(test_candidates(config, split)),
        "best_epoch": result.best_epoch,
        "best_loo_ndcg@10": result.best_loo_ndcg10,
        "epochs_run": len(result.history),
        "train_seconds_per_epoch_median": statistics.median(r.seconds for r in result.history),
        "data": split.data.source,
        "data_fingerprint": split.fingerprint,
    }
    write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    (out / INCOMPLETE).unlink()
    return metrics


def evaluate_run(run: str | Path) -> tuple[dict[str, float], dict[str, Any]]:
    """Re-score a finished run: ``(fresh test metrics, metrics.json as saved)``."""
    run = Path(run)
    if (run / INCOMPLETE).exists():
        raise ValueError(f"run {run} is incomplete (training did not finish)")
    for name in ("config.toml", "model.pt", "metrics.json"):
        if not (run / name).is_file():
            raise ValueError(f"run {run} has no {name}: not a pyro-bamf run directory")
    config = BAMFConfig.from_toml(run / "config.toml")
    split = build_split(config)
    recommender = BAMFRecommender.load(run / "model.pt", split)
    saved = json.loads((run / "metrics.json").read_text())
    return recommender.evaluate(test_candidates(config, split)), saved
