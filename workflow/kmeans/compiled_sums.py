"""The float64 sums of a Lloyd pass on CPU as one compiled loop (numba, cached on disk).

:func:`add_rows` replaces four calls per chunk (a float64 copy of the rows, ``index_add_``, ``bincount`` and an
add of the counts) with a few calls per sum block that release the GIL, so the threads of
:class:`workflow.kmeans.engine.ThreadedLloyd` do not wait on each other's Python work: at 200k × 128, k = 1000, a
plain pass on 2 threads took 334 ms instead of 353 ms (2-core Intel Xeon, interleaved runs). It adds the rows in
row order, as ``index_add_`` on CPU does, so the sums are the same bit for bit (tested). The engine uses it on
passes of at least :data:`workflow.kmeans.tuning.COMPILED_SUMS_MIN` values, where it repays loading numba.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, boundscheck=False)
def add_rows(sums: np.ndarray, counts: np.ndarray, x: np.ndarray, assignment: np.ndarray) -> None:
    """``sums[a] += x[i]`` (float64, rows in order) and ``counts[a] += 1`` for each row ``i`` of ``x`` (float32) with
    ``a = assignment[i]``.

    A row of ``sums`` whose count is 0 counts as zeros, whatever it holds: its first row is written as 0.0 + x, the
    bits of an add to a zero. So a block's sums need not be zeroed first (a (k, d) float64 fill per block, 2% of a
    plain pass at 200k × 128, k = 1000); :func:`clear_empty` zeroes the rows that no row reached."""
    m, d = x.shape
    zero = np.float64(0.0)
    for i in range(m):
        a = assignment[i]
        if counts[a] == 0:
            for j in range(d):
                sums[a, j] = zero + np.float64(x[i, j])  # + 0.0 turns −0 into +0, as 0.0 + (−0) does
        else:
            for j in range(d):
                sums[a, j] += np.float64(x[i, j])
        counts[a] += 1


@numba.njit(cache=True, nogil=True, boundscheck=False)
def clear_empty(sums: np.ndarray, counts: np.ndarray) -> None:
    """Zero the rows of ``sums`` whose count is 0 (after :func:`add_rows` on sums that were not zeroed)."""
    for a in range(counts.shape[0]):
        if counts[a] == 0:
            sums[a, :] = 0.0
