"""glibc's allocator set for a training process: freed memory is kept for the next tensor, not handed back to the
kernel and faulted in again page by page.

With glibc's defaults a freed block above the mmap threshold (dynamic, 128 kB at first), or a heap top above the trim
threshold, goes back to the kernel. A CPU run that makes tensors of a few MB at every step and every evaluation then
pays for their pages each time: at UFM-10 sizes about 4 ms of an 8 ms NC pass, and a tenth of a training step
(docs/benchmarks.md). etf-train keeps them, as PyTorch's CUDA allocator keeps device memory; the price is a process
that holds on to up to TRIM_BYTES it no longer uses. A user who sets MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_
keeps their own choice, and other C libraries (macOS, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
MMAP_BYTES = 32 << 20  # blocks below this come from the heap: glibc's largest threshold on 64-bit
TRIM_BYTES = 256 << 20  # a free heap top up to this is kept
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set glibc's two thresholds for this process (a forked job inherits them); whether they were set."""
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: its mallopt, if any, means something else
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
