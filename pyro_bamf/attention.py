"""The Bayesian attention module ``bam(q, k, v)`` of BAMF: networks and distributions.

For a query ``q`` and history keys ``k_j`` (``j`` in ``R_u+ \\ {i}``) the unnormalised attention
scores ``s_j > 0`` are latent::

    prior (model):  s_j ~ LogNormal(m_j - sigma_p^2 / 2, sigma_p)     E[s_j] = exp(m_j)
    guide:          s_j ~ LogNormal(psi_j - sigma_q^2 / 2, sigma_q)   E[s_j] = exp(psi_j)
    psi_j = f(q, k_j)                                                 (NAIS score network)
    alpha_j = s_j^tau / (sum_l s_l^tau)^beta                         (simplex projection)
    c = sum_j alpha_j v_j

``m_j`` is a constant (default 1.0: what the authors' code computes, a softmax over a single
output) or a key-only network ``m_j = g(k_j) + prior_log_mean``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import kernels
from .distributions import MaskedLogNormal, history_site
from .families import guide_distribution, lognormal_loc, prior_distribution


def dropout_keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A dropout keep mask of ``shape`` and its keep probability, from 16-bit uniform draws.

    ``torch``'s CPU Bernoulli sampler costs ~12 ns per element and made dropout the largest cost
    of a training step; NumPy's PCG64 bytes cost ~2 ns. The generator is seeded from torch's
    global generator at every call, so ``torch.manual_seed`` (``pyro.set_rng_seed``) still fixes
    every mask. The keep probability is ``round((1 - p) 2^16) / 2^16``, within ``8e-6`` of
    ``1 - p``; callers scale kept values by its inverse.
    """
    threshold = round((1.0 - p) * 65536)
    seed = int(torch.randint(2**62, (1,)))
    draws = np.random.default_rng(seed).bytes(2 * math.prod(shape))
    keep = torch.from_numpy(np.frombuffer(draws, dtype=np.uint16) < threshold)
    return keep.view(shape), threshold / 65536


def _eval_scores(query, keys, query_w, query_b, key_w, norm_w, norm_b, out_w, out_b, eps):
    """``w^T ReLU(LN(A(q, k))) + b`` without dropout: the eager evaluation path of ScoreNetwork."""
    if key_w is not None:
        hidden = nn.functional.linear(query, query_w, query_b).unsqueeze(-2) + keys @ key_w.T
    else:
        hidden = nn.functional.linear(query.unsqueeze(-2) * keys, query_w, query_b)
    hidden = nn.functional.layer_norm(hidden, hidden.shape[-1:], norm_w, norm_b, eps)
    return _squeeze(nn.functional.linear(torch.relu(hidden), out_w, out_b))


def _split_norm_scores(query, keys, query_w, query_b, key_w, norm_w, norm_b, out_w, out_b, eps):
    """:func:`_eval_scores` for ``torch.compile``; ``concat`` never forms the pair features.

    With ``A = a_q + a_k`` (``a_q = W_q q + b``, ``a_k = W_k k``), centred parts ``a~`` and
    ``K`` features, the layer norm only needs

        mean(A) = mean(a_q) + mean(a_k)
        var(A)  = var(a_q) + var(a_k) + 2 a~_q . a~_k / K        (one bmm per group)

    and inductor fuses scale, shift, ReLU and the projection (a sum per output row, not a
    matmul) into one pass over ``K`` per (query, key) pair: ~5x faster than compiling
    :func:`_eval_scores`. Eager, the broadcasts make it slower than :func:`_eval_scores`;
    ``prod`` has no such split and takes the plain path.
    """
    if key_w is None:
        return _eval_scores(query, keys, query_w, query_b, key_w, norm_w, norm_b, out_w, out_b, eps)
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
    return _squeeze(projected)


def _squeeze(outputs: torch.Tensor) -> torch.Tensor:
    """``(..., L, 1) -> (..., L)``; two outputs (location, spread) stay ``(..., L, 2)``."""
    return outputs.squeeze(-1) if outputs.shape[-1] == 1 else outputs


_compiled_eval_scores = None


def compiled_eval_scores():
    """:func:`_split_norm_scores` through ``torch.compile`` (built on first use, dynamic shapes)."""
    global _compiled_eval_scores
    if _compiled_eval_scores is None:
        _compiled_eval_scores = torch.compile(_split_norm_scores, dynamic=True)
    return _compiled_eval_scores


def _compiled_scores(*args):
    """:func:`compiled_eval_scores` on ``args``; any failure of the compiled path (a C++
    compiler that fails for inductor, say: the eager path takes the same, checked inputs)
    raises :class:`~pyro_bamf.kernels.KernelUnavailableError` naming ``compile_eval``."""
    try:
        return compiled_eval_scores()(*args)
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


class ScoreNetwork(nn.Module):
    """NAIS attention score ``psi = w^T Dropout(ReLU(LN(A(q, k)))) + b_out``.

    With ``outputs = 2`` a second row ``w_2`` reads the same features and the network returns
    ``(psi, r)`` stacked on a last axis of 2 (``r`` the raw guide spread, see
    :class:`GuideSpread`); otherwise ``psi`` alone.

    ``concat``: ``A = W [q ; k] + b = W_q q + W_k k + b``; ``W_k k`` depends on the key only
    and is computed once per (group, history item), not once per (example, history item).
    ``prod``: ``A = W (q * k) + b``.

    In training, ReLU and inverted dropout are one ``where`` on the mask ``(LN > 0) & keep``,
    with the ``1 / keep_prob`` scale folded into ``w``. With ``fused`` set, scores with
    autograd on CPU run through :func:`pyro_bamf.kernels.concat_scores` or
    :func:`~pyro_bamf.kernels.prod_scores` (one C pass per direction, their own dropout draws
    with the same keep probability). Without autograd and in
    eval mode the score runs through :func:`compiled_eval_scores` when ``compiled`` is set.
    """

    def __init__(
        self,
        dim: int,
        kind: str,
        dropout: float,
        compiled: bool = False,
        outputs: int = 1,
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.compiled = compiled
        self.fused = fused
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False) if kind == "concat" else None
        self.norm = nn.LayerNorm(dim)
        self.dropout = dropout
        self.out = nn.Linear(dim, outputs)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``query (..., K)``, history vectors ``keys (..., L, K)`` -> ``psi (..., L)``
        (``(..., L, 2)`` with two outputs)."""
        if not self.training and not torch.is_grad_enabled():
            scores = _compiled_scores if self.compiled else _eval_scores
            key_w = None if self.key is None else self.key.weight
            return scores(
                query, keys, self.query.weight, self.query.bias, key_w,
                self.norm.weight, self.norm.bias, self.out.weight, self.out.bias, self.norm.eps,
            )  # fmt: skip
        if self._takes_kernel(query, keys):
            return self._kernel_scores(query, keys)
        if self.key is not None:
            hidden = self.query(query).unsqueeze(-2) + self.key(keys)
        else:
            hidden = self.query(query.unsqueeze(-2) * keys)
        hidden = self.norm(hidden)
        active = hidden > 0
        weight = self.out.weight
        if self.training and self.dropout > 0:
            if hidden.device.type == "cpu":
                keep, keep_prob = dropout_keep_mask(hidden.shape, self.dropout)
                active &= keep
            else:
                active &= torch.rand_like(hidden) >= self.dropout
                keep_prob = 1.0 - self.dropout
            weight = weight / keep_prob
        hidden = torch.where(active, hidden, 0.0)
        return _squeeze(nn.functional.linear(hidden, weight, self.out.bias))

    def _takes_kernel(self, query: torch.Tensor, keys: torch.Tensor) -> bool:
        """Whether :meth:`forward` runs on the C kernels: ``fused`` scores of float32 CPU
        tensors shaped as BAMF's modules call them (see :meth:`_kernel_scores`)."""
        if not self.fused or query.device.type != "cpu":
            return False
        if query.dtype != torch.float32 or keys.dtype != torch.float32:
            return False
        user_side = query.dim() == 2 and keys.dim() == 3
        item_side = query.dim() == 3 and keys.dim() == 4 and keys.shape[1] == 1
        return (user_side or item_side) and keys.shape[0] == query.shape[0]

    def _kernel_scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """User side ``query (G, K)``, ``keys (G, L, K)`` -> ``(G, L)``; item side ``query
        (G, S, K)``, ``keys (G, 1, L, K)`` -> ``(G, S, L)`` (a last axis of 2 with two outputs)."""
        user_side = query.dim() == 2
        query = query.unsqueeze(1) if user_side else query
        keys = keys if user_side else keys.squeeze(1)
        weight, seed, threshold = self.out.weight, 0, kernels.FULL_KEEP
        if self.training and self.dropout > 0:
            threshold = round((1.0 - self.dropout) * kernels.FULL_KEEP)
            seed = int(torch.randint(2**62, (1,)))
            weight = weight / (threshold / kernels.FULL_KEEP)
        tail = (self.norm.weight, self.norm.bias, weight, self.out.bias, self.norm.eps)
        if self.key is not None:
            scores = kernels.concat_scores(
                self.query(query), self.key(keys), *tail, seed, threshold
            )
        else:
            layer = (self.query.weight, self.query.bias)
            scores = kernels.prod_scores(query, keys, *layer, *tail, seed, threshold)
        return _squeeze(scores.squeeze(1) if user_side else scores)


class GuideSpread(nn.Module):
    """The guide's log-scale spread ``sigma_j``: fixed, or learned per weight from ``(q, k_j)``.

    Learned: ``sigma_j = sigma_min + softplus(r_j)`` with ``r_j = w_2^T features(q, k_j) + b_2``
    the score network's second output, initialised (``w_2 = 0``) so that every
    ``sigma_j = guide_sigma`` at the start. With a fixed sigma every weight has the same
    relative spread; a learned one lets uncertainty differ across users and items.
    """

    SIGMA_MIN = 1e-3

    def __init__(self, sigma: float, learned: bool) -> None:
        super().__init__()
        self.sigma, self.learned = sigma, learned

    @property
    def outputs(self) -> int:
        """Outputs the score network needs: 2 when the spread is learned."""
        return 2 if self.learned else 1

    def initialise(self, scorer: ScoreNetwork) -> None:
        """Start the learned spread at ``sigma`` for every weight."""
        if self.learned:
            with torch.no_grad():
                scorer.out.weight[1].zero_()
                excess = self.sigma - self.SIGMA_MIN  # inverse softplus, stable for any size
                scorer.out.bias[1] = excess + math.log(-math.expm1(-excess))

    def split(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Score network outputs -> ``(psi (..., L), sigma (..., L) or a float)``."""
        if not self.learned:
            return outputs, self.sigma
        psi, raw = outputs.unbind(-1)
        return psi, self.SIGMA_MIN + nn.functional.softplus(raw)


class AttentionPrior(nn.Module):
    """Prior of the attention scores with log-mean ``m_j``: a constant, or ``g(k_j)`` from the
    key; its family (:mod:`pyro_bamf.families`) is set by ``family``, ``sigma`` and ``shape``."""

    def __init__(
        self, dim: int, kind: str, log_mean: float, family: str, sigma: float, shape: float
    ) -> None:
        super().__init__()
        self.family, self.sigma, self.shape = family, sigma, shape
        self.log_mean = log_mean
        self.net = (
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))
            if kind == "key"
            else None
        )

    def item_log_means(self, keys: torch.Tensor) -> torch.Tensor | None:
        """``m`` per item, shape ``(n_items,)``, or ``None`` for the constant prior."""
        if self.net is None:
            return None
        return self.net(keys).squeeze(-1) + self.log_mean

    def site(self, log_mean: torch.Tensor | None, mask: torch.Tensor, ref: torch.Tensor):
        """The prior of mean ``exp(m)`` as the site distribution of ``mask (G, S, L)``: batch
        ``(G,)``, event ``(S, L)`` (dtype, device of ``ref``); ``log_mean`` ``(G, 1, L)`` or
        ``None`` for the constant.

        Default: ``LogNormal(m - sigma^2/2, sigma)`` (:class:`MaskedLogNormal`).
        """
        if log_mean is None:
            log_mean = ref.new_full((), self.log_mean)
        if self.family == "lognormal":
            return MaskedLogNormal(lognormal_loc(log_mean, self.sigma), self.sigma, mask)
        prior = prior_distribution(self.family, log_mean, self.sigma, self.shape)
        return history_site(_expanded(prior, mask.shape), mask)


def guide_site(
    psi: torch.Tensor, family: str, sigma: torch.Tensor | float, shape: float, mask: torch.Tensor
):
    """The guide of mean ``exp(psi)`` as the site distribution of ``mask (G, S, L)``.

    Default: ``LogNormal(psi - sigma^2/2, sigma)`` (:class:`MaskedLogNormal`), ``sigma`` a
    float or (learned spread) a tensor broadcastable to ``psi``; ``shape`` is the Weibull's.
    """
    if family == "lognormal":
        return MaskedLogNormal(lognormal_loc(psi, sigma), sigma, mask)
    return history_site(_expanded(guide_distribution(family, psi, sigma, shape), mask.shape), mask)


def _expanded(distribution, size: torch.Size):
    """``distribution`` with batch shape ``size``, its parameters computed before the
    broadcast: a constant prior or the user-side guide ``(G, 1, L)`` stays a stride-0 view
    instead of ``G * S * L`` materialised values (the same values and gradients)."""
    return distribution if distribution.batch_shape == size else distribution.expand(size)


def simplex_weights(
    log_scores: torch.Tensor, mask: torch.Tensor, tau: float, beta: float
) -> torch.Tensor:
    """``alpha_j = s_j^tau / (sum_{l in mask} s_l^tau)^beta``, computed in log space.

    ``log_scores (..., L)``, ``mask (..., L)`` bool. Masked positions (padding, the target) get
    exactly 0; an all-masked row gets all zeros (an empty context). ``s^tau`` never overflows.
    """
    logits = (tau * log_scores).masked_fill(~mask, -math.inf)
    empty = ~mask.any(-1, keepdim=True)
    log_norm = torch.logsumexp(logits.masked_fill(empty, 0.0), dim=-1, keepdim=True)
    return torch.exp(logits - beta * log_norm)
