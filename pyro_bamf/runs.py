"""Run directories: train a configuration end to end, and re-score a saved run.

A run directory holds ``config.toml`` (resolved), ``history.csv`` (one row per epoch),
``model.pt`` (checkpoint), ``metrics.json`` (the mean metrics of each test protocol) and
``per_user.csv`` (every user's, :mod:`pyro_bamf.protocols`). While training, a file
``INCOMPLETE`` marks it; it is removed only after ``metrics.json`` is written. Every file is
written atomically.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path
from .batch import groups_per_batch
from .config import BAMFConfig, ConfigError
from .data import ImplicitSplit, load_data, movie_titles, resolve_spec
from .data.sources import GENERATED
from .distributed import finish_distributed, init_distributed
from .evaluation import FULL_RANKING_CELLS
from .protocols import PER_USER, Scored, protocol_pools, score_protocols, write_per_user
from .recommender import BAMFRecommender, load_checked
from .training import EpochLog, TrainState

INCOMPLETE = "INCOMPLETE"
CHECKPOINT = "checkpoint.pt"
FINISHED = ("config.toml", "model.pt", "metrics.json")  # what a finished run holds
RUN_FILES = (*FINISHED, PER_USER, "history.csv", CHECKPOINT, INCOMPLETE)
REPLACED = ".replaced"  # inside a run being overwritten: the run it replaces, until it finishes


def build_split(config: BAMFConfig) -> ImplicitSplit:
    """Load ``config.data`` and split it with the config's seed and history settings."""
    data = load_data(config.data)
    return ImplicitSplit.from_interactions(
        data, seed=config.seed, history=config.history, max_history=config.max_history
    )


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_history(path: Path, rows: list[EpochLog]) -> None:
    """``history.csv``: one row per finished epoch."""
    names = [f.name for f in fields(EpochLog)]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in rows:
            writer.writerow([getattr(row, name) for name in names])


def train_run(
    config: BAMFConfig,
    out: str | Path,
    progress: bool = True,
    log_epochs: bool = True,
    resume: bool = False,
    distributed: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``config`` and write the run directory ``out``; returns the metrics record.

    ``out`` must be new or empty: a run already there is refused (``resume`` continues an
    interrupted one). ``overwrite=True`` replaces a run's files, and only those, once the new
    run has finished: until then they wait in ``out/.replaced`` and come back if training
    fails or is interrupted (a killed process leaves them there; the replacing run, resumed
    to its end, removes them). The configuration,
    data, pools, memory estimate, device and compilers are checked before the first file is
    written, and data paths are recorded absolute so the run can be evaluated from anywhere.

    After every epoch ``checkpoint.pt`` (model, optimiser, RNG and early-stopping state) is
    replaced atomically; ``resume=True`` continues an interrupted run from it, with the run's
    own ``config.toml``, to the same final metrics as an uninterrupted run. ``progress`` shows
    tqdm bars; ``log_epochs`` prints one line per epoch. ``distributed``: one rank of a
    torchrun job (:mod:`pyro_bamf.distributed`); only rank 0 writes files and evaluates the
    test pool, the other ranks return ``{}``.
    """
    out = Path(out)
    state, fingerprint, stale = None, None, []
    if resume:
        config, state, fingerprint = _load_checkpoint(out)
    elif not (distributed and int(os.environ.get("RANK", "0")) > 0):  # rank 0 writes
        stale = run_files_to_replace(out, overwrite)
    if not resume:
        config = config.replace(
            data=resolve_spec(config.data),
            test_candidates=config.test_candidates and str(Path(config.test_candidates).resolve()),
        )
    split = build_split(config)
    recommender = BAMFRecommender(config)
    device = recommender.check_device()
    check_memory(config, split, device)
    context = None
    if distributed:
        if resume:
            raise ValueError("resuming a distributed run is not supported: start it again")
        context = init_distributed(device)
    args = (config, out, split, recommender, progress, log_epochs, state, fingerprint, stale)
    if context is None:
        return _train(*args)
    try:
        return _train(*args, context)
    finally:
        finish_distributed()


def run_files_to_replace(out: Path, overwrite: bool) -> list[Path]:
    """The files of a run already at ``out`` that ``overwrite`` replaces (``[]`` if none).

    Raises ``ValueError`` naming what is there and the way on when ``out`` is a file, a
    folder holding other files, or (unless ``overwrite``) holds a run or part of one.
    """
    if not out.exists():
        return []
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run directory")
    names = sorted(name for name in os.listdir(out) if name != REPLACED)
    ours = [name for name in names if name in RUN_FILES]
    if not ours and names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(
            f"--out {out} is a folder of other files ({shown}), not a run: choose a new or "
            "empty folder"
        )
    if overwrite or not ours:
        return [out / name for name in ours]
    if INCOMPLETE in ours and CHECKPOINT in ours:
        raise ValueError(
            f"--out {out} holds an interrupted run: continue it with "
            f"`pyro-bamf train --resume {out}`, or pass --overwrite to start it again"
        )
    if INCOMPLETE in ours:
        raise ValueError(
            f"--out {out} holds a run stopped before it could be resumed (a training before "
            "its first epoch, or a baseline): pass --overwrite to start it again"
        )
    if {"config.toml", "metrics.json"} <= set(ours):  # a BAMF run, or a baseline's
        raise ValueError(
            f"--out {out} holds a finished run: pass --overwrite to replace it, or choose "
            "another --out"
        )
    raise ValueError(
        f"--out {out} holds part of a run ({', '.join(ours)}): pass --overwrite to replace "
        "those files, or choose another --out"
    )


MEMORY_FACTOR = 16  # float tensors of the score network's (rows, L, K) shape alive in a step


def check_memory(config: BAMFConfig, split: ImplicitSplit, device: torch.device) -> None:
    """``ConfigError`` when one training step or the evaluation pools would not fit in the
    device's memory, estimated before anything is written.

    A step holds about ``MEMORY_FACTOR`` float32 tensors of ``(rows, L, K)`` (``rows`` the
    examples of a batch, ``L`` the longest kept history, ``K`` the embedding size), in the
    memory of the training device; a pool row costs ~32 bytes of the machine's memory
    (indices, label, score), and a cell of the full ranking's largest block ~64 (the same and
    the per-user ranking's work arrays). Where a total cannot be read, it is not checked.
    """
    trainer, host = _total_memory(device), _total_memory(torch.device("cpu"))  # pools: numpy
    rows = min(groups_per_batch(config), len(split.train)) * config.group_size
    width = int(split.history_lengths.max(initial=1))
    step = MEMORY_FACTOR * 4 * rows * width * config.embedding_dim
    pools = 32 * (len(split.test) + len(split.loo)) * (1 + config.eval_negatives)
    if config.full_ranking:  # one block of the full ranking: ~64 bytes a user x item cell
        pools += 64 * min(split.n_users * split.n_items, FULL_RANKING_CELLS)
    for need, what, keys, budget in (
        (step, "a training step", "batch_size, embedding_dim or max_history", trainer),
        (pools, "the test and leave-one-out pools", "eval_negatives", host),
    ):
        if budget is not None and need > budget:
            raise ConfigError(
                f"{what} would need ~{need / 2**30:.1f} GiB, more than the "
                f"{budget / 2**30:.1f} GiB of memory here: lower {keys}"
            )


def _total_memory(device: torch.device) -> int | None:
    """Bytes of memory of ``device`` (the machine's for the CPU), or ``None`` if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def set_aside(out: Path, files: list[Path]) -> Path:
    """Move ``files`` (a run's, inside ``out``) into ``out/.replaced``; if that folder is
    already there (an overwrite was killed), it still holds the run being replaced, and
    ``files`` are the killed run's, which are removed. A failed move is undone."""
    aside = out / REPLACED
    if aside.is_dir():
        for path in files:
            path.unlink()
        return aside
    aside.mkdir()
    try:
        for path in files:
            path.rename(aside / path.name)
    except BaseException:
        for path in aside.iterdir():
            path.rename(out / path.name)
        aside.rmdir()
        raise
    return aside


def put_back(out: Path, aside: Path) -> None:
    """Remove the new run's files from ``out`` and return the set-aside ones."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for path in aside.iterdir():
        path.rename(out / path.name)
    aside.rmdir()


def _train(
    config, out, split, recommender, progress, log_epochs, state, fingerprint, stale, context=None
):
    main = context is None or context.is_main
    if state is not None and fingerprint != split.fingerprint:
        raise ValueError(
            f"cannot resume {out}: its checkpoint was trained on other data or another split"
        )
    pools = protocol_pools(config, split)
    loo = split.candidates("loo", config.eval_negatives)
    aside = set_aside(out, stale) if stale and main else None
    try:
        metrics = _train_in(config, out, split, recommender, progress, log_epochs, state,
                            context, pools, loo, aside)  # fmt: skip
    except BaseException:
        if aside is not None:
            put_back(out, aside)
        raise
    if main:  # the run is complete: the run it replaced, even before a resume, can go
        shutil.rmtree(out / REPLACED, ignore_errors=True)
    return metrics


def _train_in(
    config, out, split, recommender, progress, log_epochs, state, context, pools, loo, aside,
):  # fmt: skip
    main = context is None or context.is_main
    if state is None and main:
        out.mkdir(parents=True, exist_ok=True)
        kept = "" if aside is None else f"; the run it replaces waits in {REPLACED}/ until then"
        write_text(out / INCOMPLETE, f"training has not finished; resume with --resume{kept}\n")
        write_text(out / "config.toml", config.to_toml())

    def on_epoch(row: EpochLog, train_state: TrainState) -> None:
        if not main:
            return
        write_history(out / "history.csv", train_state.history)
        payload = {
            **train_state.to_dict(),
            "config": config.to_dict(),
            "data_fingerprint": split.fingerprint,
            "world_size": 1 if context is None else context.world_size,
        }
        with atomic_path(out / CHECKPOINT) as tmp:
            torch.save(payload, tmp)
        if log_epochs:
            print(
                f"epoch {row.epoch:3d}  nll {row.nll:.4f}  kl/weight {row.kl:.4f}  "
                f"lambda {row.kl_weight:.2f}  LOO ndcg@10 {row.loo_ndcg10:.4f}  "
                f"{row.seconds:.1f}s",
                flush=True,
            )

    result = recommender.fit(
        split, progress=progress and main, on_epoch=on_epoch, resume=state, distributed=context,
        loo=loo,
    )  # fmt: skip
    if not main:
        return {}
    recommender.save(out / "model.pt")
    scored = score_protocols(recommender.ranking_scores, split, pools, ties=config.ties)
    write_per_user(out / PER_USER, scored.per_user)
    metrics = {
        "method": "bamf",
        **scored_record(scored),
        "best_epoch": result.best_epoch,
        "best_loo_ndcg@10": result.best_loo_ndcg10,
        "epochs_run": len(result.history),
        "train_seconds_per_epoch_median": statistics.median(r.seconds for r in result.history),
        "data": split.data.source,
        "data_fingerprint": split.fingerprint,
    }
    write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    (out / INCOMPLETE).unlink(missing_ok=True)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return metrics


def scored_record(scored: Scored) -> dict[str, Any]:
    """The ``metrics.json`` entries of a scored run: each protocol's mean metrics, then
    ``"pool_fingerprints"`` (each protocol's pool fingerprint) and ``"eval_seconds"``."""
    fingerprints, seconds = scored.pool_fingerprints, scored.seconds
    return {**scored.means, "pool_fingerprints": fingerprints, "eval_seconds": seconds}


def _load_checkpoint(out: Path) -> tuple[BAMFConfig, TrainState, str]:
    """The run's config, its last epoch's training state and the data fingerprint."""
    if not (out / "config.toml").is_file():
        raise ValueError(f"cannot resume {out}: it has no config.toml (not a run directory)")
    if not (out / INCOMPLETE).exists():
        raise ValueError(f"cannot resume {out}: the run already finished")
    if not (out / CHECKPOINT).is_file():
        raise ValueError(f"cannot resume {out}: no epoch finished before it stopped; start again")
    try:
        payload = load_checked(out / CHECKPOINT)
        fingerprint = payload.pop("data_fingerprint")
        world_size = payload.pop("world_size", 1)
        trained_with = payload.pop("config", None)
        state = TrainState.from_dict(payload)
    except Exception as err:  # truncated or foreign files raise many types
        raise ValueError(f"cannot resume {out}: {CHECKPOINT} is unreadable: {err}") from None
    if world_size != 1:
        raise ValueError(
            f"cannot resume {out}: it was trained by {world_size} distributed ranks, and "
            "distributed runs cannot be resumed; start it again"
        )
    config = BAMFConfig.from_toml(out / "config.toml")
    if trained_with is None:
        warnings.warn(
            f"{out / CHECKPOINT} predates recorded configurations: config.toml cannot be "
            "checked against it",
            stacklevel=3,
        )
    else:
        check_same_config(out, config, trained_with)
    return config, state, fingerprint


def check_same_config(out: Path, config: BAMFConfig, trained_with: dict[str, Any]) -> None:
    """Refuse to resume when ``config.toml`` differs from the checkpoint's configuration,
    naming every key that differs and both values."""
    current = config.to_dict()
    changed = [key for key in trained_with if current.get(key) != trained_with[key]]
    if changed:
        diffs = "; ".join(
            f"{key} = {current.get(key)!r} (the checkpoint's: {trained_with[key]!r})"
            for key in changed
        )
        raise ValueError(
            f"cannot resume {out}: config.toml was edited after training started: {diffs}; "
            "restore it, or start a new run with --out"
        )


def load_run(run: str | Path) -> BAMFRecommender:
    """The trained recommender of a finished run directory, on its own data and split."""
    run = Path(run)
    check_finished(run)
    return _load_finished(run)


def _load_finished(run: Path) -> BAMFRecommender:
    """:func:`load_run` of a run already checked by :func:`check_finished`."""
    config = BAMFConfig.from_toml(run / "config.toml")
    if config.device == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"run {run} was trained on CUDA; no GPU here, loading it on the CPU",
                      stacklevel=2)  # fmt: skip
        config = config.replace(device="cpu")
    return BAMFRecommender.load(run / "model.pt", build_split(config), config)


def check_finished(run: Path) -> None:
    """``ValueError`` unless ``run`` is a finished BAMF run directory."""
    if (run / INCOMPLETE).exists():
        raise ValueError(f"run {run} is incomplete (training did not finish)")
    method = _method_of(run)
    if method != "bamf":
        raise ValueError(
            f"run {run} holds a baseline ({method}), not a trained BAMF model: run "
            "`pyro-bamf baseline` again to re-score it"
        )
    for name in FINISHED:
        if not (run / name).is_file():
            raise ValueError(f"run {run} has no {name}: not a pyro-bamf run directory")


def _method_of(run: Path) -> str:
    """The ``"method"`` a run's ``metrics.json`` records (runs before baselines: bamf)."""
    try:
        saved = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return "bamf"
    return saved.get("method", "bamf") if isinstance(saved, dict) else "bamf"


def evaluate_run(run: str | Path) -> tuple[Scored, dict[str, Any]]:
    """Re-score a finished run on its protocols: ``(fresh scores, metrics.json as saved)``."""
    run = Path(run)
    check_finished(run)
    saved = read_metrics(run / "metrics.json")
    recommender = _load_finished(run)
    config, split = recommender.config, recommender.split
    pools = protocol_pools(config, split)
    return score_protocols(recommender.ranking_scores, split, pools, ties=config.ties), saved


def missing_records(run: Path, saved: dict[str, Any], scored: Scored) -> list[str]:
    """What a run scored before a protocol or the per-user table existed lacks: the
    protocols absent from ``metrics.json``, and ``per_user.csv``."""
    missing = [protocol for protocol in scored.means if protocol not in saved]
    return missing + ([] if (run / PER_USER).is_file() else [PER_USER])


def add_missing_records(run: str | Path, saved: dict[str, Any], scored: Scored) -> list[str]:
    """Add to a run what :func:`missing_records` names, from ``scored`` (fresh scores that
    match its saved ones), and nothing else; returns what was added. ``per_user.csv`` is
    written before ``metrics.json``, each atomically."""
    run = Path(run)
    missing = missing_records(run, saved, scored)
    if PER_USER in missing:
        write_per_user(run / PER_USER, scored.per_user)
    added = {protocol: scored.means[protocol] for protocol in missing if protocol != PER_USER}
    if added:
        record = {**saved, **added}
        record.setdefault("method", "bamf")
        for key, fresh in scored_record(scored).items():
            if key not in scored.means:  # the fingerprints and seconds of every protocol
                record[key] = {**fresh, **saved.get(key, {})}
        write_text(run / "metrics.json", json.dumps(record, indent=2) + "\n")
    return missing


def read_metrics(path: Path) -> dict[str, Any]:
    """``metrics.json`` of a run; ``ValueError`` unless it is a JSON object whose ``"test"``
    maps metric names to numbers."""
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): the run's record is damaged") from None
    test = saved.get("test") if isinstance(saved, dict) else None
    numbers = isinstance(test, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in test.values()
    )
    if not test or not numbers:
        raise ValueError(
            f'{path} has no "test" table of metric values: the run\'s record is damaged'
        )
    return saved


def item_labels(recommender: BAMFRecommender) -> dict[int, str]:
    """Item index -> its title where ``movies.csv`` has one, else its original id."""
    titles = item_titles(recommender)
    ids = recommender.split.data.item_ids.tolist()
    return {index: titles.get(index, str(raw)) for index, raw in enumerate(ids)}


def explain_user(
    recommender: BAMFRecommender,
    user: str,
    item: str | None = None,
    num_samples: int = 1000,
    top: int = 20,
):
    """Posterior draws of the attention of ``user`` (original id; with a target ``item``) and
    their figure: ``(samples, figure, labels)``, ``labels`` mapping item index -> name."""
    from . import views

    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    index = original_index(recommender, "user", user)
    target = None if item is None else original_index(recommender, "item", item)
    labels = item_labels(recommender)
    samples = recommender.attention_samples(index, target, num_samples)
    item_label = None if target is None else labels[target]
    figure = views.plot_attention(samples, labels, top, user, item_label)
    return samples, figure, labels


def item_titles(recommender: BAMFRecommender) -> dict[int, str]:
    """Item index -> title from ``movies.csv`` beside the run's MovieLens data ({} if none)."""
    spec = recommender.config.data
    if spec.startswith(GENERATED):
        return {}
    by_id = movie_titles(None if spec in ("movielens", "auto") else spec)
    ids = recommender.split.data.item_ids
    return {index: by_id[raw] for index, raw in enumerate(ids.tolist()) if raw in by_id}


def original_index(recommender: BAMFRecommender, kind: str, original_id: str) -> int:
    """The index of a user or item given by its original id as typed (``"42"``)."""
    data = recommender.split.data
    ids = data.user_ids if kind == "user" else data.item_ids
    value: Any = original_id
    for dtype, parse, noun in ((np.integer, int, "an integer"), (np.floating, float, "a number")):
        if np.issubdtype(ids.dtype, dtype):
            try:
                value = parse(original_id)
            except ValueError:
                raise ValueError(f"{kind} id {original_id!r} is not {noun}") from None
    lookup = data.user_index if kind == "user" else data.item_index
    return int(lookup([value])[0])
