"""Stage ``curate``: choose a subset of the pool.

Methods (``curations.<name>.method``):

* ``none``: the whole pool;
* ``random``: ``target_size`` rows uniformly without replacement;
* ``kmeans``: one k-means level with ``n_clusters[0]`` clusters and balanced (water-filling) sampling,
  no resampling unless ``sample_sizes`` is given (a flat baseline of Vo et al. 2024);
* ``hkmeans``: hierarchical k-means with resampling and balanced hierarchical sampling (Vo et al. 2024,
  arXiv:2405.15613);
* ``semdedup``: SemDeDup (Abbas et al. 2023, arXiv:2303.09540): k-means on L2-normalised features,
  then near-duplicates (cosine similarity > 1 − ``semdedup_epsilon``) are removed inside each cluster;
  ``target_size`` is optional (a seeded random subset of the survivors when smaller).

A ``target_size`` larger than the pool (random, kmeans, hkmeans), or larger than the SemDeDup survivors,
selects everything available and records a warning (``progress`` and ``stats["warnings"]``).

Before any method runs, the leakage check (``leakage_check``, given the probes) flags pool items that copy a
probe item exactly or nearly in the curation's feature space (:mod:`workflow.curate.leakage`); with
``decontaminate`` they are removed from the pool first (``stats["leakage"]``). A chained curation
(``curations.<name>.pool``, :mod:`workflow.chains`) passes the prior selection's rows as ``subset``: they are
its pool, before the leakage check.

Output table ``selection.parquet``: ``id`` (int64, pool ids, ascending), ``label`` (int64, nullable),
and for ``kmeans``, ``hkmeans`` and ``semdedup`` one ``cluster_level{t}`` (int64) column per level with
the item's cluster at level t. Statistics go to ``stats.json``; pictures to ``diagnostics_dir``
(see :mod:`workflow.curate.diagnostics`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workflow.config import enum
from workflow.errors import StrataError
from workflow.tables import VectorTable, atomic_path

if TYPE_CHECKING:  # torch loads with the k-means engine, only when a stage runs it
    from workflow.curate.leakage import ProbeSet
    from workflow.feature_spaces import FeatureSpace
    from workflow.kmeans import KMeansOptions

#: Curation methods (the schema's ``curation.method``).
METHODS: tuple[str, ...] = enum("curation", "method")


@dataclass(frozen=True)
class Curation:
    """A curation entry of the study (``$defs.curation`` of ``configs/schema.yaml``, where each key is documented),
    validated and typed: what :func:`curate` runs.

    ``kmeans`` holds the settings of every k-means of the method (``n_iters``, ``tol``, ``device``,
    ``chunk_size``, ``init_method``, ``init_max_points``, ``prune``); the stage adds the seed and the workers.
    ``features`` is not here: it names the table that the caller passes (and its label, ``space``). The defaults
    live in the schema only: build one with :meth:`from_config`.
    """

    method: str
    target_size: int | None
    n_clusters: tuple[int, ...]
    sample_sizes: tuple[int, ...] | None
    n_resamples: int
    sample_strategy: str
    leaf_strategy: str
    normalize: bool
    semdedup_epsilon: float
    num_workers: int | None
    vendi_sample_size: int
    map_sample_size: int
    kmeans: KMeansOptions
    leakage_check: bool = False
    leakage_threshold: float = 0.98
    decontaminate: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Curation:
        """From a curation entry already validated against the schema (defaults filled), as
        :func:`workflow.config.parse_params` and :func:`workflow.config.check_study` leave it; not checked again."""
        from workflow.kmeans import KMeansOptions

        return cls(method=cfg["method"], target_size=cfg.get("target_size"), n_clusters=tuple(cfg["n_clusters"]),
                   sample_sizes=None if cfg["sample_sizes"] is None else tuple(cfg["sample_sizes"]),
                   n_resamples=cfg["n_resamples"], sample_strategy=cfg["sample_strategy"],
                   leaf_strategy=cfg["leaf_strategy"], normalize=cfg["normalize"],
                   semdedup_epsilon=cfg["semdedup_epsilon"], num_workers=cfg["num_workers"],
                   vendi_sample_size=cfg["vendi_sample_size"], map_sample_size=cfg["map_sample_size"],
                   kmeans=KMeansOptions(n_iters=cfg["n_iters"], tol=cfg["tol"], device=cfg["device"],
                                        chunk_size=cfg["chunk_size"], init_max_points=cfg["init_max_points"],
                                        init_method=cfg["init_method"], prune=cfg["prune"]),
                   leakage_check=cfg["leakage_check"], leakage_threshold=cfg["leakage_threshold"],
                   decontaminate=cfg["decontaminate"])


def label_stats(labels: np.ndarray | None, n_classes: int | None = None) -> dict[str, Any]:
    """Label histogram and its Shannon entropy (nats) and normalised entropy (entropy / log #classes).

    ``n_classes`` is the number of classes to normalise by (the pool's, for a curated subset, so that a
    subset missing some classes is not scored as balanced); default: the classes present in ``labels``.
    """
    if labels is None or (labels < 0).any():
        return {}
    values, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    entropy = float(-(p * np.log(p)).sum())
    k = max(n_classes or 0, len(values))
    return {"histogram": {int(v): int(c) for v, c in zip(values, counts, strict=True)}, "entropy": entropy,
            "normalized_entropy": entropy / np.log(k) if k > 1 else 0.0}


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise StrataError("feature table has all-zero rows, which cannot be L2-normalised",
                          where="curate --features", fix="set normalize: false or drop those rows.")
    return (x / norms).astype(np.float32, copy=False)


def _features(pool: VectorTable, features: VectorTable | str | os.PathLike[str], normalize: bool,
              cache_dir: str | None, space: FeatureSpace | None = None) -> np.ndarray:
    """The curated-on ``(n, d)`` matrix (in memory, or a memmap for a feature path) in pool order, normalised if
    asked. A path is a table with exactly the pool's ids (``space``: a precomputed table's ``column``, ``ids``
    and ``dim``)."""
    n = len(pool)
    if isinstance(features, VectorTable):
        if len(features) != n or not np.array_equal(features.ids, pool.ids):
            raise StrataError(f"feature table has {len(features)} rows / ids that differ from the pool's {n}",
                              where="curate --features", fix="embed the same pool table that is curated.")
        return _normalised(features.vectors) if normalize else features.vectors
    from workflow.curate.features import aligned_features

    table = space if space is not None and space.kind == "table" else None
    return aligned_features(features, pool.ids, cache_dir, normalize=normalize,
                            column=table.column if table else None, ids_path=table.ids if table else None,
                            dim=table.dim if table else None,
                            where=f"features.table {features}" if table else f"curate --features {features}")


def curate(pool: VectorTable, features: VectorTable | str | os.PathLike[str], params: Curation, seed: int,
           progress: Callable[[str], None] = print, *, workers: int = 1, ray_address: str | None = None,
           diagnostics_dir: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None,
           threads: int | None = None, probes: Sequence[ProbeSet] = (), space: FeatureSpace | None = None,
           subset: np.ndarray | None = None, pool_note: str = "",
           ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Select pool rows.

    Args:
        pool: The pool table (ids and labels are used; its vectors only when ``features`` is it).
        features: Feature table with the pool's ids in the pool's order: a :class:`VectorTable`, or the
            path of a Parquet table / ``.npy`` matrix read through a float32 memmap
            (:func:`workflow.curate.features.load_features_memmap`, converted once into ``cache_dir``).
        params: The curation (:meth:`Curation.from_config` of a validated ``curation`` config entry).
        seed: The one seed of every random choice.
        progress: Receives one-line messages and warnings.
        workers: The job's CPU cores: Ray actors for the k-means passes when ``params.num_workers`` is
            None (1 = no Ray).
        ray_address: Ray cluster to join when more than one worker is used (default ``$RAY_ADDRESS``,
            else a private local Ray).
        diagnostics_dir: When given, ``cluster_sizes.png``, ``labels.png`` and ``map.png`` are written there
            (their names go to ``stats["diagnostics"]``).
        cache_dir: Folder of the memmap conversion of a feature path (default: ``.strata-cache`` next to it).
        threads: Torch intra-op threads during the stage (default: leave torch's setting).
        probes: The probe splits for the leakage check (``params.leakage_check``); none: no check.
        space: The feature space ``features`` holds (its label goes to ``stats["feature_space"]``; a precomputed
            table's ``column``, ``ids`` and ``dim``); default raw.
        subset: Ascending pool rows that form this curation's pool (a chained curation: the prior curation's
            selection, :mod:`workflow.chains`); the leakage check, the method, ``target_size``, the Vendi score
            and the pictures see these rows only. None: the whole pool. ``pool_size`` and ``labels_before``
            stay the whole pool's, so that curations compare; ``stats["input_size"]`` is the subset's size.
        pool_note: With ``subset``, a line on the map's title saying what the pool is.

    Returns:
        ``(selected row indices ascending, cluster ids per level (n, T) or None, stats)``.

    Raises:
        StrataError: mismatched or invalid features.
    """
    method = params.method
    n = len(pool)
    label = space.label if space is not None else "raw"
    stats: dict[str, Any] = {"method": method, "pool_size": n, "seed": seed, "feature_space": label, "warnings": []}

    def warn(message: str) -> None:
        stats["warnings"].append(message)
        progress(f"warning: {message}")

    needs_norm = method == "semdedup" or (method in ("kmeans", "hkmeans") and params.normalize)
    with _torch_threads(threads):
        x = _features(pool, features, needs_norm, cache_dir, space)
        base = pool
        if subset is not None:  # a chained curation: the prior selection is the pool
            subset = np.asarray(subset, dtype=np.int64)
            base, x = pool.take(subset), np.asarray(x[subset])
            stats["input_size"] = len(subset)
        keep = _leakage(base, x, params, probes, label, stats, progress, threads)
        work = base if keep is None else base.take(keep)
        if keep is not None:
            x = np.asarray(x[keep])
        # The pool row of each row of `work` (None: the same rows).
        origin = subset if keep is None else (keep if subset is None else subset[keep])
        options = dataclasses.replace(params.kmeans, seed=seed, ray_address=ray_address,
                                      workers=int(workers if params.num_workers is None else params.num_workers))
        rows, levels_ids, level_sizes = _select(x, len(work), params, options, stats, warn, progress)
        local_rows = rows
        if origin is not None:  # back to rows of the whole pool
            rows = origin[rows]
            if levels_ids is not None:
                full = np.full((n, levels_ids.shape[1]), -1, dtype=levels_ids.dtype)
                full[origin] = levels_ids
                levels_ids = full
        stats["selected_size"] = len(rows)
        if level_sizes is not None:
            from workflow.curate.diagnostics import size_summary

            stats.update(size_summary(level_sizes))
        if pool.labels is not None and (pool.labels >= 0).all():
            stats["labels_before"] = label_stats(pool.labels)
            stats["labels_after"] = label_stats(pool.labels[rows], n_classes=len(np.unique(pool.labels)))
        from workflow.curate.diagnostics import vendi_summary, write_diagnostics

        stats["vendi"] = vendi_summary(x, local_rows, seed, params.vendi_sample_size)
        if diagnostics_dir is not None:
            files = write_diagnostics(diagnostics_dir, x, local_rows, work.labels, level_sizes, seed,
                                      params.map_sample_size, method, space=label, leakage=stats.get("leakage"),
                                      pool_note=pool_note)
            stats["diagnostics"] = [os.path.basename(f) for f in files]
            progress(f"diagnostics: wrote {', '.join(files)}")
    return rows, levels_ids, stats


def _leakage(pool: VectorTable, x: np.ndarray, params: Curation, probes: Sequence[ProbeSet], space: str,
             stats: dict[str, Any], progress: Callable[[str], None], threads: int | None) -> np.ndarray | None:
    """Run the leakage check into ``stats["leakage"]``; the pool rows to keep when decontaminating, else None."""
    if params.decontaminate and not (params.leakage_check and probes):
        raise StrataError("decontaminate needs the leakage check and the probes", where="curation.decontaminate",
                          fix="set leakage_check: true and pass --probe-train and --probe-test (the workflow "
                              "does).")
    if not params.leakage_check or not probes:
        return None
    from workflow.curate.leakage import find_leaks

    flagged, leak = find_leaks(pool, x, list(probes), params.leakage_threshold, space, threads)
    leak["decontaminated"] = params.decontaminate
    leak["removed"] = int(flagged.sum()) if params.decontaminate else 0
    stats["leakage"] = leak
    progress(f"leakage: {leak['exact']} exact and {leak['near']} near copies (cosine >= {leak['threshold']} in "
             f"{leak['near_space']}) of probe items in the pool of {len(pool)}"
             + (f"; removed {leak['removed']}" if params.decontaminate else ""))
    if not params.decontaminate or not flagged.any():
        return None
    if flagged.all():
        raise StrataError("every pool item copies a probe item; nothing is left to curate",
                          where="curation.decontaminate", fix="raise leakage_threshold or check the data.")
    return np.flatnonzero(~flagged)


def _select(x: np.ndarray, n: int, params: Curation, options: KMeansOptions, stats: dict[str, Any],
            warn: Callable[[str], None], progress: Callable[[str], None]
            ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray] | None]:
    """``(rows, cluster ids per level, cluster sizes per level)`` of the method; ``options``: its k-means settings
    with the stage's seed and workers. ``target_size`` is present where the method needs it (the schema says so)."""
    method, seed = params.method, options.seed
    if method == "none":
        return np.arange(n), None, None
    target = params.target_size
    if target is not None and target > n and method != "semdedup":
        warn(f"target_size {target} is larger than the pool ({n} items); selecting the whole pool.")
        target = n
    if method == "random":
        return np.sort(np.random.default_rng(seed).choice(n, size=target, replace=False)), None, None
    if method in ("kmeans", "hkmeans"):
        from workflow.curate.hierarchical import flat_sizes, hierarchical_kmeans
        from workflow.curate.sampling import balanced_hierarchical_sample, cluster_ids_per_level

        ks, rs = list(params.n_clusters), params.sample_sizes
        if method == "kmeans":
            ks = ks[:1]
            rs = [1] if rs is None else list(rs)[:1]  # no resampling unless sample sizes are given
        levels = hierarchical_kmeans(x, ks, sample_sizes=rs, n_resamples=params.n_resamples,
                                     sample_strategy=params.sample_strategy, options=options, progress=progress)
        rows = balanced_hierarchical_sample(levels, target, seed=seed, strategy=params.leaf_strategy, points=x)
        sizes = flat_sizes(levels)
        stats["cluster_sizes"] = [np.asarray(s).tolist() for s in sizes]
        stats["n_clusters"] = [len(s) for s in sizes]
        return rows, cluster_ids_per_level(levels), sizes
    if method == "semdedup":
        from workflow.curate.semdedup import semdedup_keep
        from workflow.kmeans import kmeans, resolve_device

        k = int(params.n_clusters[0])
        if k > n:
            warn(f"semdedup asks for {k} clusters but the pool has {n} items; using k={n}.")
        res = kmeans(x, k, options, progress=progress, label="semdedup k-means")
        epsilon = params.semdedup_epsilon
        survivors = semdedup_keep(x, res.assignment, res.distances, epsilon, device=resolve_device(options.device))
        progress(f"semdedup: {len(survivors)} of {n} items survive (epsilon {epsilon})")
        stats["semdedup"] = {"epsilon": epsilon, "survivors": len(survivors),
                             "removed": int(n - len(survivors))}
        rows = survivors
        if target is not None and target < len(survivors):
            rows = np.sort(np.random.default_rng(seed).choice(survivors, size=target, replace=False))
        elif target is not None and target > len(survivors):
            warn(f"target_size {target} is larger than the {len(survivors)} items left after semdedup; "
                 "selecting all of them.")
        sizes = [np.bincount(res.assignment, minlength=res.centroids.shape[0]).astype(np.int64)]
        stats["cluster_sizes"] = [sizes[0].tolist()]
        stats["n_clusters"] = [len(sizes[0])]
        return rows.astype(np.int64), res.assignment[:, None], sizes
    raise StrataError(f"unknown curation method {method!r}", where="curations.<name>.method",
                      fix=f"use one of {', '.join(METHODS)}.")


def write_selection(pool: VectorTable, rows: np.ndarray, levels_ids: np.ndarray | None, path: str) -> None:
    labels = None if pool.labels is None else pool.labels[rows]
    columns: dict[str, Any] = {
        "id": pa.array(pool.ids[rows], pa.int64()),
        "label": pa.array(labels, pa.int64(), mask=labels < 0) if labels is not None else pa.nulls(len(rows),
                                                                                                    pa.int64()),
    }
    if levels_ids is not None:
        for t in range(levels_ids.shape[1]):
            columns[f"cluster_level{t + 1}"] = pa.array(levels_ids[rows, t], pa.int64())
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


