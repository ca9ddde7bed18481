"""``BAMFRecommender``: fit / score / recommend / evaluate / save / load around :class:`BAMF`."""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import torch

from . import __version__, kernels
from .atomic import atomic_path
from .calibration import calibration_metrics
from .config import BAMFConfig
from .data import Candidates, ImplicitSplit
from .distributed import DistributedContext
from .evaluation import score_candidates
from .fastpaths import build_model
from .metrics import KS
from .model import BAMF
from .predictive import AttentionSamples, attention_samples, logit_samples, topk_probability
from .protocols import evaluation_pool, protocol_metrics
from .training import EpochLog, FitResult, TrainState, fit

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not match the data or configuration at hand."""


def load_checked(path: Path) -> object:
    """``torch.load`` (weights only) after checking every member's CRC, which torch skips.

    Raises :class:`CheckpointError` for a missing, truncated, corrupt or foreign file.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise CheckpointError(f"checkpoint {path} is corrupt: member {damaged} fails its CRC")
        return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # torch and zipfile raise many types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {err}") from None


class BAMFRecommender:
    """A BAMF model bound to the split it is trained on.

    >>> rec = BAMFRecommender(BAMFConfig(data="synthetic", max_epochs=2))   # doctest: +SKIP
    >>> rec.fit(split); rec.recommend(user=0, k=10)                         # doctest: +SKIP

    User and item arguments are the split's internal indices (``split.data.user_index`` maps
    original ids).
    """

    def __init__(self, config: BAMFConfig | None = None) -> None:
        self.config = config or BAMFConfig()
        self.model: BAMF | None = None
        self.split: ImplicitSplit | None = None

    def fit(
        self,
        split: ImplicitSplit,
        progress: bool = True,
        on_epoch: Callable[[EpochLog, TrainState], None] | None = None,
        resume: TrainState | None = None,
        distributed: DistributedContext | None = None,
        loo: Candidates | None = None,
    ) -> FitResult:
        """Seed everything from ``config.seed``, build a fresh model and train it by SVI.

        ``on_epoch(row, state)`` runs after each epoch; ``resume`` continues from such a state;
        ``distributed`` trains data-parallel (:mod:`pyro_bamf.distributed`); ``loo``: the
        split's leave-one-out pool, if already built (``split.candidates("loo", ...)``).
        """
        device = self.check_device()
        pyro.set_rng_seed(self.config.seed)
        pyro.clear_param_store()
        self.split = split
        self.model = build_model(split.n_users, split.n_items, self.config, device)
        if loo is None:
            loo = split.candidates("loo", self.config.eval_negatives)
        with pyro.validation_enabled(False):
            return fit(
                self.model, split, self.config, loo, progress, on_epoch=on_epoch, resume=resume,
                distributed=distributed,
            )  # fmt: skip

    def check_device(self) -> torch.device:
        """The device ``config.device`` names; ``ValueError`` now if it is unavailable, and
        :class:`~pyro_bamf.kernels.KernelUnavailableError` if a compiler the config needs there
        is missing (:func:`~pyro_bamf.kernels.check_build_tools`)."""
        device = self._device()
        kernels.check_build_tools(self.config, device)
        return device

    def _device(self) -> torch.device:
        """``config.device``; ``"auto"`` picks CUDA when available. A missing GPU is an error."""
        name = self.config.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda" and not torch.cuda.is_available():
            raise ValueError("device = 'cuda' but torch sees no CUDA device: use cpu or auto")
        return torch.device(name)

    def _require_fitted(self) -> tuple[BAMF, ImplicitSplit]:
        if self.model is None or self.split is None:
            raise RuntimeError("the recommender is not fitted: call fit() or load() first")
        return self.model, self.split

    def _check_ids(self, users: np.ndarray, items: np.ndarray) -> None:
        _, split = self._require_fitted()
        for name, ids, bound in (("user", users, split.n_users), ("item", items, split.n_items)):
            bad = ids[(ids < 0) | (ids >= bound)]
            if bad.size:
                raise ValueError(
                    f"unknown {name} index {bad[:5].tolist()}: valid indices are 0..{bound - 1}"
                )

    def score(self, users, items) -> np.ndarray:
        """Predicted probability ``sigmoid(x(u, i))`` at the expected attention scores.

        ``users``, ``items``: equal-length index arrays. Returns ``float32 (N,)``.
        """
        return 1.0 / (1.0 + np.exp(-self.ranking_scores(users, items)))

    def ranking_scores(self, users, items) -> np.ndarray:
        """Expected logits ``x(u, i)``, which order candidates like :meth:`score` without its
        float saturation ties: what the test protocols rank by. ``float32 (N,)``."""
        model, split = self._require_fitted()
        users = np.asarray(users, dtype=np.int64).ravel()
        items = np.asarray(items, dtype=np.int64).ravel()
        if users.shape != items.shape:
            raise ValueError(f"users and items differ in length: {users.size} vs {items.size}")
        self._check_ids(users, items)
        return score_candidates(model, users, items, split.history_items, split.history_lengths)

    def recommend(self, user: int, k: int = 10, exclude_seen: bool = True):
        """Top-``k`` items for ``user`` as ``(items, probabilities)``, best first.

        ``exclude_seen`` drops the user's training items.
        """
        _, split = self._require_fitted()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self._check_ids(np.array([user]), np.array([], dtype=np.int64))
        items = np.arange(split.n_items)
        if exclude_seen:
            items = np.setdiff1d(items, split.train.items[split.train.users == user])
        logits = self.ranking_scores(np.full(items.size, user), items)
        top = np.argsort(-logits, kind="stable")[:k]
        return items[top], 1.0 / (1.0 + np.exp(-logits[top]))

    def attention_samples(
        self, user: int, item: int | None = None, num_samples: int = 1000
    ) -> AttentionSamples:
        """Posterior predictive draws of ``user``'s attention weights over the history (and,
        with a target ``item``, the item-side weights and the logit); see
        :mod:`pyro_bamf.predictive`."""
        model, split = self._require_fitted()
        self._check_ids(np.array([user]), np.array([] if item is None else [item], np.int64))
        return attention_samples(
            model, split.history_items, split.history_lengths, user, item, num_samples
        )

    def score_samples(self, user: int, items, num_samples: int = 200) -> np.ndarray:
        """Posterior predictive draws of ``sigmoid(x(user, i))`` for ``items (C,)``:
        ``float32 (num_samples, C)``."""
        model, split = self._require_fitted()
        items = np.asarray(items, dtype=np.int64).ravel()
        self._check_ids(np.array([user]), items)
        logits = logit_samples(
            model, split.history_items, split.history_lengths, user, items, num_samples
        )
        return 1.0 / (1.0 + np.exp(-logits))

    def topk_probability(
        self, user: int, k: int = 10, items=None, num_samples: int = 200
    ) -> tuple[np.ndarray, np.ndarray]:
        """``P(i in the user's top k)`` over posterior draws, ranking ``items`` (default: every
        item the user has no training interaction with) by their sampled logits (probabilities
        saturate to 1.0 in float32). Returns ``(items, probability)``, highest first."""
        model, split = self._require_fitted()
        if items is None:
            seen = split.train.items[split.train.users == user]
            items = np.setdiff1d(np.arange(split.n_items), seen)
        items = np.asarray(items, dtype=np.int64).ravel()
        self._check_ids(np.array([user]), items)
        logits = logit_samples(
            model, split.history_items, split.history_lengths, user, items, num_samples
        )
        probability = topk_probability(logits, k)
        order = np.argsort(-probability, kind="stable")
        return items[order], probability[order]

    def calibration(self, negatives: int = 4, n_bins: int = 15) -> dict[str, float]:
        """ECE, Brier score and NLL on the validation positives with ``negatives`` sampled
        negatives each (the pointwise validation set), of the plug-in probabilities
        ``sigmoid(x)`` at the expected scores ``E[s]`` (what :meth:`score` returns)."""
        _, split = self._require_fitted()
        pool = split.candidates("val", negatives)
        return calibration_metrics(self.score(pool.users, pool.items), pool.labels, n_bins)

    def evaluate(
        self, candidates: Candidates | None = None, ks: tuple[int, ...] = KS
    ) -> dict[str, float]:
        """Ranking metrics on ``candidates`` (default: the config's ``"test"`` protocol,
        :func:`~pyro_bamf.protocols.evaluation_pool`)."""
        _, split = self._require_fitted()
        if candidates is None:
            candidates = evaluation_pool(self.config, split)
        return protocol_metrics(self.ranking_scores, split, candidates, ks, self.config.ties)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``state_dict`` + config + versions + data fingerprint, atomically."""
        model, split = self._require_fitted()
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "state_dict": model.state_dict(),
            "n_users": split.n_users,
            "n_items": split.n_items,
            "data_fingerprint": split.fingerprint,
            "versions": {
                "pyro_bamf": __version__,
                "torch": str(torch.__version__),
                "pyro": str(pyro.__version__),
            },
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(
        cls, path: str | os.PathLike, split: ImplicitSplit, config: BAMFConfig | None = None
    ) -> BAMFRecommender:
        """Rebuild a saved recommender on ``split``, which must be the data it was trained on.

        ``config`` replaces the saved configuration (e.g. another ``device``); it must build
        the same networks.
        """
        path = Path(path)
        payload = load_checked(path)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise CheckpointError(
                f"checkpoint {path} has format {found!r}; this version reads {CHECKPOINT_FORMAT}"
            )
        if payload["data_fingerprint"] != split.fingerprint:
            raise CheckpointError(
                f"checkpoint {path} was trained on other data or another split (fingerprint "
                f"{payload['data_fingerprint'][:12]} vs {split.fingerprint[:12]}): check the "
                "data path, seed, history mode and max_history"
            )
        saved = payload.get("versions", {}).get("pyro_bamf")
        if saved != __version__:
            warnings.warn(
                f"checkpoint {path} was written by pyro-bamf {saved}, this is {__version__}",
                stacklevel=2,
            )
        try:
            rec = cls(config or BAMFConfig.from_dict(payload["config"]))
        except ValueError as err:
            raise CheckpointError(f"checkpoint {path} holds an invalid config: {err}") from None
        rec.split = split
        rec.model = build_model(payload["n_users"], payload["n_items"], rec.config, rec._device())
        try:
            rec.model.load_state_dict(payload["state_dict"])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {path} does not fit the model: {err}") from None
        return rec
