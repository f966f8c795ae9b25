"""Leakage check: pool items that copy an evaluation (probe) item, found before curating.

* **Exact copies**: a pool row whose vector bytes (float32, the data stage's table) have the same content hash
  (BLAKE2b, 128 bits) as a probe row's.
* **Near copies**: a pool item whose cosine similarity to some probe item is at least ``threshold`` in the
  curation's feature space (exact inner products over L2-normalised vectors with a faiss ``IndexFlatIP``, the
  pool streamed in blocks). When the probes do not exist in that space (a precomputed table given without
  probe tables), near copies are looked for in the raw space, and ``near_space`` says so.

:func:`find_leaks` returns the flagged pool rows and the statistics (``stats.json`` ``leakage``): counts of
exact, near and flagged (either) items in all, per probe split and per pool class, and the highest similarity.
With ``decontaminate: true`` the curate stage removes the flagged rows from the pool before curating.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from workflow.errors import StrataError
from workflow.tables import VectorTable

#: Pool rows per faiss search block.
BLOCK_ROWS = 32768


@dataclass
class ProbeSet:
    """One probe split: its raw table (for content hashes) and its rows in the feature space, or None."""

    name: str
    raw: VectorTable
    features: np.ndarray | None = None


def row_hashes(vectors: np.ndarray) -> list[bytes]:
    """Content hash of every row's float32 bytes (``-0.0`` counts as ``0.0``)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32) + np.float32(0.0)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x]


def _unit(block: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(block, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def max_similarity(pool: np.ndarray, probes: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Each pool row's highest cosine similarity to any probe row (exact search; 0 for all-zero rows)."""
    import faiss

    if threads is not None:
        faiss.omp_set_num_threads(max(1, int(threads)))
    index = faiss.IndexFlatIP(probes.shape[1])
    index.add(_unit(probes))
    best = np.empty(len(pool), dtype=np.float32)
    for start in range(0, len(pool), BLOCK_ROWS):
        sims, _ = index.search(_unit(pool[start:start + BLOCK_ROWS]), 1)
        best[start:start + len(sims)] = sims[:, 0]
    return best


def _per_class(labels: np.ndarray | None, mask: np.ndarray) -> dict[int, int]:
    if labels is None or not mask.any():
        return {}
    values, counts = np.unique(labels[mask], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def find_leaks(pool: VectorTable, features: np.ndarray, probes: list[ProbeSet], threshold: float, space: str,
               threads: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Flag pool rows that copy a probe item, exactly or nearly (see the module docstring).

    Args:
        pool: The pool table (its raw vectors are hashed; its labels give the per-class counts).
        features: ``(n, d)`` pool rows in the curation's feature space (array or memmap, pool order).
        probes: The probe splits; their ``features`` (same width as ``features``) or None for the raw space.
        threshold: Cosine similarity at or above which an item is a near copy.
        space: The feature space's label (``stats["leakage"]["space"]``).
        threads: faiss threads.

    Returns:
        ``(flagged, stats)``: a boolean mask over the pool rows, and the ``leakage`` statistics.

    Raises:
        StrataError: probe features of another width than the pool's.
    """
    n = len(pool)
    pool_hashes = row_hashes(pool.vectors)
    exact_any = np.zeros(n, dtype=bool)
    near_any = np.zeros(n, dtype=bool)
    best_any = np.full(n, -1.0, dtype=np.float32)
    spaces = set()
    per_split: dict[str, Any] = {}
    for probe in probes:
        hashes = set(row_hashes(probe.raw.vectors)) if probe.raw.dim == pool.dim else set()
        exact = np.fromiter((h in hashes for h in pool_hashes), dtype=bool, count=n)
        if probe.features is not None:
            if probe.features.shape[1] != features.shape[1]:
                raise StrataError(f"the {probe.name} features are {probe.features.shape[1]}-wide but the pool's "
                                  f"are {features.shape[1]}-wide", where=f"curate --{probe.name.replace('_', '-')}"
                                  "-features", fix="embed the probes with the same model as the pool.")
            best = max_similarity(features, probe.features, threads)
            spaces.add(space)
        else:
            best = max_similarity(pool.vectors, probe.raw.vectors, threads)
            spaces.add("raw")
        near = best >= threshold
        exact_any |= exact
        near_any |= near
        best_any = np.maximum(best_any, best)
        per_split[probe.name] = {"exact": int(exact.sum()), "near": int(near.sum()),
                                 "flagged": int((exact | near).sum()), "max_similarity": float(best.max())}
    flagged = exact_any | near_any
    labels = pool.labels if pool.labels is not None and (pool.labels >= 0).all() else None
    classes = sorted(set(_per_class(labels, exact_any)) | set(_per_class(labels, near_any)))
    exact_c, near_c, flagged_c = (_per_class(labels, m) for m in (exact_any, near_any, flagged))
    stats = {
        "space": space,
        "near_space": space if spaces <= {space} else "raw",
        "threshold": threshold,
        "exact": int(exact_any.sum()),
        "near": int(near_any.sum()),
        "flagged": int(flagged.sum()),
        "max_similarity": float(best_any.max()) if n else 0.0,
        "per_split": per_split,
        "per_class": {c: {"exact": exact_c.get(c, 0), "near": near_c.get(c, 0), "flagged": flagged_c.get(c, 0)}
                      for c in classes},
    }
    return flagged, stats


def read_probes(raw: dict[str, str], features: dict[str, str | None], space: Any = None,
                cache_dir: str | None = None) -> list[ProbeSet]:
    """The probe splits for :func:`find_leaks`: each split's raw table (``raw``: name -> path) and its rows in the
    feature space (``features``: name -> path, or None for the raw space when the space is raw, else for no
    probe features). ``space`` (:class:`workflow.feature_spaces.FeatureSpace`) gives a precomputed table's
    ``column``; probe feature tables hold exactly the probe's ids (a ``.npy``: rows in probe order)."""
    from workflow.curate.features import aligned_features
    from workflow.tables import read_table

    probes = []
    for name, path in raw.items():
        table = read_table(path)
        feats = features.get(name)
        if feats is not None:
            column = space.column if space is not None and space.kind == "table" else None
            x = np.asarray(aligned_features(feats, table.ids, cache_dir, column=column, what=name,
                                            dim=getattr(space, "dim", None)))
        elif space is None or space.kind == "raw":
            x = table.vectors
        else:
            x = None
        probes.append(ProbeSet(name, table, x))
    return probes


def leakage_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics of ``stats["leakage"]``: the counts in all and per pool class (``leakage_flagged_class<c>``)."""
    leak = stats.get("leakage")
    if not leak:
        return {}
    metrics = {f"leakage_{k}": float(leak[k]) for k in ("exact", "near", "flagged", "removed", "max_similarity")}
    for c, counts in leak["per_class"].items():
        metrics[f"leakage_flagged_class{c}"] = float(counts["flagged"])
    return metrics
