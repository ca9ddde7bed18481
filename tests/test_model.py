"""BAMF model and guide: site structure, attention weights, the loss against a hand computation,
gradients, single-user batches and candidate scoring."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from pyro_bamf import evaluation
from pyro_bamf.attention import FULL_KEEP, ScoreNetwork, keep_mask, simplex_weights
from pyro_bamf.batch import Batch, candidate_batches
from pyro_bamf.config import BAMFConfig
from pyro_bamf.data import ImplicitSplit, make_synthetic
from pyro_bamf.distributions import EventSite, MaskedLogNormal, history_site
from pyro_bamf.fastpaths import build_model
from pyro_bamf.model import BAMF, WEIGHT_SITES
from pyro_bamf.training import MeanFieldELBO, fit, loss_scales, make_elbo, svi_step

# Small networks keep the hand computations and the steps cheap.
K = 8


@pytest.fixture(scope="module")
def split() -> ImplicitSplit:
    data = make_synthetic(n_users=30, n_items=60, rank=3, mean_interactions=12, seed=0)
    return ImplicitSplit.from_interactions(data, seed=0)


def make_config(**changes) -> BAMFConfig:
    """A small deterministic configuration (no dropout) unless ``changes`` say otherwise."""
    return BAMFConfig(embedding_dim=K, dropout=0.0).replace(**changes)


def make_batch(split: ImplicitSplit, learning: str, users=(0, 5, 6), n_neg: int = 4) -> Batch:
    """Groups ``[training positive, negatives...]`` of ``users``.

    The positive is a training item, hence in the user's history: the target mask is exercised.
    Pointwise groups have labels ``[1, 0, ...]``; pairwise groups are ``(pos, neg)``.
    """
    users = np.asarray(users, dtype=np.int64)
    rng = np.random.default_rng(1)
    positives = np.array([split.train.items[split.train.users == u][-1] for u in users])
    n_neg = n_neg if learning == "pointwise" else 1
    items = np.concatenate([positives[:, None], split.sample_negatives(users, n_neg, rng)], 1)
    labels = None
    if learning == "pointwise":
        labels = np.zeros(items.shape, dtype=np.float32)
        labels[:, 0] = 1.0
    return Batch.build(users, items, split.history_items, split.history_lengths, labels)


def sample_sites(trace) -> dict:
    return {
        name: node
        for name, node in trace.nodes.items()
        if node["type"] == "sample" and not site_is_subsample(node)
    }


VARIANTS = list(
    itertools.product(("pointwise", "pairwise"), ("concat", "prod"), ("role", "shared"))
)


# --------------------------------------------------------------------------- site structure


@pytest.mark.parametrize("prior_loc", ["constant", "key"])
@pytest.mark.parametrize(("learning", "score_fn", "item_embeddings"), VARIANTS)
def test_model_and_guide_latent_sites_have_same_names_shapes_and_plate(
    split, learning, score_fn, item_embeddings, prior_loc
):
    config = make_config(
        learning=learning, score_fn=score_fn, item_embeddings=item_embeddings, prior_loc=prior_loc
    )
    model = BAMF(split.n_users, split.n_items, config)
    batch = make_batch(split, learning)
    groups, size, width = batch.mask.shape
    guide_trace = poutine.trace(model.guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
    guide_sites = sample_sites(guide_trace)
    model_sites = sample_sites(model_trace)

    assert list(guide_sites) == ["user_scores", "item_scores"]
    latent = [n for n, s in model_sites.items() if not s["is_observed"]]
    assert latent == list(guide_sites)
    for name in guide_sites:
        g, m = guide_sites[name], model_sites[name]
        assert g["value"].shape == m["value"].shape == (groups, size, width)
        assert g["fn"].batch_shape == m["fn"].batch_shape == (groups,)
        assert g["fn"].event_shape == m["fn"].event_shape == (size, width)
        frames = [[(f.name, f.size, f.dim) for f in s["cond_indep_stack"]] for s in (g, m)]
        assert frames[0] == frames[1] == [("groups", groups, -1)]
        assert torch.equal(g["value"], m["value"])  # the model scored the guide's draws
        # the default family is one MaskedLogNormal per site, holding the batch's own mask
        # tensor on both sides: the plate did not rebuild the site (MaskedLogNormal.expand)
        for site in (g, m):
            assert isinstance(site["fn"], MaskedLogNormal)
            assert site["fn"].mask is batch.mask
        assert torch.all(g["value"] > 0)

    obs = model_sites["obs"]
    assert obs["is_observed"]
    assert [(f.name, f.dim) for f in obs["cond_indep_stack"]] == [("groups", -1)]
    expected = (groups, size) if learning == "pointwise" else (groups,)
    assert obs["value"].shape == expected
    for name in ("user_weights", "item_weights"):
        assert model_sites[name]["value"].shape == (groups, size, width)


@pytest.mark.parametrize(
    ("guide_family", "prior_family"),
    [("weibull", "gamma"), ("lognormal", "gamma"), ("weibull", "lognormal")],
)
def test_other_families_are_event_sites_holding_the_batch_mask(split, guide_family, prior_family):
    config = make_config(guide_family=guide_family, prior_family=prior_family)
    model = BAMF(split.n_users, split.n_items, config)
    batch = make_batch(split, "pointwise")
    guide_trace = poutine.trace(model.guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
    for trace, family in ((guide_trace, guide_family), (model_trace, prior_family)):
        for name in ("user_scores", "item_scores"):
            fn = trace.nodes[name]["fn"]
            if family == "lognormal":
                assert isinstance(fn, MaskedLogNormal) and fn.mask is batch.mask
            else:  # not rebuilt by the plate's broadcast (EventSite.expand)
                assert isinstance(fn, EventSite) and fn.base_dist._mask is batch.mask
            assert (fn.batch_shape, fn.event_shape) == (batch.mask.shape[:1], batch.mask.shape[1:])


def test_event_site_expands_to_its_own_shape_as_itself_and_to_others_as_independent():
    mask = torch.tensor([[True, False, True], [True, True, False]]).expand(2, 2, 3)
    base = dist.Gamma(torch.rand(2, 3) + 0.5, 2.0)
    site = history_site(base, mask)  # expanded to the mask's shape
    assert (site.batch_shape, site.event_shape) == ((2,), (2, 3))
    assert site.expand((2,)) is site
    value = base.expand((2, 2, 3)).sample()
    wider = site.expand((4, 2))
    assert isinstance(wider, EventSite) and wider.batch_shape == (4, 2)
    torch.testing.assert_close(wider.log_prob(value), site.log_prob(value).expand(4, 2))
    reference = base.expand((2, 2, 3)).mask(mask).to_event(2)
    torch.testing.assert_close(site.log_prob(value), reference.log_prob(value))
    torch.testing.assert_close(
        kl_divergence(site, site.expand((2,))), kl_divergence(reference, reference)
    )


# --------------------------------------------------------------------------- attention weights


def naive_weights(log_scores, mask, tau, beta):
    """``s^tau / (sum_{unmasked} s^tau)^beta`` in float64, straight from the formula."""
    s = torch.exp(log_scores.double())
    powered = torch.where(mask, s**tau, torch.zeros_like(s))
    total = powered.sum(-1, keepdim=True)
    out = powered / total**beta
    return torch.where(mask, out, torch.zeros_like(out))


def random_mask(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=gen) < 0.7
    mask[0, 0] = False  # one all-masked row (an empty history)
    mask[1, 1] = True  # one full row
    return mask


def test_simplex_weights_are_exactly_zero_at_masked_positions():
    log_scores = torch.randn(3, 4, 6)
    mask = random_mask(log_scores.shape)
    weights = simplex_weights(log_scores, mask, tau=2.0, beta=0.5)
    assert torch.all(weights[~mask] == 0.0)
    assert torch.all(weights[mask] > 0.0)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_simplex_weights_sum_to_one_over_unmasked_positions_when_beta_is_one(tau):
    log_scores = torch.randn(3, 4, 6)
    mask = random_mask(log_scores.shape)
    weights = simplex_weights(log_scores, mask, tau=tau, beta=1.0)
    sums = weights.sum(-1)
    nonempty = mask.any(-1)
    torch.testing.assert_close(sums[nonempty], torch.ones(int(nonempty.sum())))
    assert torch.all(sums[~nonempty] == 0.0)


@pytest.mark.parametrize(("tau", "beta"), [(1.0, 0.5), (2.5, 0.5), (1.0, 0.3), (4.0, 0.8)])
def test_simplex_weights_equal_the_naive_formula(tau, beta):
    log_scores = torch.randn(3, 4, 6)
    mask = random_mask(log_scores.shape)
    weights = simplex_weights(log_scores, mask, tau=tau, beta=beta)
    expected = naive_weights(log_scores, mask, tau, beta)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=1e-7)
    if beta == 0.5 and tau == 1.0:
        # the paper's default: s / sqrt(sum s)
        s = torch.exp(log_scores.double()) * mask
        torch.testing.assert_close(
            weights.double(), s / s.sum(-1, keepdim=True).sqrt().clamp_min(1e-300)
        )


def test_simplex_weights_all_masked_row_gives_zeros_and_finite_gradients():
    log_scores = torch.randn(2, 3, 5, requires_grad=True)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[0] = False  # a group whose every example has an empty context
    mask[1, 2] = False
    weights = simplex_weights(log_scores, mask, tau=2.0, beta=0.5)
    assert torch.all(weights[0] == 0.0) and torch.all(weights[1, 2] == 0.0)
    (weights * torch.randn(2, 3, 5)).sum().backward()
    assert torch.isfinite(log_scores.grad).all()
    assert torch.all(log_scores.grad[~mask] == 0.0)
    assert torch.any(log_scores.grad[mask] != 0.0)


def test_simplex_weights_do_not_overflow_on_huge_scores():
    # tau * log s = 4000: s^tau overflows float32 and float64; the softmax (beta = 1) does not.
    log_scores = torch.tensor([[1000.0, 999.0, 998.5, 1000.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False]])
    weights = simplex_weights(log_scores, mask, tau=4.0, beta=1.0)
    assert torch.isfinite(weights).all()
    expected = torch.softmax(4.0 * torch.tensor([1000.0, 999.0, 998.5]), -1)
    # float32 keeps log-scores near 4000 to ~2e-4 absolute: a relative tolerance of that size
    torch.testing.assert_close(weights[0, :3], expected, rtol=5e-4, atol=0)
    assert weights[0, 3] == 0.0
    weights[0, 0].backward()
    assert torch.isfinite(log_scores.grad).all()

    # beta < 1 with a representable result: s^tau = e^120 overflows float32 on its own
    log_scores = torch.tensor([[30.0, 29.0, 25.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    weights = simplex_weights(log_scores, mask, tau=4.0, beta=0.5)
    assert torch.isfinite(weights).all()
    expected = naive_weights(log_scores, mask, 4.0, 0.5)  # float64 holds e^120
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("beta", [1.0, 0.5])
@pytest.mark.parametrize("learning", ["pointwise", "pairwise"])
def test_model_weight_sites_are_zero_at_padding_and_target_and_normalised(split, learning, beta):
    config = make_config(learning=learning, beta=beta, tau=2.0)
    model = BAMF(split.n_users, split.n_items, config)
    batch = make_batch(split, learning)
    # the positive is one of the user's history items: exactly one target position is masked
    is_target = batch.history[:, None, :] == batch.items[:, :, None]
    present = torch.as_tensor(
        np.arange(batch.history.shape[1]) < split.history_lengths[batch.users.numpy(), None]
    )
    assert torch.equal(batch.mask, present[:, None, :] & ~is_target)
    assert torch.all(is_target[:, 0].sum(-1) == 1)
    assert (~present).any(), "the batch should have padding"

    guide_trace = poutine.trace(model.guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
    for side in ("user", "item"):
        weights = model_trace.nodes[f"{side}_weights"]["value"]
        scores = guide_trace.nodes[f"{side}_scores"]["value"]
        assert torch.all(weights[~batch.mask] == 0.0)
        assert torch.all(weights[is_target] == 0.0)
        assert torch.all(weights[batch.mask] > 0.0)
        expected = naive_weights(scores.log(), batch.mask, 2.0, beta)
        torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=1e-8)
        if beta == 1.0:
            torch.testing.assert_close(weights.sum(-1), torch.ones(batch.mask.shape[:2]))


# --------------------------------------------------------------------------- hand-computed loss


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double()


def _layer_norm(x, norm):
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) / torch.sqrt(var + norm.eps) * _f64(norm.weight) + _f64(norm.bias)


def _score(net, query, key, kind):
    """NAIS score ``w^T ReLU(LN(W [q ; k] + b)) + b_out`` (or ``W (q * k) + b``), no grouping."""
    if kind == "concat":
        weight = torch.cat([_f64(net.query.weight), _f64(net.key.weight)], dim=1)  # (K, 2K)
        hidden = weight @ torch.cat([query, key]) + _f64(net.query.bias)
    else:
        hidden = _f64(net.query.weight) @ (query * key) + _f64(net.query.bias)
    hidden = torch.relu(_layer_norm(hidden, net.norm))
    return _f64(net.out.weight)[0] @ hidden + _f64(net.out.bias)[0]


def _prior_log_mean(prior, key):
    if prior.net is None:
        return torch.tensor(prior.log_mean, dtype=torch.float64)
    first, _, last = prior.net
    hidden = torch.relu(_f64(first.weight) @ key + _f64(first.bias))
    return _f64(last.weight)[0] @ hidden + _f64(last.bias)[0] + prior.log_mean


def _lognormal_log_prob(x, loc, sigma):
    return (
        -torch.log(x)
        - math.log(sigma)
        - 0.5 * math.log(2 * math.pi)
        - (torch.log(x) - loc) ** 2 / (2 * sigma**2)
    )


def _head(model: BAMF, z: torch.Tensor) -> torch.Tensor:
    """``h^T(W z + b)`` ("affine") or ``h^T z + b`` ("linear"), in float64."""
    if model.config.head == "affine":
        hidden, out = model.head
        return _f64(out.weight)[0] @ (_f64(hidden.weight) @ z + _f64(hidden.bias))
    return _f64(model.head.weight)[0] @ z + _f64(model.head.bias)[0]


def hand_loss(model: BAMF, batch: Batch, samples: dict, obs_scale, kl_scale, elbo: str):
    """The scaled negative ELBO of ``batch`` at the guide's ``samples``, one example at a time."""
    cfg = model.config
    tau, beta, sq, sp = cfg.tau, cfg.beta, cfg.guide_sigma, cfg.prior_sigma
    if cfg.item_embeddings == "role":
        history_table = _f64(model.history_embedding.weight)
        target_table = _f64(model.target_embedding.weight)
    else:
        items = _f64(model.item_embedding.weight)
        history_table = items @ _f64(model.history_map.weight).T
        target_table = items @ _f64(model.target_map.weight).T
    user_table = _f64(model.user_embedding.weight)
    groups, size, width = batch.mask.shape
    logits = torch.zeros(groups, size, dtype=torch.float64)
    kl = torch.zeros((), dtype=torch.float64)
    for g in range(groups):
        p = user_table[batch.users[g]]
        for s in range(size):
            q = target_table[batch.items[g, s]]
            positions = [l for l in range(width) if batch.mask[g, s, l]]
            keys = [history_table[batch.history[g, l]] for l in positions]
            contexts = []
            for side, query, scorer, prior in (
                ("user", p, model.user_scorer, model.user_prior),
                ("item", q, model.item_scorer, model.item_prior),
            ):
                draws = _f64(samples[f"{side}_scores"][g, s, positions])
                powered = draws**tau
                alpha = powered / powered.sum() ** beta
                contexts.append(sum(a * k for a, k in zip(alpha, keys, strict=True)))
                for draw, key in zip(draws, keys, strict=True):
                    psi = _score(scorer, query, key, cfg.score_fn)
                    mq = psi - sq**2 / 2
                    mp = _prior_log_mean(prior, key) - sp**2 / 2
                    if elbo == "meanfield":
                        kl = kl + math.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5
                    else:
                        kl = kl + _lognormal_log_prob(draw, mq, sq)
                        kl = kl - _lognormal_log_prob(draw, mp, sp)
            z_user = _layer_norm(p * contexts[0], model.user_norm)
            z_item = _layer_norm(q * contexts[1], model.item_norm)
            logits[g, s] = _head(model, z_user * z_item)
    if batch.labels is not None:
        y = _f64(batch.labels)
        nll = -(y * torch.log(torch.sigmoid(logits)) + (1 - y) * torch.log(torch.sigmoid(-logits)))
    else:
        nll = -torch.log(torch.sigmoid(logits[:, 0] - logits[:, 1]))
    nll = nll.sum()
    if kl_scale == 0:
        return obs_scale * nll, nll, kl
    return obs_scale * nll + kl_scale * kl, nll, kl


def pyro_loss(model, batch, obs_scale, kl_scale, elbo: str):
    """Pyro's loss with the guide replayed from one recorded trace; returns it and the trace."""
    guide_trace = poutine.trace(model.guide).get_trace(batch, obs_scale, kl_scale)
    objective = TraceMeanField_ELBO() if elbo == "meanfield" else Trace_ELBO()
    replayed = poutine.replay(model.guide, trace=guide_trace)
    loss = objective.differentiable_loss(model.model, replayed, batch, obs_scale, kl_scale)
    samples = {name: guide_trace.nodes[name]["value"] for name in ("user_scores", "item_scores")}
    return loss, samples


def expected_scales(config, batch, weight):
    """The objective's scales, from the module docstring of ``training``."""
    n_examples = batch.mask.shape[0] * (batch.mask.shape[1] if batch.labels is not None else 1)
    if config.kl_weight == "mean":
        return 1.0 / n_examples, weight / (2 * int(batch.mask.sum()))
    return 1.0 / n_examples, weight / n_examples


LOSS_SETTINGS = dict(tau=1.5, beta=0.7, guide_sigma=0.3, prior_sigma=0.8, prior_log_mean=0.4)


@pytest.mark.parametrize("elbo", ["meanfield", "trace"])
@pytest.mark.parametrize("kl_weight", ["mean", "elbo"])
@pytest.mark.parametrize(
    ("learning", "score_fn", "item_embeddings", "prior_loc", "head"),
    [
        ("pointwise", "concat", "role", "constant", "affine"),
        ("pointwise", "prod", "shared", "key", "linear"),
        ("pairwise", "concat", "shared", "key", "affine"),
        ("pairwise", "prod", "role", "constant", "affine"),
        ("pairwise", "concat", "role", "constant", "linear"),
    ],
)
def test_pyro_loss_equals_hand_computed_loss(
    split, learning, score_fn, item_embeddings, prior_loc, head, kl_weight, elbo
):
    config = make_config(
        learning=learning,
        score_fn=score_fn,
        item_embeddings=item_embeddings,
        prior_loc=prior_loc,
        head=head,
        kl_weight=kl_weight,
        elbo=elbo,
        **LOSS_SETTINGS,
    )
    model = BAMF(split.n_users, split.n_items, config)
    # move the networks off their near-zero initialisation so every term matters
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
    batch = make_batch(split, learning)
    obs_scale, kl_scale = loss_scales(config, batch, weight=0.7)
    assert (obs_scale, kl_scale) == pytest.approx(expected_scales(config, batch, 0.7), rel=1e-12)

    loss, samples = pyro_loss(model, batch, obs_scale, kl_scale, elbo)
    expected, nll, kl = hand_loss(model, batch, samples, obs_scale, kl_scale, elbo)
    assert nll > 0 and (elbo == "trace" or kl > 0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("elbo", ["meanfield", "trace"])
@pytest.mark.parametrize("learning", ["pointwise", "pairwise"])
def test_zero_kl_weight_gives_exactly_the_scaled_nll(split, learning, elbo):
    config = make_config(learning=learning, elbo=elbo, **LOSS_SETTINGS)
    model = BAMF(split.n_users, split.n_items, config)
    batch = make_batch(split, learning)
    obs_scale, kl_scale = loss_scales(config, batch, weight=0.0)
    assert kl_scale == 0.0
    loss, samples = pyro_loss(model, batch, obs_scale, kl_scale, elbo)
    expected, nll, kl = hand_loss(model, batch, samples, obs_scale, kl_scale, elbo)
    assert abs(kl.item()) > 1.0  # the KL would have mattered
    assert loss.item() == pytest.approx(obs_scale * nll.item(), rel=1e-5)
    # and no gradient reaches the prior through a masked KL
    config = config.replace(prior_loc="key")
    model = BAMF(split.n_users, split.n_items, config)
    loss, _ = pyro_loss(model, batch, obs_scale, kl_scale, elbo)
    loss.backward()
    for param in itertools.chain(model.user_prior.parameters(), model.item_prior.parameters()):
        assert param.grad is None or torch.all(param.grad == 0)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    ("learning", "score_fn", "item_embeddings", "prior_loc", "elbo", "head"),
    [
        ("pointwise", "concat", "role", "constant", "meanfield", "affine"),
        ("pointwise", "prod", "role", "key", "trace", "linear"),
        ("pairwise", "concat", "shared", "key", "meanfield", "affine"),
        ("pairwise", "prod", "shared", "constant", "trace", "affine"),
        ("pointwise", "concat", "shared", "key", "meanfield", "affine"),
        ("pairwise", "concat", "role", "constant", "meanfield", "linear"),
    ],
)
def test_one_svi_step_gives_every_parameter_a_nonzero_gradient(
    split, learning, score_fn, item_embeddings, prior_loc, elbo, head
):
    config = make_config(
        learning=learning,
        score_fn=score_fn,
        item_embeddings=item_embeddings,
        prior_loc=prior_loc,
        elbo=elbo,
        head=head,
        dropout=0.2,
        weight_decay=0.0,
    )
    model = BAMF(split.n_users, split.n_items, config)
    batch = make_batch(split, learning)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    terms = svi_step(model, make_elbo(config), optimizer, batch, *loss_scales(config, batch, 0.5))
    assert math.isfinite(terms.loss) and terms.nll > 0 and terms.kl > 0

    names = [name for name, _ in model.named_parameters()]
    if prior_loc == "key":
        assert any(name.startswith("user_prior.net") for name in names)
        assert any(name.startswith("item_prior.net") for name in names)
    else:
        assert not any("prior" in name for name in names)
    if item_embeddings == "shared":
        assert {"item_embedding.weight", "target_map.weight", "history_map.weight"} <= set(names)
    # BPR's x_pos - x_neg cancels the bias of a one-layer head exactly
    cancelled = {"head.bias"} if (learning, head) == ("pairwise", "linear") else set()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        if name in cancelled:
            assert torch.all(param.grad == 0), f"{name}: {param.grad}"
            continue
        assert torch.any(param.grad != 0), f"{name} has an all-zero gradient"
        assert not torch.equal(param.detach(), before[name]), f"{name} was not updated"


# --------------------------------------------------------------------------- single-user batches


@pytest.mark.parametrize(
    ("learning", "n_neg"), [("pointwise", 0), ("pointwise", 2), ("pairwise", 1)]
)
def test_batch_of_one_user_gives_the_hand_computed_loss(split, learning, n_neg):
    config = make_config(learning=learning, **LOSS_SETTINGS)
    model = BAMF(split.n_users, split.n_items, config)
    batch = make_batch(split, learning, users=(5,), n_neg=n_neg)
    expected_size = 1 + n_neg if learning == "pointwise" else 2
    assert batch.mask.shape[:2] == (1, expected_size)
    for elbo in ("meanfield", "trace"):
        scales = loss_scales(config, batch, weight=1.0)
        loss, samples = pyro_loss(model, batch, *scales, elbo)
        expected, _, _ = hand_loss(model, batch, samples, *scales, elbo)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        assert model.expected_logits(batch).shape == (1, expected_size)


def _candidate_groups(split, users, per_user):
    rng = np.random.default_rng(2)
    items = split.sample_negatives(np.asarray(users), per_user, rng)
    items[:, 0] = [split.train.items[split.train.users == u][0] for u in users]  # one in history
    return items


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("score_fn", ["concat", "prod"])
def test_expected_logits_of_a_user_alone_equal_its_rows_in_a_larger_batch(split, score_fn, grad):
    model = BAMF(split.n_users, split.n_items, make_config(score_fn=score_fn))
    model.eval()
    users = np.array([2, 9, 14, 21])
    lengths = split.history_lengths[users]
    assert lengths.min() < lengths.max(), "users with different history lengths"
    items = _candidate_groups(split, users, 6)
    hist, lens = split.history_items, split.history_lengths
    with torch.set_grad_enabled(grad):
        together = model.expected_logits(Batch.build(users, items, hist, lens))
        for g in range(users.size):
            alone = model.expected_logits(
                Batch.build(users[g : g + 1], items[g : g + 1], hist, lens)
            )
            torch.testing.assert_close(alone[0], together[g], atol=1e-5, rtol=0)
            single = Batch.build(users[g : g + 1], items[g : g + 1, 2:3], hist, lens)
            one = model.expected_logits(single)  # G = 1, S = 1
            assert one.shape == (1, 1)
            torch.testing.assert_close(one[0, 0], together[g, 2], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- candidate scoring


def one_at_a_time(model, users, items, history_items, history_lengths):
    model.eval()
    out = []
    with torch.no_grad():
        for user, item in zip(users, items, strict=True):
            batch = Batch.build(
                np.array([user]), np.array([[item]]), history_items, history_lengths
            )
            out.append(model.expected_logits(batch)[0, 0].item())
    return np.array(out)


@pytest.mark.parametrize(("group_size", "budget"), [(100, 2**17), (4, 2**17), (3, 1), (5, 40)])
def test_score_candidates_equals_per_row_expected_logits(split, monkeypatch, group_size, budget):
    config = make_config(score_fn="concat", dropout=0.3)
    model = BAMF(split.n_users, split.n_items, config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    rng = np.random.default_rng(3)
    # users with 1, 4, 5, 7 and 11 candidates (not multiples of the group size), grouped by user
    counts = {0: 7, 4: 1, 5: 11, 12: 4, 20: 5}
    users = np.repeat(list(counts), list(counts.values()))
    items = rng.integers(0, split.n_items, size=users.size)
    history_lengths = split.history_lengths.copy()
    history_lengths[12] = 0  # an empty history: an all-masked context
    monkeypatch.setattr(
        evaluation, "candidate_batches", functools.partial(candidate_batches, budget=budget)
    )
    n_batches = sum(
        1
        for _ in candidate_batches(
            users, items, split.history_items, history_lengths, group_size, budget=budget
        )
    )
    if budget == 1:
        assert n_batches == sum(-(-c // group_size) for c in counts.values())

    model.train()
    scores = evaluation.score_candidates(
        model, users, items, split.history_items, history_lengths, group_size=group_size
    )
    assert model.training, "score_candidates must restore the training mode"
    assert scores.dtype == np.float32 and scores.shape == users.shape
    expected = one_at_a_time(model, users, items, split.history_items, history_lengths)
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    assert np.unique(scores).size > users.size // 2  # not a constant


def test_score_candidates_scores_repeated_and_unsorted_rows_like_single_rows(split):
    model = BAMF(split.n_users, split.n_items, make_config(score_fn="concat"))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    rng = np.random.default_rng(5)
    users = rng.integers(0, 15, size=40)
    items = rng.integers(0, split.n_items, size=40)
    users, items = np.r_[users, users[:25]], np.r_[items, items[:25]]  # 25 repeated pairs
    order = rng.permutation(users.size)
    users, items = users[order], items[order]
    args = (split.history_items, split.history_lengths)
    scores = evaluation.score_candidates(model, users, items, *args)
    expected = one_at_a_time(model, users, items, *args)
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    first = {}
    for user, item, score in zip(users, items, scores, strict=True):
        assert first.setdefault((user, item), score) == score  # repeats are bit-identical
    assert evaluation.score_candidates(model, users[:0], items[:0], *args).shape == (0,)


def test_candidate_batches_cover_every_row_once_within_budget(split):
    users = np.repeat([1, 3, 8, 9], [5, 9, 1, 3])
    items = np.arange(users.size) % split.n_items
    seen = []
    for batch, rows in candidate_batches(
        users, items, split.history_items, split.history_lengths, group_size=4, budget=60
    ):
        groups, size, width = batch.mask.shape
        assert size == 4
        assert groups == 1 or groups * size * width <= 60
        for g in range(groups):
            real = rows[g][rows[g] >= 0]
            assert np.all(users[real] == batch.users[g].item())
            assert np.array_equal(batch.items[g, : real.size].numpy(), items[real])
        seen.extend(rows[rows >= 0].tolist())
    assert sorted(seen) == list(range(users.size))


def test_candidate_batches_reject_rows_not_grouped_by_user(split):
    with pytest.raises(ValueError, match="grouped by user"):
        list(
            candidate_batches(
                np.array([1, 2, 1]), np.array([0, 1, 2]), split.history_items, split.history_lengths
            )
        )


def test_a_second_model_under_the_same_pyro_name_trains_its_own_parameters(split):
    """``pyro.module("bamf", ...)`` registers every model under one name in the global param
    store; ``svi_step`` must still train the model it is given, not the store's older tensors."""
    config = make_config()
    first = BAMF(split.n_users, split.n_items, config)
    second = BAMF(split.n_users, split.n_items, config)
    batch = make_batch(split, "pointwise")
    scales = loss_scales(config, batch, 1.0)
    svi_step(
        first, make_elbo(config), torch.optim.Adam(first.parameters(), lr=1e-2), batch, *scales
    )
    assert "bamf$$$user_embedding.weight" in pyro.get_param_store().keys()
    first_state = {k: v.clone() for k, v in first.state_dict().items()}
    second_state = {k: v.clone() for k, v in second.state_dict().items()}
    optimizer = torch.optim.Adam(second.parameters(), lr=1e-2)
    svi_step(second, make_elbo(config), optimizer, batch, *scales)
    for key, value in first.state_dict().items():
        assert torch.equal(value, first_state[key]), f"{key} of the first model changed"
    changed = [k for k, v in second.state_dict().items() if not torch.equal(v, second_state[k])]
    assert "user_embedding.weight" in changed and "head.0.weight" in changed


def site_names(model: BAMF, batch: Batch) -> tuple[set[str], set[str]]:
    """The (model, guide) trace's site names, ``param`` sites included."""
    guide_trace = poutine.trace(model.guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model.model, guide_trace)).get_trace(batch)
    return set(model_trace.nodes), set(guide_trace.nodes)


def test_model_and_guide_record_the_same_sites_in_fit_as_outside_it(split):
    """Every parameter is a ``param`` site of both model and guide, the weights are sites of
    the model, whether they are called on their own or from ``fit``'s epochs."""
    config = make_config(dropout=0.2, max_epochs=1, warmup_epochs=0)
    model = BAMF(split.n_users, split.n_items, config)
    batch = make_batch(split, "pointwise")
    params = {"bamf$$$" + name for name, _ in model.named_parameters()}
    model_sites, guide_sites = site_names(model, batch)
    assert params <= model_sites and params <= guide_sites
    assert {"user_weights", "item_weights", "user_scores", "obs"} <= model_sites
    seen = []
    loo = split.candidates("loo", 9)
    fit(
        model,
        split,
        config,
        loo,
        progress=False,
        on_epoch=lambda *_: seen.append(site_names(model, batch)),
    )
    assert seen == [(model_sites, guide_sites)]


# --------------------------------------------------------------------------- dropout and fast paths


def test_keep_mask_is_a_function_of_the_seed_keeping_one_minus_p():
    keep = keep_mask(2**40 + 12345, torch.Size([400, 250]), round(0.7 * FULL_KEEP))
    assert keep.dtype == torch.bool and keep.shape == (400, 250)
    assert torch.equal(keep, keep_mask(2**40 + 12345, torch.Size([400, 250]), 45875))
    assert keep.float().mean().item() == pytest.approx(0.7, abs=0.005)
    assert not torch.equal(keep, keep_mask(2**40 + 12346, torch.Size([400, 250]), 45875))
    assert keep_mask(7, torch.Size([1000]), FULL_KEEP).all()
    assert not keep_mask(7, torch.Size([1000]), 0).any()
    # row-major element index: a mask of a larger shape starts with the smaller one's elements
    assert torch.equal(keep_mask(9, torch.Size([6, 10]), 30000).flatten()[:20],
                       keep_mask(9, torch.Size([2, 10]), 30000).flatten())  # fmt: skip


@pytest.mark.parametrize("kind", ["concat", "prod"])
def test_score_network_is_its_formula_with_the_mask_of_one_drawn_seed(kind):
    """``w . Dropout(ReLU(LN(A))) + b`` with the keep mask of the seed drawn from torch's
    generator at the call; inverted: averaged over masks it is the dropout-free score."""
    net = ScoreNetwork(K, kind, dropout=0.4)
    net.train()
    query, keys = torch.randn(3, 2, K), torch.randn(3, 2, 5, K)
    torch.manual_seed(5)
    psi = net(query, keys)
    torch.manual_seed(5)
    keep = keep_mask(net.dropout.draw_seed(), torch.Size([3, 2, 5, K]), net.dropout.threshold)
    keep_prob = net.dropout.threshold / FULL_KEEP
    assert keep_prob == pytest.approx(0.6, abs=1e-5)
    with torch.no_grad():
        q = query.unsqueeze(-2).expand(3, 2, 5, K)
        if kind == "concat":
            layer = torch.nn.Linear(2 * K, K)
            layer.weight.copy_(torch.cat([net.query.weight, net.key.weight], dim=1))
            layer.bias.copy_(net.query.bias)
            hidden = layer(torch.cat([q, keys], dim=-1))
        else:
            hidden = net.query(q * keys)
        hidden = torch.relu(net.norm(hidden)) * keep / keep_prob
        expected = net.out(hidden).squeeze(-1)
    torch.testing.assert_close(psi, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(net(query, keys), psi)  # the generator moved on: another mask
    net.eval()
    plain = net(query, keys).detach()
    net.train()
    draws = 4000  # independent masks in one call
    mean = net(query.expand(draws, 3, 2, K), keys.expand(draws, 3, 2, 5, K)).detach().mean(0)
    torch.testing.assert_close(mean, plain, atol=0.05, rtol=0)


@pytest.mark.parametrize("item_embeddings", ["role", "shared"])
@pytest.mark.parametrize("score_fn", ["concat", "prod"])
def test_fused_model_scores_equal_the_definitions_in_eval_mode(split, score_fn, item_embeddings):
    """Without autograd the definition runs; with it (eval mode: no dropout) the kernels."""
    config = make_config(score_fn=score_fn, item_embeddings=item_embeddings, dropout=0.5)
    model = build_model(split.n_users, split.n_items, config, "cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
    batch = make_batch(split, "pointwise")
    model.eval()
    with torch.no_grad():
        fast = model.expected_logits(batch)
    slow = model.expected_logits(batch).detach()  # grad enabled: the C kernels
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert model.n_users == split.n_users and model.n_items == split.n_items


@pytest.mark.slow
@pytest.mark.parametrize("score_fn", ["concat", "prod"])
def test_compiled_eval_scores_equal_eager_scores(split, score_fn):
    eager = BAMF(split.n_users, split.n_items, make_config(score_fn=score_fn))
    config = make_config(score_fn=score_fn, compile_eval=True)
    compiled = build_model(split.n_users, split.n_items, config, "cpu")
    compiled.load_state_dict(eager.state_dict())
    users = np.repeat(np.arange(10), 7)
    items = np.tile(np.arange(7) * 3, 10)
    args = (users, items, split.history_items, split.history_lengths)
    np.testing.assert_allclose(
        evaluation.score_candidates(compiled, *args),
        evaluation.score_candidates(eager, *args),
        rtol=1e-5,
        atol=1e-5,
    )


# --------------------------------------------------------------------------- vectorised samples


@pytest.mark.parametrize("learning", ["pointwise", "pairwise"])
def test_parallel_predictive_broadcasts_over_samples(split, learning):
    """Sample dims to the left of ``(G, S, L)`` (``Predictive(parallel=True)``) broadcast."""
    config = make_config(learning=learning, prior_loc="key")
    model = BAMF(split.n_users, split.n_items, config)
    model.eval()
    batch = make_batch(split, learning)
    groups, size, width = batch.mask.shape
    sites = ["user_scores", "user_weights", "item_weights", "obs", "_RETURN"]
    predictive = Predictive(
        model.model, guide=model.guide, num_samples=4, parallel=True, return_sites=sites
    )
    with torch.no_grad():
        out = predictive(batch)
        for name in ("user_scores", "user_weights", "item_weights"):
            assert out[name].shape == (4, groups, size, width)
        assert out["obs"].shape == ((4, groups, size) if learning == "pointwise" else (4, groups))
        assert out["_RETURN"].shape == (4, groups, size)
        assert torch.all(out["user_weights"][:, ~batch.mask] == 0)
        assert not torch.equal(out["user_weights"][0], out["user_weights"][1])
        for k in range(4):
            weights = simplex_weights(
                out["user_scores"][k].log(), batch.mask, config.tau, config.beta
            )
            torch.testing.assert_close(out["user_weights"][k], weights)
            logits = model.logits(batch, out["user_weights"][k], out["item_weights"][k])
            torch.testing.assert_close(out["_RETURN"][k], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kl_scale", [0.0, 0.37])
@pytest.mark.parametrize(("learning", "spread"), [("pointwise", "fixed"), ("pairwise", "learned")])
@pytest.mark.parametrize("prior", ["lognormal", "gamma"])
def test_mean_field_elbo_equals_trace_mean_field_elbo_bit_for_bit(
    split, learning, spread, kl_scale, prior
):
    """Same draws: the one-particle fast path (no log-densities the loss never reads, no
    ``Trace_ELBO`` wrapper) gives Pyro's loss and gradients exactly, with the closed-form KL
    (lognormal prior) and the Monte Carlo one (gamma prior)."""
    config = make_config(learning=learning, guide_spread=spread, dropout=0.0, prior_family=prior)
    assert isinstance(make_elbo(config), MeanFieldELBO)
    assert type(make_elbo(config.replace(elbo="trace"))) is Trace_ELBO
    model = BAMF(split.n_users, split.n_items, config)
    batch = make_batch(split, learning)
    losses, grads = [], []
    for elbo in (MeanFieldELBO(ignored=WEIGHT_SITES), TraceMeanField_ELBO()):
        model.zero_grad()
        pyro.set_rng_seed(3)  # the same latent draws for both
        with pyro.validation_enabled(False):  # the fast path only runs without validation
            loss = elbo.differentiable_loss(model.model, model.guide, batch, 0.3, kl_scale)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert losses[0].abs() > 0 and len(grads[0]) == len(grads[1]) > 10
    if prior == "lognormal":
        assert torch.equal(losses[0], losses[1])
        assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    else:  # the Monte Carlo KL: the same terms, summed in another order
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=0)
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_linear_head_is_one_linear_layer_computing_the_affine_heads_functions(split):
    config = make_config(head="linear")
    linear = BAMF(split.n_users, split.n_items, config)
    affine = BAMF(split.n_users, split.n_items, config.replace(head="affine"))
    assert isinstance(linear.head, torch.nn.Linear) and linear.head.weight.shape == (1, K)
    hidden, out = affine.head
    with torch.no_grad():  # h^T(W z + b) = (W^T h)^T z + h^T b
        linear.head.weight.copy_(out.weight @ hidden.weight)
        linear.head.bias.copy_(out.weight @ hidden.bias)
    z = torch.randn(7, K)
    torch.testing.assert_close(linear.head(z), affine.head(z))
    assert set(linear.state_dict()) - set(affine.state_dict()) == {"head.weight", "head.bias"}


# --------------------------------------------------------------------------- attention inputs


@pytest.mark.parametrize("score_fn", ["concat", "prod"])
@pytest.mark.parametrize("item_embeddings", ["role", "shared"])
def test_normalised_attention_inputs_make_the_attention_scale_free(
    split, score_fn, item_embeddings
):
    """With ``attention_inputs = "normalised"`` the attention ignores the embeddings' scale
    (psi and the key prior unchanged when every embedding table is scaled 30x, its inputs at
    unit RMS), while raw inputs let the scale move psi."""
    batch = make_batch(split, "pointwise")
    changes = dict(score_fn=score_fn, item_embeddings=item_embeddings, prior_loc="key")
    for inputs in ("normalised", "raw"):
        pyro.set_rng_seed(0)
        model = BAMF(split.n_users, split.n_items, make_config(attention_inputs=inputs, **changes))
        psi = torch.cat([p.flatten() for p in model.attention_logits(batch)])
        prior = model.user_prior.item_log_means(model.attention_inputs(model.history_vectors()))
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Embedding):
                    module.weight.mul_(30.0)
        scaled = torch.cat([p.flatten() for p in model.attention_logits(batch)])
        if inputs == "normalised":
            torch.testing.assert_close(scaled, psi, rtol=1e-4, atol=1e-5)
            scaled_prior = model.attention_inputs(model.history_vectors())
            torch.testing.assert_close(model.user_prior.item_log_means(scaled_prior), prior)
            rms = model.attention_inputs(model.history_vectors()).pow(2).mean(-1).sqrt()
            torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-4, atol=0)
        else:
            assert (scaled - psi).abs().max() > 1e-2


def test_normalised_attention_inputs_train_the_same_on_the_fast_path(split):
    """The C kernels and row gather read the normalised inputs as the definition does: one SVI
    step gives the same loss and parameters."""
    config = make_config(attention_inputs="normalised", dropout=0.3)
    batch = make_batch(split, "pointwise")
    results = []
    for model in (
        BAMF(split.n_users, split.n_items, config),
        build_model(split.n_users, split.n_items, config.replace(fused_scores=True), "cpu"),
    ):
        torch.manual_seed(0)
        model.load_state_dict(BAMF(split.n_users, split.n_items, config).state_dict())
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        loss = MeanFieldELBO().differentiable_loss(model.model, model.guide, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.detach(), grads))
    assert type(model.user_scorer).__name__ == "FastScoreNetwork"
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
