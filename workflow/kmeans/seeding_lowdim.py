"""Greedy k-means++ seeding of low-dimensional data: one compiled loop on the host (numba).

Why a second implementation: for ``d ≤`` :data:`workflow.kmeans.tuning.LOWDIM_MAX_DIM` a k-means++ step of
the torch path is a skinny ``(L × d) · (d × n)`` product that BLAS runs far below its rate, plus some 30 small
tensor operations; on 15k 2-D points a step costs ~0.4 ms on a CPU, and a GPU is launch bound on the same
steps. The five-ring example of Vo et al. (2024, arXiv:2405.15613) seeds 1000 centroids eleven times on such
data. Here a step is a few loops over the rows that a candidate can improve, compiled once (cached on disk) by
numba: ~0.1 ms on the same 15k points.

The definition is the one of :func:`workflow.kmeans.seeding.kmeans_plusplus` (Arthur & Vassilvitskii 2007,
greedy variant): the first centroid is uniform; each next one is the best of ``L`` candidates drawn with
probability ∝ D², "best" maximising the improvement Σ_i max(0, D_i² − ‖x_i − cand‖²). The random numbers are
the same draws from the same ``torch.Generator`` (one uniform for the first centroid, then ``L`` per step), so
the seeds do not depend on the device. Distances use the same float32 expansion ‖x‖² + ‖c‖² − 2 x·c, so the
choice equals the torch path's up to float rounding of near-ties.

Skipped work (exact, Elkan 2003, "Using the triangle inequality to accelerate k-means", ICML, lemma 1): every
row keeps its nearest chosen centroid j and every centroid a radius R_j ≥ max D over its rows; a candidate at
‖cand − c_j‖ ≥ 2 R_j cannot improve any row of j, and per row, one at ‖cand − c_j‖ ≥ 2 D_i cannot improve
row i. The rows of each centroid are kept in a linked list, so a step touches only the rows of centroids near a
candidate; the D² draw uses per-block sums of D² (blocks of :data:`DRAW_BLOCK` rows), recomputed only where a
row changed.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from workflow.kmeans.exact import seeding_margins

#: Rows per block of the D² draw's block sums.
DRAW_BLOCK = 128


@numba.njit(cache=True, nogil=True, inline="always")
def _move(i: int, c: int, near: np.ndarray, nxt: np.ndarray, prv: np.ndarray, head: np.ndarray) -> None:
    """Unlink row ``i`` from its centroid's list and push it onto centroid ``c``'s list."""
    j = near[i]
    p, q = prv[i], nxt[i]
    if p >= 0:
        nxt[p] = q
    else:
        head[j] = q
    if q >= 0:
        prv[q] = p
    near[i] = c
    prv[i] = -1
    nxt[i] = head[c]
    if head[c] >= 0:
        prv[head[c]] = i
    head[c] = i


@numba.njit(cache=True, nogil=True)
def _seed(x: np.ndarray, first: int, uniforms: np.ndarray, chosen: np.ndarray, err: float, slack: float) -> None:
    """Fill ``chosen[1:]`` (``chosen[0] = first``) with row indices; ``uniforms`` is ``(k − 1, L)`` in [0, 1)."""
    n, d = x.shape
    k = chosen.shape[0]
    trials = uniforms.shape[1]
    n_blocks = (n + DRAW_BLOCK - 1) // DRAW_BLOCK
    zero32, two32 = np.float32(0.0), np.float32(2.0)
    rel = 1.0 + 1e-6  # relative margin of the skip tests (float32 distances against float64 bounds)

    x_sq = np.empty(n, np.float32)
    closest = np.empty(n, np.float32)  # D², to the nearest chosen centroid
    near = np.zeros(n, np.int64)
    nxt = np.empty(n, np.int64)  # linked list of the rows of every centroid
    prv = np.empty(n, np.int64)
    head = np.full(k, -1, np.int64)
    radius_sq = np.zeros(k, np.float64)  # R_j² ≥ max (D² + err) over the rows of centroid j
    centroids = np.empty((k, d), np.float64)
    block_sum = np.zeros(n_blocks, np.float64)
    dirty = np.ones(n_blocks, np.bool_)
    rows = np.empty(n, np.int64)
    hit = np.zeros(k, np.bool_)
    cc = np.empty((k, trials), np.float64)  # ‖cand − c_j‖²
    cand = np.empty(trials, np.int64)
    cand_t = np.empty((d, trials), np.float32)
    cand_sq = np.empty(trials, np.float32)
    gains = np.empty(trials, np.float64)
    dot = np.empty(trials, np.float32)

    for q in range(d):
        centroids[0, q] = x[first, q]
    for i in range(n):
        s = zero32
        for q in range(d):
            s += x[i, q] * x[i, q]
        x_sq[i] = s
    for i in range(n):
        t = zero32
        for q in range(d):
            t += x[i, q] * x[first, q]
        closest[i] = max(x_sq[i] + x_sq[first] - two32 * t, zero32)
        nxt[i] = i + 1 if i + 1 < n else -1
        prv[i] = i - 1
        radius_sq[0] = max(radius_sq[0], np.float64(closest[i]) + err)
    closest[first] = zero32
    head[0] = 0
    chosen[0] = first

    for c in range(1, k):
        # draw L candidates ∝ D²: the block holding r by block sums, then the row inside the block
        for b in range(n_blocks):
            if dirty[b]:
                s64 = 0.0
                for i in range(b * DRAW_BLOCK, min(n, (b + 1) * DRAW_BLOCK)):
                    s64 += closest[i]
                block_sum[b] = s64
                dirty[b] = False
        total = 0.0
        for b in range(n_blocks):
            total += block_sum[b]
        below_total = np.nextafter(total, 0.0)
        for t in range(trials):
            r = min(uniforms[c - 1, t] * total, below_total)
            acc = 0.0
            blk = n_blocks - 1
            for b in range(n_blocks):
                if acc + block_sum[b] > r:
                    blk = b
                    break
                acc += block_sum[b]
            pick = n - 1  # only when every D² is 0 (fewer distinct points than k), as the torch path
            for i in range(blk * DRAW_BLOCK, min(n, (blk + 1) * DRAW_BLOCK)):
                if closest[i] > zero32:
                    pick = i
                    acc += closest[i]
                    if acc > r:
                        break
            cand[t] = pick
            for q in range(d):
                cand_t[q, t] = x[pick, q]
            cand_sq[t] = x_sq[pick]
            gains[t] = 0.0
        # centroids a candidate may improve: ‖cand − c_j‖ < 2 R_j
        for j in range(c):
            bound = 4.0 * radius_sq[j] * rel + slack
            h = False
            for t in range(trials):
                v = 0.0
                for q in range(d):
                    diff = np.float64(cand_t[q, t]) - centroids[j, q]
                    v += diff * diff
                cc[j, t] = v
                h = h or v < bound
            hit[j] = h
        m = 0
        for j in range(c):
            if hit[j]:
                i = head[j]
                while i >= 0:
                    rows[m] = i
                    m += 1
                    i = nxt[i]
        # improvements Σ max(0, D² − d²) over the rows a candidate may improve (‖cand − c_j‖ < 2 D_i)
        for p in range(m):
            i = rows[p]
            ci = closest[i]
            j = near[i]
            lim = (np.float64(ci) + err) * 4.0 * rel + slack
            any_close = False
            for t in range(trials):
                any_close = any_close or cc[j, t] < lim
            if not any_close:
                continue
            for t in range(trials):
                dot[t] = zero32
            for q in range(d):
                xq = x[i, q]
                for t in range(trials):
                    dot[t] += xq * cand_t[q, t]
            for t in range(trials):
                if cc[j, t] < lim:
                    dist = max(x_sq[i] + cand_sq[t] - two32 * dot[t], zero32)
                    gains[t] += np.float64(max(ci - dist, zero32))
        best = 0
        for t in range(1, trials):
            if gains[t] > gains[best]:  # the first on ties
                best = t
        chosen_row = cand[best]
        # move the improved rows to the new centroid; exact radii of the centroids that were looked at
        for j in range(c):
            if hit[j]:
                radius_sq[j] = 0.0
        for p in range(m):
            i = rows[p]
            j = near[i]
            ci = closest[i]
            if cc[j, best] < (np.float64(ci) + err) * 4.0 * rel + slack:
                t32 = zero32
                for q in range(d):
                    t32 += x[i, q] * cand_t[q, best]
                dist = max(x_sq[i] + cand_sq[best] - two32 * t32, zero32)
                if dist < ci or i == chosen_row:
                    closest[i] = zero32 if i == chosen_row else dist
                    _move(i, c, near, nxt, prv, head)
                    dirty[i // DRAW_BLOCK] = True
            jn = near[i]
            radius_sq[jn] = max(radius_sq[jn], np.float64(closest[i]) + err)
        if near[chosen_row] != c:  # not reached by the loop (every D² was 0): it still becomes a centroid
            closest[chosen_row] = zero32
            _move(chosen_row, c, near, nxt, prv, head)
            dirty[chosen_row // DRAW_BLOCK] = True
        radius_sq[c] = max(radius_sq[c], err)
        chosen[c] = chosen_row
        for q in range(d):
            centroids[c, q] = x[chosen_row, q]


def kmeans_plusplus_lowdim(x: np.ndarray, k: int, generator: torch.Generator, trials: int) -> np.ndarray:
    """Row indices of ``k`` greedy k-means++ centroids of the ``(n, d)`` float32 array ``x`` (``d`` small).

    Args:
        x: C-contiguous float32 ``(n, d)`` array, ``1 ≤ k ≤ n``.
        k: Number of centroids.
        generator: CPU ``torch.Generator``; draws one ``randint(n)`` and then ``(k − 1) × trials`` float64
            uniforms, the stream of the torch path.
        trials: Candidates per step (``L``).

    Returns:
        ``(k,)`` int64 row indices, in the order chosen.
    """
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator).item())
    uniforms = torch.rand((k - 1, trials), generator=generator, dtype=torch.float64).numpy()
    # the skip tests' margins of the torch path (float32 distances on the host's CPU)
    err, slack = seeding_margins(float(np.einsum("ij,ij->i", x, x).max()), x.shape[1], torch.device("cpu"))
    chosen = np.empty(k, np.int64)
    _seed(x, first, uniforms, chosen, err, slack)
    return chosen
