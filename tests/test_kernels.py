"""The C kernel of the ``concat`` training score (pyro_bamf.kernels) against plain PyTorch."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_bamf import atomic, kernels

K = 8


def reference_scores(query_part, key_part, norm_w, norm_b, out_w, out_b, keep):
    """``w . (keep * ReLU(LN(a_q + a_k))) + b`` formed pair by pair with torch ops."""
    hidden = query_part.unsqueeze(2) + key_part.unsqueeze(1)  # (G, S, L, K)
    hidden = torch.nn.functional.layer_norm(hidden, (hidden.shape[-1],), norm_w, norm_b, 1e-5)
    return torch.nn.functional.linear(torch.relu(hidden) * keep, out_w, out_b)


def leaves(groups, size, length, outputs, dim=K, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(groups, size, dim), (groups, length, dim), (dim,), (dim,)]
    shapes += [(outputs, dim), (outputs,)]
    scales = [2.0, 1.5, 0.5, 0.5, 1.0, 1.0]
    offsets = [0.3, -0.2, 1.0, 0.0, 0.0, 0.0]
    return [
        (offset + scale * torch.randn(shape, generator=gen)).requires_grad_()
        for shape, scale, offset in zip(shapes, scales, offsets, strict=True)
    ]


def gradients(scores, grad, tensors):
    return torch.autograd.grad(scores, tensors, grad)


def prod_leaves(groups, size, length, outputs, seed=0):
    """``query, keys, W, b`` and the layer-norm / projection tensors of :func:`leaves`."""
    gen = torch.Generator().manual_seed(seed + 1)
    layer = [0.4 * torch.randn(K, K, generator=gen), 0.2 * torch.randn(K, generator=gen)]
    first = leaves(groups, size, length, outputs, seed=seed)
    return first[:2] + [t.requires_grad_() for t in layer] + first[2:]


def reference_prod_scores(query, keys, weight, bias, *tail):
    """``w . (keep * ReLU(LN(W (q * k) + b))) + b_o`` formed pair by pair with torch ops."""
    norm_w, norm_b, out_w, out_b, keep = tail
    hidden = torch.nn.functional.linear(query.unsqueeze(2) * keys.unsqueeze(1), weight, bias)
    hidden = torch.nn.functional.layer_norm(hidden, (hidden.shape[-1],), norm_w, norm_b, 1e-5)
    return torch.nn.functional.linear(torch.relu(hidden) * keep, out_w, out_b)


@pytest.mark.parametrize("kind", ["concat", "prod"])
@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize(("groups", "size", "length"), [(5, 3, 11), (19, 1, 7), (1, 2, 1)])
def test_kernel_equals_pytorch_with_its_own_dropout_mask(kind, groups, size, length, outputs):
    if kind == "concat":
        tensors = leaves(groups, size, length, outputs)
        kernel, reference = kernels.concat_scores, reference_scores
    else:
        tensors = prod_leaves(groups, size, length, outputs)
        kernel, reference = kernels.prod_scores, reference_prod_scores
    threshold = round(0.75 * kernels.FULL_KEEP)
    seed = 987654321987
    keep = kernels.dropout_mask(seed, threshold, groups * size * length, K)
    keep = keep.view(groups, size, length, K).float()
    grad = torch.randn(groups, size, length, outputs)
    grad[:, :, -1] = 0.0  # a masked position: skipped by the backward pass
    grad[0, 0, 0] = 1.0  # at least one pair carries a gradient
    fast = kernel(*tensors, 1e-5, seed, threshold)
    slow = reference(*tensors, keep)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    for got, want in zip(
        gradients(fast, grad, tensors), gradients(slow, grad, tensors), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_prod_kernel_at_a_large_embedding_size_equals_pytorch():
    """The gradient of W (K x K floats) accumulates in heap memory: at K = 2048 (16 MB) the
    stack copy it once had crashed an OpenMP thread (found by tests/test_config_space.py)."""
    big, gen = 2048, torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(2, 2, big, generator=gen),
        torch.randn(2, 3, big, generator=gen),
        0.02 * torch.randn(big, big, generator=gen),
        0.1 * torch.randn(big, generator=gen),
        1 + 0.1 * torch.randn(big, generator=gen),
        0.1 * torch.randn(big, generator=gen),
        0.1 * torch.randn(1, big, generator=gen),
        torch.zeros(1),
    ]
    tensors = [t.requires_grad_() for t in tensors]
    fast = kernels.prod_scores(*tensors, 1e-5, seed=0, keep_threshold=kernels.FULL_KEEP)
    slow = reference_prod_scores(*tensors, torch.ones(2, 2, 3, big))
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    grad = torch.randn(fast.shape, generator=gen)
    for got, want in zip(
        gradients(fast, grad, tensors), gradients(slow, grad, tensors), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_kernel_without_dropout_keeps_everything():
    tensors = leaves(4, 3, 6, 1)
    fast = kernels.concat_scores(*tensors, 1e-5, seed=123, keep_threshold=kernels.FULL_KEEP)
    slow = reference_scores(*tensors, torch.ones(4, 3, 6, K))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert kernels.dropout_mask(5, kernels.FULL_KEEP, 100, K).all()
    assert not kernels.dropout_mask(5, 0, 100, K).any()


def test_dropout_mask_keep_rate_independence_and_seeding():
    pairs, threshold = 20000, round(0.8 * kernels.FULL_KEEP)
    mask = kernels.dropout_mask(42, threshold, pairs, K)
    rate = mask.float().mean().item()
    se = math.sqrt(0.8 * 0.2 / mask.numel())
    assert abs(rate - threshold / kernels.FULL_KEEP) < 5 * se
    flat = mask.flatten().float()
    neighbours = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()
    assert abs(neighbours) < 5 / math.sqrt(flat.numel())  # consecutive elements uncorrelated
    per_feature = mask.float().mean(0)  # every feature dropped at the same rate
    assert (per_feature - 0.8).abs().max().item() < 5 * math.sqrt(0.16 / pairs)
    assert torch.equal(mask, kernels.dropout_mask(42, threshold, pairs, K))
    assert (mask != kernels.dropout_mask(43, threshold, pairs, K)).float().mean() > 0.2


@pytest.mark.parametrize("kind", ["concat", "prod"])
def test_results_do_not_depend_on_the_number_of_threads(kind):
    tensors = leaves(40, 5, 30, 2) if kind == "concat" else prod_leaves(40, 5, 30, 2)
    kernel = kernels.concat_scores if kind == "concat" else kernels.prod_scores
    grad = torch.randn(40, 5, 30, 2)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            scores = kernel(*tensors, 1e-5, 7, 50000)
            runs.append((scores.detach(), *gradients(scores, grad, tensors)))
    finally:
        torch.set_num_threads(threads)
    for one, three in zip(*runs, strict=True):
        assert torch.equal(one, three)


def test_bad_inputs_are_refused_with_the_problem_named():
    tensors = leaves(2, 3, 4, 1)
    with pytest.raises(ValueError, match="float32 CPU"):
        kernels.concat_scores(*[t.double() for t in tensors], 1e-5)
    with pytest.raises(ValueError, match=r"keys must be \(G, L, K\)"):
        kernels.concat_scores(tensors[0], tensors[1][:1], *tensors[2:], 1e-5)
    three = torch.randn(3, K)
    with pytest.raises(ValueError, match="O <= 2"):
        kernels.concat_scores(*tensors[:4], three, torch.zeros(3), 1e-5)
    with pytest.raises(ValueError, match="keep_threshold"):
        kernels.concat_scores(*tensors, 1e-5, 0, kernels.FULL_KEEP + 1)


def test_missing_compiler_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_libraries", {})
    monkeypatch.setenv("BAMF_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-bamf")
    with pytest.raises(kernels.KernelUnavailableError, match="fused_scores = false"):
        kernels.library(K)
    assert list(tmp_path.iterdir()) == []


def test_missing_compilers_are_named_before_training(monkeypatch, tmp_path):
    from pyro_bamf.config import BAMFConfig

    monkeypatch.setenv("CXX", "no-such-cxx-bamf")
    monkeypatch.setenv("BAMF_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_libraries", {})
    cpu = torch.device("cpu")
    kernels.check_build_tools(BAMFConfig(compile_eval=False, embedding_dim=K), cpu)  # C found
    with pytest.raises(kernels.KernelUnavailableError, match="'no-such-cxx-bamf' was not found"):
        kernels.check_build_tools(BAMFConfig(compile_eval=True, embedding_dim=K), cpu)
    monkeypatch.delenv("CXX")
    assert kernels.cxx_compiler().endswith(("g++", "c++", "clang++"))  # found on the PATH
    monkeypatch.setattr(kernels, "_libraries", {})  # not built in this process yet
    monkeypatch.setenv("CC", "no-such-compiler-bamf")
    with pytest.raises(kernels.KernelUnavailableError, match="fused_scores = false"):
        kernels.check_build_tools(BAMFConfig(compile_eval=False), cpu)
    kernels.check_build_tools(BAMFConfig(compile_eval=True), torch.device("cuda"))  # CPU only


def test_check_build_tools_loads_every_library_the_config_trains_with(monkeypatch, tmp_path):
    from pyro_bamf.config import BAMFConfig

    monkeypatch.setenv("BAMF_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_libraries", {})
    cpu = torch.device("cpu")
    kernels.check_build_tools(BAMFConfig(fused_scores=False, compile_eval=False), cpu)
    assert kernels._libraries == {} and list(tmp_path.iterdir()) == []
    prod = BAMFConfig(score_fn="prod", embedding_dim=K, compile_eval=False)
    kernels.check_build_tools(prod, cpu)
    assert set(kernels._libraries) == {("prod", K), ("concat", K)}  # scores and row gather
    assert len(list(tmp_path.glob("*.so"))) == 2


def test_failing_compiler_is_named_on_the_first_line_before_training(monkeypatch, tmp_path):
    from pyro_bamf.config import BAMFConfig

    script = tmp_path / "broken-cc"
    script.write_text("#!/bin/sh\necho 'cc1: internal compiler error: bamf' >&2\nexit 3\n")
    script.chmod(0o755)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BAMF_KERNEL_CACHE", str(cache))
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setattr(kernels, "_libraries", {})
    config = BAMFConfig(embedding_dim=K, compile_eval=False)
    with pytest.raises(kernels.KernelUnavailableError) as info:
        kernels.check_build_tools(config, torch.device("cpu"))
    message = str(info.value)
    assert "\n" not in message and "set fused_scores = false" in message
    assert f"with {script} failed (exit 3: cc1: internal compiler error: bamf)" in message
    assert list(cache.iterdir()) == []
    kernels.check_build_tools(config, torch.device("cuda"))  # no kernel off the CPU


def test_a_compiler_that_cannot_run_is_named_not_the_cache(monkeypatch, tmp_path):
    from pyro_bamf.config import BAMFConfig

    script = tmp_path / "cc-without-interpreter"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    monkeypatch.setenv("BAMF_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setattr(kernels, "_libraries", {})
    with pytest.raises(kernels.KernelUnavailableError) as info:
        kernels.check_build_tools(BAMFConfig(embedding_dim=K), torch.device("cpu"))
    assert str(info.value).startswith(f"the C compiler {script} cannot be run (")
    assert "fused_scores = false" in str(info.value) and "cache" not in str(info.value)


def test_unusable_kernel_cache_is_named_with_the_way_on(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_libraries", {})
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    monkeypatch.setenv("BAMF_KERNEL_CACHE", str(taken))
    remedy = "set BAMF_KERNEL_CACHE to a writable folder, or set fused_scores = false"
    with pytest.raises(kernels.KernelUnavailableError) as info:
        kernels.library(K)
    assert str(info.value) == (
        f"the kernel cache folder {taken} cannot be written (File exists): {remedy}"
    )
    cache = tmp_path / "cache"
    monkeypatch.setenv("BAMF_KERNEL_CACHE", str(cache))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    for module, name in ((atomic, "_new_file_beside"), (atomic.os, "replace")):
        with monkeypatch.context() as patch:  # a read-only folder (root may write to any)
            patch.setattr(module, name, refuse)
            with pytest.raises(kernels.KernelUnavailableError) as info:
                kernels.library(K)
        assert str(info.value) == (
            f"the kernel cache folder {cache} cannot be written (Permission denied): {remedy}"
        )
        assert list(cache.iterdir()) == []


def test_failed_compilation_of_the_evaluation_scores_names_compile_eval(monkeypatch):
    from pyro_bamf import fastpaths

    def compiled(*args):
        raise RuntimeError("no working C++ compiler\nthe compiler's own lines")

    monkeypatch.setattr(fastpaths, "compiled", lambda function: compiled)
    net = fastpaths.FastScoreNetwork(K, "concat", dropout=0.2, compiled=True).eval()
    with torch.no_grad(), pytest.raises(kernels.KernelUnavailableError) as info:
        net(torch.randn(3, K), torch.randn(3, 7, K))
    message = str(info.value)
    assert "compile_eval = false" in message and "(RuntimeError: no working C++" in message
    assert "\n" not in message and isinstance(info.value.__cause__, RuntimeError)


def test_failed_build_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_libraries", {})
    monkeypatch.setenv("BAMF_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with pytest.raises(kernels.KernelUnavailableError, match="failed"):
        kernels.library(K)
    assert list(tmp_path.iterdir()) == []


def test_damaged_cache_entry_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_libraries", {})
    monkeypatch.setenv("BAMF_KERNEL_CACHE", str(tmp_path))
    path = kernels.library_path(K)
    path.write_bytes(b"not a shared library")  # e.g. a copy cut short
    lib = kernels.library(K)
    assert path.read_bytes() != b"not a shared library"
    mask = torch.empty(4 * K, dtype=torch.uint8)
    lib.concat_dropout_mask(1, kernels.FULL_KEEP, 4, mask.data_ptr())
    assert mask.all()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_gather_rows_matches_embedding_bit_for_bit():
    table = torch.randn(50, K, requires_grad=True)
    index = torch.randint(50, (7, 13))
    index[0, :5] = 3  # repeated rows accumulate in index order, as torch's backward does
    grad = torch.randn(7, 13, K)
    got = kernels.gather_rows(table, index)
    want = torch.nn.functional.embedding(index, table)
    assert torch.equal(got, want)
    (d_got,) = torch.autograd.grad(got, table, grad)
    (d_want,) = torch.autograd.grad(want, table, grad)
    assert torch.equal(d_got, d_want)
    with pytest.raises(ValueError, match="int64"):
        kernels.gather_rows(table, index.int())
    with pytest.raises(ValueError, match="float32 CPU table"):
        kernels.gather_rows(table.double(), index)
