"""Minibatch SVI for BAMF with KL annealing and early stopping on leave-one-out NDCG@10.

The objective per batch of ``n`` examples with ``n_valid`` unmasked attention weights::

    kl_weight = "mean" (the paper):  NLL / n + lambda * (KL_user + KL_item) / (2 n_valid)
    kl_weight = "elbo" (exact ELBO): (NLL + lambda * (KL_user + KL_item)) / n

``lambda = min(1, (epoch - 1) / kl_anneal_epochs)`` (1 without annealing). ``loss_reduction =
"sum"`` multiplies the batch objective by ``n`` (the paper's summed BCE/BPR formulas): the
gradient direction is unchanged, but Adam's coupled weight decay then regularises ``n`` times
more weakly (with the mean and the affine head, pairwise training collapses to zero; with
``head = "linear"`` it does not: docs/results.md). Both are written as
``poutine.scale`` factors on the likelihood and, identically in model and guide, on the latent
sites; the loss is Pyro's ``differentiable_loss`` under one fused ``torch.optim.Adam``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO, is_validation_enabled
from pyro.poutine.util import prune_subsample_sites
from torch import nn
from torch.distributions import kl_divergence
from tqdm.auto import tqdm

from .allocator import retain_freed_memory
from .batch import Batch, groups_per_batch, training_batches
from .config import BAMFConfig
from .distributed import DistributedContext
from .evaluation import ranks_nothing, score_candidates
from .metrics import ranking_metrics
from .model import BAMF, WEIGHT_SITES

LATENT_SITES = ("user_scores", "item_scores")


class TrainingCollapsed(RuntimeError):
    """Training stopped: for ``patience`` epochs in a row the model gave each user's
    leave-one-out candidates one score, so it ranks nothing (see :func:`fit`)."""


def kl_lambda(config: BAMFConfig, epoch: int) -> float:
    """KL weight of 1-based ``epoch``: linear from 0 over ``kl_anneal_epochs``, then 1."""
    if config.kl_anneal_epochs == 0:
        return 1.0
    return min(1.0, (epoch - 1) / config.kl_anneal_epochs)


def loss_scales(config: BAMFConfig, batch: Batch, weight: float) -> tuple[float, float]:
    """``(obs_scale, kl_scale)`` for ``batch`` under KL weight ``weight`` (see module doc)."""
    n = batch.n_examples
    total = n if config.loss_reduction == "sum" else 1.0
    if config.kl_weight == "mean":
        return total / n, total * weight / (2 * max(batch.n_valid, 1))
    return total / n, total * weight / n


class MeanFieldELBO:
    """The loss of ``TraceMeanField_ELBO`` (one particle) for reparameterised guides, evaluating
    only what that loss reads; built on Pyro's public ``poutine`` API.

    Each latent site takes its KL in closed form where torch's KL registry has the pair
    (``kl_divergence``), else the one-draw Monte Carlo estimate ``log q(s) - log p(s)`` at the
    guide's draw, as ``TraceMeanField_ELBO`` does. Pyro evaluates ``log_prob`` at every model
    site and the score parts of every guide site; here only the observed sites' and the Monte
    Carlo sites' log-densities are evaluated, and not those of the ``ignored`` sites
    (``pyro.deterministic`` sites), so the loss is bit-identical with closed-form KLs and equal
    to float rounding with Monte Carlo ones (tested), and a step ~4 ms cheaper at L = 300.
    With Pyro's validation on, ``TraceMeanField_ELBO`` itself runs.

    After each loss, ``traces`` holds its ``(model_trace, guide_trace)``, ``kl_sums`` maps every
    latent site to its unscaled KL sum (detached; ``None`` after a validated loss) and
    ``kl_methods`` to ``"analytic"`` or ``"monte_carlo"``, so that logging needs neither a
    second trace nor a second KL.
    """

    def __init__(self, ignored: tuple[str, ...] = ()) -> None:
        self.ignored = frozenset(ignored)
        self.traces: tuple | None = None
        self.kl_sums: dict[str, torch.Tensor] | None = None
        self.kl_methods: dict[str, str] = {}

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``KL(q || p) - E_q[log p(obs | s)]`` of one draw ``s ~ q``, differentiable."""
        self.traces = self.kl_sums = None
        self.kl_methods = {}
        if is_validation_enabled():
            traced_model, traced_guide = poutine.trace(model), poutine.trace(guide)
            elbo = TraceMeanField_ELBO()
            loss = elbo.differentiable_loss(traced_model, traced_guide, *args, **kwargs)
            self.traces = (traced_model.trace, traced_guide.trace)
            return loss
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(replayed, graph_type="flat").get_trace(*args, **kwargs)
        guide_trace = prune_subsample_sites(guide_trace)  # the plates' sites, as Pyro does
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob(
            lambda name, site: site["is_observed"] and self._scored(name, site)
        )
        elbo, kl_sums, methods = 0, {}, {}
        for name, model_site in model_trace.nodes.items():
            if not self._scored(name, model_site):
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            kl_qp, methods[name] = site_kl(guide_site, model_site)
            kl_sums[name] = kl_qp.detach().sum()
            kl_qp = scale_and_mask(kl_qp, scale=guide_site["scale"], mask=guide_site["mask"])
            elbo = elbo - kl_qp.sum()
        loss = -elbo
        self.traces, self.kl_sums, self.kl_methods = (model_trace, guide_trace), kl_sums, methods
        return loss

    def _scored(self, name: str, site: dict) -> bool:
        """Whether a trace site enters the ELBO: sample sites but the ``ignored`` ones."""
        return site["type"] == "sample" and name not in self.ignored


def site_kl(guide_site: dict, model_site: dict) -> tuple[torch.Tensor, str]:
    """``KL(q || p)`` of a latent site, unscaled, and how it was taken: ``"analytic"`` where
    torch's KL registry has the pair, else ``"monte_carlo"``, ``log q(s) - log p(s)`` at the
    guide's draw ``s``. The guide must be reparameterised: the likelihood's gradient reaches
    it only through its draw (this loss has no score-function term)."""
    q, p = guide_site["fn"], model_site["fn"]
    if not q.has_rsample:
        raise ValueError(
            f"site {guide_site['name']!r}: the guide's {type(q).__name__} is not "
            "reparameterised (has_rsample is False); BAMF's ELBO needs a guide family that is"
        )
    try:
        return kl_divergence(q, p), "analytic"
    except NotImplementedError:
        value = guide_site["value"]
        return q.log_prob(value) - p.log_prob(value), "monte_carlo"


def make_optimizer(model: nn.Module, config: BAMFConfig) -> torch.optim.Adam:
    """``Adam(lr, weight_decay)`` over every parameter, as one fused kernel (``fused=True``).

    The fused kernel (CPU and CUDA) takes ~1.1 ms a step at the paper's settings against
    ~4.8 ms for PyTorch's default single-tensor loop on the CPU; it is the same update up to
    float32 rounding (~1e-8 apart after 10-50 steps) and deterministic. A resumed run keeps
    the implementation saved with its optimiser state.
    """
    return torch.optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )


def make_elbo(config: BAMFConfig):
    """:class:`MeanFieldELBO` (the loss of ``TraceMeanField_ELBO``: closed-form KL where the
    pair has one) or ``Trace_ELBO`` (sampled KL)."""
    if config.elbo == "trace":
        return Trace_ELBO()
    return MeanFieldELBO(ignored=WEIGHT_SITES)


def kl_method(elbo, model_trace, guide_trace) -> str:
    """How ``elbo`` took the KL of the latent sites in these traces: ``"analytic"``,
    ``"monte_carlo"``, or ``"site: method; ..."`` when the sites differ."""
    if not isinstance(elbo, MeanFieldELBO):  # Trace_ELBO samples every KL
        methods = dict.fromkeys(LATENT_SITES, "monte_carlo")
    elif elbo.kl_methods:
        methods = elbo.kl_methods
    else:  # Pyro's validation was on: TraceMeanField_ELBO ran, deciding as site_kl does
        nodes = guide_trace.nodes, model_trace.nodes
        methods = {name: site_kl(nodes[0][name], nodes[1][name])[1] for name in LATENT_SITES}
    if len(set(methods.values())) == 1:
        return next(iter(methods.values()))
    return "; ".join(f"{name}: {method}" for name, method in methods.items())


@dataclass
class StepTerms:
    """Unscaled sums of one step: likelihood NLL over examples, KL over unmasked weights."""

    loss: float
    nll: float
    n_examples: int
    kl: float
    n_weights: int


class NegativeELBO(nn.Module):
    """The scaled negative ELBO of a batch as a module (so that DDP can wrap it); the traces
    of its last call are kept in ``traces`` for :func:`step_terms`."""

    def __init__(self, model: BAMF, elbo) -> None:
        super().__init__()
        self.model, self.elbo = model, elbo
        self.named_params = tuple(model.named_parameters())  # for the gradient check
        self.traces = None
        self.kl_sums = None

    def forward(self, batch: Batch, obs_scale: float, kl_scale: float) -> torch.Tensor:
        if isinstance(self.elbo, MeanFieldELBO):  # it keeps its traces and KL sums
            model, guide = self.model.model, self.model.guide
            loss = self.elbo.differentiable_loss(model, guide, batch, obs_scale, kl_scale)
            self.traces, self.kl_sums = self.elbo.traces, self.elbo.kl_sums
            return loss
        traced_model = poutine.trace(self.model.model)
        traced_guide = poutine.trace(self.model.guide)
        loss = self.elbo.differentiable_loss(traced_model, traced_guide, batch, obs_scale, kl_scale)
        self.traces = (traced_model.trace, traced_guide.trace)
        self.kl_sums = getattr(self.elbo, "kl_sums", None)
        return loss


def svi_step(
    model: BAMF,
    elbo,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    obs_scale: float,
    kl_scale: float,
    objective: nn.Module | None = None,
) -> StepTerms:
    """One gradient step on the scaled negative ELBO; returns its terms for logging.

    ``objective``: a :class:`NegativeELBO` of ``model``, possibly wrapped in DDP (which
    averages the gradients over ranks); by default a fresh one.
    """
    objective = NegativeELBO(model, elbo) if objective is None else objective
    optimizer.zero_grad(set_to_none=True)
    loss = objective(batch, obs_scale, kl_scale)
    inner = getattr(objective, "module", objective)
    terms = step_terms(*inner.traces, batch, loss.item(), inner.kl_sums)
    if isinstance(objective, nn.parallel.DistributedDataParallel):
        # every rank must take the same branch, or the others hang in the gradient all-reduce
        total = torch.tensor([terms.loss], dtype=torch.float64, device=loss.device)
        torch.distributed.all_reduce(total)
        if not math.isfinite(float(total)) and math.isfinite(terms.loss):
            raise FloatingPointError("non-finite loss on another rank")
    if not math.isfinite(terms.loss):
        bad = "NLL" if not math.isfinite(terms.nll) else "KL"
        raise FloatingPointError(f"non-finite loss ({bad} term went bad)")
    loss.backward()
    grads = [(name, p.grad) for name, p in inner.named_params if p.grad is not None]
    if not gradients_finite([grad for _, grad in grads]):
        bad = [name for name, grad in grads if not bool(torch.isfinite(grad).all())]
        raise FloatingPointError(f"non-finite gradient of {', '.join(bad)} (loss {terms.loss:.4g})")
    optimizer.step()
    return terms


def gradients_finite(grads: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor in ``grads`` is finite.

    One sum per tensor, stacked: a sum is finite when every element is (NaN and inf carry
    through it); only when the sums are not, because an element is not or because finite
    values overflowed the sum, is each tensor checked element by element.
    """
    if not grads:
        return True
    if bool(torch.stack([grad.sum() for grad in grads]).isfinite().all()):
        return True
    return all(bool(grad.isfinite().all()) for grad in grads)


@torch.no_grad()
def step_terms(
    model_trace, guide_trace, batch: Batch, loss: float, kl_sums: dict | None = None
) -> StepTerms:
    """Unscaled NLL and KL sums of traced model and guide (closed-form KL where registered);
    ``kl_sums`` (per latent site, from :class:`MeanFieldELBO`) saves computing the KL again."""
    obs = model_trace.nodes["obs"]
    log_p = obs.get("unscaled_log_prob")
    nll = -float((obs["fn"].log_prob(obs["value"]) if log_p is None else log_p).sum())
    if kl_sums is not None:
        kl = sum(float(kl_sums[name]) for name in LATENT_SITES)
        return StepTerms(loss, nll, batch.n_examples, kl, 2 * batch.n_valid)
    nodes = guide_trace.nodes, model_trace.nodes
    kl = sum(float(site_kl(nodes[0][name], nodes[1][name])[0].sum()) for name in LATENT_SITES)
    return StepTerms(loss, nll, batch.n_examples, kl, 2 * batch.n_valid)


@dataclass
class EpochLog:
    """One row of ``history.csv``."""

    epoch: int
    nll: float
    kl: float
    kl_weight: float
    loo_ndcg10: float
    seconds: float
    kl_method: str = ""  # "analytic", "monte_carlo" (see kl_method); empty in older runs


class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement of more than ``min_delta``.

    The patience counter is held at zero during the first ``warmup`` epochs.
    """

    def __init__(self, patience: int, min_delta: float, warmup: int) -> None:
        self.patience, self.min_delta, self.warmup = patience, min_delta, warmup
        self.best = -math.inf
        self.best_epoch = 0
        self.waited = 0

    def update(self, epoch: int, value: float) -> bool:
        """Record ``value`` of ``epoch``; return whether it is the new best."""
        improved = value > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.waited = value, epoch, 0
        elif epoch > self.warmup:
            self.waited += 1
        return improved

    @property
    def stop(self) -> bool:
        return self.waited >= self.patience


@dataclass
class FitResult:
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_loo_ndcg10: float = -math.inf


@dataclass
class TrainState:
    """Everything needed to continue training after a finished epoch, bit for bit.

    ``sampler`` is the negative sampler's ``bit_generator.state``; ``torch_rng`` (and
    ``cuda_rng`` on a GPU) torch's generator states (dropout masks and latent draws). The tensors
    are the live state of the model and optimiser: save or copy them inside ``on_epoch``.
    """

    epoch: int
    model: dict
    optimizer: dict
    best_model: dict
    best_epoch: int
    best_value: float
    waited: int
    history: list[EpochLog]
    sampler: dict
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "history": [asdict(row) for row in self.history]}

    @classmethod
    def from_dict(cls, values: dict) -> TrainState:
        history = [EpochLog(**row) for row in values["history"]]
        return cls(**{**values, "history": history})


def fit(
    model: BAMF,
    split,
    config: BAMFConfig,
    loo_candidates,
    progress: bool = True,
    on_epoch: Callable[[EpochLog, TrainState], None] | None = None,
    resume: TrainState | None = None,
    distributed: DistributedContext | None = None,
) -> FitResult:
    """Train ``model`` on ``split.train``; keep the weights of the best LOO NDCG@10 epoch.

    Randomness comes from torch's global generator (seed it with ``pyro.set_rng_seed``) and a
    negative-sampling generator derived from ``config.seed``. ``on_epoch(row, state)`` is
    called after every epoch with a :class:`TrainState` from which ``resume`` continues.
    ``distributed``: train data-parallel under DDP (see :mod:`pyro_bamf.distributed`); every
    rank evaluates the same leave-one-out pool with the same weights, so all ranks stop
    together; global batches with fewer groups than ranks are skipped.

    Pyro's validation is set to ``config.pyro_validation`` while training (off by default:
    loss and gradients are checked for NaN and inf at every step either way). With
    ``config.retain_freed_memory`` (opt-in), glibc is first told to keep freed memory for the
    next step (:func:`pyro_bamf.allocator.retain_freed_memory`: process-wide).

    Raises :class:`TrainingCollapsed` after ``patience`` epochs in a row in which every
    user's leave-one-out candidates all got one score (the model ranks nothing; the LOO
    NDCG@10 is then 0 with pessimistic ties), after ``on_epoch`` has seen the last one; a
    resumed run counts those epochs afresh.
    """
    if config.retain_freed_memory:
        retain_freed_memory()
    with pyro.validation_enabled(config.pyro_validation):
        return _fit(model, split, config, loo_candidates, progress, on_epoch, resume, distributed)


def _fit(model, split, config, loo_candidates, progress, on_epoch, resume, distributed):
    rng = np.random.default_rng([config.seed, 1])
    elbo = make_elbo(config)
    objective = NegativeELBO(model, elbo)
    ranks = 1
    if distributed is not None and distributed.world_size > 1:
        if resume is not None:
            raise ValueError("resuming a distributed run is not supported: start it again")
        ranks = distributed.world_size
        objective = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
        if distributed.rank > 0:
            torch.manual_seed(int(np.random.SeedSequence([config.seed, distributed.rank])
                                  .generate_state(1)[0]))  # fmt: skip
    optimizer = make_optimizer(model, config)
    stopper = EarlyStopping(config.patience, config.min_delta, config.warmup_epochs)
    device = next(model.parameters()).device
    result = FitResult()
    best_state = copy.deepcopy(model.state_dict())
    first, collapsed = 1, 0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        best_state = resume.best_model
        stopper.best, stopper.best_epoch = resume.best_value, resume.best_epoch
        stopper.waited = resume.waited
        result.history = list(resume.history)
        rng.bit_generator.state = resume.sampler
        torch.set_rng_state(resume.torch_rng)
        if resume.cuda_rng:
            torch.cuda.set_rng_state_all(resume.cuda_rng)
        first = resume.epoch + 1
    for epoch in range(first, config.max_epochs + 1):
        if stopper.stop:
            break
        start = time.perf_counter()
        weight = kl_lambda(config, epoch)
        model.train()
        sums = np.zeros(4)
        batches = training_batches(split, config, rng)
        n_batches = -(-len(split.train) // groups_per_batch(config))
        batches = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", disable=not progress)
        for step, batch in enumerate(batches, 1):
            scales = loss_scales(config, batch, weight)
            if ranks > 1:
                if len(batch.users) < ranks:
                    continue
                batch, scales = distributed.shard(batch), tuple(ranks * s for s in scales)
            batch = batch.to(device)
            try:
                terms = svi_step(model, elbo, optimizer, batch, *scales, objective=objective)
            except FloatingPointError as err:
                raise FloatingPointError(f"epoch {epoch}, step {step}: {err}") from None
            sums += (terms.nll, terms.n_examples, terms.kl, terms.n_weights)
        if ranks > 1:
            sums = np.array(distributed.sum(sums.tolist()))
        loo = loo_candidates
        scores = score_candidates(
            model, loo.users, loo.items, split.history_items, split.history_lengths
        )
        ndcg = ranking_metrics(loo.users, loo.labels, scores, ks=(10,), ties=config.ties)
        collapsed = collapsed + 1 if ranks_nothing(loo.users, scores) else 0
        traces = getattr(objective, "module", objective).traces
        row = EpochLog(
            epoch=epoch,
            nll=float(sums[0] / sums[1]),
            kl=float(sums[2] / max(sums[3], 1)),
            kl_weight=weight,
            loo_ndcg10=ndcg["ndcg@10"],
            seconds=time.perf_counter() - start,
            kl_method="" if traces is None else kl_method(elbo, *traces),
        )
        result.history.append(row)
        if stopper.update(epoch, row.loo_ndcg10):
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            state = TrainState(
                epoch=epoch,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                best_model=best_state,
                best_epoch=stopper.best_epoch,
                best_value=stopper.best,
                waited=stopper.waited,
                history=list(result.history),
                sampler=rng.bit_generator.state,
                torch_rng=torch.get_rng_state(),
                cuda_rng=torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            )
            on_epoch(row, state)
        if collapsed >= config.patience:
            raise TrainingCollapsed(
                f"epoch {epoch}: for {collapsed} epochs every user's leave-one-out candidates "
                f"all scored the same (training NLL {row.nll:.6g}): the model collapsed and "
                "ranks nothing. Weight decay can pull the embeddings to zero before the "
                "data's gradient takes hold (pairwise BPR is the known case, docs/results.md); "
                "try another seed or weaker decay (a smaller weight_decay, or "
                "loss_reduction='sum')"
            )
    model.load_state_dict(best_state)
    result.best_epoch, result.best_loo_ndcg10 = stopper.best_epoch, stopper.best
    return result
