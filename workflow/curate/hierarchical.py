"""Hierarchical k-means with resampling (bottom-up tree of Vo et al. 2024).

Re-implementation of ``hierarchical_kmeans_with_resampling`` from Vo et al. (2024), "Automatic
Data Curation for Self-Supervised Learning: A Clustering-Based Approach", arXiv:2405.15613
(spec ``shared/notes/curation-spec.md`` sections 1.2-1.3, 1.7):

* level 1 clusters the data points; level t > 1 clusters the centroids of level t−1, each counted
  once;
* inside a level, after a first k-means, ``n_resamples`` times: take r_t points per cluster
  (closest to the centroid, or random), re-run a fresh k-means++ k-means with the same k_t on that
  subset and reassign *all* inputs of the level to the new centroids. This flattens the density of
  centroids (dense regions get fewer centroids);
* clusters are plain int64 arrays (no object arrays), so equal-size clusters and k ≥ n work;
* every random choice derives from one integer seed via ``numpy.random.SeedSequence``;
* level 1 may be a ``numpy.memmap`` (read chunk by chunk) and its full-data passes (the first
  k-means and the reassignment of all points after every re-fit) may run on Ray actors
  (``workers > 1``); the re-fits themselves run in process on the resampled subset (k_t · r_t rows),
  as do levels t > 1, whose inputs are the k_{t−1} centroids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workflow.config import enum
from workflow.errors import StrataError
from workflow.kmeans import DataSource, KMeansOptions, kmeans, lloyd_engine, resolve_device, resolve_options

#: How the points of a resampled cluster are chosen (the schema's ``curation.sample_strategy``).
SAMPLE_STRATEGIES: tuple[str, ...] = enum("curation", "sample_strategy")


@dataclass
class Level:
    """One level of the cluster tree.

    Attributes:
        centroids: ``(k_t, d)`` float32 centroids of this level.
        assignment: ``(n_inputs_t,)`` int64; for each input of the level (data points at level 1,
            level-(t−1) centroids at level t > 1) its cluster id in ``[0, k_t)``.
    """

    centroids: np.ndarray
    assignment: np.ndarray

    def __post_init__(self) -> None:
        self.centroids = np.asarray(self.centroids, dtype=np.float32)
        self.assignment = np.asarray(self.assignment, dtype=np.int64)
        if self.centroids.ndim != 2 or self.assignment.ndim != 1:
            raise StrataError(
                f"Level needs 2-D centroids and 1-D assignment, got {self.centroids.shape} and "
                f"{self.assignment.shape}.", where="Level", fix="Pass centroids (k, d) and assignment (n,).")
        k = self.centroids.shape[0]
        if self.assignment.size and (self.assignment.min() < 0 or self.assignment.max() >= k):
            raise StrataError(f"assignment values must lie in [0, {k}).", where="Level",
                              fix="Every input must point at an existing cluster of this level.")

    @property
    def n_clusters(self) -> int:
        """Number of clusters k_t of this level."""
        return int(self.centroids.shape[0])

    @property
    def n_inputs(self) -> int:
        """Number of inputs clustered at this level."""
        return int(self.assignment.shape[0])

    def sizes(self) -> np.ndarray:
        """``(k_t,)`` int64 number of inputs (not data points) in every cluster."""
        return np.bincount(self.assignment, minlength=self.n_clusters).astype(np.int64)

    def members(self) -> list[np.ndarray]:
        """For every cluster, the sorted int64 indices of its inputs."""
        return group_indices(self.assignment, self.n_clusters)


def group_indices(labels: np.ndarray, k: int) -> list[np.ndarray]:
    """Split ``arange(len(labels))`` by label: entry j holds the sorted indices with label j.

    Args:
        labels: ``(n,)`` int labels in ``[0, k)``.
        k: Number of groups (empty groups give empty arrays).

    Returns:
        List of ``k`` int64 arrays.
    """
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable").astype(np.int64)
    bounds = np.cumsum(np.bincount(labels, minlength=k))[:-1]
    return list(np.split(order, bounds))


def check_levels(levels: Sequence[Level]) -> None:
    """Check that ``levels`` form a tree: level t has one input per cluster of level t−1.

    Raises:
        StrataError: If the list is empty or two consecutive levels do not chain.
    """
    if len(levels) == 0:
        raise StrataError("the cluster tree has no level.", where="levels", fix="Pass at least one Level.")
    for t in range(1, len(levels)):
        if levels[t].n_inputs != levels[t - 1].n_clusters:
            raise StrataError(
                f"level {t + 1} has {levels[t].n_inputs} inputs but level {t} has "
                f"{levels[t - 1].n_clusters} clusters.", where="levels",
                fix="Level t must assign every centroid of level t-1.")


def cluster_ids_per_level(levels: Sequence[Level]) -> np.ndarray:
    """Cluster id of every data point at every level.

    ids[:, 0] = a_1 and ids[:, t] = a_{t+1}[ids[:, t−1]] (composition of the level assignments).

    Args:
        levels: Tree from :func:`hierarchical_kmeans` (level 1 first).

    Returns:
        ``(n_points, n_levels)`` int64 array.
    """
    check_levels(levels)
    ids = np.empty((levels[0].n_inputs, len(levels)), dtype=np.int64)
    ids[:, 0] = levels[0].assignment
    for t in range(1, len(levels)):
        ids[:, t] = levels[t].assignment[ids[:, t - 1]]
    return ids


def flat_sizes(levels: Sequence[Level]) -> list[np.ndarray]:
    """For each level t, the ``(k_t,)`` int64 number of data points below each cluster."""
    ids = cluster_ids_per_level(levels)
    return [np.bincount(ids[:, t], minlength=lv.n_clusters).astype(np.int64) for t, lv in enumerate(levels)]


def flat_members(levels: Sequence[Level]) -> list[list[np.ndarray]]:
    """For each level t and cluster j, the sorted int64 indices of the data points below node j.

    Args:
        levels: Tree from :func:`hierarchical_kmeans` (level 1 first).

    Returns:
        ``result[t][j]`` (t = 0 is level 1).
    """
    ids = cluster_ids_per_level(levels)
    return [group_indices(ids[:, t], lv.n_clusters) for t, lv in enumerate(levels)]


def derive_seed(seed: int, level: int, step: int, stream: int = 0) -> int:
    """Independent 32-bit seed for (level, step, stream) derived from one user seed."""
    state = np.random.SeedSequence([seed, level, step, stream]).generate_state(1, dtype=np.uint32)
    return int(state[0])


def resample_indices(assignment: np.ndarray, sq_dist: np.ndarray, k: int, r: int, strategy: str,
                     rng: np.random.Generator) -> np.ndarray:
    """Indices of r inputs per cluster: the closest to the centroid, or random ones.

    Clusters with fewer than r members contribute all of them (spec 1.3). Vectorised: sort by
    (cluster, key) and keep ranks < r, where key is the squared distance (``closest``) or a
    uniform random number (``random``).

    Args:
        assignment: ``(n,)`` int64 cluster ids.
        sq_dist: ``(n,)`` squared distance of each input to its centroid (``closest`` only).
        k: Number of clusters.
        r: Points per cluster (≥ 1).
        strategy: ``"closest"`` or ``"random"``.
        rng: NumPy generator (``random`` only).

    Returns:
        Sorted int64 indices into the inputs.
    """
    key = sq_dist if strategy == "closest" else rng.random(assignment.shape[0])
    order = np.lexsort((key, assignment))
    counts = np.bincount(assignment, minlength=k)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(order.shape[0]) - starts[assignment[order]]
    return np.sort(order[rank < r]).astype(np.int64)


def hierarchical_kmeans(x: np.ndarray | torch.Tensor, n_clusters: Sequence[int],
                        sample_sizes: Sequence[int] | None = None, n_resamples: int = 10,
                        sample_strategy: str = "closest", options: KMeansOptions | None = None, *,
                        progress: Callable[[str], None] | None = None, **overrides: Any) -> list[Level]:
    """Bottom-up hierarchical k-means with resampling (Vo et al. 2024, arXiv:2405.15613, spec 1.2-1.3).

    For t = 1..T with inputs X_1 = data and X_t = C_{t−1}:
    (C, L) = kmeans(X_t, k_t); if r_t > 1, repeat ``n_resamples`` times:
    R = ∪_j (r_t members of L_j closest to C_j, or random), C = kmeans(R, k_t) (fresh k-means++),
    L = assign(X_t, C). Level t stores C and L.

    Args:
        x: ``(n, d)`` data points (array, tensor, ``numpy.memmap`` or path to a ``.npy`` file).
        n_clusters: k_t per level (each ≥ 1; need not be decreasing). A k_t larger than the
            level's inputs is capped (reported through ``progress``).
        sample_sizes: r_t per level (each ≥ 1; r_t = 1 disables resampling at that level).
            Default r_t = max(2, round(0.5 · n_inputs_t / k_t)), about half the mean cluster size.
        n_resamples: Number of resampling re-fits per level (≥ 0).
        sample_strategy: ``"closest"`` (reference default) or ``"random"``.
        options: How every k-means runs (:class:`~workflow.kmeans.KMeansOptions`: ``n_iters``, ``tol``,
            ``device``, ``chunk_size``, ``init_method``, ``init_max_points``, ``prune``); its ``seed`` is the one
            seed that the level/step seeds derive from, its ``workers`` (and ``ray_address``) serve the level-1
            full-data passes (1 = in process). Default: the reference's settings.
        progress: Optional callback receiving one-line status messages and warnings.
        **overrides: Fields of :class:`~workflow.kmeans.KMeansOptions` replacing those of ``options``
            (``hierarchical_kmeans(x, [40, 10], n_iters=15, seed=1)``).

    Returns:
        List of :class:`Level`, level 1 first.

    Raises:
        StrataError: Invalid sizes, strategy, seed or input data.
    """
    where = "hierarchical_kmeans"
    if sample_strategy not in SAMPLE_STRATEGIES:
        raise StrataError(f"unknown sample_strategy {sample_strategy!r}.", where=f"{where}: sample_strategy",
                          fix=f"Use one of {', '.join(SAMPLE_STRATEGIES)}.")
    ks = list(n_clusters)
    if len(ks) == 0:
        raise StrataError("n_clusters is empty.", where=f"{where}: n_clusters",
                          fix="Give one cluster count per level, e.g. [1000, 300].")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise StrataError(f"every n_clusters entry must be an integer >= 1, got {k!r}.",
                              where=f"{where}: n_clusters", fix="Use positive integers, e.g. [1000, 300].")
    rs: list[int] | None = None
    if sample_sizes is not None:
        rs = list(sample_sizes)
        if len(rs) != len(ks):
            raise StrataError(f"sample_sizes has {len(rs)} entries but n_clusters has {len(ks)}.",
                              where=f"{where}: sample_sizes", fix="Give one sample size per level.")
        for r in rs:
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
                raise StrataError(f"every sample_sizes entry must be an integer >= 1, got {r!r}.",
                                  where=f"{where}: sample_sizes",
                                  fix="Use e.g. [15, 2]; 1 disables resampling.")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 0:
        raise StrataError(f"n_resamples must be an integer >= 0, got {n_resamples!r}.",
                          where=f"{where}: n_resamples", fix="Pass an integer n_resamples >= 0.")
    opts = resolve_options(options, overrides, where)
    seed = opts.seed

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    dev = resolve_device(opts.device, progress)
    # every k-means of a level runs in process: the level's engine (Ray actors at level 1) does the full passes
    options = dataclasses.replace(opts, device=str(dev), workers=1, ray_address=None)
    source = DataSource(x, dev, where)
    levels: list[Level] = []
    for t, k_req in enumerate(ks, start=1):
        n_in = source.n
        k = int(k_req)
        if k > n_in:
            say(f"warning: level {t} asks for {k} clusters but has only {n_in} inputs; using k={n_in}.")
            k = n_in
        r = int(rs[t - 1]) if rs is not None else max(2, round(0.5 * n_in / k))
        say(f"level {t}: clustering {n_in} inputs into {k} clusters (r={r}, resamples={n_resamples})")
        with lloyd_engine(source, k, opts.workers if t == 1 else 1, opts.ray_address, opts.chunk_size, str(dev),
                          opts.prune) as engine:
            res = kmeans(source, k, options, seed=derive_seed(seed, t, 0), progress=progress, engine=engine,
                         label=f"level {t} k-means")
            centroids = torch.from_numpy(res.centroids).to(dev)
            index, sq_dist = res.assignment, res.distances
            if r > 1:
                for step in range(1, n_resamples + 1):
                    rng = np.random.default_rng(derive_seed(seed, t, step, 1))
                    subset = resample_indices(index, sq_dist, centroids.shape[0], r, sample_strategy, rng)
                    res = kmeans(source.rows(subset), k, options, seed=derive_seed(seed, t, step))
                    centroids = torch.from_numpy(res.centroids).to(dev)
                    idx_t, dist_t = engine.finalize(centroids)
                    index, sq_dist = idx_t.cpu().numpy(), dist_t.cpu().numpy()
                    say(f"level {t}: resample {step}/{n_resamples} on {subset.shape[0]} inputs, "
                        f"inertia {float(sq_dist.sum()):.6g}")
        level = Level(centroids=centroids.cpu().numpy(), assignment=index)
        levels.append(level)
        source = DataSource(centroids, dev, where, check=False)
    return levels
