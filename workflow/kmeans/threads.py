"""Threads and scratch buffers of the k-means engine: one pool of single-threaded workers, one scratch system.

* :func:`map_blocks` runs independent row blocks on a pool of T Python threads (T = torch's thread count), each
  single-threaded in torch; every block returns its own partial, folded by the caller in block order, so no result
  depends on T.
* :func:`threads_for` turns torch's intra-op threads off around operations too small to pay for a barrier.
* :class:`Workspace` (:func:`workspace`) is the calling thread's set of named, reused scratch tensors: the only
  scratch system of the engine (distance blocks, row gathers, float64 copies).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from workflow.kmeans import tuning


@contextlib.contextmanager
def threads_for(work: float) -> Iterator[None]:
    """Run torch single-threaded inside the block when one operation does fewer than ``SMALL_WORK``
    multiply-adds.

    Intra-op parallelism costs a thread barrier per operation; for small blocks (k-means++ steps, small
    k or d) that dominates, and on a shared, oversubscribed machine a barrier can wait a whole
    scheduler slice: measured 100× slower (0.8 s vs 8 ms for 143 tiny chunks on 2 loaded cores).
    """
    current = torch.get_num_threads()
    if work >= tuning.SMALL_WORK or current == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(current)


class Workspace:
    """Scratch tensors of one thread, reused across blocks and passes.

    Large temporaries would otherwise be fresh ``mmap`` allocations (glibc maps blocks over 32 MiB directly)
    whose page faults cost more than the work done on them: a 46 MB row gather took 55 ms allocated and 14 ms
    into a reused buffer (measured, 1 thread).
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype, str], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A ``shape`` tensor (uninitialised) backed by the buffer ``name``, grown when too small."""
        numel = math.prod(shape)
        key = (name, dtype, str(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel].view(shape)


_LOCAL = threading.local()


def workspace() -> Workspace:
    """The calling thread's :class:`Workspace`."""
    ws = getattr(_LOCAL, "workspace", None)
    if ws is None:
        ws = _LOCAL.workspace = Workspace()
    return ws


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="strata-kmeans",
                                             initializer=torch.set_num_threads, initargs=(1,))
    return _POOLS[threads]


def map_blocks(task: Callable[[int, int], Any], bounds: list[tuple[int, int]], work: int,
               device: torch.device) -> Iterator[Any]:
    """``task(start, stop)`` for every chunk, results in chunk order.

    On CPU with ``torch.get_num_threads() = T > 1``, several chunks and at least 2^20 multiply-adds per
    chunk, the chunks run on a pool of T Python threads, each single-threaded in torch (torch, NumPy and
    BLAS release the GIL). Independent chunks need no barrier per operation, which is both faster than
    intra-op parallelism for these mid-size blocks and far more robust on a shared, oversubscribed
    machine (measured on 2 loaded cores: k-means++ seeding 3.1 s with intra-op threads vs 0.5 s).
    Otherwise the chunks run one after another, single-threaded on CPU.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads <= 1 or len(bounds) < 2 or work < 2**20:
        yield from map_serial(task, bounds, work, device)
        return
    torch.set_num_threads(1)
    try:
        yield from _pool(threads).map(lambda b: task(*b), bounds)
    finally:
        torch.set_num_threads(threads)



def map_serial(task: Callable[[int, int], Any], bounds: list[tuple[int, int]], work: int,
               device: torch.device) -> Iterator[Any]:
    """``task(start, stop)`` for every chunk, one after another on the calling thread (single-threaded in torch on
    CPU: a barrier per operation costs more than it gains on these blocks, see :func:`map_blocks`)."""
    with threads_for(0 if device.type == "cpu" else work):
        yield from (task(s, e) for s, e in bounds)
