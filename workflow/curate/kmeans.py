"""Seeded, chunked k-means with greedy k-means++ initialisation (torch, any device, optional Ray).

This is the base clusterer of the hierarchical curation of Vo et al. (2024), "Automatic Data
Curation for Self-Supervised Learning: A Clustering-Based Approach", arXiv:2405.15613
(spec: ``shared/notes/curation-spec.md`` section 1.1). It is a clean re-implementation:

* squared L2 distances ``‖x‖² − 2 x·c + ‖c‖²`` computed in row chunks, never a full N×K matrix
  (cosine k-means = L2-normalise the rows first; the caller does that);
* greedy k-means++ seeding (Arthur & Vassilvitskii 2007, greedy variant as in scikit-learn); rows that no
  candidate can improve are skipped with the triangle inequality (Elkan 2003), which leaves the definition
  unchanged (:func:`kmeans_plusplus`);
* a Lloyd loop of ``n_iters`` iterations (reference: 50, no convergence test). Every iteration
  assigns each row to its *exact* nearest centroid (:mod:`workflow.curate.lloyd`: a float32 ``addmm`` of
  −2 x·c + ‖c‖² with a certified error bound, NumPy's SIMD ``argmin``, the rare near ties settled in
  float64, first index on exact ties), then sums the rows per cluster in float64 (``index_add_``) in
  fixed blocks of rows (:func:`sum_block_rows`), one partial per block, folded in block order; the driver
  divides. An empty cluster keeps its previous centroid. On CPU with several torch threads the blocks run
  on a pool of single-threaded Python threads (results independent of the thread count);
* exact pruning (by default where it pays: passes of at least :data:`PRUNE_MIN_WORK` multiply-adds and
  :data:`PRUNE_MIN_ITERS` iterations; ``prune=True`` forces it, ``prune=False`` turns it off): Yinyang
  bounds (Ding et al. 2015; Hamerly 2010) skip the distance computations that cannot change an assignment,
  so a pass after the first few iterations computes a few percent of the distances on clustered data.
  Because every assignment is exact, the pruned and the plain passes give bitwise identical assignments,
  sums and centroids; on data without structure the engine backs off to plain passes;
* ``k`` is capped at the number of points;
* every random choice comes from one integer seed (a ``torch.Generator``).

Data may be an in-memory array/tensor or a ``numpy.memmap`` (e.g. from
:func:`workflow.curate.features.load_features_memmap`); a memmap is only ever touched one row chunk
at a time, so a Lloyd step never materialises a float copy of the whole matrix.

With ``workers > 1`` the Lloyd passes run on Ray actors, one per contiguous row shard (one per GPU
when ``device="cuda"`` and the cluster has GPUs); each actor holds its shard, receives the
centroids every iteration and returns per-cluster float64 sums, counts, the inertia part and the
number of changed assignments; the driver reduces and updates. k-means++ seeding always runs on the
driver over the full data (chunked), so the seeds, and hence the result, equal the single-process
run with the same seed (up to the summation order of float64 partial sums).

Documented departures from the reference code, all exact or opt-in:

* the loop stops early when no assignment changes (an exact fixed point: the next update would
  return the same centroids, so the result equals running all iterations);
* ``tol`` (default off) stops when the centroid shift Σ_j ‖Δc_j‖² ≤ tol · mean per-feature variance;
* ``init_max_points`` (default off) seeds k-means++ on a seeded uniform sample of that many points;
* ``init_method="random"`` (the reference's other option) seeds with k distinct random points.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workflow.curate import lloyd
from workflow.errors import StrataError

#: Upper bound on the number of float entries of one chunk×k distance block.
CHUNK_FLOATS = 2**24
#: Preferred size of one chunk×k block (2 MiB, an L2 cache here): measured ~2× faster than 2^24 floats
#: per block on CPU, and ~10% faster than 2^20 (20000×64 points, k=256, 1-2 threads).
CACHE_FLOATS = 2**19
#: Size of one chunk×k block on a GPU (256 MiB): few, large GEMMs; small blocks would be kernel-launch bound
#: (a 2-MiB block at k = 1000 is 524 rows, ~1900 chunks of several kernels each per pass over 1M rows).
GPU_CHUNK_FLOATS = 2**26
#: Rows per partial-sum block on a GPU (rounded to whole chunks; ~50 bytes of bookkeeping per row of a block).
GPU_BLOCK_ROWS = 2**22
#: Seeding methods of :func:`kmeans`.
INIT_METHODS = ("kmeans++", "random")
#: Lloyd progress is reported every this many iterations.
PROGRESS_EVERY = 10
#: Below this many multiply-adds per chunk operation, torch runs single-threaded (see :func:`threads_for`).
SMALL_WORK = 2**23
#: Fewest centroids for which a Lloyd engine keeps pruning bounds (below, a dense pass is cheap).
PRUNE_MIN_K = 16
#: Fewest data values (n × d) for which k-means++ prunes rows with the triangle inequality.
KMPP_PRUNE_MIN = 2**20
#: Highest dimension seeded by :mod:`workflow.curate.kpp_lowdim` (``benchmarks/kmeans.py --kpp``, 2 threads: at
#: 15k points and k = 1000 the compiled loop is 2.9-3.8x faster than the torch path at d = 2, 1.8x at d = 3 and
#: 1.2-1.3x at d = 4; at 20k points and k = 256, 1.4x at d = 2 and 0.84-0.97x at d = 3).
LOWDIM_MAX_DIM = 3
#: A pruned pass that computes more than this share of a dense pass's distances does not pay (its overheads:
#: bounds upkeep, u tightening, small GEMMs); the engine then backs off to plain passes.
PRUNE_MAX_WORK = 0.25
#: A pruned pass estimated to compute more than this share of a dense pass is skipped (see ``_hopeless``).
PRUNE_SKIP_WORK = 0.5
#: Fewest multiply-adds (rows × k × d) of a pass for which an engine prunes by default (measured break-even
#: ~1e9 on 2 cores: 50k x 64, k=256 ran 0.9x, 100k x 64 1.1x, 50k x 128, k=1000 1.8x the plain speed).
PRUNE_MIN_WORK = 2**30
#: Fewest Lloyd iterations for which :func:`kmeans` prunes (the first pass, which builds the bounds, costs more).
PRUNE_MIN_ITERS = 3
#: Rows per block of a pruned assignment (bounds the per-thread scratch to ~rows × (d + G) floats).
PRUNE_BLOCK_ROWS = 2**16
#: Fewest multiply-adds of one partial-sum block (see :func:`sum_block_rows`).
BLOCK_MIN_WORK = 2**27
#: Upper bound on the rows of one float64 partial-sum block (see :func:`sum_block_rows`).
SUM_BLOCK_ROWS = 2**14


@dataclass
class KMeansResult:
    """Output of :func:`kmeans`.

    Attributes:
        centroids: ``(k, d)`` float32 cluster centres (``k`` capped at the number of points).
        assignment: ``(n,)`` int64 index of the nearest centroid of every point, computed with the
            returned ``centroids``.
        inertia: Σ_i ‖x_i − c_{a(i)}‖², accumulated in float64.
        n_iters_run: Number of Lloyd centroid updates actually performed.
        distances: ``(n,)`` float64 squared distance of every point to its centroid (exact
            difference form, not the expansion).
    """

    centroids: np.ndarray
    assignment: np.ndarray
    inertia: float
    n_iters_run: int
    distances: np.ndarray | None = None


def _check_int(value: object, name: str, minimum: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise StrataError(f"{name} must be an integer, got {value!r}.", where=where,
                          fix=f"Pass an integer {name} >= {minimum}.")
    if int(value) < minimum:
        raise StrataError(f"{name} must be >= {minimum}, got {value}.", where=where,
                          fix=f"Pass an integer {name} >= {minimum}.")
    return int(value)


def resolve_device(device: str | torch.device, progress: Callable[[str], None] | None = None) -> torch.device:
    """The torch device to use: ``cuda`` falls back to CPU (with a message) when no GPU is available;
    ``auto`` is ``cuda`` when available, else ``cpu``."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        if progress is not None:
            progress(f"warning: device {name!r} requested but CUDA is not available; using the CPU.")
        name = "cpu"
    return torch.device(name)


def _from_numpy_readonly(arr: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without copying a read-only array (memmap, Arrow view); never written to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(arr)


def as_float_tensor(x: np.ndarray | torch.Tensor, device: str | torch.device = "cpu",
                    where: str = "kmeans") -> torch.Tensor:
    """Validate a 2-D, non-empty, finite array and return it as a float32 tensor on ``device``.

    Args:
        x: ``(n, d)`` array or tensor.
        device: Target torch device.
        where: Context named in error messages.

    Returns:
        ``(n, d)`` contiguous float32 tensor on ``device`` (no copy when ``x`` already is one).

    Raises:
        StrataError: If ``x`` is not 2-D, is empty or holds NaN/inf.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device=device, dtype=torch.float32)
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise StrataError(f"input must be a numeric array, got dtype {arr.dtype}.", where=where,
                              fix="Pass a float array of shape (n_points, dim).")
        t = _from_numpy_readonly(np.ascontiguousarray(arr, dtype=np.float32)).to(device)
    if t.ndim != 2:
        raise StrataError(f"input must be 2-D (n_points, dim), got shape {tuple(t.shape)}.", where=where,
                          fix="Reshape the embeddings to (n_points, dim).")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise StrataError(f"input is empty (shape {tuple(t.shape)}).", where=where,
                          fix="Provide at least one point with at least one feature.")
    if not bool(torch.isfinite(t).all()):
        raise StrataError("input contains NaN or infinite values.", where=where,
                          fix="Remove or repair the non-finite embeddings before clustering.")
    return t.contiguous()


def default_chunk_size(n: int, k: int, device: str | torch.device = "cpu") -> int:
    """Rows per distance chunk: on CPU about 2^19 floats per chunk×k block (cache friendly), at least 64 rows
    while that stays ≤ 2^24 floats; on a GPU :data:`GPU_CHUNK_FLOATS`; at least one row and at most ``n``;
    balanced so that all chunks have nearly the same size (they run in parallel)."""
    k = max(1, k)
    if torch.device(device).type != "cpu":
        return _balanced(n, max(1, GPU_CHUNK_FLOATS // k))
    chunk = CACHE_FLOATS // k
    if chunk < 64:
        chunk = min(64, CHUNK_FLOATS // k)
    return _balanced(n, max(1, chunk))


def _balanced(n: int, chunk: int) -> int:
    """The chunk size ≤ ``chunk`` that splits ``n`` rows into the same number of near-equal chunks."""
    n = max(1, n)
    return -(-n // -(-n // max(1, chunk)))


@contextlib.contextmanager
def threads_for(work: float) -> Iterator[None]:
    """Run torch single-threaded inside the block when one operation does fewer than ``SMALL_WORK``
    multiply-adds.

    Intra-op parallelism costs a thread barrier per operation; for small blocks (k-means++ steps, small
    k or d) that dominates, and on a shared, oversubscribed machine a barrier can wait a whole
    scheduler slice: measured 100× slower (0.8 s vs 8 ms for 143 tiny chunks on 2 loaded cores).
    """
    current = torch.get_num_threads()
    if work >= SMALL_WORK or current == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(current)


# -------------------------------------------------------------------------------------------------
# data access


def is_memmap(x: object) -> bool:
    """Whether ``x`` is a NumPy memory-mapped array (kept on disk, read chunk by chunk)."""
    return isinstance(x, np.memmap)


class DataSource:
    """Rows of an ``(n, d)`` matrix served as float32 tensors on one device, one row chunk at a time.

    * torch tensor or in-memory NumPy array: converted once to a float32 tensor on ``device`` (no copy
      when it already is a contiguous float32 CPU array/tensor);
    * ``numpy.memmap`` (or a path to a ``.npy`` file, opened with ``mmap_mode="r"``): never loaded
      whole; a chunk of a float32 C-contiguous memmap is a zero-copy view of the mapped pages, other
      dtypes are converted chunk by chunk.

    Validation (2-D, non-empty, finite) runs chunk by chunk.
    """

    def __init__(self, x: Any, device: str | torch.device = "cpu", where: str = "kmeans",
                 check: bool = True) -> None:
        self.device = torch.device(device)
        if isinstance(x, (str, os.PathLike)):
            x = np.load(os.fspath(x), mmap_mode="r")
        self.memmap: np.ndarray | None = None
        self.tensor: torch.Tensor | None = None
        if is_memmap(x):
            arr = x
            if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
                raise StrataError(f"input must be a numeric array, got dtype {arr.dtype}.", where=where,
                                  fix="Pass a float array of shape (n_points, dim).")
            if arr.ndim != 2:
                raise StrataError(f"input must be 2-D (n_points, dim), got shape {arr.shape}.", where=where,
                                  fix="Reshape the embeddings to (n_points, dim).")
            self.memmap = arr
            self.n, self.d = int(arr.shape[0]), int(arr.shape[1])
            if self.n == 0 or self.d == 0:
                raise StrataError(f"input is empty (shape {arr.shape}).", where=where,
                                  fix="Provide at least one point with at least one feature.")
            if check:
                step = max(1, (2**22) // self.d)
                for start in range(0, self.n, step):
                    if not np.isfinite(arr[start:start + step]).all():
                        raise StrataError("input contains NaN or infinite values.", where=where,
                                          fix="Remove or repair the non-finite embeddings before clustering.")
        else:
            if check:
                self.tensor = as_float_tensor(x, self.device, where)
            elif isinstance(x, torch.Tensor):
                self.tensor = x.detach().to(device=self.device, dtype=torch.float32).contiguous()
            else:
                arr = np.ascontiguousarray(x, dtype=np.float32)
                self.tensor = _from_numpy_readonly(arr).to(self.device)
            self.n, self.d = int(self.tensor.shape[0]), int(self.tensor.shape[1])

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as a float32 tensor on the device."""
        if self.tensor is not None:
            return self.tensor[start:stop]
        block = self.memmap[start:stop]
        if block.dtype != np.float32 or not block.flags.c_contiguous:
            block = np.ascontiguousarray(block, dtype=np.float32)
        return _from_numpy_readonly(block).to(self.device)

    def chunks(self, size: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, rows)`` for consecutive chunks of ``size`` rows of ``[start, stop)``."""
        stop = self.n if stop is None else stop
        for s in range(start, stop, size):
            e = min(stop, s + size)
            yield s, e, self.chunk(s, e)

    def rows(self, index: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The given rows (any order) as a ``(len(index), d)`` float32 tensor on the device (written into
        ``out`` when given: a reused buffer avoids the page faults of a fresh large allocation)."""
        if self.tensor is not None:
            idx = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index,
                                  dtype=torch.int64, device=self.device)
            # index_select: ~20x faster than tensor[idx] on CPU (measured)
            return self.tensor.index_select(0, idx) if out is None else torch.index_select(self.tensor, 0, idx,
                                                                                           out=out)
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        block = torch.from_numpy(np.ascontiguousarray(self.memmap[idx], dtype=np.float32)).to(self.device)
        return block if out is None else out.copy_(block)

    def numpy_or_memmap(self) -> np.ndarray:
        """The data as a NumPy array (the memmap itself, or a CPU view of the tensor)."""
        if self.memmap is not None:
            return self.memmap
        return self.tensor.cpu().numpy()


# -------------------------------------------------------------------------------------------------
# distances and assignment


def _sq_dists(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``(m, n)`` squared distances ‖c_j‖² − 2 c_j·x_i + ‖x_i‖² between rows of ``c`` and ``x``, ≥ 0."""
    c_sq = (c * c).sum(1)
    d = torch.addmm(x_sq.unsqueeze(0), c, x.T, alpha=-2.0)
    d.add_(c_sq.unsqueeze(1))
    return d.clamp_(min=0.0)


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk_size: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row of ``x`` under squared L2 distance, in row chunks.

    d(x, c) = ‖x‖² − 2 x·c + ‖c‖², clamped at 0 (spec 1.1, ``compute_distance`` of Vo et al. 2024,
    arXiv:2405.15613). Only a ``chunk_size × k`` block is materialised at a time.

    Args:
        x: ``(n, d)`` float tensor.
        centroids: ``(k, d)`` float tensor on the same device.
        chunk_size: Rows per block; default :func:`default_chunk_size` (chunk × k ≤ 2^24 floats).

    Returns:
        ``(index, sq_dist)``: ``(n,)`` int64 index of the nearest centroid (first one on ties) and
        ``(n,)`` its squared distance (dtype of ``x``).
    """
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise StrataError(f"shape mismatch: points {tuple(x.shape)} vs centroids {tuple(centroids.shape)}.",
                          where="kmeans.assign", fix="Points and centroids must be (n, d) and (k, d).")
    if centroids.shape[0] == 0:
        raise StrataError("no centroids given.", where="kmeans.assign", fix="Pass at least one centroid.")
    n, k = x.shape[0], centroids.shape[0]
    chunk = default_chunk_size(n, k, x.device) if chunk_size is None else _check_int(chunk_size, "chunk_size", 1,
                                                                            "kmeans.assign")
    centroids = centroids.to(dtype=x.dtype)
    c_sq = (centroids * centroids).sum(1)
    index = torch.empty(n, dtype=torch.int64, device=x.device)
    dist = torch.empty(n, dtype=x.dtype, device=x.device)
    with threads_for(min(n, chunk) * k * x.shape[1]):
        for start in range(0, n, chunk):
            xb = x[start:start + chunk]
            d = torch.addmm(c_sq.unsqueeze(0), xb, centroids.T, alpha=-2.0)
            d.add_((xb * xb).sum(1, keepdim=True))
            val, idx = d.min(dim=1)
            index[start:start + chunk] = idx
            dist[start:start + chunk] = val.clamp_(min=0.0)
    return index, dist


# -------------------------------------------------------------------------------------------------
# k-means++


def kmeans_plusplus(x: torch.Tensor | DataSource, k: int, generator: torch.Generator,
                    n_local_trials: int | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding.

    Arthur & Vassilvitskii (2007), greedy variant as in scikit-learn's ``_kmeans_plusplus`` and in
    Vo et al. (2024, arXiv:2405.15613, spec 1.1): the first centre is a uniformly random point; each
    next centre is the best of ``L = 2 + ⌊ln k⌋`` candidates drawn with probability
    p(x_i) = D(x_i)² / Σ_j D(x_j)², where D is the distance to the nearest centre chosen so far;
    "best" minimises the potential φ = Σ_i min(D(x_i)², ‖x_i − candidate‖²).

    Only rows a candidate can improve are computed (Elkan 2003, "Using the triangle inequality to accelerate
    k-means", ICML, lemma 1, applied per chosen centre): every row remembers its nearest chosen centre j, and
    every centre the radius R_j ≥ max D over its rows; a row of centre j is at least ‖cand − c_j‖ − D from the
    candidate, so when ‖cand − c_j‖ ≥ 2 R_j no row of j gets closer and the whole cluster is skipped. The
    candidates' improvements Σ_i max(0, D_i² − ‖x_i − cand‖²) are summed over the remaining rows only, and the
    best candidate maximises it, which is the same as minimising φ (the skipped rows contribute D_i² to φ
    for every candidate). The definition is unchanged: same candidates (the D² sampling is untouched), same
    choice up to float rounding of φ. Early centres (few, large clusters) still touch every row; later ones
    only their neighbourhood, so the cost per centre falls from a pass over all data to O(n) bookkeeping.

    Data of at most :data:`LOWDIM_MAX_DIM` dimensions are seeded on the host by
    :func:`workflow.curate.kpp_lowdim.kmeans_plusplus_lowdim` (compiled loops; same definition and same random
    draws, for any device of the data; a memmap is read into memory, ``n × d`` floats).

    Memory: the ``(n,)`` vectors D², ‖x‖² and nearest centre, and an ``(L, m)`` candidate buffer for the m rows
    computed (float32); the data are read in row chunks or gathered rows (a memmap is read up to k times:
    use ``init_max_points`` of :func:`kmeans` for very large inputs).

    Args:
        x: ``(n, d)`` float tensor or :class:`DataSource`.
        k: Number of centres, ``1 ≤ k ≤ n``.
        generator: Torch generator (CPU); the only source of randomness.
        n_local_trials: Candidates per step; default ``2 + ⌊ln k⌋``.
        chunk_size: Rows per distance block (default: about 2^17 floats per L × chunk block and at most
            2^18 / d rows; the blocks run in parallel on CPU threads, see :func:`_chunk_map`).

    Returns:
        ``(k, d)`` tensor of centres, each a row of ``x`` (float32, on the data's device).
    """
    src = x if isinstance(x, DataSource) else DataSource(x, x.device, check=False)
    n = src.n
    k = _check_int(k, "k", 1, "kmeans_plusplus")
    if k > n:
        raise StrataError(f"cannot seed {k} centres from {n} points.", where="kmeans_plusplus",
                          fix="Use k <= number of points.")
    trials = 2 + int(math.log(k)) if n_local_trials is None else _check_int(
        n_local_trials, "n_local_trials", 1, "kmeans_plusplus")
    if src.d <= LOWDIM_MAX_DIM and generator.device.type == "cpu":
        # low-dimensional data: one compiled loop on the host, on any device (same draws, same definition);
        # imported here because numba takes 0.3 s to import
        from workflow.curate import kpp_lowdim

        data = np.ascontiguousarray(src.numpy_or_memmap(), dtype=np.float32)
        chosen = kpp_lowdim.kmeans_plusplus_lowdim(data, k, generator, trials)
        return src.rows(chosen)
    # about 2^17 distances per block, and at most ~1 MiB of rows (L2-resident: the skinny L × d × chunk GEMM
    # is memory bound, measured 4x faster on 6000 than on 16384 rows of d = 128)
    if chunk_size is not None:
        chunk = chunk_size
    elif src.device.type != "cpu":  # few large blocks (kernel launches, not caches, bound a GPU here)
        chunk = _balanced(n, max(64, GPU_CHUNK_FLOATS // max(trials, src.d)))
    else:
        chunk = _balanced(n, max(64, min((2**17) // trials, 2**18 // src.d)))
    return _kmeans_plusplus(src, k, generator, trials, chunk)


def _kmeans_plusplus(src: DataSource, k: int, generator: torch.Generator, trials: int, chunk: int) -> torch.Tensor:
    n, device, d = src.n, src.device, src.d
    x_sq = torch.empty(n, dtype=torch.float32, device=device)
    closest = torch.empty(n, dtype=torch.float32, device=device)
    near = torch.zeros(n, dtype=torch.int64, device=device)  # nearest chosen centre of every row
    radius = torch.zeros(k, dtype=torch.float64, device=device)  # R_j ≥ max true D over the rows of centre j
    buf = torch.empty((trials, n), dtype=torch.float32, device=device)  # D² to the candidates, computed rows
    centers = torch.empty((k, d), dtype=torch.float32, device=device)
    centers64 = torch.empty((k, d), dtype=torch.float64, device=device)
    gen_device = generator.device
    first = int(torch.randint(n, (1,), generator=generator, device=gen_device).item())
    centers[0] = src.rows(np.array([first]))[0]
    centers64[0] = centers[0].double()

    def init(s: int, e: int) -> None:
        xb = src.chunk(s, e)
        x_sq[s:e] = (xb * xb).sum(1)
        closest[s:e] = _sq_dists(xb, x_sq[s:e], centers[0:1])[0]

    def gains(s: int, e: int, rows: torch.Tensor | None, cand_rows: torch.Tensor) -> torch.Tensor:
        # positions [s, e) of ``rows`` (all rows when None): D² to every candidate into ``buf``, and the
        # improvements Σ max(0, D² − d²) in float64
        if rows is None:
            xb, xs, cl = src.chunk(s, e), x_sq[s:e], closest[s:e]
        else:
            idx = rows[s:e]
            xb, xs, cl = src.rows(idx), x_sq.index_select(0, idx), closest.index_select(0, idx)
        dist = torch.addmm(xs.unsqueeze(0), cand_rows, xb.T, alpha=-2.0, out=buf[:, s:e])
        dist.add_(cand_sq.unsqueeze(1)).clamp_(min=0.0)
        # float32 differences (exact sign: a float32 a - b is > 0 only when a > b), float64 sums
        return (cl.unsqueeze(0) - dist).clamp_(min=0).sum(1, dtype=torch.float64)

    all_bounds = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    for _ in _chunk_map(init, all_bounds, trials * min(n, chunk) * d, device):
        pass
    closest[first] = 0.0
    # |D̂² − D²| ≤ E for the float32 expansion (centres are rows, so ‖c‖ ≤ max‖x‖; see workflow.curate.lloyd)
    err, slack = lloyd.seeding_margins(float(x_sq.max().item()), d, device)
    radius[0] = math.sqrt(float(closest.max().item()) + err)
    zero = torch.zeros((), dtype=torch.float64, device=device)
    cand_sq = torch.empty(trials, dtype=torch.float32, device=device)
    # below ~4 MiB of data a full pass is cheaper than the per-step bookkeeping of the pruning; on a GPU always
    # (its full pass over 1M x 128 rows takes ~0.1 ms; the pruning's row selections wait for the device)
    prune = n * d >= KMPP_PRUNE_MIN and device.type == "cpu"
    rows: torch.Tensor | None = None
    for c in range(1, k):
        with threads_for(n):
            cum = torch.cumsum(closest, 0, dtype=torch.float64)
            total = cum[-1]
            r = torch.rand(trials, generator=generator, dtype=torch.float64, device=gen_device).to(device) * total
            # r < total strictly, so searchsorted(right=True) only lands on points with D² > 0.
            r = torch.minimum(r, torch.nextafter(total, zero))
            cand = torch.searchsorted(cum, r, right=True).clamp_(max=n - 1)
            cand_rows = src.rows(cand)
            cand_sq.copy_((cand_rows * cand_rows).sum(1))
            cand64 = cand_rows.double()
        with threads_for(n if prune else 0):
            if prune:
                # clusters a candidate may improve: ‖cand − c_j‖ < 2 R_j (relative margin, absolute slack)
                cc = ((cand64 * cand64).sum(1, keepdim=True) - 2.0 * cand64 @ centers64[:c].T
                      + (centers64[:c] * centers64[:c]).sum(1)).clamp_(min=0)
                hit = (cc < (2.0 * radius[:c]) ** 2 * (1 + 1e-6) + slack).any(0)
                members = None if bool(hit.all()) else torch.nonzero(hit.index_select(0, near))[:, 0]
                # then per row, with its own D instead of its cluster's radius
                m_near = near if members is None else near.index_select(0, members)
                m_closest = closest if members is None else closest.index_select(0, members)
                lim = (m_closest.double() + err) * (4 * (1 + 1e-6)) + slack
                keep = (cc.T.contiguous().index_select(0, m_near) < lim.unsqueeze(1)).any(1)
                rows = torch.nonzero(keep)[:, 0]
                if members is not None:
                    rows = members.index_select(0, rows)
        m = rows.numel() if rows is not None else n
        if m > n // 2:  # most rows: read the chunks in order rather than gathering
            rows, m = None, n
        bounds = [(s, min(m, s + chunk)) for s in range(0, m, chunk)]
        total_gain = torch.zeros(trials, dtype=torch.float64, device=device)
        for part in _chunk_map(functools.partial(gains, rows=rows, cand_rows=cand_rows), bounds,
                               trials * min(m, chunk) * d, device):
            total_gain += part  # folded in chunk order: independent of the number of threads
        # the best candidate minimises φ = Σ D² − gain: the largest gain (the first on ties); kept as 1-element
        # tensors, so that a GPU never waits for the host in the unpruned loop
        best = torch.argmax(total_gain, dim=0, keepdim=True)
        chosen = cand.index_select(0, best)
        centers[c:c + 1] = cand_rows.index_select(0, best)
        centers64[c:c + 1] = cand64.index_select(0, best)
        with threads_for(n):
            new = buf[:, :m].index_select(0, best)[0]
            if rows is None:
                moved = torch.nonzero(new < closest)[:, 0] if prune else None
                torch.minimum(closest, new, out=closest)
            else:
                better = torch.nonzero(new < closest.index_select(0, rows))[:, 0]
                moved = rows.index_select(0, better)
                closest.index_copy_(0, moved, new.index_select(0, better))
            closest.index_fill_(0, chosen, 0.0)
            if not prune:
                continue
            near.index_fill_(0, moved, c)
            near.index_fill_(0, chosen, c)
            # exact radii of the hit clusters (all their rows are ``members``) and of the new one; a full
            # pass may move rows of any cluster, so then every radius is recomputed
            if rows is None or members is None:
                radius[:c + 1] = 0.0
                rad_rows = None
            else:
                radius[:c][hit] = 0.0
                radius[c] = 0.0
                rad_rows = torch.cat([members, chosen])
            rad_near = near if rad_rows is None else near.index_select(0, rad_rows)
            rad_sq = closest if rad_rows is None else closest.index_select(0, rad_rows)
            radius.scatter_reduce_(0, rad_near, (rad_sq.double() + err).sqrt_(), "amax")
    return centers


# -------------------------------------------------------------------------------------------------
# Lloyd passes


def update_centroids(x: torch.Tensor, assignment: torch.Tensor, centroids: torch.Tensor,
                     chunk_size: int | None = None) -> torch.Tensor:
    """Lloyd update: c_j = (1/|S_j|) Σ_{i∈S_j} x_i, accumulated in float64 with ``index_add_``.

    An empty cluster (|S_j| = 0) keeps its previous centroid (spec 1.1, Vo et al. 2024,
    arXiv:2405.15613).

    Args:
        x: ``(n, d)`` float tensor.
        assignment: ``(n,)`` int64 cluster ids in ``[0, k)``.
        centroids: ``(k, d)`` current centroids.
        chunk_size: Rows converted to float64 at a time (default keeps ≤ 2^22 values).

    Returns:
        ``(k, d)`` new centroids in the dtype of ``centroids``.
    """
    k, d = centroids.shape
    sums = torch.zeros((k, d), dtype=torch.float64, device=x.device)
    chunk = max(1, 2**22 // max(1, d)) if chunk_size is None else chunk_size
    for start in range(0, x.shape[0], chunk):
        index_add_rows(sums, assignment[start:start + chunk], x[start:start + chunk].double())
    counts = torch.bincount(assignment, minlength=k)
    return _divide(sums, counts, centroids)


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


def _divide(sums: torch.Tensor, counts: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Means from float64 sums and counts; clusters with count 0 keep their centroid."""
    new = centroids.to(dtype=torch.float64, device=sums.device).clone()
    nonempty = counts > 0
    new[nonempty] = sums[nonempty] / counts[nonempty].unsqueeze(1).to(torch.float64)
    return new.to(centroids.dtype)


def _buffers(rows: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty((rows, k), dtype=torch.float32, device=device),
            torch.empty(rows, dtype=torch.int64, device=device))


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


class LocalLloyd:
    """Lloyd passes over the rows ``[start, stop)`` of a :class:`DataSource`, in one process.

    Keeps the current assignment of its rows (int64, ``stop − start`` entries) and their ‖x‖² (float64).
    Every assignment is exact (:mod:`workflow.curate.lloyd`: float32 GEMM with a certified error bound, near
    ties settled in float64), so it does not depend on chunking or threads. With ``prune`` (``None``, the
    default: when a pass has at least :data:`PRUNE_MIN_WORK` multiply-adds; ``True``: always) and
    k ≥ :data:`PRUNE_MIN_K`, the engine also keeps Yinyang bounds (Ding et al. 2015; Hamerly 2010
    with one group) and skips the distance computations that provably cannot change an assignment: same
    assignments, sums and centroids as without, bitwise. Memory: ``(stop − start) × (G + 3)`` floats more.
    """

    def __init__(self, source: DataSource, chunk_size: int | None = None, start: int = 0,
                 stop: int | None = None, prune: bool | None = None, groups: int | None = None) -> None:
        self.source = source
        self.start, self.stop = start, source.n if stop is None else stop
        self.chunk_size = chunk_size
        self.prune = prune
        self.groups = groups
        self.assignment = torch.full((self.stop - self.start,), -1, dtype=torch.int64, device=source.device)
        self.bounds: lloyd.YinyangBounds | None = None
        # When a pruned pass computes too much (no cluster structure), plain passes run for a while without
        # bounds: 2, then 8, 32, ... passes (x4 after every failed retry), then bounds are rebuilt and retried.
        self._plain_left = 0
        self._backoff = 2
        self._check_next = True  # estimate the next pruned pass first (see _hopeless)
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
            bounds = [(s, min(self.stop, s + step)) for s in range(self.start, self.stop, step)]
            for _ in _chunk_map(task, bounds, step * self.source.d, self.source.device):
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

    def _chunk(self, k: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return default_chunk_size(self.source.n, k, self.source.device)

    def pruning(self, k: int) -> bool:
        """Whether passes with ``k`` centroids keep bounds: k ≥ :data:`PRUNE_MIN_K`, and ``prune`` is True, or
        None with a pass of at least :data:`PRUNE_MIN_WORK` multiply-adds (below, a plain pass takes a few
        milliseconds and the bounds' Python work would not pay: measured break-even near 1e9)."""
        if self.prune is False or k < PRUNE_MIN_K:
            return False
        if self.prune is None and self.source.device.type != "cpu":
            # measured on an H100 (1M x 128, k = 1000): pruned passes 0.37 s, plain 0.039 s. The GEMM they skip is
            # cheap there; their row selections and bound updates are many small kernels and host syncs.
            return False
        return bool(self.prune) or (self.stop - self.start) * k * self.source.d >= PRUNE_MIN_WORK

    def _after_pruned(self, stats: dict[str, int], k: int) -> None:
        """Back off to plain passes when the pruned pass computed more than :data:`PRUNE_MAX_WORK` of a dense
        one (only the time depends on this: every path gives the same result)."""
        work = lloyd.work_fraction(stats, k)
        # the next pass is only estimated first when this one was not clearly worth it
        self._check_next = work > PRUNE_MAX_WORK / 4
        if work <= PRUNE_MAX_WORK:
            self._backoff = 2
            return
        self.bounds.centres = None
        self._plain_left = self._backoff
        self._backoff *= 4

    def _hopeless(self, centroids: torch.Tensor) -> bool:
        """Whether a pruned pass would compute more than :data:`PRUNE_SKIP_WORK` of a dense pass's distances,
        estimated on a strided sample of at most 4096 rows (the global filter and the tightened u, then the groups
        that remain; typically after large centroid moves, or without cluster structure). Then this pass runs
        plain and the engine backs off (:meth:`_after_pruned`): a hopeless pruned pass costs ~2x a plain one."""
        bounds, src = self.bounds, self.source
        k = centroids.shape[0]
        n_rows = self.stop - self.start
        with threads_for(0):
            idx = torch.arange(0, n_rows, max(1, n_rows // 4096), device=src.device)
            a = self.assignment.index_select(0, idx)
            move = (centroids.double() - bounds.centres.double()).pow_(2).sum(1).sqrt_()
            gmove = torch.zeros(bounds.n_groups, dtype=torch.float64, device=src.device).scatter_reduce_(
                0, bounds.layout.group, move, "amax")
            up = bounds.upper.index_select(0, idx).double() + move.index_select(0, a)
            low = bounds.lower.index_select(0, idx).double() - gmove
            lmin = low.amin(1)
            fail = torch.nonzero(lmin <= up)[:, 0]
            if fail.numel() == 0:
                return False
            diff = src.rows(idx.index_select(0, fail) + self.start) - centroids.index_select(0, a.index_select(0, fail))
            tight = diff.double().pow_(2).sum(1).sqrt_()
            still = torch.nonzero(lmin.index_select(0, fail) <= tight)[:, 0]
            need = low.index_select(0, fail.index_select(0, still)) <= tight.index_select(0, still).unsqueeze(1)
            need.scatter_(1, bounds.layout.group.index_select(0, a.index_select(0, fail.index_select(0, still)))
                          .unsqueeze(1), True)
            work = float((need.double() @ bounds.layout.sizes.double()).sum().item()) / (idx.numel() * k)
        if work <= PRUNE_SKIP_WORK:
            return False
        bounds.centres = None
        self._plain_left = self._backoff
        self._backoff *= 4
        return True

    def accumulate(self, centroids: torch.Tensor) -> PassResult:
        """One pass: assign every row to its nearest centroid, return sums, counts, inertia, changes.

        The rows are summed in blocks of :func:`sum_block_rows` rows (float64 ``index_add_`` in row order), one
        partial per block, folded in block order; the blocks run on :func:`_chunk_map` (in parallel on CPU
        threads for large work). So the sums do not depend on the number of threads, nor on pruning (a pruned
        pass assigns first, then sums the same blocks).
        """
        src = self.source
        centroids = centroids.to(device=src.device, dtype=torch.float32).contiguous()
        k, d = centroids.shape
        if self.pruning(k) and self._bounds_ready(centroids) and not (self._check_next and self._hopeless(centroids)):
            changed, stats = self._assign_pruned(centroids)
            self._after_pruned(stats, k)
            parts = _chunk_map(self._block_task(centroids, None, sums=True), self._blocks(k), self._block_work(k) // 8,
                               src.device)
            sums, counts = lloyd.fold(((p[0], p[1]) for p in parts), k, d, src.device)
            c = centroids.double()
            # Σ_i ‖x_i − c_a‖² = Σ‖x‖² − 2 Σ_j c_j·S_j + Σ_j n_j ‖c_j‖² (progress only)
            inertia = self.x_sq_total() - 2.0 * float((c * sums).sum().item()) + float(
                (counts.double() * (c * c).sum(1)).sum().item())
            return PassResult(sums=sums, counts=counts, inertia=inertia, changed=changed, stats=stats)
        grouped = self.pruning(k) and self._plain_left == 0
        self._plain_left = max(0, self._plain_left - 1)
        cen = self._dense_centres(centroids, grouped)
        sums = torch.zeros((k, d), dtype=torch.float64, device=src.device)
        counts = torch.zeros(k, dtype=torch.int64, device=src.device)
        inertia, changed = 0.0, 0
        for part, cnt, min_sum, ch in _chunk_map(self._block_task(centroids, cen, sums=True), self._blocks(k),
                                                 self._block_work(k), src.device):
            sums += part
            counts += cnt
            inertia += min_sum
            changed += ch
        self._after_dense(centroids, cen)
        # Σ_i min_j ‖x_i − c_j‖² = Σ‖x‖² + Σ_i min_j (‖c_j‖² − 2 x_i·c_j); ‖x‖² is never recomputed.
        return PassResult(sums=sums, counts=counts, inertia=inertia + self.x_sq_total(), changed=changed)

    def finalize(self, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Assign every row to its nearest centroid; return ``(assignment int64, float64 squared distance
        ‖x − c_a‖²)`` for the rows of this engine (difference form: float32 differences, float64 sums)."""
        src = self.source
        centroids = centroids.to(device=src.device, dtype=torch.float32).contiguous()
        k = centroids.shape[0]
        dist = torch.empty(self.stop - self.start, dtype=torch.float64, device=src.device)
        if self.pruning(k) and self._bounds_ready(centroids):
            self._assign_pruned(centroids)
            task = self._block_task(centroids, None, sums=False, dist=dist)
            work = self._block_work(k) // 8
        else:  # a plain pass: bounds built here would rarely be used again (new centroids follow)
            if self.bounds is not None:
                self.bounds.centres = None
            task = self._block_task(centroids, self._dense_centres(centroids, False), sums=False, dist=dist)
            work = self._block_work(k)
        for _ in _chunk_map(task, self._blocks(k), work, src.device):
            pass
        return self.assignment.clone(), dist

    # -- blocks: dense assignment (when ``cen`` is given), float64 sums, distances

    def _block_task(self, centroids: torch.Tensor, cen: lloyd.Centres | None, sums: bool,
                    dist: torch.Tensor | None = None) -> Callable[[int, int], Any]:
        """Task over one sum block ``[s, e)``, walked in chunks: with ``cen``, assign each chunk densely (and
        rebuild its bounds when ``cen`` is grouped), else use the current assignment; then add the chunk to
        the block's float64 sums (``sums``) and/or write ‖x − c_a‖² into ``dist``."""
        src = self.source
        k, d = centroids.shape
        chunk = self._chunk(k)
        row_sq = self.row_sq() if cen is not None else None
        two_e = 2.0 * cen.margin(self.row_norm()) if cen is not None else None  # tie margins 2E of the pass
        bounds = self.bounds if cen is not None and cen.layout is not None else None

        def task(s: int, e: int) -> Any:
            min_sum, changed = 0.0, 0
            if cen is not None:  # assign the block: GEMMs chunk by chunk, near ties settled once per block
                r = slice(s - self.start, e - self.start)
                block = lloyd.DenseBlock(e - s, cen, two_e[r])
                for cs in range(s, e, chunk):
                    ce = min(e, cs + chunk)
                    block.add(cs - s, src.chunk(cs, ce), *_thread_buffers(ce - cs, cen.ct.shape[1], src.device))
                out = block.finish(lambda index: src.rows(index + s))
                prev = self.assignment[r]
                changed = int(torch.count_nonzero(prev != out.idx).item())
                prev.copy_(out.idx)
                min_sum = out.min_sum
                if bounds is not None:
                    lloyd.store_dense(bounds, r, out, row_sq[r], cen)
            part = torch.zeros((k, d), dtype=torch.float64, device=src.device) if sums else None
            cnt = torch.zeros(k, dtype=torch.int64, device=src.device) if sums else None
            ws = lloyd.workspace()
            for cs in range(s, e, chunk):  # the block's rows again (a view; cache or page cache for a memmap)
                ce = min(e, cs + chunk)
                xb = src.chunk(cs, ce)
                idx = self.assignment[cs - self.start:ce - self.start]
                if sums:
                    index_add_rows(part, idx, ws.get("xd", tuple(xb.shape), torch.float64, src.device).copy_(xb))
                    cnt += torch.bincount(idx, minlength=k)
                if dist is not None:
                    diff = xb - centroids.index_select(0, idx)
                    dist[cs - self.start:ce - self.start] = diff.pow_(2).sum(1, dtype=torch.float64)
            return part, cnt, min_sum, changed

        return task

    def _block_rows(self, k: int) -> int:
        return sum_block_rows(self.stop - self.start, self._chunk(k), k * self.source.d, self.source.device)

    def _blocks(self, k: int) -> list[tuple[int, int]]:
        size = self._block_rows(k)
        return [(s, min(self.stop, s + size)) for s in range(self.start, self.stop, size)]

    def _block_work(self, k: int) -> int:
        """Multiply-adds of one dense block (decides whether blocks go to the thread pool)."""
        return min(self._block_rows(k), self.stop - self.start) * k * self.source.d

    # -- dense passes with pruning on also (re)build the bounds

    def _dense_centres(self, centroids: torch.Tensor, grouped: bool) -> lloyd.Centres:
        """The centroids of a dense pass; ``grouped``: also (re)build the bounds (grouped column order)."""
        k, d = centroids.shape
        if not grouped:
            if self.bounds is not None:
                self.bounds.centres = None  # the assignment moves without them
            with threads_for(0):
                return lloyd.Centres.build(centroids, None)
        with threads_for(0):  # small (k, d) work: no intra-op threads (see threads_for)
            layout = lloyd.make_groups(centroids, self.groups or lloyd.default_groups(k, d))
        if self.bounds is None or self.bounds.n_groups != layout.n_groups:
            self.bounds = None  # free the old arrays before allocating new ones
            self.bounds = lloyd.YinyangBounds(self.stop - self.start, layout.n_groups, self.source.device)
        self.bounds.centres = None  # invalid until the pass completes
        with threads_for(0):
            return lloyd.Centres.build(centroids, layout)

    def _after_dense(self, centroids: torch.Tensor, cen: lloyd.Centres) -> None:
        if cen.layout is None or self.bounds is None:
            return
        self._check_next = True  # the first pruned pass after a rebuild often follows large moves
        self.bounds.layout = cen.layout
        self.bounds.centres = centroids.clone()
        self.bounds.scale = (self._x_max() + cen.cmax) * (1 + 2.0**-20)

    # -- pruned passes

    def _bounds_ready(self, centroids: torch.Tensor) -> bool:
        return self.bounds is not None and self.bounds.valid_for(centroids)

    def _x_max(self) -> float:
        return math.sqrt(float(self.row_sq().max().item())) * (1 + 2.0**-40)

    def _assign_pruned(self, centroids: torch.Tensor) -> tuple[int, dict[str, int]]:
        """Update the assignment with the bounds (see :func:`workflow.curate.lloyd.pruned_rows`)."""
        src, bounds = self.source, self.bounds
        k = centroids.shape[0]
        layout = bounds.layout
        with threads_for(0):  # small (k, d) work: no intra-op threads (see threads_for)
            cen = lloyd.Centres.build(centroids, layout, with_groups=True)
            delta, gdelta, max_move = lloyd.drifts(centroids, bounds.centres, layout, bounds.scale)
        bounds.scale = max(bounds.scale + max_move, self._x_max() + cen.cmax) * (1 + 2.0**-20)
        bounds.centres = None  # invalid while being updated (an exception leaves them unusable, not wrong)
        row_sq = self.row_sq()
        chunk = self._chunk(k)
        n_rows = self.stop - self.start
        threads = torch.get_num_threads() if src.device.type == "cpu" else 1
        # Blocks bound the scratch (rows × d gathers, rows × G masks) and amortise the Python work per group
        # (one GEMM per group and block); the result does not depend on them (assignments are exact).
        block = _balanced(n_rows, min(PRUNE_BLOCK_ROWS, max(2**10, -(-n_rows // threads))))
        blocks = [(s, min(n_rows, s + block)) for s in range(0, n_rows, block)]

        def task(r0: int, r1: int) -> tuple[int, dict[str, int]]:
            return lloyd.pruned_rows(src, self.start, r0, r1, self.assignment, bounds, row_sq, cen, delta, gdelta,
                                     chunk)

        changed, stats = 0, {}
        for ch, st in _chunk_map(task, blocks, block * k * src.d, src.device):
            changed += ch
            for key, v in st.items():
                stats[key] = stats.get(key, 0) + v
        bounds.centres = centroids.clone()
        return changed, stats


def sum_block_rows(n: int, chunk: int, row_work: int = 1, device: str | torch.device = "cpu") -> int:
    """Rows per float64 partial-sum block of a Lloyd pass over ``n`` rows: a multiple of ``chunk``. On a GPU about
    :data:`GPU_BLOCK_ROWS` (few large blocks: each costs a few host syncs). On CPU about
    n/64 (many blocks balance the threads on a loaded machine) but at least :data:`BLOCK_MIN_WORK` / ``row_work``
    rows (``row_work`` = k·d multiply-adds per row: the per-block Python work stays small next to the GEMMs) and
    at most about :data:`SUM_BLOCK_ROWS` (few partials to fold: one (k, d) float64 partial per distance chunk
    cost as much as the sums themselves at k = 1000).

    It depends on ``n``, ``chunk``, ``row_work`` and the device type only, never on threads or pruning, so the
    sums are reproducible."""
    if torch.device(device).type != "cpu":
        return max(1, GPU_BLOCK_ROWS // chunk) * chunk
    target = min(SUM_BLOCK_ROWS, max(-(-max(1, n) // 64), BLOCK_MIN_WORK // max(1, row_work)))
    return max(1, -(-target // chunk)) * chunk


_LOCAL = threading.local()
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _thread_buffers(rows: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance and index buffers of the calling thread, reused across chunks and passes."""
    key = (k, str(device))
    cached = getattr(_LOCAL, "buffers", None)
    if cached is None or cached[0] != key or cached[1].shape[0] < rows:
        cached = (key, *_buffers(rows, k, device))
        _LOCAL.buffers = cached
    return cached[1], cached[2]


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="strata-kmeans",
                                             initializer=torch.set_num_threads, initargs=(1,))
    return _POOLS[threads]


def _chunk_map(task: Callable[[int, int], Any], bounds: list[tuple[int, int]], work: int,
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
        with threads_for(0 if device.type == "cpu" else work):  # CPU: no intra-op threads (see above)
            yield from (task(s, e) for s, e in bounds)
        return
    torch.set_num_threads(1)
    try:
        yield from _pool(threads).map(lambda b: task(*b), bounds)
    finally:
        torch.set_num_threads(threads)


# -------------------------------------------------------------------------------------------------
# Ray


@contextlib.contextmanager
def ray_context(workers: int, ray_address: str | None = None, num_gpus: int = 0) -> Iterator[None]:
    """Use the already-initialised Ray, or start/join one with :func:`workflow.distributed.ray_session`."""
    import ray

    if ray.is_initialized():
        yield
        return
    from workflow.distributed import ray_session

    with ray_session(num_cpus=workers, num_gpus=num_gpus, address=ray_address):
        yield


def _shard_bounds(n: int, shards: int, chunk: int) -> list[tuple[int, int]]:
    """Contiguous row ranges, aligned to the chunk grid when every shard gets at least one chunk."""
    shards = max(1, min(shards, n))
    if n >= shards * chunk:
        n_chunks = -(-n // chunk)
        cuts = [min(n, (i * n_chunks // shards) * chunk) for i in range(shards + 1)]
    else:
        cuts = [i * n // shards for i in range(shards + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


class _ShardWorker:
    """Body of the Ray actor: a :class:`LocalLloyd` over one shard, loaded from a memmap path or an array."""

    def __init__(self, data: Any, start: int, stop: int, chunk_size: int | None, device: str,
                 threads: int | None = None, prune: bool | None = None) -> None:
        if threads is not None:  # inside a Ray actor: one CPU each
            torch.set_num_threads(threads)
        if isinstance(data, str):  # a .npy path: open the memmap and slice the shard (still a memmap)
            arr = np.load(data, mmap_mode="r")[start:stop]
        else:  # the shard itself (a read-only array from the object store)
            arr = data
        # the pruning bounds of the shard's rows live here, in the actor, across passes
        self.engine = LocalLloyd(DataSource(arr, resolve_device(device), check=False), chunk_size, prune=prune)

    def accumulate(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
        res = self.engine.accumulate(_from_numpy_readonly(centroids))
        return res.sums.cpu().numpy(), res.counts.cpu().numpy(), res.inertia, res.changed

    def finalize(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx, dist = self.engine.finalize(_from_numpy_readonly(centroids))
        return idx.cpu().numpy(), dist.cpu().numpy()


class RayLloyd:
    """Lloyd passes on Ray actors, one per contiguous row shard; the driver reduces float64 sums.

    Must be created inside a Ray session (:func:`ray_context`). With ``device="cuda"`` and GPUs in the
    cluster there is one actor per GPU (each asks for one GPU), otherwise ``workers`` CPU actors.
    A memmap source is shipped as its file path (each actor maps its own rows); an in-memory one as
    one array per shard through the object store. With ``prune`` every actor keeps the Yinyang bounds of its
    own rows; assignments are exact either way, so pruning does not change the result.
    """

    def __init__(self, source: DataSource, workers: int, k: int, chunk_size: int | None = None,
                 device: str = "cpu", prune: bool | None = None) -> None:
        import ray

        self.source = source
        n = source.n
        gpus = int(ray.cluster_resources().get("GPU", 0)) if str(device).startswith("cuda") else 0
        shards = gpus if gpus > 0 else workers
        grid = chunk_size or default_chunk_size(n, k, "cuda" if gpus else "cpu")
        self.bounds = _shard_bounds(n, shards, grid)
        actor_cls = ray.remote(_ShardWorker).options(num_cpus=0 if gpus else 1, num_gpus=1 if gpus else 0)
        path = _memmap_path(source)
        self.actors = []
        for a, b in self.bounds:
            if path is not None:
                data: Any = path
            else:
                data = ray.put(np.ascontiguousarray(source.numpy_or_memmap()[a:b], dtype=np.float32))
            self.actors.append(actor_cls.remote(data, a, b, chunk_size, "cuda" if gpus else "cpu", 1, prune))
        self.n_shards = len(self.actors)

    def accumulate(self, centroids: torch.Tensor) -> PassResult:
        import ray

        c = np.ascontiguousarray(centroids.detach().cpu().numpy(), dtype=np.float32)
        ref = ray.put(c)
        parts = ray.get([actor.accumulate.remote(ref) for actor in self.actors])
        sums = np.zeros_like(parts[0][0])
        counts = np.zeros_like(parts[0][1])
        inertia, changed = 0.0, 0
        for s, cnt, inert, ch in parts:  # fixed order: shard 0 first
            sums += s
            counts += cnt
            inertia += inert
            changed += ch
        return PassResult(sums=torch.from_numpy(sums), counts=torch.from_numpy(counts), inertia=inertia,
                          changed=changed)

    def finalize(self, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import ray

        c = np.ascontiguousarray(centroids.detach().cpu().numpy(), dtype=np.float32)
        ref = ray.put(c)
        parts = ray.get([actor.finalize.remote(ref) for actor in self.actors])
        return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts])))

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def _memmap_path(source: DataSource) -> str | None:
    """The ``.npy`` file behind a memmap source when the memmap covers the whole file's array."""
    mm = source.memmap
    if mm is None:
        return None
    name = getattr(mm, "filename", None)
    if not name or not str(name).endswith(".npy"):
        return None
    try:
        whole = np.load(name, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if whole.shape == mm.shape and whole.dtype == mm.dtype and getattr(whole, "offset", None) == getattr(
            mm, "offset", None):
        return str(name)
    return None


@contextlib.contextmanager
def lloyd_engine(source: DataSource, k: int, workers: int = 1, ray_address: str | None = None,
                 chunk_size: int | None = None, device: str = "cpu", prune: bool | None = None
                 ) -> Iterator[LocalLloyd | RayLloyd]:
    """A :class:`LocalLloyd` (``workers == 1``) or a :class:`RayLloyd` inside a Ray session.

    ``k`` (the number of clusters the engine will serve) only sets the default chunk grid to which the
    Ray shards are aligned, so that every shard processes the same row chunks as a single process.
    ``prune``: keep Yinyang bounds and skip provably useless distances (exact; None = where it pays, see
    :class:`LocalLloyd`)."""
    if workers <= 1:
        yield LocalLloyd(source, chunk_size, prune=prune)
        return
    gpus = torch.cuda.device_count() if str(device).startswith("cuda") else 0
    with ray_context(workers, ray_address, num_gpus=gpus):
        engine = RayLloyd(source, workers, k, chunk_size, device, prune)
        try:
            yield engine
        finally:
            engine.close()


# -------------------------------------------------------------------------------------------------
# k-means


def _variance(src: DataSource, chunk: int) -> float:
    total = torch.zeros(src.d, dtype=torch.float64, device=src.device)
    total_sq = torch.zeros(src.d, dtype=torch.float64, device=src.device)
    for _, _, xb in src.chunks(chunk):
        xd = xb.double()
        total += xd.sum(0)
        total_sq += (xd * xd).sum(0)
    mean = total / src.n
    return float((total_sq / src.n - mean * mean).clamp_(min=0).mean().item())


def lloyd_iterations(engine: LocalLloyd | RayLloyd, centroids: torch.Tensor, n_iters: int,
                     tol_abs: float | None = None, progress: Callable[[str], None] | None = None,
                     label: str = "k-means", on_pass: Callable[[PassResult], None] | None = None
                     ) -> tuple[torch.Tensor, int]:
    """The Lloyd loop of :func:`kmeans` from given centroids: at most ``n_iters`` updates.

    Stops early at an exact fixed point (no assignment changed: the next update would return the same
    centroids) or when the squared centroid shift is at most ``tol_abs``. Empty clusters keep their centroid.

    Args:
        engine: :class:`LocalLloyd` or :class:`RayLloyd` over the data.
        centroids: ``(k, d)`` float32 starting centroids.
        n_iters: Most updates to run.
        tol_abs: Absolute shift tolerance Σ_j ‖Δc_j‖² (None: off).
        progress: Optional callback (a line every :data:`PROGRESS_EVERY` iterations).
        label: Prefix of the progress messages.
        on_pass: Called with every :class:`PassResult` (e.g. to record the pruning statistics).

    Returns:
        ``(centroids, number of updates run)``.
    """
    device = engine.source.device
    k, d = centroids.shape
    n_run = 0
    for it in range(n_iters):
        part = engine.accumulate(centroids)
        if on_pass is not None:
            on_pass(part)
        if it > 0 and part.changed == 0:
            break  # fixed point: the update would return the same centroids
        with threads_for(k * d):  # small (k, d) update: no intra-op threads
            new = _divide(part.sums.to(device), part.counts.to(device), centroids)
            shift = float(((new.double() - centroids.double()) ** 2).sum().item())
        n_run += 1
        centroids = new
        if progress is not None and (n_run % PROGRESS_EVERY == 0):
            progress(f"{label}: iteration {n_run}/{n_iters} inertia={part.inertia:.6g} "
                     f"changed={part.changed}")
        if tol_abs is not None and shift <= tol_abs:
            break
    return centroids, n_run


def _prune_for(prune: bool | None, n_iters: int) -> bool | None:
    """The engine's ``prune`` for a :func:`kmeans` run: by default off below :data:`PRUNE_MIN_ITERS` iterations
    (the first pass, which builds the bounds, costs more than a plain one)."""
    if prune is None and n_iters < PRUNE_MIN_ITERS:
        return False
    return prune


def kmeans(x: Any, k: int, n_iters: int = 50, seed: int = 0, tol: float | None = None,
           chunk_size: int | None = None, device: str = "cpu",
           progress: Callable[[str], None] | None = None, *, workers: int = 1, ray_address: str | None = None,
           init_max_points: int | None = None, init_method: str = "kmeans++",
           engine: LocalLloyd | RayLloyd | None = None, label: str = "k-means", prune: bool | None = None
           ) -> KMeansResult:
    """k-means (Lloyd) with greedy k-means++ seeding, squared L2, seeded and chunked.

    Minimises the inertia φ(C) = Σ_i min_j ‖x_i − c_j‖² by alternating assignment
    a(i) = argmin_j ‖x_i − c_j‖² and update c_j = mean{x_i : a(i) = j} (empty clusters keep their
    centroid), as in Vo et al. (2024), arXiv:2405.15613, spec 1.1. ``k`` is capped at ``n``.

    Args:
        x: ``(n, d)`` data: numpy array, ``numpy.memmap`` (streamed chunk by chunk), path to a ``.npy``
            file (memory-mapped), torch tensor or :class:`DataSource`; computed in float32.
        k: Requested number of clusters (≥ 1); ``min(k, n)`` are returned.
        n_iters: Number of Lloyd iterations (≥ 0; reference 50). The loop stops earlier only at an
            exact fixed point (no assignment changes) or on ``tol``.
        seed: Integer seed of the ``torch.Generator`` used for k-means++ (and the init sample).
        tol: If given, stop when Σ_j ‖Δc_j‖² ≤ tol · mean per-feature variance of ``x``
            (the relative centroid shift criterion of scikit-learn). Default: no tolerance.
        chunk_size: Rows per distance block; default :func:`default_chunk_size` (≈ 2^19 floats).
        device: Torch device, ``"cpu"`` (default), ``"cuda"`` (falls back to CPU when unavailable)
            or ``"auto"``.
        progress: Optional callback receiving one-line status messages (every 10 iterations).
        workers: Ray actors for the Lloyd passes (1 = in process, no Ray).
        ray_address: Ray cluster to join when ``workers > 1`` and Ray is not initialised yet
            (default ``$RAY_ADDRESS``, else a private local Ray).
        init_max_points: Seed k-means++ on a seeded uniform sample of at most this many points
            (default: all points, as the reference).
        init_method: ``"kmeans++"`` (greedy k-means++, the reference default) or ``"random"`` (k distinct
            points drawn uniformly, the reference's other option, as faiss does).
        engine: An existing Lloyd engine over the same data (used by the hierarchical k-means to
            keep one set of Ray actors for a whole level); ``workers`` is then ignored.
        label: Prefix of the progress messages.
        prune: Skip the distance computations that provably cannot change an assignment (Yinyang bounds,
            Ding et al. 2015; Hamerly 2010). Exact: the result is identical (bitwise) with and without; it only
            changes the time. ``None`` (default): where it pays, i.e. from :data:`PRUNE_MIN_ITERS` iterations
            and :data:`PRUNE_MIN_WORK` multiply-adds per pass; ``True``: always; ``False``: never. Ignored when
            ``engine`` is given (the engine's own setting applies).

    Returns:
        :class:`KMeansResult` with float32 centroids, int64 assignment (consistent with the
        returned centroids), float64 inertia and distances, and the number of Lloyd updates run.

    Raises:
        StrataError: Empty input, non-finite values, ``k < 1`` or invalid arguments.
    """
    where = "kmeans"
    k = _check_int(k, "k", 1, where)
    n_iters = _check_int(n_iters, "n_iters", 0, where)
    seed = _check_int(seed, "seed", 0, where)
    workers = _check_int(workers, "workers", 1, where)
    if tol is not None and not (math.isfinite(tol) and tol >= 0):
        raise StrataError(f"tol must be a finite number >= 0 or None, got {tol!r}.", where=where,
                          fix="Use e.g. tol=1e-4, or None to run all iterations.")
    if init_max_points is not None:
        init_max_points = _check_int(init_max_points, "init_max_points", 1, where)
    if init_method not in INIT_METHODS:
        raise StrataError(f"unknown init_method {init_method!r}.", where=where,
                          fix=f"Use one of {', '.join(INIT_METHODS)}.")
    if chunk_size is not None:
        chunk_size = _check_int(chunk_size, "chunk_size", 1, where)
    if engine is not None:
        src = engine.source
    else:
        src = x if isinstance(x, DataSource) else DataSource(x, resolve_device(device, progress), where)
    if engine is None and workers > 1:
        with lloyd_engine(src, min(k, src.n), workers, ray_address, chunk_size, device,
                          _prune_for(prune, n_iters)) as eng:
            return kmeans(src, k, n_iters, seed, tol, chunk_size, device, progress,
                          init_max_points=init_max_points, init_method=init_method, engine=eng, label=label)
    if engine is None:
        # the bounds cost a slower first pass and pay back from the second iteration on
        engine = LocalLloyd(src, chunk_size, prune=_prune_for(prune, n_iters))
    n = src.n
    k = min(k, n)
    chunk = default_chunk_size(n, k, src.device) if chunk_size is None else chunk_size
    tol_abs = None if tol is None else float(tol) * _variance(src, chunk)

    generator = torch.Generator()
    generator.manual_seed(seed)
    if init_method == "random":
        centroids = src.rows(torch.randperm(n, generator=generator)[:k].sort().values)
    elif init_max_points is not None and n > init_max_points:
        sample = torch.randperm(n, generator=generator)[:max(init_max_points, k)].sort().values
        centroids = kmeans_plusplus(src.rows(sample), k, generator)
    else:
        centroids = kmeans_plusplus(src, k, generator)
    if progress is not None:
        shards = getattr(engine, "n_shards", 1)
        progress(f"{label}: n={n} d={src.d} k={k} iterations={n_iters}"
                 + (f" on {shards} Ray actors" if shards > 1 else ""))

    centroids, n_run = lloyd_iterations(engine, centroids, n_iters, tol_abs, progress, label)
    final, dist = engine.finalize(centroids)
    inertia = float(dist.sum().item())
    if progress is not None:
        progress(f"{label}: done after {n_run} iterations, inertia={inertia:.6g}")
    return KMeansResult(centroids=centroids.cpu().numpy().astype(np.float32, copy=False),
                        assignment=final.cpu().numpy().astype(np.int64, copy=False),
                        inertia=inertia, n_iters_run=n_run, distances=dist.cpu().numpy())
