"""The attention score networks of training as one C kernel per pass (forward, backward).

In eager PyTorch the score network of a batch writes and re-reads a dozen ``(G, S, L, K)``
tensors (the pre-activation, layer-norm statistics and output, the dropout mask, ReLU, their
gradients): ~70 % of a training step. ``csrc/concat_scores.c`` and ``csrc/prod_scores.c``
compute, per (example, history item) pair and without storing any ``(pair, K)`` tensor::

    psi = w . (keep * ReLU(LN(A))) + b     concat: A = a_q + a_k  (a_q = W_q q + b_q, a_k = W_k k)
                                           prod:   A = W (q * k) + b

and their backward passes recompute ``A``, the layer norm and the dropout mask from the inputs
and a seed: the mask of :func:`pyro_bamf.attention.keep_mask` (a 32-bit integer hash of the
element index keyed by the seed), so that the definition and the kernels keep the same elements
for the same seed.

The kernels are compiled on first use with the system C compiler (``$CC``, else ``cc``, ``gcc``
or ``clang``: what ``torch.compile`` needs too) into ``$BAMF_KERNEL_CACHE`` (default
``~/.cache/pyro_bamf/kernels``), one library per score function and embedding size, built
atomically. Work is split into a fixed number of group chunks run in parallel by OpenMP (in a
torch process, torch's own OpenMP runtime and thread count), so results do not depend on the
number of threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from .atomic import atomic_path
from .attention import FULL_KEEP

CSRC = Path(__file__).with_name("csrc")
SOURCES = {"concat": CSRC / "concat_scores.c", "prod": CSRC / "prod_scores.c"}
CHUNKS = 16
MAX_OUTPUTS = 2
_BASE_FLAGS = (
    "-O3", "-shared", "-fPIC", "-fopenmp", "-std=c11", "-ffp-contract=off", "-fno-math-errno",
    "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
)  # fmt: skip
_ARCH_FLAGS = {
    "AVX512": ("-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"),
    "AVX2": ("-mavx2", "-mfma"),
}


class KernelUnavailableError(RuntimeError):
    """The C kernel cannot be built or loaded here (no compiler, a failed build)."""


_libraries: dict[tuple[str, int], ctypes.CDLL] = {}


def compiler() -> str:
    """The C compiler: ``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on the PATH."""
    named = os.environ.get("CC")
    candidates = [named] if named else ["cc", "gcc", "clang"]
    found = next(filter(None, map(shutil.which, candidates)), None)
    if found is None:
        wanted = f"$CC={named!r}" if named else "cc, gcc or clang"
        raise KernelUnavailableError(
            f"fused_scores needs a C compiler to build its score kernel; {wanted} was not "
            "found. Install one, or set fused_scores = false (the PyTorch path: same model, "
            "~2x slower training)."
        )
    return found


def cxx_compiler() -> str:
    """The C++ compiler ``torch.compile`` builds CPU code with, as inductor picks it: ``$CXX``,
    else ``g++`` (``clang++`` on macOS); :class:`KernelUnavailableError` naming
    ``compile_eval`` if it is not on the PATH. A compiler that is found but fails is reported
    by the first compilation (:func:`pyro_bamf.fastpaths.compiled_scores`)."""
    named = os.environ.get("CXX")
    wanted = named or ("clang++" if sys.platform == "darwin" else "g++")
    found = shutil.which(wanted)
    if found is None:
        wanted = f"$CXX={named!r}" if named else wanted
        raise KernelUnavailableError(
            f"compile_eval needs a C++ compiler for torch.compile; {wanted} was not found. "
            "Install one (or name it in $CXX), or set compile_eval = false (eager evaluation: "
            "the same scores, 3-4x slower)."
        )
    return found


def check_build_tools(config, device: torch.device) -> None:
    """Fail before any training if a tool that ``config`` needs on ``device`` is unusable (CPU
    only): load (else build) the kernel libraries of ``fused_scores`` (a built-in score
    network's and the ``concat`` one, whose row gather the embeddings use), and find a C++
    compiler for ``compile_eval``."""
    if device.type != "cpu":
        return
    if config.fused_scores:
        for kind in {config.score_fn, "concat"} & SOURCES.keys():
            library(config.embedding_dim, kind)
    if config.compile_eval:
        cxx_compiler()


def cache_dir() -> Path:
    """``$BAMF_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/pyro_bamf/kernels`` (``~/.cache``)."""
    if os.environ.get("BAMF_KERNEL_CACHE"):
        return Path(os.environ["BAMF_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyro_bamf" / "kernels"


def build_flags(dim: int) -> list[str]:
    """Compiler flags for embedding size ``dim``, vectorised for this CPU's instruction set."""
    x86 = platform.machine() in ("x86_64", "AMD64")
    arch = torch.backends.cpu.get_cpu_capability() if x86 else ""
    return [*_BASE_FLAGS, *_ARCH_FLAGS.get(arch, ()), f"-DDIM={dim}"]


def library_path(dim: int, kind: str = "concat") -> Path:
    """Where the ``kind`` library for ``dim`` is cached, named by a hash of the sources,
    compiler and flags."""
    sources = [path.read_bytes() for path in sorted(SOURCES.values())]
    digest = hashlib.sha256(repr((sources, compiler(), build_flags(dim))).encode()).hexdigest()
    return cache_dir() / f"{kind}_scores_k{dim}_{digest[:16]}.so"


def library(dim: int, kind: str = "concat") -> ctypes.CDLL:
    """The ``kind`` kernel library for embedding size ``dim``: loaded, else built (once per
    process)."""
    if (kind, dim) not in _libraries:
        cc, flags, path = compiler(), build_flags(dim), library_path(dim, kind)
        if not path.exists():
            _build(cc, flags, SOURCES[kind], path)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:  # a damaged cache entry: rebuild it once
            _build(cc, flags, SOURCES[kind], path)
            lib = ctypes.CDLL(str(path))
        _declare(lib)
        _libraries[kind, dim] = lib
    return _libraries[kind, dim]


def _build(cc: str, flags: list[str], source: Path, path: Path) -> None:
    """Compile into a temporary file beside ``path``, then rename it into place (with the
    permissions the umask gives). :class:`KernelUnavailableError` in one line if the compiler
    cannot run or fails (with its first message) or the cache folder cannot be written."""
    remedy = (
        "install a working C compiler (or name one in $CC), or set fused_scores = false (the "
        "PyTorch path: same model, ~2x slower training)"
    )
    try:
        with atomic_path(path) as tmp:
            try:
                done = subprocess.run(
                    [cc, *flags, str(source), "-o", str(tmp), "-lm"],
                    capture_output=True,
                    text=True,
                )
            except OSError as err:
                raise KernelUnavailableError(
                    f"the C compiler {cc} cannot be run ({err.strerror}): {remedy}"
                ) from None
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or ["no message"]
                first = next((line for line in lines if "error" in line), lines[0])
                raise KernelUnavailableError(
                    f"building the fused_scores kernel {source.name} with {cc} failed (exit "
                    f"{done.returncode}: {first}): {remedy}"
                )
    except OSError as err:
        raise _unwritable_cache(path.parent, err) from None


def _unwritable_cache(folder: Path, err: OSError) -> KernelUnavailableError:
    """The error for a cache ``folder`` that cannot be created or written (``err``)."""
    return KernelUnavailableError(
        f"the kernel cache folder {folder} cannot be written ({err.strerror}): set "
        "BAMF_KERNEL_CACHE to a writable folder, or set fused_scores = false"
    )


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    u64, u32 = ctypes.c_uint64, ctypes.c_uint32
    signatures = {
        "concat_scores_forward_all": [ptr] * 6 + [i64, f32, u64, u32] + [i64] * 4 + [ptr],
        "concat_scores_backward_all": [ptr] * 5 + [i64, f32, u64, u32] + [i64] * 4 + [ptr] * 4,
        "prod_scores_forward_all": [ptr] * 8 + [i64, f32, u64, u32] + [i64] * 4 + [ptr],
        "prod_scores_backward_all": [ptr] * 8 + [i64, f32, u64, u32] + [i64] * 4 + [ptr] * 4,
        "concat_dropout_mask": [u64, u32, i64, ptr],
        "gather_rows_backward": [ptr, i64, ptr, i64, ptr],
    }
    for name, argtypes in signatures.items():
        if hasattr(lib, name):
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = None


def _chunk_size(groups: int) -> int:
    """Groups per chunk: at most ``CHUNKS`` chunks, whatever the number of threads."""
    return -(-groups // CHUNKS)


class _ConcatScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query_part, key_part, norm_w, norm_b, out_w, out_b, eps, seed, threshold):
        groups, size, dim = query_part.shape
        length, outputs = key_part.shape[1], out_w.shape[0]
        tensors = (query_part, key_part, norm_w, norm_b, out_w, out_b)
        inputs = [t.detach().contiguous() for t in tensors]
        out = query_part.new_empty(groups, size, length, outputs)
        library(dim).concat_scores_forward_all(
            *[t.data_ptr() for t in inputs], outputs, eps, seed, threshold,
            groups, _chunk_size(groups), size, length, out.data_ptr(),
        )  # fmt: skip
        ctx.save_for_backward(*inputs[:5])
        ctx.constants = (eps, seed, threshold)
        return out

    @staticmethod
    def backward(ctx, grad):
        query_part, key_part, norm_w, norm_b, out_w = ctx.saved_tensors
        eps, seed, threshold = ctx.constants
        groups, size, dim = query_part.shape
        length, outputs = key_part.shape[1], out_w.shape[0]
        grad = grad.contiguous()
        chunk = _chunk_size(groups)
        d_query = torch.empty_like(query_part)
        d_key = torch.zeros_like(key_part)
        # per chunk: dgamma, dbeta (K each), dw (O x K), db (O); summed in chunk order
        partial = query_part.new_empty(-(-groups // chunk), 2 * dim + outputs * (dim + 1))
        library(dim).concat_scores_backward_all(
            *[t.data_ptr() for t in (query_part, key_part, norm_w, norm_b, out_w)],
            outputs, eps, seed, threshold, groups, chunk, size, length, grad.data_ptr(),
            d_query.data_ptr(), d_key.data_ptr(), partial.data_ptr(),
        )  # fmt: skip
        sums = partial.sum(0)
        d_norm_w, d_norm_b = sums[:dim], sums[dim : 2 * dim]
        d_out_w = sums[2 * dim : 2 * dim + outputs * dim].view(outputs, dim)
        d_out_b = sums[2 * dim + outputs * dim :]
        return d_query, d_key, d_norm_w, d_norm_b, d_out_w, d_out_b, None, None, None


class _ProdScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, keys, weight, bias, norm_w, norm_b, out_w, out_b, eps, seed, threshold):
        groups, size, dim = query.shape
        length, outputs = keys.shape[1], out_w.shape[0]
        tensors = (query, keys, weight, bias, norm_w, norm_b, out_w, out_b)
        inputs = [t.detach().contiguous() for t in tensors]
        weight_t = inputs[2].t().contiguous()
        out = query.new_empty(groups, size, length, outputs)
        ptrs = [t.data_ptr() for t in (inputs[0], inputs[1], weight_t, *inputs[3:])]
        library(dim, "prod").prod_scores_forward_all(
            *ptrs, outputs, eps, seed, threshold,
            groups, _chunk_size(groups), size, length, out.data_ptr(),
        )  # fmt: skip
        ctx.save_for_backward(*inputs[:7], weight_t)
        ctx.constants = (eps, seed, threshold)
        return out

    @staticmethod
    def backward(ctx, grad):
        query, keys, weight, bias, norm_w, norm_b, out_w, weight_t = ctx.saved_tensors
        eps, seed, threshold = ctx.constants
        groups, size, dim = query.shape
        length, outputs = keys.shape[1], out_w.shape[0]
        grad = grad.contiguous()
        chunk = _chunk_size(groups)
        d_query, d_keys = torch.zeros_like(query), torch.zeros_like(keys)
        # per chunk: dgamma, dbeta (K each), dw (O x K), db (O), d(W^T) (K x K), d bias (K)
        width = 2 * dim + outputs * (dim + 1) + dim * dim + dim
        partial = query.new_empty(-(-groups // chunk), width)
        ptrs = [t.data_ptr() for t in (query, keys, weight, weight_t, bias, norm_w, norm_b, out_w)]
        library(dim, "prod").prod_scores_backward_all(
            *ptrs, outputs, eps, seed, threshold, groups, chunk, size, length, grad.data_ptr(),
            d_query.data_ptr(), d_keys.data_ptr(), partial.data_ptr(),
        )  # fmt: skip
        sums = partial.sum(0)
        d_norm_w, d_norm_b = sums[:dim], sums[dim : 2 * dim]
        start = 2 * dim + outputs * dim
        d_out_w = sums[2 * dim : start].view(outputs, dim)
        d_out_b = sums[start : start + outputs]
        d_weight = sums[start + outputs : start + outputs + dim * dim].view(dim, dim).t()
        d_bias = sums[start + outputs + dim * dim :]
        return (
            d_query, d_keys, d_weight, d_bias, d_norm_w, d_norm_b, d_out_w, d_out_b,
            None, None, None,
        )  # fmt: skip


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, index):
        ctx.save_for_backward(index)
        ctx.table_shape = table.shape
        return torch.nn.functional.embedding(index, table)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        rows, dim = ctx.table_shape
        index = index.contiguous()
        grad = grad.contiguous()
        d_table = grad.new_zeros(rows, dim)
        library(dim).gather_rows_backward(
            index.data_ptr(), index.numel(), grad.data_ptr(), dim, d_table.data_ptr()
        )
        return d_table, None


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` (``torch.nn.functional.embedding``) with a backward pass that adds the
    gradient rows in one C loop: bit-identical to torch's, ~10x faster on CPU, where torch
    calls a TensorIterator per looked-up row. ``table (R, K)`` float32 CPU, ``index (...)``
    int64 -> ``(..., K)``."""
    if table.device.type != "cpu" or table.dtype != torch.float32 or table.dim() != 2:
        raise ValueError("gather_rows takes a float32 CPU table of shape (R, K)")
    if index.dtype != torch.int64:
        raise ValueError(f"gather_rows takes int64 indices, got {index.dtype}")
    return _GatherRows.apply(table, index)


def _check(query, keys, out_weight, keep_threshold, tensors) -> None:
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        raise ValueError("the score kernels take float32 CPU tensors")
    groups, size, dim = query.shape
    if keys.dim() != 3 or keys.shape[0] != groups or keys.shape[2] != dim:
        raise ValueError(f"keys must be (G, L, K) = ({groups}, L, {dim}), got {tuple(keys.shape)}")
    if not 1 <= out_weight.shape[0] <= MAX_OUTPUTS or out_weight.shape[1] != dim:
        shape = tuple(out_weight.shape)
        raise ValueError(f"out_weight must be (O, {dim}) with O <= 2, got {shape}")
    if groups * size * keys.shape[1] * dim >= 2**32:
        raise ValueError("over 2^32 pair features in one call; split the batch")
    if not 0 <= keep_threshold <= FULL_KEEP:
        raise ValueError(f"keep_threshold must be in [0, 2^16], got {keep_threshold}")


def concat_scores(
    query_part: torch.Tensor,
    key_part: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    eps: float,
    seed: int = 0,
    keep_threshold: int = FULL_KEEP,
) -> torch.Tensor:
    """``psi[g, s, l, o] = w_o . (keep * ReLU(LN(a_q[g, s] + a_k[g, l]))) + b_o``.

    ``query_part (G, S, K)``, ``key_part (G, L, K)``, layer-norm ``norm_weight``,
    ``norm_bias (K,)``, ``out_weight (O, K)`` (``O <= 2``; any ``1 / keep_prob`` already folded
    in), ``out_bias (O,)``; float32 CPU tensors. Returns ``(G, S, L, O)``, differentiable in
    every tensor. Element ``k`` of pair ``(g, s, l)`` is kept with probability
    ``keep_threshold / 2^16`` (``2^16``: no dropout) by draws keyed by ``seed``.
    """
    tensors = (query_part, key_part, norm_weight, norm_bias, out_weight, out_bias)
    _check(query_part, key_part, out_weight, keep_threshold, tensors)
    return _ConcatScores.apply(*tensors, float(eps), int(seed), int(keep_threshold))


def prod_scores(
    query: torch.Tensor,
    keys: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    eps: float,
    seed: int = 0,
    keep_threshold: int = FULL_KEEP,
) -> torch.Tensor:
    """``psi[g, s, l, o] = w_o . (keep * ReLU(LN(W (q[g, s] * k[g, l]) + b))) + b_o``.

    ``query (G, S, K)``, ``keys (G, L, K)``, ``weight (K, K)``, ``bias (K,)``; the rest and the
    dropout draws as in :func:`concat_scores` (the same mask for the same seed and shape).
    """
    tensors = (query, keys, weight, bias, norm_weight, norm_bias, out_weight, out_bias)
    _check(query, keys, out_weight, keep_threshold, tensors)
    if weight.shape != (query.shape[2],) * 2:
        raise ValueError(f"weight must be (K, K), got {tuple(weight.shape)}")
    return _ProdScores.apply(*tensors, float(eps), int(seed), int(keep_threshold))


def dropout_mask(seed: int, keep_threshold: int, pairs: int, dim: int) -> torch.Tensor:
    """The keep mask ``(pairs, dim)`` (bool) that :func:`concat_scores` draws for ``seed``;
    pair ``(g, s, l)`` is row ``(g * S + s) * L + l``."""
    mask = torch.empty(pairs, dim, dtype=torch.uint8)
    library(dim).concat_dropout_mask(seed, keep_threshold, pairs, mask.data_ptr())
    return mask.bool()
