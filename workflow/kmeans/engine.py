"""Lloyd engines: one pass of assignment and float64 sums over the rows, behind one protocol.

A pass (:meth:`LloydEngine.accumulate`) assigns every row to its exact nearest centroid
(:mod:`workflow.kmeans.exact`) and returns per-cluster float64 sums, counts, the inertia and the number of changed
assignments; :meth:`LloydEngine.finalize` returns the final assignment and distances. The driver
(:mod:`workflow.kmeans.lloyd`) only sees this protocol. Variants:

* :class:`LocalLloyd`: the rows ``[start, stop)`` of a :class:`~workflow.kmeans.source.DataSource` in this
  process, blocks one after another (any device); a dense pass with an optional :class:`~.pruner.Pruner`;
* :class:`ThreadedLloyd`: the same, its blocks on the pool of single-threaded workers (:mod:`.threads`);
* :class:`workflow.kmeans.ray_shards.RayLloyd`: one local engine per contiguous row shard on Ray actors.

On CPU, large passes run compiled loops (numba) that give the same assignments, sums and centroids, bit for bit, as
the NumPy and torch path: from :data:`.tuning.COMPILED_SCAN_MIN` distances (:func:`.tuning.compiled_scan`) the
assignment scans each GEMM's output with :mod:`.compiled_scan` (GEMMs of :func:`.tuning.scan_gemm_rows` rows), and
from :data:`.tuning.COMPILED_SUMS_MIN` values the sums are added with :mod:`.compiled_sums` (a few calls per block).

The rows are summed in blocks of :func:`.tuning.sum_block_rows` rows (float64 ``index_add_`` in row order), one
partial per block, folded in block order. The blocks depend on the data's shape only, so the sums do not depend
on the thread count nor on pruning (a pruned pass assigns first, then sums the same blocks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from workflow.kmeans import tuning
from workflow.kmeans.exact import Centroids, DenseBlock
from workflow.kmeans.pruner import BlockMap, Pruner
from workflow.kmeans.source import DataSource
from workflow.kmeans.threads import map_blocks, map_serial, threads_for, workspace


@dataclass
class PassResult:
    """Reduction of one Lloyd pass: float64 ``(k, d)`` sums, int64 ``(k,)`` counts, the inertia Σ min-distance
    (for progress only: expansion form, or from the sums on a pruned pass) and the number of rows whose
    assignment changed; ``stats``: row counts of the pruning filters (pruned passes of a local engine)."""

    sums: torch.Tensor
    counts: torch.Tensor
    inertia: float
    changed: int
    stats: dict[str, int] | None = None


class LloydEngine(Protocol):
    """What the Lloyd loop needs of an engine (local, threaded or Ray-sharded)."""

    source: DataSource
    #: Row shards the passes run on (1 for an in-process engine; progress messages only).
    n_shards: int

    def accumulate(self, centroids: torch.Tensor) -> PassResult:
        """One pass: assign every row to its nearest centroid; return sums, counts, inertia and changes."""
        ...

    def finalize(self, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(assignment int64, float64 ‖x − c_a‖²)`` of every row to its nearest of ``centroids``."""
        ...

    def close(self) -> None:
        """Release workers (a no-op in process)."""
        ...


def index_add_rows(out: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``out.index_add_(0, index, rows)`` with the same result on every run.

    On CPU ``index_add_`` adds the rows in order. CUDA's adds them with atomics in whatever order the threads
    run, so float sums would differ in the last bits from run to run (and a centroid then by one float32 ulp
    now and then); there it runs under torch's deterministic mode (a sort-based implementation), switched on
    for this call only (other operations, cuBLAS among them, keep the caller's setting).
    """
    if out.device.type == "cpu":
        return out.index_add_(0, index, rows)
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return out.index_add_(0, index, rows)
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


class LocalLloyd:
    """Lloyd passes over the rows ``[start, stop)`` of a :class:`DataSource`, in one process, blocks one after
    another (any device).

    Keeps the current assignment of its rows (int64, ``stop − start`` entries) and their ‖x‖² (float64). Every
    assignment is exact (:mod:`workflow.kmeans.exact`: float32 GEMM with a certified error bound, near ties settled
    in float64), so it does not depend on chunking or threads. Unless ``prune`` is False the engine has a
    :class:`~workflow.kmeans.pruner.Pruner` (``None``, the default: where it pays; ``True``: always, for
    k ≥ :data:`.tuning.PRUNE_MIN_K`), which keeps Yinyang bounds (Ding et al. 2015; Hamerly 2010 with one group) and
    skips the distance computations that provably cannot change an assignment: same assignments, sums and
    centroids as without, bitwise. Memory: ``(stop − start) × (G + 3)`` floats more.
    """

    #: How the blocks of a pass run (see :class:`ThreadedLloyd`).
    block_map: BlockMap = staticmethod(map_serial)
    n_shards = 1

    def __init__(self, source: DataSource, chunk_size: int | None = None, start: int = 0,
                 stop: int | None = None, prune: bool | None = None, groups: int | None = None) -> None:
        self.source = source
        self.start, self.stop = start, source.n if stop is None else stop
        self.chunk_size = chunk_size
        self.assignment = torch.full((self.stop - self.start,), -1, dtype=torch.int64, device=source.device)
        self.pruner = None if prune is False else Pruner(prune, groups, self.stop - self.start, source.d,
                                                         source.device)
        self._row_sq: torch.Tensor | None = None  # ‖x‖² per row (float64), computed once
        self._row_norm: torch.Tensor | None = None  # ‖x‖ per row (float64)
        self._x_sq_total: float | None = None  # Σ‖x‖² of the rows (inertia for progress)

    def row_sq(self) -> torch.Tensor:
        """``(stop − start,)`` float64 ‖x_i‖² of this engine's rows, computed on first use only."""
        if self._row_sq is None:
            out = torch.empty(self.stop - self.start, dtype=torch.float64, device=self.source.device)

            def task(s: int, e: int) -> None:
                xb = self.source.chunk(s, e).double()
                out[s - self.start:e - self.start] = xb.mul_(xb).sum(1)

            step = max(1, 2**20 // self.source.d)
            blocks = [(s, min(self.stop, s + step)) for s in range(self.start, self.stop, step)]
            for _ in self.block_map(task, blocks, step * self.source.d, self.source.device):
                pass
            self._row_sq = out
        return self._row_sq

    def row_norm(self) -> torch.Tensor:
        """``(stop − start,)`` float64 ‖x_i‖ (the error margins of the exact assignment), computed once."""
        if self._row_norm is None:
            self._row_norm = self.row_sq().sqrt()
        return self._row_norm

    def x_sq_total(self) -> float:
        """Σ_i ‖x_i‖² over this engine's rows in float64, computed on first use only."""
        if self._x_sq_total is None:
            self._x_sq_total = float(self.row_sq().sum().item())
        return self._x_sq_total

    def pruning(self, k: int) -> bool:
        """Whether passes with ``k`` centroids keep bounds (:meth:`Pruner.active`)."""
        return self.pruner is not None and self.pruner.active(k)

    def close(self) -> None:
        """Nothing to release in process."""

    def accumulate(self, centroids: torch.Tensor) -> PassResult:
        """One pass: assign every row to its nearest centroid, return sums, counts, inertia, changes (see module
        doc for the blocks and their order)."""
        src, pruner = self.source, self.pruner
        centroids = centroids.to(device=src.device, dtype=torch.float32).contiguous()
        k, d = centroids.shape
        if pruner is not None and pruner.worth_it(centroids, src, self.start, self.assignment):
            changed, stats = pruner.assign(centroids, src, self.start, self.assignment, self.row_sq(), self._x_max(),
                                           self._chunk(k), self.block_map)
            pruner.record(stats, k)
            parts = self.block_map(self._block_task(centroids, None, sums=True), self._blocks(k),
                                   self._block_work(k) // 8, src.device)
            sums, counts = fold(((p[0], p[1]) for p in parts), k, d, src.device)
            c = centroids.double()
            # Σ_i ‖x_i − c_a‖² = Σ‖x‖² − 2 Σ_j c_j·S_j + Σ_j n_j ‖c_j‖² (progress only)
            inertia = self.x_sq_total() - 2.0 * float((c * sums).sum().item()) + float(
                (counts.double() * (c * c).sum(1)).sum().item())
            return PassResult(sums=sums, counts=counts, inertia=inertia, changed=changed, stats=stats)
        cen = self._dense_centroids(centroids, pruner is not None and pruner.plan_dense(k))
        sums = torch.zeros((k, d), dtype=torch.float64, device=src.device)
        counts = torch.zeros(k, dtype=torch.int64, device=src.device)
        inertia, changed = 0.0, 0
        for part, cnt, min_sum, ch in self.block_map(self._block_task(centroids, cen, sums=True), self._blocks(k),
                                                     self._block_work(k), src.device):
            sums += part
            counts += cnt
            inertia += min_sum
            changed += ch
        if pruner is not None:
            pruner.settle(centroids, cen, self._x_max())
        # Σ_i min_j ‖x_i − c_j‖² = Σ‖x‖² + Σ_i min_j (‖c_j‖² − 2 x_i·c_j); ‖x‖² is never recomputed.
        return PassResult(sums=sums, counts=counts, inertia=inertia + self.x_sq_total(), changed=changed)

    def finalize(self, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Assign every row to its nearest centroid; return ``(assignment int64, float64 squared distance
        ‖x − c_a‖²)`` for the rows of this engine (difference form: float32 differences, float64 sums)."""
        src, pruner = self.source, self.pruner
        centroids = centroids.to(device=src.device, dtype=torch.float32).contiguous()
        k = centroids.shape[0]
        dist = torch.empty(self.stop - self.start, dtype=torch.float64, device=src.device)
        if pruner is not None and pruner.active(k) and pruner.ready(centroids):
            pruner.assign(centroids, src, self.start, self.assignment, self.row_sq(), self._x_max(), self._chunk(k),
                          self.block_map)
            task = self._block_task(centroids, None, sums=False, dist=dist)
            work = self._block_work(k) // 8
        else:  # a plain pass: bounds built here would rarely be used again (new centroids follow)
            task = self._block_task(centroids, self._dense_centroids(centroids, False), sums=False, dist=dist)
            work = self._block_work(k)
        for _ in self.block_map(task, self._blocks(k), work, src.device):
            pass
        return self.assignment.clone(), dist

    # -- the dense pass, block by block

    def _dense_centroids(self, centroids: torch.Tensor, grouped: bool) -> Centroids:
        """The centroids of a dense pass (grouped: the pass also rebuilds the pruner's bounds)."""
        if self.pruner is not None:
            return self.pruner.dense_centroids(centroids, grouped)
        with threads_for(0):
            return Centroids.build(centroids, None)

    def _block_task(self, centroids: torch.Tensor, cen: Centroids | None, sums: bool,
                    dist: torch.Tensor | None = None) -> Callable[[int, int], Any]:
        """Task over one sum block ``[s, e)``: with ``cen``, assign its rows densely, GEMM by GEMM (chunks, or
        with the compiled scan pieces of :func:`.tuning.scan_gemm_rows` rows), and rebuild their bounds when ``cen``
        is grouped, else use the current assignment; then add the block's rows to its float64 sums (``sums``; the
        compiled loop takes pieces of at most :data:`.tuning.SCAN_GEMM_FLOATS` values, so a memmap of another
        dtype is converted piece by piece) and/or write ‖x − c_a‖² into ``dist`` chunk by chunk."""
        src = self.source
        k, d = centroids.shape
        chunk = self._chunk(k)
        row_sq = self.row_sq() if cen is not None else None
        two_e = None
        if cen is not None:
            with threads_for(self.stop - self.start):  # element-wise: no intra-op threads below SMALL_WORK
                two_e = 2.0 * cen.margin(self.row_norm())  # the tie margins 2E of the pass
        bounds = self.pruner.bounds if cen is not None and cen.layout is not None else None
        # the compiled loops: numba costs ~0.6 s to load and pays for itself on large passes only
        add_rows = scan_centroids = None
        if sums and src.device.type == "cpu" and (self.stop - self.start) * d >= tuning.COMPILED_SUMS_MIN:
            from workflow.kmeans.compiled_sums import add_rows, clear_empty
        if cen is not None and tuning.compiled_scan(self.stop - self.start, k, src.device):
            from workflow.kmeans.compiled_scan import scan_centroids
        step = chunk if scan_centroids is None else tuning.scan_gemm_rows(chunk, k)  # rows per assignment GEMM

        def task(s: int, e: int) -> Any:
            min_sum, changed = 0.0, 0
            if cen is not None:  # assign the block GEMM by GEMM, near ties settled once per block
                r = slice(s - self.start, e - self.start)
                block = DenseBlock(e - s, cen, two_e[r], scan_centroids)
                for cs in range(s, e, step):
                    block.add(cs - s, src.chunk(cs, min(e, cs + step)))
                out = block.finish(lambda index: src.rows(index + s))
                prev = self.assignment[r]
                changed = int(torch.count_nonzero(prev != out.idx).item())
                prev.copy_(out.idx)
                min_sum = out.min_sum
                if bounds is not None:
                    bounds.store_dense(r, out, row_sq[r], cen)
            cnt = torch.zeros(k, dtype=torch.int64, device=src.device) if sums else None
            part = None
            if add_rows is not None:  # few compiled calls per block, rows added in order as index_add_ adds them
                part = torch.empty((k, d), dtype=torch.float64)  # add_rows writes a cluster's first row
                piece = max(1, tuning.SCAN_GEMM_FLOATS // d)
                for ps in range(s, e, piece):
                    pe = min(e, ps + piece)
                    add_rows(part.numpy(), cnt.numpy(), src.chunk(ps, pe).numpy(),
                             self.assignment[ps - self.start:pe - self.start].numpy())
                clear_empty(part.numpy(), cnt.numpy())
            elif sums:
                part = torch.zeros((k, d), dtype=torch.float64, device=src.device)
            if dist is None and (not sums or add_rows is not None):
                return part, cnt, min_sum, changed
            ws = workspace()
            for cs in range(s, e, chunk):  # the block's rows again (a view; cache or page cache for a memmap)
                ce = min(e, cs + chunk)
                xb = src.chunk(cs, ce)
                idx = self.assignment[cs - self.start:ce - self.start]
                if sums and add_rows is None:
                    index_add_rows(part, idx, ws.get("xd", tuple(xb.shape), torch.float64, src.device).copy_(xb))
                    cnt += torch.bincount(idx, minlength=k)
                if dist is not None:
                    diff = xb - centroids.index_select(0, idx)
                    dist[cs - self.start:ce - self.start] = diff.pow_(2).sum(1, dtype=torch.float64)
            return part, cnt, min_sum, changed

        return task

    def _chunk(self, k: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return tuning.default_chunk_size(self.source.n, k, self.source.device)

    def _x_max(self) -> float:
        return math.sqrt(float(self.row_sq().max().item())) * (1 + 2.0**-40)

    def _block_rows(self, k: int) -> int:
        return tuning.sum_block_rows(self.stop - self.start, self._chunk(k), k * self.source.d, self.source.device)

    def _blocks(self, k: int) -> list[tuple[int, int]]:
        size = self._block_rows(k)
        return [(s, min(self.stop, s + size)) for s in range(self.start, self.stop, size)]

    def _block_work(self, k: int) -> int:
        """Multiply-adds of one dense block (decides whether blocks go to the thread pool)."""
        return min(self._block_rows(k), self.stop - self.start) * k * self.source.d


class ThreadedLloyd(LocalLloyd):
    """A :class:`LocalLloyd` whose blocks run on the pool of single-threaded workers (:func:`.threads.map_blocks`:
    CPU, T = torch's thread count, large enough blocks). Each block returns its own partial, folded in block order,
    so the result equals :class:`LocalLloyd`'s bitwise, whatever T."""

    block_map: BlockMap = staticmethod(map_blocks)


def local_engine(source: DataSource, chunk_size: int | None = None, prune: bool | None = None, **kwargs: Any
                 ) -> LocalLloyd:
    """The in-process engine for ``source``: :class:`ThreadedLloyd` on CPU when torch has several threads, else
    :class:`LocalLloyd` (keyword arguments as :class:`LocalLloyd`)."""
    threaded = source.device.type == "cpu" and torch.get_num_threads() > 1
    return (ThreadedLloyd if threaded else LocalLloyd)(source, chunk_size, prune=prune, **kwargs)


def fold(parts: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int, d: int, device: torch.device
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold per-block float64 sums and int64 counts in block order (the order fixes the rounding)."""
    sums = torch.zeros((k, d), dtype=torch.float64, device=device)
    counts = torch.zeros(k, dtype=torch.int64, device=device)
    for s, c in parts:
        sums += s
        counts += c
    return sums, counts
