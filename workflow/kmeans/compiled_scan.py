"""The scan of a CPU distance chunk as compiled loops (numba, cached on disk): the float32 argmin, the runner-up and
the group minima of every row in one pass over the GEMM's output, column by column, then the near ties settled.

:class:`workflow.kmeans.exact.DenseBlock` otherwise computes ê = ‖c‖² − 2 x·c with ``addmm`` (MKL first copies
the bias row into the whole output), reads the chunk back twice (NumPy's argmin, torch's minimum without the
winner), does the per-row bookkeeping in NumPy and settles the near ties of each block in a dozen torch and NumPy
calls. Here the GEMM has no bias, ``g = −2 C·Xᵀ`` (``addmm`` with β = 0 and α = −2; one row of ``g`` per
centroid), and :func:`scan_centroids` walks it centroid by centroid: each step updates the best, runner-up and
winner of all the chunk's rows at once, element by element, which vectorises without fast-math (the minima are
never reductions along a vector).

Given ê, it computes, row by row, what the NumPy path computes (tested on ties, ±0 and near ties):

* the column of the first minimum of ê (``np.argmin``'s choice) and that minimum;
* the runner-up: the minimum of ê over the other columns (the near-tie test compares it with best + 2E);
* with groups, the minimum of ê over each group's columns other than the winner (the Yinyang lower bounds);
* the near-tie candidates, which :func:`settle_ties` settles in float64 as
  :meth:`~workflow.kmeans.exact.DenseBlock.finish` would, summing each f in NumPy's order.

ê_j = ‖c_j‖² + g_j here: the scaling by −2 is exact and the addition rounds once, the rounding of the final
addition in the error bound of :mod:`workflow.kmeans.exact`, so the bound and hence the exact assignment hold as
they do for ``addmm``. The bits of ê are ``addmm(alpha=-2)``'s as long as the BLAS adds the bias once, after the
whole dot product; MKL does so here up to d = 384 and, for longer rows, adds the bias to the first block of the
inner dimension, so ê (the pass's inertia, shown in progress lines only, and the pruning bounds) can then differ in
its last bits, while the assignment, the sums and the centroids stay the same (tested at d = 512).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _fold(e: np.float32, j: np.int32, best: np.float32, second: np.float32, arg: np.int32
          ) -> tuple[np.float32, np.float32, np.int32]:
    """One more column (ê ``e``, index ``j``) of a row whose least, runner-up and winner so far are given."""
    lower = e < best  # strict: an equal later column is the runner-up, the first one stays the winner
    runner_up = e if e < second else second
    return (e if lower else best), (best if lower else runner_up), (j if lower else arg)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _scan_columns(g: np.ndarray, c_sq: np.ndarray, j0: int, j1: int, best: np.ndarray, second: np.ndarray,
                  arg: np.ndarray) -> None:
    """Fold the columns ``[j0, j1)`` (rows ``j0..j1`` of ``g``) into ``best``, ``second`` and ``arg`` (per row of
    the chunk: the least ê, the least ê of the other columns, the first column of the least). Four columns per
    sweep over the rows: the per-row state is then loaded and stored once per four columns (measured 1.7x faster
    than one column per sweep, and faster than eight)."""
    m = g.shape[1]
    j = j0
    while j + 4 <= j1:
        g0, g1, g2, g3 = g[j], g[j + 1], g[j + 2], g[j + 3]
        c0, c1, c2, c3 = c_sq[j], c_sq[j + 1], c_sq[j + 2], c_sq[j + 3]
        # int32 column numbers (numba widens int32 + int32 to int64, whose blends take 512-bit registers)
        j0_, j1_, j2_, j3_ = np.int32(j), np.int32(j + 1), np.int32(j + 2), np.int32(j + 3)
        for i in range(m):
            b, s, a = best[i], second[i], arg[i]
            b, s, a = _fold(c0 + g0[i], j0_, b, s, a)
            b, s, a = _fold(c1 + g1[i], j1_, b, s, a)
            b, s, a = _fold(c2 + g2[i], j2_, b, s, a)
            b, s, a = _fold(c3 + g3[i], j3_, b, s, a)
            best[i], second[i], arg[i] = b, s, a
        j += 4
    while j < j1:
        g0, c0, col = g[j], c_sq[j], np.int32(j)
        for i in range(m):
            best[i], second[i], arg[i] = _fold(c0 + g0[i], col, best[i], second[i], arg[i])
        j += 1


@numba.njit(cache=True, nogil=True, boundscheck=False)
def scan_centroids(g: np.ndarray, c_sq: np.ndarray, width: int, two_e: np.ndarray, col: np.ndarray,
                   val: np.ndarray, gmin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scan the ``(columns, m)`` float32 GEMM output ``g`` = −2 C·Xᵀ of a chunk of m rows.

    For each row i, writes ``col[i]`` (int64, the first column of the least ê = ``c_sq`` + g) and ``val[i]``
    (float64, that ê). With ``gmin`` of shape ``(m, G)``, the columns form G groups of ``width`` and
    ``gmin[i, h]`` gets the least ê of group h over its columns other than ``col[i]``; pass a ``(0, 0)`` array
    (and any ``width``) for no groups.

    Returns the near-tie candidates ``(rows, columns, ê as float64)``: for every row whose runner-up is within
    ``two_e[i]`` (float64) of its least ê, every column with ê ≤ ``val[i] + two_e[i]``, by row then column.
    """
    columns, m = g.shape
    best = np.full(m, np.inf, dtype=np.float32)
    second = np.full(m, np.inf, dtype=np.float32)
    arg = np.zeros(m, dtype=np.int32)
    n_groups = gmin.shape[1]
    if n_groups == 0:
        _scan_columns(g, c_sq, 0, columns, best, second, arg)
    else:
        g_best = np.empty(m, dtype=np.float32)
        g_second = np.empty((n_groups, m), dtype=np.float32)
        g_arg = np.empty(m, dtype=np.int32)
        for h in range(n_groups):
            g_best[:] = np.inf
            g_second[h] = np.inf
            g_arg[:] = 0
            _scan_columns(g, c_sq, h * width, min(columns, (h + 1) * width), g_best, g_second[h], g_arg)
            for i in range(m):  # merge the group into the whole row; earlier groups win ties
                gmin[i, h] = g_best[i]
                if g_best[i] < best[i]:
                    second[i] = min(best[i], g_second[h, i])
                    best[i] = g_best[i]
                    arg[i] = g_arg[i]
                else:
                    second[i] = min(second[i], g_best[i])
        for i in range(m):  # the winner's group: its least ê over the columns other than the winner
            h = arg[i] // width
            gmin[i, h] = g_second[h, i]
    ties = np.empty(m, dtype=np.int64)
    n_ties = 0
    for i in range(m):
        col[i] = arg[i]
        val[i] = np.float64(best[i])
        if np.float64(second[i]) <= val[i] + two_e[i]:  # a near tie
            ties[n_ties] = i
            n_ties += 1
    return _candidates(g, c_sq, ties[:n_ties], val, two_e)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _candidates(g: np.ndarray, c_sq: np.ndarray, ties: np.ndarray, val: np.ndarray, two_e: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, columns, ê as float64)`` of every column with ê ≤ ``val[i] + two_e[i]`` of each row i in ``ties``,
    by row then column. Two sweeps over ``g`` by centroid (count, then fill): each reads the near-tie rows'
    entries of one contiguous row of ``g`` at a time, not a strided column per row."""
    n_ties = ties.shape[0]
    limit = np.empty(n_ties, dtype=np.float64)
    count = np.zeros(n_ties + 1, dtype=np.int64)
    for t in range(n_ties):
        limit[t] = val[ties[t]] + two_e[ties[t]]
    for j in range(g.shape[0]):
        g_j, c_j = g[j], c_sq[j]
        for t in range(n_ties):
            count[t + 1] += np.float64(c_j + g_j[ties[t]]) <= limit[t]
    at = np.cumsum(count)[:n_ties]
    rows = np.empty(at[-1] + count[-1] if n_ties else 0, dtype=np.int64)
    cols = np.empty_like(rows)
    vals = np.empty(rows.shape[0], dtype=np.float64)
    for j in range(g.shape[0]):
        g_j, c_j = g[j], c_sq[j]
        for t in range(n_ties):
            e = np.float64(c_j + g_j[ties[t]])
            if e <= limit[t]:
                rows[at[t]], cols[at[t]], vals[at[t]] = ties[t], j, e
                at[t] += 1
    return rows, cols, vals


@numba.njit(cache=True, nogil=True, boundscheck=False)
def settle_ties(x: np.ndarray, c: np.ndarray, slots: np.ndarray, width: int, rows: np.ndarray, cols: np.ndarray,
                vals: np.ndarray, col: np.ndarray, val: np.ndarray, gmin: np.ndarray) -> None:
    """Settle the near ties that :func:`scan_centroids` listed, in place: what
    :meth:`~workflow.kmeans.exact.DenseBlock.finish` does with :func:`~workflow.kmeans.exact.resolve_ties`, bit for
    bit, without a Python call per block.

    For each row i of ``rows`` (grouped by row), the candidate with the least f = Σ (x_i − c)² (float64, summed in
    NumPy's order, :func:`squared_distance`) wins, then the least centroid index; ``col[i]`` and ``val[i]`` become
    its column and ê. ``x`` holds the chunk's float32 rows, ``c`` the centroids in their original order and ``slots``
    the centroid of each column (a grouped layout; empty: column j is centroid j). With groups (``gmin`` of shape
    (m, G)), a row whose winner moved gets its float32 winner back into that column's group minimum, as ``finish``
    does.
    """
    buf = np.empty(x.shape[1], dtype=np.float64)
    p, n = 0, rows.shape[0]
    while p < n:
        i, win, win_f, win_c = rows[p], -1, np.inf, -1
        while p < n and rows[p] == i:
            j = cols[p]
            cent = slots[j] if slots.shape[0] else j  # never a padding slot (−1): its ê is +inf, no candidate
            f = squared_distance(x[i], c[cent], buf)
            better = f < win_f or (f == win_f and cent < win_c)
            if win_f != win_f:  # a NaN f sorts last, as in resolve_ties's lexsort (non-finite rows only)
                better = f == f or cent < win_c
            if win < 0 or better:
                win, win_f, win_c = p, f, cent
            p += 1
        if gmin.shape[1] and cols[win] != col[i]:
            h = col[i] // width
            gmin[i, h] = min(gmin[i, h], np.float32(val[i]))
        col[i] = cols[win]
        val[i] = vals[win]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def squared_distance(x: np.ndarray, c: np.ndarray, buf: np.ndarray) -> float:
    """Σ_d (x_d − c_d)² in float64 of two float32 rows, the value of :func:`workflow.kmeans.exact.exact_sq` bit for
    bit: the squared float64 differences (in ``buf``) summed as NumPy sums a row (:func:`_pairwise_sum`)."""
    for t in range(x.shape[0]):
        diff = np.float64(x[t]) - np.float64(c[t])
        buf[t] = diff * diff
    return _pairwise_sum(buf, 0, x.shape[0])


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _pairwise_sum(a: np.ndarray, lo: int, n: int) -> float:
    """Σ ``a[lo:lo + n]`` in NumPy's order (``pairwise_sum`` of its float64 add reduction): up to 128 values as
    :func:`_block_sum`; above, the two halves (the first a multiple of 8 long) summed so, recursively, then added.
    The recursion runs on a stack of its own (numba cannot cache a recursive function). Tested against
    ``ndarray.sum``."""
    if n <= 128:
        return _block_sum(a, lo, n)
    # frames (start, length, stage): stage 0 sums the first half next, 1 the second, 2 adds the two
    start, length, stage = np.empty(64, np.int64), np.empty(64, np.int64), np.empty(64, np.int64)
    sums = np.empty(64, np.float64)
    start[0], length[0], stage[0] = lo, n, 0
    top, n_sums = 1, 0
    while top:
        f = top - 1
        if length[f] <= 128:
            sums[n_sums] = _block_sum(a, start[f], length[f])
            n_sums += 1
            top -= 1
            continue
        half = length[f] // 2
        half -= half % 8
        if stage[f] == 2:
            sums[n_sums - 2] += sums[n_sums - 1]
            n_sums -= 1
            top -= 1
            continue
        start[top] = start[f] + (half if stage[f] else 0)
        length[top] = length[f] - half if stage[f] else half
        stage[top] = 0
        stage[f] += 1
        top += 1
    return sums[0]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _block_sum(a: np.ndarray, lo: int, n: int) -> float:
    """Σ ``a[lo:lo + n]`` for n ≤ 128 as NumPy sums a block: in order below 8 values; else eight running sums
    folded as ((0+1)+(2+3))+((4+5)+(6+7)), then the rest in order."""
    if n < 8:
        res = 0.0
        for t in range(n):
            res += a[lo + t]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    t = 8
    while t < n - n % 8:
        r0 += a[lo + t]
        r1 += a[lo + t + 1]
        r2 += a[lo + t + 2]
        r3 += a[lo + t + 3]
        r4 += a[lo + t + 4]
        r5 += a[lo + t + 5]
        r6 += a[lo + t + 6]
        r7 += a[lo + t + 7]
        t += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while t < n:
        res += a[lo + t]
        t += 1
    return res
