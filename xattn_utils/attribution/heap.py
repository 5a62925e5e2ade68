"""Freed memory kept in the process heap while SPES scores masks (glibc on Linux; elsewhere nothing changes).

A SPES batch allocates the same large tensors on every forward pass (the B x I x V log-probabilities alone are about
53 MB for 16 masks of tiny.en). glibc serves an allocation over its mmap threshold (at most 32 MB) with a fresh
``mmap`` and unmaps it on free, so the kernel faults its pages in again on every pass: a quarter to a third of a
one-thread process's CPU time (benchmarks/RESULTS.md). Inside :func:`reuse_freed_memory` glibc allocates from the heap
and keeps what is freed there; on exit its defaults return and the next free gives the heap back to the system.
Only where the memory comes from changes: the arithmetic, and so the maps, are the same bit for bit.

glibc state is per process: a second thread of the process allocating meanwhile shares the setting, harmlessly.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import platform

import torch

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults
KEEP_UP_TO = 1 << 30  # bytes of freed heap kept inside the context


@functools.lru_cache(maxsize=1)
def _mallopt():
    """glibc's ``mallopt``, or None on another C library or system."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def reuse_freed_memory(device: str | torch.device = "cpu"):
    """While inside, large CPU allocations come from the heap and freed memory stays there (see the module doc).

    A no-op for a non-CPU ``device`` and off glibc.
    """
    mallopt = _mallopt() if torch.device(device).type == "cpu" else None
    if mallopt is None:
        yield
        return
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO)
    try:
        yield
    finally:
        mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)


__all__ = ["reuse_freed_memory"]
