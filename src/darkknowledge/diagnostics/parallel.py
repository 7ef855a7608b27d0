"""Blocks of rows on worker threads.

numpy and torch release the GIL inside their kernels, so independent row blocks run in
parallel on Python threads; each block's result is computed the same way whatever the
thread count, and results come back in block order, so sums do not depend on it. With
more than one worker, ``torch.set_num_threads(1)`` keeps torch's own threads from
competing with the workers (docs/diagnostics.md, "At scale").

glibc keeps much of the memory that worker threads free in their own arenas instead of
reusing or returning it, so resident memory would grow with every chunk; after each
parallel map, free memory is handed back to the system (``malloc_trim``, glibc only).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_inside = threading.local()  # set in the workers: a nested map runs inline (no pool deadlock)


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _find_malloc_trim()


def worker_count(threads: int | None) -> int:
    """``threads`` if given (at least 1), else ``torch.get_num_threads()``."""
    return max(1, int(threads)) if threads else max(1, torch.get_num_threads())


def map_blocks(fn: Callable[[int], T], starts: Sequence[int], threads: int | None = None) -> list[T]:
    """``[fn(s) for s in starts]``, on up to ``worker_count(threads)`` threads (a shared
    pool per size); inline when called from inside a worker."""
    n = min(worker_count(threads), len(starts))
    if n <= 1 or getattr(_inside, "flag", False):
        return [fn(s) for s in starts]
    with _pools_lock:
        pool = _pools.get(n)
        if pool is None:
            pool = _pools[n] = ThreadPoolExecutor(
                max_workers=n, thread_name_prefix="darkknowledge-diagnostics", initializer=_mark_worker
            )
    out = list(pool.map(fn, starts))
    if _malloc_trim is not None:
        _malloc_trim(0)
    return out


def _mark_worker() -> None:
    _inside.flag = True
