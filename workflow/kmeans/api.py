"""The k-means engine's API: seeded, chunked, exact k-means with greedy k-means++ (torch, any device, optional Ray).

This is the base clusterer of the hierarchical curation of Vo et al. (2024), "Automatic Data Curation for
Self-Supervised Learning: A Clustering-Based Approach", arXiv:2405.15613 (spec: ``shared/notes/curation-spec.md``
section 1.1). A clean re-implementation; where each idea lives:

* :mod:`.source`: the data (array, tensor, memmap or ``.npy`` path), served one row chunk at a time;
* :mod:`.seeding` (and :mod:`.seeding_lowdim` for d ≤ 3): greedy k-means++ (Arthur & Vassilvitskii 2007, greedy
  variant as scikit-learn), rows no candidate can improve skipped with the triangle inequality (Elkan 2003);
* :mod:`.lloyd`: the loop, ``n_iters`` iterations (reference: 50), stopped early only at an exact fixed point
  (no assignment changes) or on ``tol``; an empty cluster keeps its centroid;
* :mod:`.engine`: one pass, local, threaded (:mod:`.threads`) or Ray-sharded (:mod:`.ray_shards`) behind one
  protocol; every row goes to its *exact* nearest centroid (:mod:`.exact`: a float32 GEMM with a certified error
  bound, near ties settled in float64, first index on exact ties), rows are summed per cluster in float64 in fixed
  blocks, so results do not depend on the thread count;
* :mod:`.bounds`, :mod:`.groups`, :mod:`.pruner`: exact Yinyang pruning (Ding et al. 2015; Hamerly 2010), by default
  (``prune="auto"``) where it pays (passes of at least :data:`.tuning.PRUNE_MIN_WORK` multiply-adds and
  :data:`.tuning.PRUNE_MIN_ITERS` iterations); pruned and plain runs are bitwise identical;
* :mod:`.tuning`: every tuning constant.

``k`` is capped at the number of points; every random choice comes from one integer seed (a
``torch.Generator``). Documented departures from the reference code, all exact or opt-in: the early stop at a
fixed point; ``tol`` (default off: stop when Σ_j ‖Δc_j‖² ≤ tol · mean per-feature variance); ``init_max_points``
(default off: seed k-means++ on a seeded uniform sample); ``init_method="random"`` (k distinct random points).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workflow.config import enum
from workflow.errors import StrataError
from workflow.kmeans import tuning
from workflow.kmeans.engine import LloydEngine, local_engine
from workflow.kmeans.lloyd import lloyd_iterations
from workflow.kmeans.ray_shards import RayLloyd, ray_context
from workflow.kmeans.seeding import kmeans_plusplus
from workflow.kmeans.source import DataSource, check_int, resolve_device

#: Seeding methods of :func:`kmeans` (the schema's ``curation.init_method``).
INIT_METHODS: tuple[str, ...] = enum("curation", "init_method")
#: Pruning policies of :func:`kmeans`, ``auto``, ``never``, ``always`` (the schema's ``curation.prune``).
PRUNE_MODES: tuple[str, ...] = enum("curation", "prune")


@dataclass(frozen=True)
class KMeansOptions:
    """How :func:`kmeans` runs; the defaults are the reference's.

    Attributes:
        n_iters: Number of Lloyd iterations (≥ 0; reference 50). The loop stops earlier only at an exact fixed
            point (no assignment changes) or on ``tol``.
        seed: Integer seed of the ``torch.Generator`` of k-means++ (and of the init sample).
        tol: If given, stop when Σ_j ‖Δc_j‖² ≤ tol · mean per-feature variance of the data (the relative centroid
            shift criterion of scikit-learn). Default: no tolerance.
        chunk_size: Rows per distance block; default :func:`.tuning.default_chunk_size` (≈ 2^19 floats).
        device: Torch device, ``"cpu"``, ``"cuda"`` (falls back to CPU when unavailable) or ``"auto"``.
        workers: Ray actors for the Lloyd passes (1 = in process, no Ray).
        ray_address: Ray cluster to join when ``workers > 1`` and Ray is not initialised yet (default
            ``$RAY_ADDRESS``, else a private local Ray).
        init_max_points: Seed k-means++ on a seeded uniform sample of at most this many points (default: all
            points, as the reference).
        init_method: ``"kmeans++"`` (greedy k-means++, the reference default) or ``"random"`` (k distinct points
            drawn uniformly, the reference's other option, as faiss does).
        prune: When to skip the distance computations that provably cannot change an assignment (exact: the
            result is bitwise identical with and without; only the time changes), one of :data:`PRUNE_MODES`.
            ``"auto"``: where it pays (from :data:`.tuning.PRUNE_MIN_ITERS` iterations and
            :data:`.tuning.PRUNE_MIN_WORK` multiply-adds per pass, on the CPU); ``"always"``: every pass with at
            least :data:`.tuning.PRUNE_MIN_K` clusters; ``"never"``: plain passes. Ignored when an engine is given
            (its own setting applies).
        label: Prefix of the progress messages.
    """

    n_iters: int = 50
    seed: int = 0
    tol: float | None = None
    chunk_size: int | None = None
    device: str = "cpu"
    workers: int = 1
    ray_address: str | None = None
    init_max_points: int | None = None
    init_method: str = "kmeans++"
    prune: str = "auto"
    label: str = "k-means"

    def checked(self, where: str = "kmeans") -> KMeansOptions:
        """These options with their integers normalised; raises :class:`StrataError` on an invalid value."""
        if self.tol is not None and not (math.isfinite(self.tol) and self.tol >= 0):
            raise StrataError(f"tol must be a finite number >= 0 or None, got {self.tol!r}.", where=where,
                              fix="Use e.g. tol=1e-4, or None to run all iterations.")
        if self.init_method not in INIT_METHODS:
            raise StrataError(f"unknown init_method {self.init_method!r}.", where=where,
                              fix=f"Use one of {', '.join(INIT_METHODS)}.")
        if not isinstance(self.prune, str) or self.prune not in PRUNE_MODES:
            raise StrataError(f"unknown prune {self.prune!r}.", where=where,
                              fix=f"Use one of {', '.join(PRUNE_MODES)} (auto: where it pays).")
        return dataclasses.replace(
            self, n_iters=check_int(self.n_iters, "n_iters", 0, where), seed=check_int(self.seed, "seed", 0, where),
            workers=check_int(self.workers, "workers", 1, where),
            init_max_points=None if self.init_max_points is None else check_int(
                self.init_max_points, "init_max_points", 1, where),
            chunk_size=None if self.chunk_size is None else check_int(self.chunk_size, "chunk_size", 1, where))


def resolve_options(options: KMeansOptions | None, overrides: dict[str, Any], where: str) -> KMeansOptions:
    """``options`` (default: :class:`KMeansOptions`) with the fields named in ``overrides`` replaced, checked.

    Raises:
        StrataError: an unknown field name or an invalid value.
    """
    try:
        return dataclasses.replace(options or KMeansOptions(), **overrides).checked(where)
    except TypeError as err:  # an unknown option name
        names = ", ".join(f.name for f in dataclasses.fields(KMeansOptions))
        raise StrataError(f"invalid k-means option: {err}.", where=where, fix=f"Use fields of KMeansOptions: {names}."
                          ) from err


@dataclass
class KMeansResult:
    """Output of :func:`kmeans`.

    Attributes:
        centroids: ``(k, d)`` float32 cluster centroids (``k`` capped at the number of points).
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


def kmeans(x: Any, k: int, options: KMeansOptions | None = None, *, progress: Callable[[str], None] | None = None,
           engine: LloydEngine | None = None, **overrides: Any) -> KMeansResult:
    """k-means (Lloyd) with greedy k-means++ seeding, squared L2, seeded and chunked (see module doc).

    Args:
        x: ``(n, d)`` data: numpy array, ``numpy.memmap`` (streamed chunk by chunk), path to a ``.npy`` file
            (memory-mapped), torch tensor or :class:`DataSource`; computed in float32.
        k: Requested number of clusters (≥ 1); ``min(k, n)`` are returned.
        options: How to run (:class:`KMeansOptions`; default: the reference's settings).
        progress: Optional callback receiving one-line status messages (every 10 iterations).
        engine: An existing Lloyd engine over the same data (used by the hierarchical k-means to keep one set of
            Ray actors for a whole level); ``options.workers`` and ``options.prune`` are then ignored.
        **overrides: Fields of :class:`KMeansOptions` replacing those of ``options`` (``kmeans(x, k, seed=1)``).

    Returns:
        :class:`KMeansResult` with float32 centroids, int64 assignment (consistent with the returned centroids),
        float64 inertia and distances, and the number of Lloyd updates run.

    Raises:
        StrataError: Empty input, non-finite values, ``k < 1`` or invalid options.
    """
    where = "kmeans"
    opts = resolve_options(options, overrides, where)
    k = check_int(k, "k", 1, where)
    if engine is not None:
        src = engine.source
    else:
        src = x if isinstance(x, DataSource) else DataSource(x, resolve_device(opts.device, progress), where)
    if engine is None and opts.workers > 1:
        with lloyd_engine(src, min(k, src.n), opts.workers, opts.ray_address, opts.chunk_size, opts.device,
                          prune_for(opts.prune, opts.n_iters)) as eng:
            return kmeans(src, k, opts, progress=progress, engine=eng)
    if engine is None:
        # the bounds cost a slower first pass and pay back from the second iteration on
        engine = local_engine(src, opts.chunk_size, prune=engine_prune(prune_for(opts.prune, opts.n_iters)))
    n = src.n
    k = min(k, n)
    chunk = tuning.default_chunk_size(n, k, src.device) if opts.chunk_size is None else opts.chunk_size
    tol_abs = None if opts.tol is None else float(opts.tol) * _variance(src, chunk)

    generator = torch.Generator()
    generator.manual_seed(opts.seed)
    if opts.init_method == "random":
        centroids = src.rows(torch.randperm(n, generator=generator)[:k].sort().values)
    elif opts.init_max_points is not None and n > opts.init_max_points:
        sample = torch.randperm(n, generator=generator)[:max(opts.init_max_points, k)].sort().values
        centroids = kmeans_plusplus(src.rows(sample), k, generator)
    else:
        centroids = kmeans_plusplus(src, k, generator)
    label = opts.label
    if progress is not None:
        shards = engine.n_shards
        progress(f"{label}: n={n} d={src.d} k={k} iterations={opts.n_iters}"
                 + (f" on {shards} Ray actors" if shards > 1 else ""))

    centroids, n_run = lloyd_iterations(engine, centroids, opts.n_iters, tol_abs, progress, label)
    final, dist = engine.finalize(centroids)
    inertia = float(dist.sum().item())
    if progress is not None:
        progress(f"{label}: done after {n_run} iterations, inertia={inertia:.6g}")
    return KMeansResult(centroids=centroids.cpu().numpy().astype(np.float32, copy=False),
                        assignment=final.cpu().numpy().astype(np.int64, copy=False),
                        inertia=inertia, n_iters_run=n_run, distances=dist.cpu().numpy())


def assign(x: Any, centroids: torch.Tensor | np.ndarray, chunk_size: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest centroid of every row of ``x`` (the assignment rule of every Lloyd pass, first index on
    ties): ``(int64 index, float64 squared distance ‖x − c‖²)``. A thin wrapper of one engine's final pass.

    Raises:
        StrataError: Mismatched shapes, no centroids, or invalid data.
    """
    src = x if isinstance(x, DataSource) else DataSource(x, x.device if isinstance(x, torch.Tensor) else "cpu",
                                                          "kmeans.assign")
    c = torch.as_tensor(centroids)
    if c.ndim != 2 or c.shape[1] != src.d or c.shape[0] == 0:
        raise StrataError(f"shape mismatch: points (n, {src.d}) vs centroids {tuple(c.shape)}.",
                          where="kmeans.assign", fix="Points and centroids must be (n, d) and (k >= 1, d).")
    return local_engine(src, chunk_size, prune=False).finalize(c)


@contextlib.contextmanager
def lloyd_engine(source: DataSource, k: int, workers: int = 1, ray_address: str | None = None,
                 chunk_size: int | None = None, device: str = "cpu", prune: str = "auto"
                 ) -> Iterator[LloydEngine]:
    """The engine for ``workers``: in process (:func:`.engine.local_engine`, ``workers == 1``) or a
    :class:`~.ray_shards.RayLloyd` inside a Ray session, closed on exit.

    ``k`` (the number of clusters the engine will serve) only sets the default chunk grid to which the Ray shards
    are aligned, so that every shard processes the same row chunks as a single process. ``prune``: when to keep
    Yinyang bounds and skip provably useless distances (exact; one of :data:`PRUNE_MODES`, ``"auto"`` = where it
    pays, see :class:`.pruner.Pruner`)."""
    if workers <= 1:
        yield local_engine(source, chunk_size, prune=engine_prune(prune))
        return
    gpus = torch.cuda.device_count() if str(device).startswith("cuda") else 0
    with ray_context(workers, ray_address, num_gpus=gpus):
        engine = RayLloyd(source, workers, k, chunk_size, device, engine_prune(prune))
        try:
            yield engine
        finally:
            engine.close()


def engine_prune(prune: str) -> bool | None:
    """The Lloyd engines' ``prune`` (:class:`.pruner.Pruner`) for a mode of :data:`PRUNE_MODES`: ``"auto"`` → None
    (where it pays), ``"always"`` → True, ``"never"`` → False."""
    if prune not in PRUNE_MODES:
        raise StrataError(f"unknown prune {prune!r}.", where="kmeans", fix=f"Use one of {', '.join(PRUNE_MODES)}.")
    return {"auto": None, "always": True, "never": False}[prune]


def prune_for(prune: str, n_iters: int) -> str:
    """The pruning mode of a :func:`kmeans` run of ``n_iters`` iterations: ``"auto"`` becomes ``"never"`` below
    :data:`.tuning.PRUNE_MIN_ITERS` iterations (the first pass, which builds the bounds, costs more than a plain
    one); other modes stay."""
    return "never" if prune == "auto" and n_iters < tuning.PRUNE_MIN_ITERS else prune


def _variance(src: DataSource, chunk: int) -> float:
    """Mean per-feature variance of the data (float64), the scale of ``tol``."""
    total = torch.zeros(src.d, dtype=torch.float64, device=src.device)
    total_sq = torch.zeros(src.d, dtype=torch.float64, device=src.device)
    for _, _, xb in src.chunks(chunk):
        xd = xb.double()
        total += xd.sum(0)
        total_sq += (xd * xd).sum(0)
    mean = total / src.n
    return float((total_sq / src.n - mean * mean).clamp_(min=0).mean().item())
