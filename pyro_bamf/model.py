"""BAMF as a Pyro model and a hand-written guide.

For a group of examples sharing user ``u`` with targets ``i`` and history ``j in R_u+ \\ {i}``::

    s^u_j ~ LogNormal(m_j - sp^2/2, sp)       (site "user_scores", shape (G, S, L))
    s^i_j ~ LogNormal(m_j - sp^2/2, sp)       (site "item_scores", shape (G, S, L))
    alpha = s^tau / (sum s^tau)^beta          (sites "user_weights", "item_weights")
    c_u = sum_j alpha^u_j h_j,   c_i = sum_j alpha^i_j h_j
    z_u = LN(p_u * c_u),  z_i = LN(q_i * c_i),  x = h^T (W (z_u * z_i) + b)
    y ~ Bernoulli(sigmoid(x))                 pointwise   (site "obs", shape (G, S))
    1 ~ Bernoulli(sigmoid(x_pos - x_neg))     pairwise    (site "obs", shape (G,))

The guide draws ``s_j ~ LogNormal(psi_j - sq^2/2, sq)`` with ``psi_j = f(query, h_j)``; the user
module's query is ``p_u``, the item module's ``q_i`` (``attention_inputs = "normalised"``: ``f``
and the key prior read them, and ``h_j``, at unit RMS); ``sq`` is fixed or learned per weight
(``guide_spread``). These are the default families; others of the same means are set by
``prior_family`` and ``guide_family`` (:mod:`pyro_bamf.families`), and the score network ``f``
by ``score_fn`` (:mod:`pyro_bamf.attention`): registered names, import paths or the objects.
One plate over the ``G`` groups (dim -1); the ``(S, L)`` axes are event axes, masked over
padding and the target (:func:`pyro_bamf.distributions.history_site`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .attention import SCORE_NETWORKS, AttentionPrior, GuideSpread, simplex_weights
from .batch import Batch
from .config import BAMFConfig
from .distributions import EventSite, history_site
from .families import GUIDES, PRIORS
from .registry import accepts, bind

WEIGHT_SITES = ("user_weights", "item_weights")  # pyro.deterministic: outside the ELBO


def kl_scaled(scale: float) -> AbstractContextManager:
    """Scale the latent sites by ``scale``; a zero weight masks them out (``scale(0)`` raises).

    Use it identically around the latent sites of model and guide.
    """
    return poutine.scale(scale=scale) if scale > 0 else poutine.mask(mask=False)


def embedding_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]``: rows of ``table (R, K)`` for ``index (...)`` -> ``(..., K)``."""
    return nn.functional.embedding(index, table)


class BAMF(nn.Module):
    """Every network of BAMF; :meth:`model` and :meth:`guide` mirror each other.

    ``config.item_embeddings``: ``"role"`` gives the target (``q``) and history (``h``) roles
    their own embedding tables; ``"shared"`` is the original architecture, one item table ``e``
    with role maps ``q_i = W_q e_i``, ``h_j = W_h e_j``.

    ``config.head``: ``"affine"`` is the specification's ``x = h^T(W z + b)``; ``"linear"`` is
    ``x = h^T z + b``, one ``Linear(K, 1)`` as in the authors' code: the same functions of ``z``,
    but weight decay on the product ``W^T h`` pulls it to zero harder (docs/results.md).

    ``score_network``: a factory ``(dim, outputs=..., dropout=...) -> nn.Module`` of the two
    score networks, in place of the one ``config.score_fn`` names; ``gather_rows``: the
    function that looks up embedding rows (:func:`embedding_rows`). Both are how
    :mod:`pyro_bamf.fastpaths` installs its faster implementations of the same functions.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        config: BAMFConfig,
        score_network: Callable[..., nn.Module] | None = None,
        gather_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = embedding_rows,
    ) -> None:
        super().__init__()
        dim = config.embedding_dim
        self.config = config
        self.user_embedding = nn.Embedding(n_users, dim)
        if config.item_embeddings == "role":
            self.target_embedding = nn.Embedding(n_items, dim)
            self.history_embedding = nn.Embedding(n_items, dim)
        else:
            self.item_embedding = nn.Embedding(n_items, dim)
            self.target_map = nn.Linear(dim, dim, bias=False)
            self.history_map = nn.Linear(dim, dim, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.01)
        self.gather_rows = gather_rows
        self.spread = GuideSpread(config.guide_sigma, config.guide_spread == "learned")
        network = score_network or SCORE_NETWORKS.resolve(config.score_fn)
        if self.spread.learned and not accepts(network, "outputs"):
            raise ValueError(
                "guide_spread = 'learned' needs a score network that takes outputs (it must "
                "return (..., L, 2): psi and the raw spread)"
            )
        outputs = self.spread.outputs
        network = bind(network, "score network", dropout=config.dropout, outputs=outputs)
        self.user_scorer = network(dim)
        self.item_scorer = network(dim)
        self.spread.initialise(self.user_scorer)
        self.spread.initialise(self.item_scorer)
        family = PRIORS.resolve(config.prior_family)
        family = bind(family, "prior family", sigma=config.prior_sigma, shape=config.prior_shape)
        prior = (config.prior_loc, config.prior_log_mean, family)
        self.user_prior = AttentionPrior(dim, *prior)
        self.item_prior = AttentionPrior(dim, *prior)
        guide = GUIDES.resolve(config.guide_family)
        self.guide_takes_spread = accepts(guide, "spread")
        self.guide_family = bind(guide, "guide family", ("spread",), shape=config.guide_shape)
        self.user_norm = nn.LayerNorm(dim)
        self.item_norm = nn.LayerNorm(dim)
        if config.head == "affine":
            self.head = nn.Sequential(nn.Linear(dim, dim), nn.Linear(dim, 1, bias=False))
        else:
            self.head = nn.Linear(dim, 1)

    def register(self) -> None:
        """``pyro.module("bamf", self)``: every network's parameters as Pyro ``param`` sites, at
        every call of :meth:`model` and :meth:`guide`, so that ``pyro.infer.SVI`` with a
        ``pyro.optim`` optimiser finds them."""
        pyro.module("bamf", self)

    @property
    def n_users(self) -> int:
        return self.user_embedding.num_embeddings

    @property
    def n_items(self) -> int:
        role = self.config.item_embeddings == "role"
        return (self.history_embedding if role else self.item_embedding).num_embeddings

    def history_vectors(self) -> torch.Tensor:
        """``h`` for every item, ``(n_items, K)``: keys and values of both attention modules."""
        if self.config.item_embeddings == "role":
            return self.history_embedding.weight
        return self.history_map(self.item_embedding.weight)

    def target_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """``q_i`` for ``items (...)``, shape ``(..., K)``."""
        if self.config.item_embeddings == "role":
            return self.gather_rows(self.target_embedding.weight, items)
        return self.target_map(self.gather_rows(self.item_embedding.weight, items))

    def attention_inputs(self, vectors: torch.Tensor) -> torch.Tensor:
        """What the attention networks (score networks, key prior) read of ``vectors (..., K)``:
        the vectors (``attention_inputs = "raw"``), or their directions at unit RMS
        ``x / sqrt(mean_k x_k^2 + 1e-12)`` (``"normalised"``), whatever the embeddings' scale.

        The likelihood reads the embeddings through ``LN(p_u * c_u)`` and ``LN(q_i * c_i)``,
        which divide out most of their scale, so they stay near their initial RMS of 0.01; raw,
        they reach the score network's first layer ~30x smaller than its bias, and every
        ``psi_j`` of a history is nearly the same (docs/uncertainty.md).
        """
        if self.config.attention_inputs == "raw":
            return vectors
        return nn.functional.rms_norm(vectors, vectors.shape[-1:], eps=1e-12)

    def guide_distribution(self, psi: torch.Tensor, spread) -> torch.distributions.Distribution:
        """The guide family's distribution of mean ``exp(psi)`` and spread ``spread``."""
        if self.guide_takes_spread:
            return self.guide_family(psi, spread=spread)
        return self.guide_family(psi)

    def attention_posterior(self, batch: Batch):
        """Guide locations and spreads ``((psi_u, sigma_u), (psi_i, sigma_i))``.

        ``psi_u (G, 1, L)``, ``psi_i (G, S, L)``; each sigma is ``guide_sigma`` (fixed) or a
        tensor of its psi's shape (learned).
        """
        keys = self.gather_rows(self.attention_inputs(self.history_vectors()), batch.history)
        user = self.attention_inputs(self.gather_rows(self.user_embedding.weight, batch.users))
        psi_user, sigma_user = self.spread.split(self.user_scorer(user, keys))
        if isinstance(sigma_user, torch.Tensor):
            sigma_user = sigma_user.unsqueeze(-2)
        target = self.attention_inputs(self.target_vectors(batch.items))
        item = self.item_scorer(target, keys.unsqueeze(-3))
        return (psi_user.unsqueeze(-2), sigma_user), self.spread.split(item)

    def attention_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Guide locations ``psi``: user side ``(G, 1, L)``, item side ``(G, S, L)``."""
        (psi_user, _), (psi_item, _) = self.attention_posterior(batch)
        return psi_user, psi_item

    def logits(
        self, batch: Batch, user_weights: torch.Tensor, item_weights: torch.Tensor
    ) -> torch.Tensor:
        """``x = h^T(W z + b)`` (``head = "affine"``) or ``h^T z + b`` (``"linear"``), with
        ``z = LN(p_u * c_u) * LN(q_i * c_i)``, from weights ``(..., G, S, L)``."""
        values = self.gather_rows(self.history_vectors(), batch.history)
        user_context = user_weights @ values
        item_context = item_weights @ values
        user = self.gather_rows(self.user_embedding.weight, batch.users).unsqueeze(-2)
        item = self.target_vectors(batch.items)
        z = self.user_norm(user * user_context) * self.item_norm(item * item_context)
        return self.head(z).squeeze(-1)

    def weights(self, log_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return simplex_weights(log_scores, mask, self.config.tau, self.config.beta)

    def model(self, batch: Batch, obs_scale: float = 1.0, kl_scale: float = 1.0) -> torch.Tensor:
        """Prior over the attention scores, then the Bernoulli likelihood. Returns the logits."""
        self.register()
        keys, mask = self.attention_inputs(self.history_vectors()), batch.mask
        user_means = self.user_prior.item_log_means(keys)
        item_means = self.item_prior.item_log_means(keys)
        with pyro.plate("groups", mask.shape[0], dim=-1):
            with kl_scaled(kl_scale):
                user_prior = self.user_prior.site(_gather(user_means, batch), mask, keys)
                item_prior = self.item_prior.site(_gather(item_means, batch), mask, keys)
                user_scores = pyro.sample("user_scores", user_prior)
                item_scores = pyro.sample("item_scores", item_prior)
            user_weights = self.weights(user_scores.log(), mask)
            item_weights = self.weights(item_scores.log(), mask)
            user_weights = pyro.deterministic(WEIGHT_SITES[0], user_weights, event_dim=2)
            item_weights = pyro.deterministic(WEIGHT_SITES[1], item_weights, event_dim=2)
            logits = self.logits(batch, user_weights, item_weights)
            with poutine.scale(scale=obs_scale):
                if batch.labels is not None:
                    likelihood = EventSite(dist.Bernoulli(logits=logits), 1)
                    pyro.sample("obs", likelihood, obs=batch.labels)
                else:
                    preference = logits[..., 0] - logits[..., 1]
                    ones = torch.ones_like(preference)
                    pyro.sample("obs", dist.Bernoulli(logits=preference), obs=ones)
        return logits

    def guide(self, batch: Batch, obs_scale: float = 1.0, kl_scale: float = 1.0) -> None:
        """Mean-field posterior over the attention scores (log-normal by default), of mean
        ``exp(psi)``."""
        self.register()
        (psi_user, sigma_user), (psi_item, sigma_item) = self.attention_posterior(batch)
        user = self.guide_distribution(psi_user, sigma_user)
        item = self.guide_distribution(psi_item, sigma_item)
        with pyro.plate("groups", batch.mask.shape[0], dim=-1), kl_scaled(kl_scale):
            pyro.sample("user_scores", history_site(user, batch.mask))
            pyro.sample("item_scores", history_site(item, batch.mask))

    def expected_logits(self, batch: Batch) -> torch.Tensor:
        """Logits ``(G, S)`` with each score at its posterior mean ``E[s] = exp(psi)``."""
        psi_user, psi_item = self.attention_logits(batch)
        return self.logits(
            batch, self.weights(psi_user, batch.mask), self.weights(psi_item, batch.mask)
        )


def _gather(per_item: torch.Tensor | None, batch: Batch) -> torch.Tensor | None:
    """Per-item prior log-means ``(n_items,)`` -> ``(G, 1, L)`` over the batch's histories."""
    if per_item is None:
        return None
    gathered = nn.functional.embedding(batch.history, per_item.unsqueeze(-1))  # deterministic
    return gathered.squeeze(-1).unsqueeze(-2)
