"""Fast implementations of the built-in networks, and the one place that chooses them.

The model (:mod:`pyro_bamf.model`, :class:`~pyro_bamf.attention.ScoreNetwork`) is written once
in PyTorch. :func:`model_options` decides, from the configuration and the device, which
optional implementation runs it; each is tested against the definition
(``tests/test_fastpaths.py``)::

    fused_scores, CPU   training scores of the built-in concat / prod networks in one C pass per
                        direction (pyro_bamf.kernels), with the definition's dropout mask for
                        the same seed; embedding rows gathered with a one-loop C backward
    compile_eval        evaluation scores (eval mode, no autograd) through torch.compile:
                        concat by its split layer norm, prod as the definition compiled

A network passed by the user, or named by import path, always runs as written.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from . import kernels
from .attention import BUILT_IN_NETWORKS, FULL_KEEP, SCORE_NETWORKS, ScoreNetwork, squeeze_outputs
from .config import BAMFConfig
from .model import BAMF, embedding_rows


def model_options(config: BAMFConfig, device: torch.device | str) -> dict:
    """The :class:`~pyro_bamf.model.BAMF` keyword arguments of the fast implementations that
    ``config`` enables on ``device`` (none for a user's score network, whatever its name)."""
    fused = config.fused_scores and torch.device(device).type == "cpu"
    kind = BUILT_IN_NETWORKS.get(SCORE_NETWORKS.resolve(config.score_fn))
    options = {}
    if kind is not None and (fused or config.compile_eval):
        options["score_network"] = functools.partial(
            FastScoreNetwork, kind=kind, fused=fused, compiled=config.compile_eval
        )
    if fused:
        options["gather_rows"] = fast_rows
    return options


def build_model(n_users: int, n_items: int, config: BAMFConfig, device) -> BAMF:
    """``BAMF(n_users, n_items, config)`` on ``device`` with the fast implementations that
    ``config`` enables there."""
    return BAMF(n_users, n_items, config, **model_options(config, device)).to(device)


def fast_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` through :func:`pyro_bamf.kernels.gather_rows` (same values and
    gradients, a faster backward) for a float32 CPU table and int64 indices, else
    :func:`~pyro_bamf.model.embedding_rows`."""
    cpu = table.device.type == "cpu" and table.dtype == torch.float32 and table.dim() == 2
    if cpu and index.dtype == torch.int64:
        return kernels.gather_rows(table, index)
    return embedding_rows(table, index)


def kernel_layout(query: torch.Tensor, keys: torch.Tensor) -> tuple[int, int] | None:
    """``(G, S)`` when the kernels compute this call as ``G`` groups of ``S`` queries sharing
    ``L`` keys: float32 CPU tensors whose key batch axes equal the query's (``S = 1``) or the
    query's with a last axis of 1 (keys shared along it), with fewer than ``2^32`` pair
    features (the kernels' element index); else ``None``."""
    tensors = (query, keys)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    batch, key_batch = query.shape[:-1], keys.shape[:-2]
    if key_batch == batch:
        layout = (math.prod(batch), 1)
    elif batch and key_batch == batch[:-1] + (1,):
        layout = (math.prod(batch[:-1]), batch[-1])
    else:
        return None
    pair_features = math.prod(layout) * keys.shape[-2] * keys.shape[-1]
    return layout if 0 < pair_features < 2**32 else None


class FastScoreNetwork(ScoreNetwork):
    """A built-in :class:`~pyro_bamf.attention.ScoreNetwork` (same parameters, same
    ``state_dict``) that runs on the C kernels where they apply (``fused``: training, or
    autograd on) and on the compiled evaluation path (``compiled``: eval mode without
    autograd); everywhere else, the definition."""

    def __init__(
        self, dim: int, kind: str, dropout: float = 0.0, outputs: int = 1,
        fused: bool = False, compiled: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(dim, kind, dropout, outputs)
        self.fused, self.compiled = fused, compiled

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        if not self.training and not torch.is_grad_enabled():
            if self.compiled:
                return compiled_scores(self, query, keys)
            return super().forward(query, keys)
        layout = kernel_layout(query, keys) if self.fused else None
        if layout is None:
            return super().forward(query, keys)
        return self._kernel_forward(query, keys, *layout)

    def _kernel_forward(self, query, keys, groups: int, size: int) -> torch.Tensor:
        """The definition on :func:`~pyro_bamf.kernels.concat_scores` /
        :func:`~pyro_bamf.kernels.prod_scores`: ``query`` as ``(G, S, K)``, ``keys`` as
        ``(G, L, K)``; the dropout seed drawn as the definition draws it."""
        dim, length = query.shape[-1], keys.shape[-2]
        batch = torch.broadcast_shapes(query.shape[:-1], keys.shape[:-2])
        query, flat_keys = query.reshape(groups, size, dim), keys.reshape(groups, length, dim)
        weight, seed, threshold = self.out.weight, 0, FULL_KEEP
        if self.dropout.active:
            seed, threshold = self.dropout.draw_seed(), self.dropout.threshold
            weight = weight / (threshold / FULL_KEEP)
        tail = (self.norm.weight, self.norm.bias, weight, self.out.bias, self.norm.eps)
        if self.key is not None:
            key_part = self.key(flat_keys)
            scores = kernels.concat_scores(self.query(query), key_part, *tail, seed, threshold)
        else:
            layer = (self.query.weight, self.query.bias)
            scores = kernels.prod_scores(query, flat_keys, *layer, *tail, seed, threshold)
        return squeeze_outputs(scores.reshape(*batch, length, -1))


def split_norm_scores(query, keys, query_w, query_b, key_w, norm_w, norm_b, out_w, out_b, eps):
    """The ``concat`` definition in eval mode, for ``torch.compile``: it never forms the pair
    features ``A`` before their layer norm.

    With ``A = a_q + a_k`` (``a_q = W_q q + b``, ``a_k = W_k k``), centred parts ``a~`` and
    ``K`` features, the layer norm only needs

        mean(A) = mean(a_q) + mean(a_k)
        var(A)  = var(a_q) + var(a_k) + 2 a~_q . a~_k / K        (one bmm per group)

    and inductor fuses scale, shift, ReLU and the projection (a sum per output row, not a
    matmul) into one pass over ``K`` per (query, key) pair: ~5x faster than compiling the
    definition. Eager, the broadcasts make it slower than the definition.
    """
    query_part = nn.functional.linear(query, query_w, query_b)
    key_part = keys @ key_w.T
    query_part = query_part - query_part.mean(-1, keepdim=True)
    key_part = key_part - key_part.mean(-1, keepdim=True)
    covariance = torch.einsum("...k,...lk->...l", query_part, key_part)
    variance = (
        query_part.square().mean(-1, keepdim=True)
        + key_part.square().mean(-1)
        + (2.0 / query_part.shape[-1]) * covariance
    )
    scale = torch.rsqrt(variance + eps).unsqueeze(-1) * norm_w
    hidden = torch.relu((query_part.unsqueeze(-2) + key_part) * scale + norm_b)
    projected = torch.stack([(hidden * row).sum(-1) for row in out_w], -1) + out_b
    return squeeze_outputs(projected)


@functools.cache
def compiled(function):
    """``torch.compile(function, dynamic=True)``, built once per function on first use."""
    return torch.compile(function, dynamic=True)


def compiled_scores(network: ScoreNetwork, query: torch.Tensor, keys: torch.Tensor):
    """``network(query, keys)`` in eval mode through ``torch.compile``: :func:`split_norm_scores`
    for ``concat``, the definition for ``prod``. Any failure of the compiled path (a C++
    compiler that fails for inductor, say) raises
    :class:`~pyro_bamf.kernels.KernelUnavailableError` naming ``compile_eval``."""
    try:
        if network.key is None:
            return compiled(ScoreNetwork.forward)(network, query, keys)
        return compiled(split_norm_scores)(
            query, keys, network.query.weight, network.query.bias, network.key.weight,
            network.norm.weight, network.norm.bias, network.out.weight, network.out.bias,
            network.norm.eps,
        )  # fmt: skip
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as err:  # torch.compile's errors have no public type
        first = str(err).strip().splitlines()[:1] or [""]
        raise kernels.KernelUnavailableError(
            "compile_eval: torch.compile could not build or run the evaluation scores "
            f"({type(err).__name__}: {first[0]}). Install a working C++ compiler (or name it "
            "in $CXX), or set compile_eval = false (eager evaluation: the same scores, 3-4x "
            "slower)."
        ) from err
