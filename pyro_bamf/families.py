"""Prior and guide families of the attention scores ``s_j > 0``, all parameterised by the mean.

A **prior family** is a callable ``(log_mean, **params) -> Distribution`` of mean
``exp(log_mean)``; a **guide family** ``(psi, **params) -> Distribution`` of mean ``exp(psi)``.
Tensors broadcast: ``log_mean`` is ``(G, 1, L)`` or a 0-dim constant, ``psi`` ``(G, S, L)``.
The parameters are passed by name, each to the families that declare it
(:func:`pyro_bamf.registry.bind`)::

    prior:  sigma = prior_sigma, shape = prior_shape
    guide:  spread = guide_sigma (a float) or the learned spread (a tensor like psi),
            shape = guide_shape

Both live in registries that users extend, :func:`register_prior` and :func:`register_guide`;
a configuration names a family by its registered name or an import path
(``"mypkg.priors:log_mixture"``), and ``BAMFConfig`` also takes the callable itself. The
built-ins are registered the same way::

    name          prior                               guide
    lognormal     LogNormal(m - sigma^2/2, sigma)     LogNormal(psi - spread^2/2, spread)
    gamma         Gamma(a, a / exp(m))                -
    weibull       Weibull(exp(m) / G(1 + 1/k), k)     Weibull(exp(psi) / G(1 + 1/k), k)
    halfnormal    HalfNormal(exp(m) sqrt(pi/2))       -
    exponential   Exponential(exp(-m))                -

Importing this module registers with ``torch.distributions`` the closed-form
``KL(Weibull(k, lam) || Gamma(a, b))`` of Zhang et al. (2018), used by Bayesian Attention
Modules (Fan et al., NeurIPS 2020)::

    KL = g a / k - a log lam + log k + b lam G(1 + 1/k) - g - 1 - a log b + log G(a)

(``g`` Euler's constant, ``G`` the gamma function, ``b`` the rate), and
``KL(Weibull || Exponential)`` as its ``a = 1`` case. Whether a pair has a closed form is
torch's KL registry's answer for the run's own distributions
(:func:`pyro_bamf.training.site_kl`); other pairs take the one-draw Monte Carlo KL, and
``history.csv`` says which (``kl_method``).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import register_kl

from .registry import Registry

EULER_GAMMA = 0.5772156649015329

PRIORS = Registry("prior family", "pyro_bamf.register_prior")
GUIDES = Registry("guide family", "pyro_bamf.register_guide")


def register_prior(name: str, factory=None, replace: bool = False):
    """Register ``factory(log_mean, **params) -> Distribution`` (mean ``exp(log_mean)``) as
    the prior family ``name``; usable as a decorator."""
    return PRIORS.register(name, factory, replace)


def register_guide(name: str, factory=None, replace: bool = False):
    """Register ``factory(psi, **params) -> Distribution`` (mean ``exp(psi)``, reparameterised:
    ``has_rsample``) as the guide family ``name``; usable as a decorator."""
    return GUIDES.register(name, factory, replace)


def lognormal_loc(log_mean, sigma):
    """``m - sigma^2 / 2``: the location of the log-normal of mean ``exp(m)`` and spread
    ``sigma``."""
    return log_mean - 0.5 * sigma**2


@register_prior("lognormal")
def lognormal_prior(log_mean: torch.Tensor, sigma: float) -> dist.LogNormal:
    """``LogNormal(m - sigma^2/2, sigma)``."""
    return dist.LogNormal(lognormal_loc(log_mean, sigma), sigma)


@register_prior("gamma")
def gamma_prior(log_mean: torch.Tensor, shape: float) -> dist.Gamma:
    """``Gamma(a, rate = a / exp(m))``, ``a = shape``."""
    mean = log_mean.exp()
    return dist.Gamma(torch.full_like(mean, shape), shape / mean)


@register_prior("weibull")
def weibull_prior(log_mean: torch.Tensor, shape: float) -> dist.Weibull:
    """``Weibull(scale = exp(m) / G(1 + 1/k), k)``, ``k = shape``."""
    mean = log_mean.exp()
    return dist.Weibull(mean / math.gamma(1.0 + 1.0 / shape), torch.full_like(mean, shape))


@register_prior("halfnormal")
def halfnormal_prior(log_mean: torch.Tensor) -> dist.HalfNormal:
    """``HalfNormal(exp(m) sqrt(pi / 2))``."""
    return dist.HalfNormal(log_mean.exp() * math.sqrt(math.pi / 2))


@register_prior("exponential")
def exponential_prior(log_mean: torch.Tensor) -> dist.Exponential:
    """``Exponential(rate = exp(-m))``."""
    return dist.Exponential(1.0 / log_mean.exp())


@register_guide("lognormal")
def lognormal_guide(psi: torch.Tensor, spread) -> dist.LogNormal:
    """``LogNormal(psi - spread^2/2, spread)``; ``spread`` a float or a tensor like ``psi``."""
    return dist.LogNormal(lognormal_loc(psi, spread), spread)


@register_guide("weibull")
def weibull_guide(psi: torch.Tensor, shape: float) -> dist.Weibull:
    """``Weibull(scale = exp(psi) / G(1 + 1/k), k)``, ``k = shape`` (it sets the spread)."""
    scale = psi.exp() / math.gamma(1.0 + 1.0 / shape)
    return dist.Weibull(scale, torch.full_like(psi, shape))


BUILT_IN_PRIORS, BUILT_IN_GUIDES = PRIORS.names, GUIDES.names


@register_kl(torch.distributions.Weibull, torch.distributions.Gamma)
def kl_weibull_gamma(p, q) -> torch.Tensor:
    """Closed-form ``KL(Weibull(k, lam) || Gamma(a, b))`` (b the rate)."""
    k, lam = p.concentration, p.scale
    a, b = q.concentration, q.rate
    return (
        EULER_GAMMA * a / k
        - a * lam.log()
        + k.log()
        + b * lam * torch.exp(torch.lgamma(1.0 + 1.0 / k))
        - EULER_GAMMA
        - 1.0
        - a * b.log()
        + torch.lgamma(a)
    )


@register_kl(torch.distributions.Weibull, torch.distributions.Exponential)
def kl_weibull_exponential(p, q) -> torch.Tensor:
    """``KL(Weibull || Exponential(b))`` = ``KL(Weibull || Gamma(1, b))``."""
    return kl_weibull_gamma(p, torch.distributions.Gamma(torch.ones_like(q.rate), q.rate))
