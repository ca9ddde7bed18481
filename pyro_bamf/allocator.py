"""Keep freed heap memory in the process instead of handing it back to the OS (glibc).

A training step allocates and frees tensors of 0.25-10 MB whose sizes change with every
batch's history length. glibc's ``malloc`` returns such memory to the OS (``munmap`` above its
adaptive ``mmap`` threshold, ``brk`` trimming above 2x that threshold at the top of the heap),
so the next step page-faults the same memory back in, zero-filled: 565-1,580 minor faults a
step on the paper's settings, 2-4 ms of a 30-35 ms step, more for the SVI step than for a plain
PyTorch step of the same loss (its allocations are more numerous and more varied). Setting both
thresholds once makes freed memory stay in the heap for the next step's tensors; the process
keeps its heap (the peak RSS of the benchmark is unchanged, 558 MB) instead of returning it and
faulting it back (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest accepted value on 64-bit systems
TRIM_THRESHOLD = 2**30


def glibc_version() -> str | None:
    """The running C library's glibc version (``"2.36"``), or ``None`` for any other libc."""
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    return name.split()[-1] if name and name.startswith("glibc") else None


def retain_freed_memory() -> bool:
    """``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``: blocks
    below 32 MiB come from the heap, and freed heap memory is kept unless 1 GiB of it lies free
    at the top. Process-wide and permanent (what ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` set at start-up); the numbers computed are unaffected.

    Returns ``True`` if applied, ``False`` where the C library is not glibc (nothing changes).
    Raises ``OSError`` if glibc refuses a setting.
    """
    if glibc_version() is None:
        return False
    libc = ctypes.CDLL(None)
    for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            raise OSError(f"glibc mallopt refused parameter {param} = {value}")
    return True
