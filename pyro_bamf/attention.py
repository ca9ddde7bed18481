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
from collections.abc import Callable

import torch
from torch import nn

from .distributions import history_site
from .registry import Registry

FULL_KEEP = 1 << 16  # keep threshold that keeps every element (no dropout)
_WORD = 0xFFFFFFFF


def _times(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``x * factor mod 2^32`` for 32-bit words held in int64, without int64 overflow."""
    low = (x & 0xFFFF) * factor
    high = (((x >> 16) * factor) & 0xFFFF) << 16
    return (low + high) & _WORD


def keep_mask(seed: int, shape: torch.Size, threshold: int, device=None) -> torch.Tensor:
    """The dropout keep mask of ``shape`` for ``seed``: element ``e`` (its row-major index) is
    kept when the top 16 bits of ``lowbias32((e * 0x9E3779B9 + seed_lo) ^ seed_hi)`` fall
    below ``threshold`` (keep probability ``threshold / 2^16``).

    A pure function of the seed, so that the score network and its C kernels
    (:mod:`pyro_bamf.kernels`) draw the same mask from the same seed. It holds up to three int64
    tensors of ``shape`` at once (the kernels draw it inline, without them).
    """
    index = torch.arange(math.prod(shape), dtype=torch.int64, device=device) & _WORD
    x = ((_times(index, 0x9E3779B9) + (seed & _WORD)) & _WORD) ^ ((seed >> 32) & _WORD)
    x = x ^ (x >> 16)
    x = _times(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _times(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return ((x >> 16) < threshold).view(shape)


class SeededDropout(nn.Module):
    """Inverted dropout ``x * keep / keep_prob`` with the mask :func:`keep_mask` of a seed
    drawn from torch's generator at each call in training (so ``torch.manual_seed`` fixes it).

    The keep probability is ``threshold / 2^16`` with ``threshold = round((1 - p) 2^16)``,
    within ``8e-6`` of ``1 - p``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    @property
    def threshold(self) -> int:
        return round((1.0 - self.p) * FULL_KEEP)

    @property
    def active(self) -> bool:
        """Whether a call drops elements (training with ``p > 0``)."""
        return self.training and self.p > 0

    def draw_seed(self) -> int:
        """The seed of one call's mask, from torch's CPU generator."""
        return int(torch.randint(2**62, (1,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        keep = keep_mask(self.draw_seed(), x.shape, self.threshold, x.device)
        return torch.where(keep, x, 0.0) * (FULL_KEEP / self.threshold)


class ScoreNetwork(nn.Module):
    """NAIS attention score ``psi = w^T Dropout(ReLU(LN(A(q, k)))) + b_out``: the definition
    that training and evaluation run (fast implementations of it are chosen outside the model,
    :mod:`pyro_bamf.fastpaths`).

    ``concat``: ``A = W [q ; k] + b = W_q q + W_k k + b``; ``W_k k`` depends on the key only
    and is computed once per key, not once per (query, key) pair. ``prod``:
    ``A = W (q * k) + b``. With ``outputs = 2`` a second row ``w_2`` reads the same features
    and the network returns ``(psi, r)`` stacked on a last axis of 2 (``r`` the raw guide
    spread, see :class:`GuideSpread`); otherwise ``psi`` alone.
    """

    def __init__(self, dim: int, kind: str = "concat", dropout: float = 0.0, outputs: int = 1):
        super().__init__()
        if kind not in ("concat", "prod"):
            raise ValueError(f"kind must be 'concat' or 'prod', got {kind!r}")
        self.kind = kind
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False) if kind == "concat" else None
        self.norm = nn.LayerNorm(dim)
        self.dropout = SeededDropout(dropout)
        self.out = nn.Linear(dim, outputs)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``query (..., K)``, history vectors ``keys (..., L, K)`` -> ``psi (..., L)``
        (``(..., L, 2)`` with two outputs); the batch axes broadcast."""
        if self.key is not None:
            hidden = self.query(query).unsqueeze(-2) + self.key(keys)
        else:
            hidden = self.query(query.unsqueeze(-2) * keys)
        hidden = self.dropout(torch.relu(self.norm(hidden)))
        return squeeze_outputs(self.out(hidden))


def squeeze_outputs(outputs: torch.Tensor) -> torch.Tensor:
    """``(..., L, 1) -> (..., L)``; two outputs (location, spread) stay ``(..., L, 2)``."""
    return outputs.squeeze(-1) if outputs.shape[-1] == 1 else outputs


SCORE_NETWORKS = Registry("score network", "pyro_bamf.register_score_network")


def register_score_network(name: str, factory=None, replace: bool = False):
    """Register ``factory(dim, outputs=..., dropout=...) -> nn.Module`` as the score network
    ``name`` (usable as a decorator). The module maps ``query (..., K)`` and
    ``keys (..., L, K)`` to ``psi (..., L)``, or ``(..., L, 2)`` when ``outputs = 2`` (a learned
    guide spread); ``outputs`` and ``dropout`` are passed if the factory declares them."""
    return SCORE_NETWORKS.register(name, factory, replace)


@register_score_network("concat")
def concat_network(dim: int, outputs: int = 1, dropout: float = 0.0) -> ScoreNetwork:
    """NAIS ``concat``: ``A = W_q q + W_k k + b``."""
    return ScoreNetwork(dim, "concat", dropout, outputs)


@register_score_network("prod")
def prod_network(dim: int, outputs: int = 1, dropout: float = 0.0) -> ScoreNetwork:
    """NAIS ``prod``: ``A = W (q * k) + b``."""
    return ScoreNetwork(dim, "prod", dropout, outputs)


BUILT_IN_NETWORKS = {concat_network: "concat", prod_network: "prod"}  # factory -> kind


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

    def initialise(self, scorer: nn.Module) -> None:
        """Start the learned spread of a :class:`ScoreNetwork` at ``sigma`` for every weight
        (another network starts its spread output as it was built)."""
        if self.learned and isinstance(scorer, ScoreNetwork):
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
    key; ``family(log_mean) -> Distribution`` is a prior family with its parameters bound
    (:mod:`pyro_bamf.families`)."""

    def __init__(self, dim: int, kind: str, log_mean: float, family: Callable) -> None:
        super().__init__()
        self.family, self.log_mean = family, log_mean
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
        ``None`` for the constant."""
        if log_mean is None:
            log_mean = ref.new_full((), self.log_mean)
        return history_site(self.family(log_mean), mask)


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
