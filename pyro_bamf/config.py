"""Configuration of a BAMF experiment: one flat, validated record.

Defaults are the paper's settings for MovieLens (``protocol.md``): K = 32, guide sigma 0.1,
prior sigma 1.0, tau = 1, beta = 0.5, Adam(lr 1e-4, weight decay 1e-3), batch 256, the
"mean" KL weight annealed over 100 epochs, early stopping on leave-one-out NDCG@10.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .attention import SCORE_NETWORKS
from .data.sources import SPEC_HELP
from .families import GUIDES, PRIORS, weibull_prior
from .registry import RegistryError, accepts

CHOICES = {
    "learning": ("pointwise", "pairwise"),
    "item_embeddings": ("role", "shared"),
    "head": ("affine", "linear"),
    "prior_loc": ("constant", "key"),
    "attention_inputs": ("raw", "normalised"),
    "guide_spread": ("fixed", "learned"),
    "kl_weight": ("mean", "elbo"),
    "loss_reduction": ("mean", "sum"),
    "elbo": ("meanfield", "trace"),
    "history": ("tfidf", "all"),
    "pair_history": ("target", "positive"),
    "ties": ("pessimistic", "optimistic"),
    "eval_protocol": ("sampled", "full"),
    "device": ("cpu", "cuda", "auto"),
}


REGISTRIES = {"score_fn": SCORE_NETWORKS, "prior_family": PRIORS, "guide_family": GUIDES}


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``low <= value <= high``, with ``<`` at an
    open end. The bounds are where the arithmetic stays finite and the sizes fit in memory,
    not only the values that make sense."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False
    why: str = ""

    def check(self, key: str, value: float, low_name: str = "") -> None:
        """Raise :class:`ConfigError` naming ``key``, the range and ``value`` if outside."""
        above_low = value > self.low if self.open_low else value >= self.low
        below_high = value < self.high if self.open_high else value <= self.high
        if above_low and below_high:
            return
        low = low_name or _number(self.low)
        high = _number(self.high)
        interval = f"{'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        why = f" ({self.why})" if self.why else ""
        raise ConfigError(f"{key} must be in {interval}{why}, got {value!r}")


EPOCHS = 100_000
MAX_WEIBULL_PRIOR_SHAPE = 3.0  # k (log s - log scale) stays < 88 for |psi| < 9, |m| <= 10
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1, why="the range numpy's and Pyro's seeds take"),
    "max_history": Range(1, 100_000),
    "train_negatives": Range(0, 1_000, why="0: 4 pointwise, 1 pairwise"),
    "eval_negatives": Range(1, 100_000),
    "embedding_dim": Range(2, 4096, why="LayerNorm of one feature is constant; 4096 fills memory"),
    "dropout": Range(0.0, 1.0, open_high=True),
    "tau": Range(1.0, 10.0, why="a sharpening factor; s^tau must stay finite"),
    "beta": Range(0.0, 1.0, open_low=True, why="a smoothing factor"),
    "guide_sigma": Range(1e-6, 10.0, why="a log-scale spread"),
    "guide_shape": Range(1.0, 100.0, why="a Weibull shape; below 1 the draws overflow"),
    "prior_sigma": Range(1e-3, 10.0, why="a log-scale spread"),
    "prior_shape": Range(0.1, 100.0, why="a gamma or Weibull shape"),
    "prior_log_mean": Range(-10.0, 10.0, why="the log of the prior's mean score"),
    "kl_anneal_epochs": Range(0, EPOCHS, why="0: no annealing"),
    "lr": Range(0.0, 0.01, open_low=True, why="Adam's step; larger ones overflow exp(psi)"),
    "weight_decay": Range(0.0, 100.0),
    "batch_size": Range(2, 65_536, why="at least one group of a positive and its negatives"),
    "bucket_pool": Range(0, 10_000),
    "max_epochs": Range(1, EPOCHS),
    "patience": Range(1, EPOCHS),
    "min_delta": Range(0.0, 1.0, why="a change of NDCG@10"),
    "warmup_epochs": Range(0, EPOCHS),
}


@dataclass(frozen=True)
class BAMFConfig:
    """Every setting of a BAMF run. ``--set key=value`` and TOML files use these names.

    Data: ``data`` is a path, ``movielens`` (cached copy), ``auto`` (MovieLens, else synthetic
    with a warning), ``synthetic[:key=value,...]`` or ``planted[:key=value,...]``.

    ``score_fn``, ``prior_family`` and ``guide_family`` take a registered name, an import path
    ``"package.module:name"`` or the factory itself, which is recorded by its registered name or
    import path (:mod:`pyro_bamf.registry`).
    """

    data: str = "movielens"
    seed: int = 42
    history: str = "tfidf"
    max_history: int = 400
    learning: str = "pointwise"
    train_negatives: int = 0
    pair_history: str = "target"
    eval_negatives: int = 99
    score_fn: str = "concat"
    item_embeddings: str = "role"
    head: str = "affine"
    embedding_dim: int = 32
    dropout: float = 0.2
    tau: float = 1.0
    beta: float = 0.5
    guide_family: str = "lognormal"
    guide_sigma: float = 0.1
    guide_spread: str = "fixed"
    guide_shape: float = 10.0
    prior_family: str = "lognormal"
    prior_sigma: float = 1.0
    prior_shape: float = 1.0
    prior_loc: str = "constant"
    prior_log_mean: float = 1.0
    attention_inputs: str = "raw"
    elbo: str = "meanfield"
    kl_weight: str = "mean"
    kl_anneal_epochs: int = 100
    loss_reduction: str = "mean"
    lr: float = 1e-4
    weight_decay: float = 1e-3
    batch_size: int = 256
    bucket_pool: int = 0
    max_epochs: int = 100
    patience: int = 5
    min_delta: float = 1e-3
    warmup_epochs: int = 10
    eval_protocol: str = "sampled"
    full_ranking: bool = True
    compile_eval: bool = False
    fused_scores: bool = True
    pyro_validation: bool = False
    retain_freed_memory: bool = False
    device: str = "cpu"
    ties: str = "pessimistic"
    test_candidates: str = ""

    def __post_init__(self) -> None:
        for key, registry in REGISTRIES.items():
            try:
                object.__setattr__(self, key, registry.name_of(getattr(self, key)))
            except RegistryError as err:
                raise ConfigError(f"{key}: {err}") from None
        for f in fields(self):
            value = _coerce(f.name, getattr(self, f.name), type(getattr(BAMFConfig, f.name)))
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be finite, got {value!r}")
            object.__setattr__(self, f.name, value)
        for key, options in CHOICES.items():
            if getattr(self, key) not in options:
                raise ConfigError(f"{key} must be one of {options}, got {getattr(self, key)!r}")
        if not self.data.strip():
            raise ConfigError(f"data is empty: expected {SPEC_HELP}")
        for key, bounds in RANGES.items():
            bounds.check(key, getattr(self, key))
        group = Range(self.group_size, RANGES["batch_size"].high)
        group.check(
            "batch_size", self.batch_size, f"{self.group_size} (one positive and its negatives)"
        )
        weibull = PRIORS.resolve(self.prior_family) is weibull_prior
        if weibull and self.prior_shape > MAX_WEIBULL_PRIOR_SHAPE:
            raise ConfigError(
                f"a Weibull prior needs prior_shape <= {MAX_WEIBULL_PRIOR_SHAPE:g}, got "
                f"{self.prior_shape!r}: its density's (s / scale)^k at the guide's draws "
                "overflows float32 beyond (use the gamma prior for a sharper one)"
            )
        if self.guide_spread == "learned" and not accepts(
            GUIDES.resolve(self.guide_family), "spread"
        ):
            raise ConfigError(
                f"guide_spread = 'learned' needs a guide family that takes a spread; "
                f"{self.guide_family!r} does not"
            )
        if self.guide_spread == "learned" and not accepts(
            SCORE_NETWORKS.resolve(self.score_fn), "outputs"
        ):
            raise ConfigError(
                "guide_spread = 'learned' needs a score network that takes outputs (it returns "
                f"(..., L, 2): psi and the raw spread); {self.score_fn!r} does not"
            )
        if self.guide_spread == "learned" and self.guide_sigma <= 1e-3:
            raise ConfigError("a learned guide spread starts at guide_sigma, which must be > 1e-3")
        if self.learning == "pairwise" and self.train_negatives not in (0, 1):
            raise ConfigError("pairwise learning uses exactly one negative per positive")

    @property
    def negatives_per_positive(self) -> int:
        """Training negatives per positive: 4 pointwise, 1 pairwise unless set."""
        if self.train_negatives:
            return self.train_negatives
        return 4 if self.learning == "pointwise" else 1

    @property
    def group_size(self) -> int:
        """Examples that share a user and are batched together: 1 positive + its negatives."""
        return 1 + self.negatives_per_positive

    def replace(self, **changes: Any) -> BAMFConfig:
        """A copy with ``changes`` applied, type-checked like :meth:`from_dict`."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        lines = []
        for key, value in self.to_dict().items():
            if isinstance(value, str):
                lines.append(f"{key} = {_toml_string(value)}")
            elif isinstance(value, bool):
                lines.append(f"{key} = {str(value).lower()}")
            else:
                lines.append(f"{key} = {value!r}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BAMFConfig:
        check_keys(values)
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path) -> BAMFConfig:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder, not a TOML file") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
        if not values:
            raise ConfigError(f"config file {path} is empty: it must set at least one key")
        return cls.from_dict(values)


def check_keys(values: dict[str, Any]) -> None:
    """Raise ``ConfigError`` for unknown keys, suggesting the nearest valid key."""
    valid = [f.name for f in fields(BAMFConfig)]
    for key in values:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {key!r}{hint}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (values in TOML syntax, bare words taken as strings)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    check_keys(out)
    return out


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
    return value


def _number(value: float) -> str:
    """``4294967295`` for whole numbers, ``0.001`` otherwise."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes (quotes, backslash, control characters) are TOML's."""
    return json.dumps(value, ensure_ascii=False)
