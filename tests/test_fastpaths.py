"""The fast implementations against the definitions they implement, and the one place that
chooses them (pyro_bamf.fastpaths)."""

from __future__ import annotations

import pytest
import torch

from pyro_bamf import BAMF, BAMFConfig, kernels, register_score_network
from pyro_bamf.attention import FULL_KEEP, ScoreNetwork, concat_network, keep_mask
from pyro_bamf.fastpaths import (
    FastScoreNetwork,
    build_model,
    fast_rows,
    kernel_layout,
    model_options,
    split_norm_scores,
)
from pyro_bamf.model import embedding_rows

K = 8
ITEM_SIDE = ((4, 3, K), (4, 1, 9, K))  # S queries of a group share its keys
USER_SIDE = ((4, K), (4, 9, K))
NESTED = ((2, 2, 3, K), (2, 2, 1, 9, K))  # more leading axes, the same layout
LAYOUTS = [ITEM_SIDE, USER_SIDE, NESTED]


def pair(kind: str, dropout: float, outputs: int) -> tuple[ScoreNetwork, FastScoreNetwork]:
    """A definition and a fused network with the same (perturbed) parameters."""
    definition = ScoreNetwork(K, kind, dropout, outputs)
    with torch.no_grad():
        for param in definition.parameters():
            param.add_(0.3 * torch.randn_like(param))
    fused = FastScoreNetwork(K, kind, dropout, outputs, fused=True)
    fused.load_state_dict(definition.state_dict())
    return definition, fused


def test_the_kernels_draw_the_definitions_dropout_mask():
    for seed, threshold in ((2**61 + 977, 45875), (3, 13107), (2**62 - 1, FULL_KEEP - 1)):
        kernel = kernels.dropout_mask(seed, threshold, 300, K)
        assert torch.equal(kernel, keep_mask(seed, torch.Size([300, K]), threshold))


@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("kind", ["concat", "prod"])
@pytest.mark.parametrize(("query_shape", "key_shape"), LAYOUTS)
def test_kernel_path_equals_the_definition_on_the_same_dropout_mask(
    kind, outputs, query_shape, key_shape, monkeypatch
):
    """Training mode, dropout 0.4: the same seed from the same generator state, hence the same
    mask; values and the gradients of every parameter and input agree."""
    torch.manual_seed(0)
    definition, fused = pair(kind, 0.4, outputs)
    assert kernel_layout(torch.randn(query_shape), torch.randn(key_shape)) is not None
    calls = []
    kernel = getattr(kernels, f"{kind}_scores")
    monkeypatch.setattr(kernels, f"{kind}_scores", lambda *a: calls.append(a[-2:]) or kernel(*a))
    runs = []
    for net in (definition, fused):
        query = torch.randn(query_shape, generator=torch.Generator().manual_seed(1))
        keys = torch.randn(key_shape, generator=torch.Generator().manual_seed(2))
        query.requires_grad_(), keys.requires_grad_()
        torch.manual_seed(7)
        psi = net(query, keys)
        grad = torch.randn(psi.shape, generator=torch.Generator().manual_seed(3))
        runs.append((psi, torch.autograd.grad(psi, [query, keys, *net.parameters()], grad)))
    (want, want_grads), (got, got_grads) = runs
    assert (
        got.shape
        == want.shape
        == torch.broadcast_shapes(query_shape[:-1], key_shape[:-2])
        + (key_shape[-2],)
        + ((2,) if outputs == 2 else ())
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(got_grads) == len(want_grads) > 5
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (want != definition.eval()(*[t.detach() for t in (query, keys)])).any()  # it dropped
    assert len(calls) == 1 and calls[0][1] == fused.dropout.threshold  # the kernel ran, dropping


def test_calls_the_kernels_do_not_cover_run_the_definition():
    torch.manual_seed(0)
    definition, fused = pair("concat", 0.0, 1)
    query, keys = torch.randn(4, K), torch.randn(9, K)  # one key set for every query
    assert kernel_layout(query, keys) is None
    torch.testing.assert_close(fused(query, keys), definition(query, keys))
    definition.double(), fused.double()
    query, keys = query.double(), torch.randn(4, 9, K, dtype=torch.float64)
    assert kernel_layout(query, keys) is None  # float64
    torch.testing.assert_close(fused(query, keys), definition(query, keys))


@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize(("query_shape", "key_shape"), LAYOUTS)
def test_split_norm_scores_equal_the_concat_definition_in_eval_mode(
    outputs, query_shape, key_shape
):
    """What compile_eval compiles for concat: the layer norm from the two parts."""
    torch.manual_seed(0)
    net = pair("concat", 0.2, outputs)[0].eval()
    query = 3 * torch.randn(query_shape) + 1
    keys = 2 * torch.randn(key_shape) - 0.5
    with torch.no_grad():
        split = split_norm_scores(
            query, keys, net.query.weight, net.query.bias, net.key.weight, net.norm.weight,
            net.norm.bias, net.out.weight, net.out.bias, net.norm.eps,
        )  # fmt: skip
        torch.testing.assert_close(split, net(query, keys), rtol=1e-5, atol=1e-5)


def test_model_options_choose_from_the_config_and_the_device():
    config = BAMFConfig(embedding_dim=K, compile_eval=False)
    cpu = model_options(config, "cpu")
    assert cpu["gather_rows"] is fast_rows
    assert cpu["score_network"].func is FastScoreNetwork
    assert cpu["score_network"].keywords == {"kind": "concat", "fused": True, "compiled": False}
    assert model_options(config, "cuda") == {}  # the kernels are CPU code
    assert model_options(config.replace(fused_scores=False), "cpu") == {}
    compiled = model_options(config.replace(score_fn="prod", compile_eval=True), "cuda")
    assert compiled["score_network"].keywords == {"kind": "prod", "fused": False, "compiled": True}
    register_score_network("concat_copy", concat_network, replace=True)
    copy = model_options(config.replace(score_fn="concat_copy"), "cpu")  # the built-in factory
    assert copy["score_network"].keywords["kind"] == "concat"
    try:  # a user's network runs as written, even under a built-in's name
        register_score_network("concat", torch.nn.Bilinear, replace=True)
        assert "score_network" not in model_options(config, "cpu")
    finally:
        register_score_network("concat", concat_network, replace=True)


def test_the_fast_model_is_the_same_model():
    """Same parameters (names, shapes, initial values for one seed) as the definition."""
    config = BAMFConfig(embedding_dim=K, score_fn="prod", guide_spread="learned")
    torch.manual_seed(4)
    plain = BAMF(20, 30, config)
    torch.manual_seed(4)
    fast = build_model(20, 30, config, "cpu")
    assert isinstance(fast.user_scorer, FastScoreNetwork)
    assert type(plain.user_scorer) is ScoreNetwork
    plain_state, fast_state = plain.state_dict(), fast.state_dict()
    assert list(plain_state) == list(fast_state)
    assert all(torch.equal(plain_state[key], fast_state[key]) for key in plain_state)


def test_fast_rows_equal_embedding_rows_values_and_gradients():
    table = torch.randn(50, K, requires_grad=True)
    index = torch.randint(50, (7, 3))
    grad = torch.randn(7, 3, K)
    got = fast_rows(table, index)
    (got_grad,) = torch.autograd.grad(got, table, grad)
    want = embedding_rows(table, index)
    (want_grad,) = torch.autograd.grad(want, table, grad)
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    assert torch.equal(fast_rows(table.double(), index), embedding_rows(table.double(), index))
