"""Balanced top-down sampling from a hierarchical k-means tree (Vo et al. 2024).

Re-implementation of the balanced hierarchical sampling of Vo et al. (2024), "Automatic Data
Curation for Self-Supervised Learning: A Clustering-Based Approach", arXiv:2405.15613
(spec ``shared/notes/curation-spec.md`` section 1.4). A budget is split over children by
"water-filling" (capped equal shares, not proportional to size), recursively from the top level
down to the level-1 clusters, where points are picked at random or closest to the centroid.
Multiplier > 1 (oversampling with repeats) is not implemented: every point is taken at most once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from workflow.config import enum
from workflow.curate.hierarchical import Level, cluster_ids_per_level, flat_sizes
from workflow.errors import StrataError

__all__ = ["LEAF_STRATEGIES", "balanced_hierarchical_sample", "cluster_ids_per_level", "water_fill"]

#: How a leaf cluster's budget is picked (the schema's ``curation.leaf_strategy``).
LEAF_STRATEGIES: tuple[str, ...] = enum("curation", "leaf_strategy")


def water_fill(sizes: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``budget`` over children of the given sizes by water-filling.

    If Σ s_i ≤ budget every child gets s_i. Otherwise x* = max{x ∈ ℕ : Σ_i min(x, s_i) ≤ budget}
    (found by binary search), child i gets min(x*, s_i), and the remainder
    budget − Σ_i min(x*, s_i) (< #{i : s_i > x*}) is given as +1 to that many distinct children
    with s_i > x*, chosen uniformly at random (Vo et al. 2024, arXiv:2405.15613, spec 1.4,
    ``find_subcluster_target_size``).

    Args:
        sizes: ``(m,)`` non-negative integer sizes.
        budget: Non-negative integer budget.
        rng: NumPy generator for the remainder.

    Returns:
        ``(m,)`` int64 allocation, 0 ≤ alloc_i ≤ s_i, summing to min(budget, Σ s_i).
    """
    s = np.asarray(sizes)
    if s.ndim != 1 or (s.size and not np.issubdtype(s.dtype, np.integer)):
        raise StrataError(f"sizes must be a 1-D integer array, got shape {s.shape} dtype {s.dtype}.",
                          where="water_fill", fix="Pass integer child sizes.")
    s = s.astype(np.int64)
    if s.size and s.min() < 0:
        raise StrataError("sizes must be >= 0.", where="water_fill", fix="Pass non-negative child sizes.")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise StrataError(f"budget must be an integer >= 0, got {budget!r}.", where="water_fill",
                          fix="Pass a non-negative integer budget.")
    budget = int(budget)
    if int(s.sum()) <= budget:
        return s.copy()
    lo, hi = 0, int(s.max())  # invariant: f(lo) <= budget < f(hi), f(x) = Σ min(x, s_i)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(np.minimum(mid, s).sum()) <= budget:
            lo = mid
        else:
            hi = mid
    alloc = np.minimum(lo, s)
    remainder = budget - int(alloc.sum())
    if remainder > 0:
        above = np.flatnonzero(s > lo)
        alloc[rng.choice(above, size=remainder, replace=False)] += 1
    return alloc


def _leaf_sq_dist(points: np.ndarray, centroids: np.ndarray, leaf: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Squared distance (float64) of every point to its leaf centroid, chunk by chunk (memmap friendly)."""
    c64 = np.asarray(centroids, dtype=np.float64)
    key = np.empty(leaf.shape[0], dtype=np.float64)
    for start in range(0, leaf.shape[0], chunk):
        diff = np.asarray(points[start:start + chunk], dtype=np.float64) - c64[leaf[start:start + chunk]]
        key[start:start + chunk] = np.einsum("ij,ij->i", diff, diff)
    return key


def balanced_hierarchical_sample(levels: Sequence[Level], target_size: int, seed: int = 0,
                                 strategy: str = "random", points: np.ndarray | None = None) -> np.ndarray:
    """Balanced top-down selection of ``target_size`` data points from a cluster tree.

    The root splits T = target_size over the top-level clusters with
    b = water_fill(flat sizes, T); each node at level t splits its budget over its level-(t−1)
    children by water-filling on their flat sizes (number of data points below each); a level-1
    cluster with budget b picks b of its points uniformly without replacement (``random``) or the
    b closest to its centroid (``closest``) (Vo et al. 2024, arXiv:2405.15613, spec 1.4-1.5).

    Args:
        levels: Tree from :func:`workflow.curate.hierarchical.hierarchical_kmeans`, level 1 first.
        target_size: Number of points to select (≥ 0). If larger than the number of points, all
            points are returned (the caller should warn).
        seed: Integer seed of the only random generator used.
        strategy: Leaf rule, ``"random"`` (reference default) or ``"closest"``.
        points: ``(n, d)`` data points (array or memmap, read in chunks); required for ``closest``.

    Returns:
        Sorted unique int64 indices of the selected data points; exactly ``min(target_size, n)``.

    Raises:
        StrataError: Invalid tree, target, strategy or missing ``points``.
    """
    where = "balanced_hierarchical_sample"
    if strategy not in LEAF_STRATEGIES:
        raise StrataError(f"unknown strategy {strategy!r}.", where=f"{where}: strategy",
                          fix=f"Use one of {', '.join(LEAF_STRATEGIES)}.")
    for name, value in (("target_size", target_size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise StrataError(f"{name} must be an integer >= 0, got {value!r}.", where=f"{where}: {name}",
                              fix=f"Pass a non-negative integer {name}.")
    ids = cluster_ids_per_level(levels)
    n = ids.shape[0]
    if strategy == "closest":
        if points is None:
            raise StrataError("strategy 'closest' needs the data points.", where=f"{where}: points",
                              fix="Pass points=embeddings, or use strategy='random'.")
        shape = tuple(np.shape(points))
        if shape != (n, levels[0].centroids.shape[1]):
            raise StrataError(f"points has shape {shape}, expected {(n, levels[0].centroids.shape[1])}.",
                              where=f"{where}: points", fix="Pass the embeddings the tree was built on.")
    rng = np.random.default_rng(seed)
    sizes = flat_sizes(levels)
    top = len(levels) - 1
    budget = water_fill(sizes[top], int(target_size), rng)
    for t in range(top, 0, -1):  # split level-(t+1) budgets over level-t children (0-based t)
        child_budget = np.zeros(levels[t - 1].n_clusters, dtype=np.int64)
        children = levels[t].members()
        for j in np.flatnonzero(budget):
            kids = children[j]
            child_budget[kids] = water_fill(sizes[t - 1][kids], int(budget[j]), rng)
        budget = child_budget
    leaf = ids[:, 0]
    if strategy == "random":
        key = rng.random(n)
    else:
        key = _leaf_sq_dist(points, levels[0].centroids, leaf)
    order = np.lexsort((key, leaf))
    starts = np.concatenate(([0], np.cumsum(sizes[0])[:-1]))
    rank = np.arange(n) - starts[leaf[order]]
    return np.sort(order[rank < budget[leaf[order]]]).astype(np.int64)

