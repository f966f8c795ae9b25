"""Every tuning constant of the k-means engine, and the block sizes derived from them, in one place.

None of these values changes a result: assignments are exact and the float64 sums are folded over blocks whose
size depends on the data's shape only (:func:`sum_block_rows`), so they set the time and the memory alone. Each
comment names the measurement that set the value (2-core CPU unless said otherwise). Modules read them as
``tuning.NAME`` at call time, so a test or a benchmark may patch one here.
"""

from __future__ import annotations

import torch

# -- chunks and blocks

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
#: Lloyd progress is reported every this many iterations.
PROGRESS_EVERY = 10
#: Fewest values (rows × d) of an engine's rows for which a CPU pass adds its float64 sums with the compiled loop
#: of :mod:`.compiled_sums` (same sums bit for bit). It saved 19 ms of 353 per pass at 200k × 128, k = 1000 on 2
#: threads (2-core Intel Xeon, interleaved runs), ~0.74 ns per value and pass; importing numba and loading the
#: cached loop cost ~0.6 s once per process, which one 50-iteration k-means repays from about 2^24 values.
COMPILED_SUMS_MIN = 2**24
#: Fewest distances (rows × k) of an engine's pass for which a CPU pass scans its distances with the compiled loop of
#: :mod:`.compiled_scan` (the same assignment bit for bit). It saves ~0.4 ns per distance and pass on 2 threads (plain
#: pass 0.31 → 0.23 s at 200k × 128, k = 1000; 7.9 → 5.6 ms at 20k × 64, k = 256; 2-core Intel Xeon, interleaved
#: runs); loading it costs ~0.55 s once per process (numba and the cached loop; ~3 s to compile it the first time),
#: which a 50-iteration k-means repays from about 2^24 distances.
COMPILED_SCAN_MIN = 2**24
#: Most floats of one GEMM output of a CPU pass with the compiled scan (16 MiB): its GEMMs span as many whole
#: distance chunks of a sum block as fit. The scan reads each output once, so it need not stay in L2; fewer, larger
#: GEMMs ran 14% faster at 200k × 128, k = 1000 (3 144 rows against 524; 2 threads, interleaved runs).
SCAN_GEMM_FLOATS = 2**22
#: Below this many multiply-adds per chunk operation, torch runs single-threaded (see :func:`.threads.threads_for`).
SMALL_WORK = 2**23
#: Fewest centroids for which a Lloyd engine keeps pruning bounds (below, a dense pass is cheap).
PRUNE_MIN_K = 16
#: Fewest data values (n × d) for which k-means++ prunes rows with the triangle inequality.
KMPP_PRUNE_MIN = 2**20
#: Highest dimension seeded by :mod:`workflow.kmeans.seeding_lowdim` (``benchmarks/kmeans.py --kpp``, 2 threads: at
#: 15k points and k = 1000 the compiled loop is 2.9-3.8x faster than the torch path at d = 2, 1.8x at d = 3 and
#: 1.2-1.3x at d = 4; at 20k points and k = 256, 1.4x at d = 2 and 0.84-0.97x at d = 3).
LOWDIM_MAX_DIM = 3
#: A pruned pass that computes more than this share of a dense pass's distances does not pay (its overheads:
#: bounds upkeep, u tightening, small GEMMs); the engine then backs off to plain passes.
PRUNE_MAX_WORK = 0.25
#: A pruned pass estimated to compute more than this share of a dense pass is skipped
#: (see :meth:`.pruner.Pruner.hopeless`).
PRUNE_SKIP_WORK = 0.5
#: Fewest multiply-adds (rows × k × d) of a pass for which an engine prunes by default (measured break-even
#: ~1e9 on 2 cores: 50k x 64, k=256 ran 0.9x, 100k x 64 1.1x, 50k x 128, k=1000 1.8x the plain speed).
PRUNE_MIN_WORK = 2**30
#: Fewest Lloyd iterations for which :func:`.api.kmeans` prunes (the first pass, which builds the bounds, costs
#: more).
PRUNE_MIN_ITERS = 3
#: Rows per block of a pruned assignment (bounds the per-thread scratch to ~rows × (d + G) floats).
PRUNE_BLOCK_ROWS = 2**16
#: Fewest multiply-adds of one partial-sum block (see :func:`sum_block_rows`).
BLOCK_MIN_WORK = 2**27
#: Upper bound on the rows of one float64 partial-sum block (see :func:`sum_block_rows`).
SUM_BLOCK_ROWS = 2**14

#: A block's failing rows are computed densely when their group work exceeds this share of a dense pass (the
#: small per-group GEMMs and gathers cost ~3x more per flop than one dense GEMM, measured).
DENSE_SHARE = 0.33
#: Failing rows × k up to which a block computes its failing rows densely (per-group work costs ~1 ms of Python).
SMALL_DENSE = 2**18
#: Upper bound on the groups of centroids per row (bounds memory n × G floats, and Python work per group).
MAX_GROUPS = 64


def default_chunk_size(n: int, k: int, device: str | torch.device = "cpu") -> int:
    """Rows per distance chunk: on CPU about 2^19 floats per chunk×k block (cache friendly), at least 64 rows
    while that stays ≤ 2^24 floats; on a GPU :data:`GPU_CHUNK_FLOATS`; at least one row and at most ``n``;
    balanced so that all chunks have nearly the same size (they run in parallel)."""
    k = max(1, k)
    if torch.device(device).type != "cpu":
        return balanced(n, max(1, GPU_CHUNK_FLOATS // k))
    chunk = CACHE_FLOATS // k
    if chunk < 64:
        chunk = min(64, CHUNK_FLOATS // k)
    return balanced(n, max(1, chunk))


def balanced(n: int, chunk: int) -> int:
    """The chunk size ≤ ``chunk`` that splits ``n`` rows into the same number of near-equal chunks."""
    n = max(1, n)
    return -(-n // -(-n // max(1, chunk)))



def compiled_scan(rows: int, k: int, device: str | torch.device = "cpu") -> bool:
    """Whether a pass over ``rows`` rows against ``k`` centroids scans its distances with the compiled loop: on CPU,
    from :data:`COMPILED_SCAN_MIN` distances."""
    return torch.device(device).type == "cpu" and rows * k >= COMPILED_SCAN_MIN


def scan_gemm_rows(chunk: int, k: int) -> int:
    """Rows per GEMM of a CPU pass with the compiled scan: as many whole chunks of ``chunk`` rows as fit in
    :data:`SCAN_GEMM_FLOATS` floats at ``k`` columns, at least one (a sum block's last GEMM may be shorter)."""
    return chunk * max(1, SCAN_GEMM_FLOATS // max(1, chunk * k))


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

