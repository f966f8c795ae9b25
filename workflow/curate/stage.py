"""Stage ``curate``: choose a subset of the pool (``none``, ``random`` or ``hkmeans``).

Output table ``selection.parquet``: ``id`` (int64, pool ids, ascending), ``label`` (int64, nullable),
and for ``hkmeans`` one ``cluster_level{t}`` (int64) column per level with the item's cluster at level t.
Statistics go to ``stats.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workflow.errors import StrataError
from workflow.tables import VectorTable, atomic_path


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


def curate(pool: VectorTable, features: VectorTable, params: dict[str, Any], seed: int,
           progress: Any = print) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Select pool rows. Returns (selected row indices ascending, cluster ids per level or None, stats)."""
    method = params["method"]
    n = len(pool)
    if len(features) != n or not np.array_equal(features.ids, pool.ids):
        raise StrataError(f"feature table has {len(features)} rows / ids that differ from the pool's {n}",
                          where="curate --features", fix="embed the same pool table that is curated.")
    stats: dict[str, Any] = {"method": method, "pool_size": n, "seed": seed}
    levels_ids = None
    if method == "none":
        rows = np.arange(n)
    else:
        target = int(params["target_size"])
        if target > n:
            raise StrataError(f"target_size {target} is larger than the pool ({n} items)",
                              where="curations.<name>.target_size", fix=f"choose a target_size of at most {n}.")
        if method == "random":
            rows = np.sort(np.random.default_rng(seed).choice(n, size=target, replace=False))
        elif method == "hkmeans":
            from workflow.curate.hierarchical import flat_sizes, hierarchical_kmeans
            from workflow.curate.sampling import balanced_hierarchical_sample, cluster_ids_per_level

            x = features.vectors
            if params["normalize"]:
                norms = np.linalg.norm(x, axis=1, keepdims=True)
                if (norms == 0).any():
                    raise StrataError("feature table has all-zero rows, which cannot be L2-normalised",
                                      where="curate --features", fix="set normalize: false or drop those rows.")
                x = x / norms
            levels = hierarchical_kmeans(x, params["n_clusters"], sample_sizes=params["sample_sizes"],
                                         n_resamples=params["n_resamples"], sample_strategy=params["sample_strategy"],
                                         n_iters=params["n_iters"], seed=seed, progress=progress)
            rows = balanced_hierarchical_sample(levels, target, seed=seed, strategy=params["leaf_strategy"], points=x)
            levels_ids = cluster_ids_per_level(levels)
            stats["cluster_sizes"] = [np.asarray(s).tolist() for s in flat_sizes(levels)]
            stats["n_clusters"] = [len(s) for s in stats["cluster_sizes"]]
        else:
            raise StrataError(f"unknown curation method {method!r}", where="curations.<name>.method",
                              fix="use none, random or hkmeans.")
    stats["selected_size"] = len(rows)
    if pool.labels is not None and (pool.labels >= 0).all():
        stats["labels_before"] = label_stats(pool.labels)
        stats["labels_after"] = label_stats(pool.labels[rows], n_classes=len(np.unique(pool.labels)))
    return rows, levels_ids, stats


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


def read_selection(path: str) -> np.ndarray:
    """The selected pool ids of a ``selection.parquet``."""
    from pathlib import Path

    if not Path(path).exists():
        raise StrataError("selection file not found", where=str(path), fix="run the curate stage first.")
    table = pq.read_table(path, columns=["id"])
    if table.num_rows == 0:
        raise StrataError("the selection is empty", where=str(path), fix="curate with a positive target_size.")
    return table.column("id").to_numpy()
