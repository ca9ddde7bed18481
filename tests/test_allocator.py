"""The glibc allocator setting: freed memory is reused instead of being page-faulted back."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pyro_bamf.allocator as allocator
import pyro_bamf.training as training
from pyro_bamf import BAMFConfig, BAMFRecommender
from pyro_bamf.data import ImplicitSplit, make_synthetic

# A training step's pattern: tensors of 0.25-3 MB whose sizes change from step to step
# (a batch's history length), all freed at the end of the step; minor faults per step.
PROBE = """
import resource, sys, torch
if sys.argv[1] == "retain":
    from pyro_bamf.allocator import retain_freed_memory
    assert retain_freed_memory()
sizes = [(1 + (7 * i) % 12) * 2**16 for i in range(24)]
def step(r):
    tensors = [torch.ones(n * (1 + r % 4)) for n in sizes]
    del tensors
for r in range(5):
    step(r)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for r in range(20):
    step(r)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_step(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


@pytest.mark.skipif(allocator.glibc_version() is None, reason="glibc only")
def test_retained_memory_is_reused_without_page_faults():
    assert faults_per_step("default") > 500  # glibc hands the memory back and refaults it
    assert faults_per_step("retain") < 20


def test_retain_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    def not_glibc(name):
        raise ValueError(name)

    monkeypatch.setattr(allocator.os, "confstr", not_glibc)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: pytest.fail("libc loaded"))
    assert allocator.glibc_version() is None
    assert allocator.retain_freed_memory() is False


@pytest.mark.skipif(allocator.glibc_version() is None, reason="glibc only")
def test_refused_setting_raises(monkeypatch):
    class Refusing:
        def mallopt(self, param, value):
            return 0

    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: Refusing())
    with pytest.raises(OSError, match="mallopt refused"):
        allocator.retain_freed_memory()


@pytest.mark.parametrize("retain", [True, False])
def test_fit_applies_the_setting_only_when_configured(monkeypatch, retain):
    calls = []
    monkeypatch.setattr(training, "retain_freed_memory", lambda: calls.append(1) or True)
    data = make_synthetic(n_users=20, n_items=40, rank=2, mean_interactions=8, seed=0)
    split = ImplicitSplit.from_interactions(data, seed=0, max_history=8)
    config = BAMFConfig(
        data="synthetic",
        embedding_dim=4,
        max_history=8,
        max_epochs=1,
        warmup_epochs=0,
        retain_freed_memory=retain,
    )
    BAMFRecommender(config).fit(split, progress=False)
    assert calls == ([1] if retain else [])
