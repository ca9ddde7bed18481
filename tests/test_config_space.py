"""Property over the configuration space: a configuration either trains or is refused cleanly.

Every generated configuration must either train one tiny epoch on synthetic data (and write a
complete run directory: no ``INCOMPLETE``, a ``metrics.json`` of finite numbers) or be refused
with a :class:`~pyro_bamf.config.ConfigError` that leaves no file behind. Values are drawn
inside each key's range (:data:`~pyro_bamf.config.RANGES`), at its bounds, and far outside it
(huge, tiny, negative, beyond int64 or float32).

Sizes whose upper bound is a memory limit (``embedding_dim``, ``eval_negatives``,
``train_negatives``) are drawn from the small end of their range and at the bound itself
where one epoch stays short; ``max_epochs`` is 1, ``compile_eval`` (minutes of compilation)
and ``retain_freed_memory`` (process-wide allocator state) keep their defaults. The memory
estimate that refuses sizes too large for the machine together is tested on its own
(``tests/test_reliability.py``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from pyro_bamf.attention import BUILT_IN_NETWORKS
from pyro_bamf.config import CHOICES, RANGES, BAMFConfig, ConfigError
from pyro_bamf.families import BUILT_IN_GUIDES, BUILT_IN_PRIORS
from pyro_bamf.runs import train_run

DATA = "synthetic:n_users=12,n_items=40,mean_interactions=8,seed=1"
FIXED = dict(
    data=DATA, max_epochs=1, device="cpu", compile_eval=False, retain_freed_memory=False,
    full_ranking=False,  # ranking every item adds ~0.3 s an example; tests/test_protocols.py
)  # fmt: skip
SMALL = {"embedding_dim": (2, 12), "eval_negatives": (1, 20), "train_negatives": (0, 6)}
AT_BOUND = {"embedding_dim": [4096], "eval_negatives": [], "train_negatives": []}
OUTSIDE = [-(2**70), -(2**63), -1, 0, 2**32, 2**63 - 1, 2**70]
OUTSIDE_FLOAT = [-1e300, -1.0, 0.0, 1e-300, 1e-45, 3.5e38, 1e300, math.inf, math.nan]
EXAMPLES = int(os.environ.get("BAMF_CONFIG_EXAMPLES", 400))
NAMED = {  # the registries' built-in names (users' own are not searched)
    "score_fn": tuple(BUILT_IN_NETWORKS.values()),
    "prior_family": BUILT_IN_PRIORS,
    "guide_family": BUILT_IN_GUIDES,
}
# Found by longer runs (3,000 examples): a Weibull prior of shape 100, then of shape 10 at
# log-mean -10, overflowed the Monte Carlo KL at the first step with the KL at full weight.
FOUND = [
    dict(kl_anneal_epochs=0, prior_family="weibull", prior_shape=100.0),
    dict(kl_anneal_epochs=0, prior_family="weibull", prior_shape=10.0, prior_log_mean=-10.0),
    dict(kl_anneal_epochs=0, prior_family="weibull", prior_shape=3.0, prior_log_mean=-10.0),
]


def numeric(key: str) -> st.SearchStrategy:
    """Values of ``key`` inside its range, at its bounds, and outside it."""
    bounds = RANGES[key]
    is_int = isinstance(getattr(BAMFConfig, key), int)
    low, high = SMALL.get(key, (bounds.low, bounds.high))
    edges = AT_BOUND.get(key, [bounds.low, bounds.high])
    if is_int:
        inside = st.integers(int(low), int(high))
        extreme = st.sampled_from(OUTSIDE)
        edge = st.sampled_from([int(v) for v in edges] or [int(low)])
    else:
        inside = st.floats(low, high, exclude_min=bounds.open_low, exclude_max=bounds.open_high)
        extreme = st.sampled_from(OUTSIDE_FLOAT)
        edge = st.sampled_from([float(v) for v in edges])
    return st.one_of(edge, inside, extreme)


@st.composite
def configurations(draw) -> dict:
    """Up to ten keys changed from the defaults (corners of several ranges at once): numbers
    from :func:`numeric`, choices from :data:`CHOICES` and the registries' built-in names
    (``device`` stays on the CPU)."""
    choices = {**CHOICES, **NAMED}
    numbers = [key for key in RANGES if key != "max_epochs"]
    keys = [*numbers, *(k for k in choices if k != "device"), "fused_scores", "pyro_validation"]
    chosen = draw(st.permutations(keys))[: draw(st.integers(1, 10))]
    values = {}
    for key in chosen:
        if key in RANGES:
            values[key] = draw(numeric(key))
        elif key in choices:
            values[key] = draw(st.sampled_from(choices[key]))
        else:
            values[key] = draw(st.booleans())
    return values


def finite_numbers(record) -> bool:
    if isinstance(record, dict):
        return all(finite_numbers(v) for v in record.values())
    return not isinstance(record, float) or math.isfinite(record)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(values=configurations())
@example(values=FOUND[0])
@example(values=FOUND[1])
@example(values=FOUND[2])
def test_a_configuration_trains_one_epoch_or_is_refused_leaving_nothing(values):
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny pools repeat negatives, and say so
        out = Path(tmp) / "run"
        try:
            train_run(BAMFConfig(**{**values, **FIXED}), out, progress=False, log_epochs=False)
        except ConfigError as err:
            event(f"refused: {str(err).split()[0]}")
            assert os.listdir(tmp) == [], "a refused configuration left files behind"
            return
        event("trained one epoch")
        assert sorted(os.listdir(out)) == [
            "config.toml", "history.csv", "metrics.json", "model.pt", "per_user.csv",
        ]  # fmt: skip
        metrics = json.loads((out / "metrics.json").read_text())
        assert finite_numbers(metrics), metrics
