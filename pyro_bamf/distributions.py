"""The distributions of BAMF's sample sites: attention scores over a padded history, as events.

An attention site holds the scores ``s`` of ``G`` groups, each ``S`` examples by ``L`` history
slots: batch shape ``(G,)`` (the plate ``"groups"``), event shape ``(S, L)``, with a boolean
``mask (G, S, L)`` that drops padding and the target from every log-density and KL.

- :class:`MaskedLogNormal` is the default family as one object::

      s ~ LogNormal(loc, scale) elementwise,   log p(s) = sum_{mask} log LogNormal(s; loc, scale)
      KL(q || p) = sum_{mask} (r + t - 1 - log r) / 2,   r = (sq / sp)^2,   t = ((mq - mp) / sp)^2

- :func:`history_site` makes any family's distribution a site: a ``LogNormal`` becomes a
  :class:`MaskedLogNormal`, any other ``Independent(base.expand(shape).mask(mask), 2)``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions import register_kl

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class EventSite(dist.Independent):
    """``Independent(base, n)`` whose :meth:`expand` to its own batch shape returns itself.

    ``pyro.plate`` broadcasts every sample site's distribution with ``expand``, even one whose
    batch shape already is the plate's ``(G,)``; for ``base.mask(m).to_event(2)`` that rebuilds
    the whole chain (``Independent``, ``MaskedDistribution``, the expanded base and its
    transforms) and replaces the mask by a new view, so that the masked KL of model and guide
    then combines two mask tensors with an extra ``&`` pass. Returning ``self`` keeps the same
    distribution (same values, log-densities and gradients) without that work. Any other shape
    (vectorised particles, ``Predictive(parallel=True)``) expands as usual.
    """

    def expand(self, batch_shape, _instance=None):
        if _instance is None and torch.Size(batch_shape) == self.batch_shape:
            return self
        return super().expand(batch_shape, _instance)


def history_site(distribution, mask: torch.Tensor) -> dist.TorchDistribution:
    """``distribution.expand(mask.shape).mask(mask).to_event(2)``: a ``(G, S, L)`` attention
    site of batch ``(G,)`` and event ``(S, L)``.

    ``distribution`` (Pyro's or torch's) has a batch shape that broadcasts to ``mask.shape``;
    its parameters are computed before the broadcast, so a constant prior or the user-side
    guide ``(G, 1, L)`` stays a stride-0 view. A ``LogNormal`` becomes a
    :class:`MaskedLogNormal` (the same distribution as one object, with the registered masked
    KL).
    """
    if distribution.event_shape:
        raise ValueError(
            f"a family's distribution must draw one score per slot (event_shape ()), got "
            f"{type(distribution).__name__} of event_shape {tuple(distribution.event_shape)}"
        )
    if type(distribution) in (dist.LogNormal, torch.distributions.LogNormal):
        return MaskedLogNormal(distribution.loc, distribution.scale, mask)
    if distribution.batch_shape != mask.shape:
        distribution = distribution.expand(mask.shape)
    return EventSite(dist.MaskedDistribution(distribution, mask), 2)


def _one_value(values: torch.Tensor) -> torch.Tensor:
    """``values`` as a 0-dim tensor if it repeats one value by stride 0 (``broadcast_all``
    makes such a view of a number), so that it costs one element, not one per site slot."""
    if values.dim() and not any(values.stride()):
        return values.as_strided((), ())
    return values


def _sum_event(values: torch.Tensor) -> torch.Tensor:
    """``(..., S, L) -> (...)``: the sum over the two event axes, as ``Independent`` takes it."""
    return values.reshape(values.shape[:-2] + (-1,)).sum(-1)


class MaskedLogNormal(dist.TorchDistribution):
    """``LogNormal(loc, scale)`` scores of ``G`` groups over a masked ``(S, L)`` history.

    ``mask (..., G, S, L)`` (bool) fixes the shapes: batch ``(..., G)``, event ``(S, L)``.
    ``loc`` and ``scale`` broadcast to ``mask.shape``: a 0-dim tensor (a constant prior), the
    user side ``(G, 1, L)``, or the full shape; ``scale`` may also be a float. A 0-dim one (or
    a stride-0 view of one value) stays a number; any other is expanded to ``mask.shape`` as a
    view, so a per-user location costs no ``G * S * L`` copy and draws and KL share one
    broadcast, as in the chain it replaces.

    It is ``LogNormal(loc, scale).expand(mask.shape).mask(mask).to_event(2)`` (same samples
    for the same random state, same log-densities, same KL and gradients, tested) as one
    object: a sample site builds one distribution instead of five, and the KL between two of
    them (:func:`lognormal_kl`, registered) reads one mask. :meth:`expand` to its own batch
    shape returns itself (see :class:`EventSite`).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.independent(constraints.positive, 2)
    has_rsample = True

    def __init__(self, loc, scale, mask: torch.Tensor, validate_args=None) -> None:
        shape = mask.shape
        if mask.dim() < 3:
            raise ValueError(f"mask must be (..., G, S, L), got shape {tuple(shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
        loc = _one_value(torch.as_tensor(loc, device=mask.device))
        scale = _one_value(torch.as_tensor(scale, dtype=loc.dtype, device=loc.device))
        self.loc = loc if loc.dim() == 0 or loc.shape == shape else loc.expand(shape)
        self.scale = scale if scale.dim() == 0 or scale.shape == shape else scale.expand(shape)
        self.mask = mask
        super().__init__(shape[:-2], shape[-2:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if _instance is None and batch_shape == self.batch_shape:
            return self
        full = batch_shape + self.event_shape
        new = self._get_checked_instance(MaskedLogNormal, _instance)
        new.loc = self.loc if self.loc.dim() == 0 else self.loc.expand(full)
        new.scale = self.scale if self.scale.dim() == 0 else self.scale.expand(full)
        new.mask = self.mask.expand(full)
        super(MaskedLogNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        """``exp(loc + scale^2 / 2)``, ``mask.shape`` (masked slots included)."""
        return (self.loc + self.scale.square() / 2).exp().expand(self.mask.shape)

    @property
    def variance(self) -> torch.Tensor:
        """``(exp(scale^2) - 1) exp(2 loc + scale^2)``, ``mask.shape``."""
        square = self.scale.square()
        return (square.expm1() * (2 * self.loc + square).exp()).expand(self.mask.shape)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        """``exp(loc + eps * scale)``, ``eps ~ N(0, 1)`` of shape ``sample_shape + mask.shape``."""
        shape = self._extended_shape(torch.Size(sample_shape))
        loc = self.loc.expand(shape)
        eps = torch.empty(shape, dtype=loc.dtype, device=loc.device).normal_()  # as Normal
        return torch.exp(loc + eps * self.scale.expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``sum_{mask} [-(log s - loc)^2 / (2 scale^2) - log scale - log(2 pi) / 2 - log s]``,
        shape ``(..., G)``."""
        if self._validate_args:
            self._validate_sample(value)
        log_value = value.log()
        variance = self.scale.square()
        normal = (
            -((log_value - self.loc) ** 2) / (2 * variance) - self.scale.log() - HALF_LOG_TWO_PI
        )
        return _sum_event(torch.where(self.mask, normal - log_value, 0.0))


@register_kl(MaskedLogNormal, MaskedLogNormal)
def _kl_masked_lognormal(p: MaskedLogNormal, q: MaskedLogNormal) -> torch.Tensor:
    """``KL(p || q)`` (``p`` the guide) summed over ``p.mask & q.mask``, shape ``(..., G)``."""
    mask = p.mask if p.mask is q.mask else p.mask & q.mask
    kl = lognormal_kl(p.loc, p.scale, q.loc, q.scale)
    return _sum_event(torch.where(mask, kl, kl.new_zeros(())))


def lognormal_kl(
    loc_q: torch.Tensor, scale_q: torch.Tensor, loc_p: torch.Tensor, scale_p: torch.Tensor
) -> torch.Tensor:
    """Elementwise ``KL(LogNormal(loc_q, scale_q) || LogNormal(loc_p, scale_p))``::

        KL = (r + ((loc_q - loc_p) / scale_p)^2 - 1 - log r) / 2,   r = (scale_q / scale_p)^2

    the Gaussian KL of the logs, in torch's operation order (``torch.distributions``' Normal
    KL), so the values are its own bit for bit.
    """
    var_ratio = (scale_q / scale_p).pow(2)
    t1 = ((loc_q - loc_p) / scale_p).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())
