"""Prior and guide families of the attention scores ``s_j > 0``, all parameterised by the mean.

A prior of log-mean ``m`` (``E[s] = exp(m)``) and a guide located at ``psi`` (mean ``exp(psi)``);
``sigma`` is ``prior_sigma``/``guide_sigma``, ``a`` and ``k`` are ``prior_shape``/``guide_shape``::

    family        prior                               guide
    lognormal     LogNormal(m - sigma^2/2, sigma)     LogNormal(psi - sigma^2/2, sigma)
    gamma         Gamma(a, a / exp(m))                -
    weibull       Weibull(exp(m) / G(1 + 1/k), k)     Weibull(exp(psi) / G(1 + 1/k), k)
    halfnormal    HalfNormal(exp(m) sqrt(pi/2))       -
    exponential   Exponential(exp(-m))                -

Importing this module registers the closed-form ``KL(Weibull(k, lam) || Gamma(a, b))`` of
Zhang et al. (2018), used by Bayesian Attention Modules (Fan et al., NeurIPS 2020)::

    KL = g a / k - a log lam + log k + b lam G(1 + 1/k) - g - 1 - a log b + log G(a)

(``g`` Euler's constant, ``G`` the gamma function, ``b`` the rate), and
``KL(Weibull || Exponential)`` as its ``a = 1`` case. Pairs without a registered KL fall back
to Monte Carlo under ``TraceMeanField_ELBO``; :func:`has_analytic_kl` says which is which.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import kl_divergence, register_kl

PRIOR_FAMILIES = ("lognormal", "gamma", "weibull", "halfnormal", "exponential")
GUIDE_FAMILIES = ("lognormal", "weibull")
EULER_GAMMA = 0.5772156649015329


def lognormal_loc(log_mean, sigma):
    """``m - sigma^2 / 2``: the location of the log-normal of mean ``exp(m)`` and spread
    ``sigma``."""
    return log_mean - 0.5 * sigma**2


def prior_distribution(family: str, log_mean: torch.Tensor, sigma: float, shape: float):
    """The prior of mean ``exp(log_mean)``; ``sigma`` is the lognormal spread, ``shape`` the
    gamma/Weibull shape parameter."""
    if family == "lognormal":
        return dist.LogNormal(lognormal_loc(log_mean, sigma), sigma)
    mean = log_mean.exp()
    if family == "gamma":
        return dist.Gamma(torch.full_like(mean, shape), shape / mean)
    if family == "weibull":
        return dist.Weibull(mean / math.gamma(1.0 + 1.0 / shape), torch.full_like(mean, shape))
    if family == "halfnormal":
        return dist.HalfNormal(mean * math.sqrt(math.pi / 2))
    if family == "exponential":
        return dist.Exponential(1.0 / mean)
    raise ValueError(f"unknown prior family {family!r}; choose one of {PRIOR_FAMILIES}")


def guide_distribution(family: str, psi: torch.Tensor, sigma: float, shape: float):
    """The variational distribution of mean ``exp(psi)``."""
    if family == "lognormal":
        return dist.LogNormal(lognormal_loc(psi, sigma), sigma)
    if family == "weibull":
        scale = psi.exp() / math.gamma(1.0 + 1.0 / shape)
        return dist.Weibull(scale, torch.full_like(psi, shape))
    raise ValueError(f"unknown guide family {family!r}; choose one of {GUIDE_FAMILIES}")


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


def has_analytic_kl(guide: str, prior: str) -> bool:
    """Whether ``KL(guide || prior)`` has a registered closed form (else Monte Carlo)."""
    q = guide_distribution(guide, torch.tensor(0.3), 0.1, 3.0)
    p = prior_distribution(prior, torch.tensor(0.0), 1.0, 2.0)
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True
