"""Seeded, chunked k-means with greedy k-means++ initialisation (torch, any device).

This is the base clusterer of the hierarchical curation of Vo et al. (2024), "Automatic Data
Curation for Self-Supervised Learning: A Clustering-Based Approach", arXiv:2405.15613
(spec: ``shared/notes/curation-spec.md`` section 1.1). It is a clean re-implementation:

* squared L2 distances ``‖x‖² − 2 x·c + ‖c‖²`` computed in row chunks, never a full N×K matrix;
* greedy k-means++ seeding (Arthur & Vassilvitskii 2007, greedy variant as in scikit-learn);
* a Lloyd loop whose centroid update is one vectorised ``index_add_`` in float64;
  an empty cluster keeps its previous centroid;
* every random choice comes from one ``torch.Generator`` seeded with an integer.

Unlike the reference, the Lloyd loop stops early once the assignment no longer changes (an exact
fixed point: further iterations would return the same result) and optionally on a tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from workflow.errors import StrataError

#: Upper bound on the number of float entries of one chunk×k distance block.
CHUNK_FLOATS = 2**24
#: Preferred size of one chunk×k block (fits in cache; measured ~2× faster than 2^24 on CPU).
CACHE_FLOATS = 2**20


@dataclass
class KMeansResult:
    """Output of :func:`kmeans`.

    Attributes:
        centroids: ``(k, d)`` float32 cluster centres (``k`` capped at the number of points).
        assignment: ``(n,)`` int64 index of the nearest centroid of every point, computed with the
            returned ``centroids``.
        inertia: Σ_i ‖x_i − c_{a(i)}‖², accumulated in float64.
        n_iters_run: Number of Lloyd centroid updates actually performed.
    """

    centroids: np.ndarray
    assignment: np.ndarray
    inertia: float
    n_iters_run: int


def _check_int(value: object, name: str, minimum: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise StrataError(f"{name} must be an integer, got {value!r}.", where=where,
                          fix=f"Pass an integer {name} >= {minimum}.")
    if int(value) < minimum:
        raise StrataError(f"{name} must be >= {minimum}, got {value}.", where=where,
                          fix=f"Pass an integer {name} >= {minimum}.")
    return int(value)


def as_float_tensor(x: np.ndarray | torch.Tensor, device: str | torch.device = "cpu",
                    where: str = "kmeans") -> torch.Tensor:
    """Validate a 2-D, non-empty, finite array and return it as a float32 tensor on ``device``.

    Args:
        x: ``(n, d)`` array or tensor.
        device: Target torch device.
        where: Context named in error messages.

    Returns:
        ``(n, d)`` contiguous float32 tensor on ``device``.

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
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device)
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


def default_chunk_size(n: int, k: int) -> int:
    """Rows per distance chunk: about 2^20 floats per chunk×k block (cache friendly), at least 64 rows
    while that stays ≤ 2^24 floats, at least one row and at most ``n``."""
    k = max(1, k)
    chunk = CACHE_FLOATS // k
    if chunk < 64:
        chunk = min(64, CHUNK_FLOATS // k)
    return max(1, min(n, chunk))


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
    chunk = default_chunk_size(n, k) if chunk_size is None else _check_int(chunk_size, "chunk_size", 1,
                                                                            "kmeans.assign")
    centroids = centroids.to(dtype=x.dtype)
    c_sq = (centroids * centroids).sum(1)
    index = torch.empty(n, dtype=torch.int64, device=x.device)
    dist = torch.empty(n, dtype=x.dtype, device=x.device)
    for start in range(0, n, chunk):
        xb = x[start:start + chunk]
        d = torch.addmm(c_sq.unsqueeze(0), xb, centroids.T, alpha=-2.0)
        d.add_((xb * xb).sum(1, keepdim=True))
        val, idx = d.min(dim=1)
        index[start:start + chunk] = idx
        dist[start:start + chunk] = val.clamp_(min=0.0)
    return index, dist


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator,
                    n_local_trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding.

    Arthur & Vassilvitskii (2007), greedy variant as in scikit-learn's ``_kmeans_plusplus`` and in
    Vo et al. (2024, arXiv:2405.15613, spec 1.1): the first centre is a uniformly random point; each
    next centre is the best of ``L = 2 + ⌊ln k⌋`` candidates drawn with probability
    p(x_i) = D(x_i)² / Σ_j D(x_j)², where D is the distance to the nearest centre chosen so far;
    "best" minimises the potential φ = Σ_i min(D(x_i)², ‖x_i − candidate‖²).

    Args:
        x: ``(n, d)`` float tensor.
        k: Number of centres, ``1 ≤ k ≤ n``.
        generator: Torch generator on ``x.device``; the only source of randomness.
        n_local_trials: Candidates per step; default ``2 + ⌊ln k⌋``.

    Returns:
        ``(k, d)`` tensor of centres, each a row of ``x`` (same dtype and device as ``x``).
    """
    n = x.shape[0]
    k = _check_int(k, "k", 1, "kmeans_plusplus")
    if k > n:
        raise StrataError(f"cannot seed {k} centres from {n} points.", where="kmeans_plusplus",
                          fix="Use k <= number of points.")
    trials = 2 + int(math.log(k)) if n_local_trials is None else _check_int(
        n_local_trials, "n_local_trials", 1, "kmeans_plusplus")
    device = x.device
    x_sq = (x * x).sum(1)
    centers = torch.empty((k, x.shape[1]), dtype=x.dtype, device=device)
    first = int(torch.randint(n, (1,), generator=generator, device=device).item())
    centers[0] = x[first]
    closest = _sq_dists(x, x_sq, x[first:first + 1])[0]
    closest[first] = 0.0
    zero = torch.zeros((), dtype=torch.float64, device=device)
    for c in range(1, k):
        cum = torch.cumsum(closest, 0, dtype=torch.float64)
        total = cum[-1]
        r = torch.rand(trials, generator=generator, dtype=torch.float64, device=device) * total
        # r < total strictly, so searchsorted(right=True) only lands on points with D² > 0.
        r = torch.minimum(r, torch.nextafter(total, zero))
        cand = torch.searchsorted(cum, r, right=True).clamp_(max=n - 1)
        d_cand = _sq_dists(x, x_sq, x[cand])
        torch.minimum(d_cand, closest.unsqueeze(0), out=d_cand)
        best = int(torch.argmin(d_cand.sum(1, dtype=torch.float64)).item())
        chosen = int(cand[best].item())
        closest = d_cand[best]
        closest[chosen] = 0.0
        centers[c] = x[chosen]
    return centers


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
        sums.index_add_(0, assignment[start:start + chunk], x[start:start + chunk].double())
    counts = torch.bincount(assignment, minlength=k)
    new = centroids.double().clone()
    nonempty = counts > 0
    new[nonempty] = sums[nonempty] / counts[nonempty].unsqueeze(1).double()
    return new.to(centroids.dtype)


def _inertia(x: torch.Tensor, centroids: torch.Tensor, assignment: torch.Tensor, chunk: int) -> float:
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        diff = x[start:start + chunk].double() - centroids[assignment[start:start + chunk]].double()
        total += float((diff * diff).sum().item())
    return total


def kmeans(x: np.ndarray | torch.Tensor, k: int, n_iters: int = 50, seed: int = 0, tol: float | None = None,
           chunk_size: int | None = None, device: str = "cpu",
           progress: Callable[[str], None] | None = None) -> KMeansResult:
    """k-means (Lloyd) with greedy k-means++ seeding, squared L2, seeded and chunked.

    Minimises the inertia φ(C) = Σ_i min_j ‖x_i − c_j‖² by alternating assignment
    a(i) = argmin_j ‖x_i − c_j‖² and update c_j = mean{x_i : a(i) = j} (empty clusters keep their
    centroid), as in Vo et al. (2024), arXiv:2405.15613, spec 1.1. ``k`` is capped at ``n``.

    Args:
        x: ``(n, d)`` data (numpy array or torch tensor); computed in float32.
        k: Requested number of clusters (≥ 1); ``min(k, n)`` are returned.
        n_iters: Maximum number of Lloyd iterations (≥ 0). The loop stops earlier when the
            assignment stops changing (exact fixed point) or on ``tol``.
        seed: Integer seed of the ``torch.Generator`` used for k-means++.
        tol: If given, stop when Σ_j ‖Δc_j‖² ≤ tol · mean per-feature variance of ``x``
            (the relative centroid shift criterion of scikit-learn).
        chunk_size: Rows per distance block; default :func:`default_chunk_size` (≤ 2^24 floats).
        device: Torch device, default ``"cpu"``.
        progress: Optional callback receiving one-line status messages.

    Returns:
        :class:`KMeansResult` with float32 centroids, int64 assignment (consistent with the
        returned centroids), float64 inertia and the number of Lloyd updates run.

    Raises:
        StrataError: Empty input, non-finite values, ``k < 1`` or invalid arguments.
    """
    where = "kmeans"
    xt = as_float_tensor(x, device, where)
    k = _check_int(k, "k", 1, where)
    n_iters = _check_int(n_iters, "n_iters", 0, where)
    seed = _check_int(seed, "seed", 0, where)
    if tol is not None and not (math.isfinite(tol) and tol >= 0):
        raise StrataError(f"tol must be a finite number >= 0 or None, got {tol!r}.", where=where,
                          fix="Use e.g. tol=1e-4, or None to run all iterations.")
    n = xt.shape[0]
    k = min(k, n)
    chunk = default_chunk_size(n, k) if chunk_size is None else _check_int(chunk_size, "chunk_size", 1, where)
    tol_abs = None if tol is None else float(tol) * float(torch.var(xt, dim=0, unbiased=False).mean().item())

    generator = torch.Generator(device=xt.device)
    generator.manual_seed(seed)
    centroids = kmeans_plusplus(xt, k, generator)

    previous: torch.Tensor | None = None
    final: torch.Tensor | None = None
    n_run = 0
    for _ in range(n_iters):
        index, _dist = assign(xt, centroids, chunk)
        if previous is not None and torch.equal(index, previous):
            final = index  # fixed point: centroids would not move any more
            break
        new = update_centroids(xt, index, centroids)
        n_run += 1
        shift = float(((new.double() - centroids.double()) ** 2).sum().item())
        centroids, previous = new, index
        if tol_abs is not None and shift <= tol_abs:
            break
    if final is None:
        final, _dist = assign(xt, centroids, chunk)
    inertia = _inertia(xt, centroids, final, chunk)
    if progress is not None:
        progress(f"k-means: n={n} k={k} iterations={n_run} inertia={inertia:.6g}")
    return KMeansResult(centroids=centroids.cpu().numpy().astype(np.float32, copy=False),
                        assignment=final.cpu().numpy().astype(np.int64, copy=False),
                        inertia=inertia, n_iters_run=n_run)
