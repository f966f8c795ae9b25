"""Diagnostics of a curation: balance numbers for ``stats.json`` and pictures.

Numbers:

* entropy (nats) and Gini coefficient of the cluster sizes of every level;
* the Vendi score (Friedman & Dieng 2023) with the cosine kernel of seeded samples of the pool and of the
  selection: the effective number of distinct points, 1 for identical rows, m for orthogonal ones.

The measures themselves (:func:`workflow.measures.entropy`, :func:`workflow.measures.gini`,
:func:`workflow.measures.vendi_score`) live in ``workflow/measures.py``, shared with training and evaluation.

Pictures (matplotlib, Agg backend): ``cluster_sizes.png`` (rank-size plot per level, log-log),
``labels.png`` (label shares of the pool and of the selection), ``map.png`` (the pool in grey and the
selection in colour: the points themselves for 2-D data, else a 2-D PCA computed with NumPy's SVD on a
seeded sample of the pool), and ``leakage.png`` (pool items per class that copy a probe item, exactly or
nearly) when the leakage check flagged any. Titles name the feature space.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workflow.measures import entropy, gini, vendi_score

#: Largest sample of selected (and of pool) points for the Vendi score.
VENDI_SAMPLE = 2000
#: Largest sample of pool (and of selected) points drawn on the map and used to fit its PCA.
MAP_SAMPLE = 20000


def _rows(x: Any, index: np.ndarray) -> np.ndarray:
    return np.asarray(x[np.sort(index)], dtype=np.float64)


def vendi_summary(x: Any, rows: np.ndarray, seed: int, sample_size: int = VENDI_SAMPLE) -> dict[str, Any]:
    """Vendi scores of a seeded sample of ≤ ``sample_size`` selected rows and of as many pool rows."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7001]))
    n = len(x)
    m = int(min(sample_size, len(rows)))
    if m == 0:
        return {"selected": 0.0, "pool": 0.0, "sample_size": 0}
    sel = rng.choice(np.asarray(rows), size=m, replace=False)
    pool = rng.choice(n, size=m, replace=False)
    return {"selected": vendi_score(_rows(x, sel)), "pool": vendi_score(_rows(x, pool)), "sample_size": m}


def size_summary(level_sizes: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """Entropy (nats) and Gini coefficient of the cluster sizes of every level."""
    return {"cluster_size_entropy": [entropy(s) for s in level_sizes],
            "cluster_size_gini": [gini(s) for s in level_sizes]}


def pca_2d(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the two leading principal axes (``(2, d)``) of ``sample``, by NumPy's SVD."""
    mean = sample.mean(0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    axes = vt[:2]
    if axes.shape[0] < 2:
        axes = np.vstack([axes, np.zeros((2 - axes.shape[0], sample.shape[1]))])
    return mean, axes


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cluster_sizes(level_sizes: Sequence[np.ndarray], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for t, sizes in enumerate(level_sizes, start=1):
        s = np.sort(np.asarray(sizes))[::-1]
        s = s[s > 0]
        ax.loglog(np.arange(1, s.size + 1), s, marker=".", ms=3, lw=1,
                  label=f"level {t} ({len(sizes)} clusters, Gini {gini(sizes):.2f})")
    ax.set_xlabel("cluster rank")
    ax.set_ylabel("points in cluster")
    ax.set_title("Cluster sizes (rank-size)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_labels(labels: np.ndarray, rows: np.ndarray, path: Path) -> None:
    plt = _plt()
    classes = np.unique(labels)
    before = np.array([(labels == c).sum() for c in classes], dtype=np.float64)
    after_labels = labels[rows]
    after = np.array([(after_labels == c).sum() for c in classes], dtype=np.float64)
    pos = np.arange(classes.size)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.35 * classes.size + 2), 4))
    ax.bar(pos - 0.2, before / max(before.sum(), 1), width=0.4, color="0.6", label=f"pool ({int(before.sum())})")
    ax.bar(pos + 0.2, after / max(after.sum(), 1), width=0.4, color="C0", label=f"selection ({int(after.sum())})")
    ax.set_xticks(pos)
    ax.set_xticklabels([str(c) for c in classes], fontsize=8)
    ax.set_xlabel("label")
    ax.set_ylabel("share")
    ax.set_title("Label histogram before / after curation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_leakage(leakage: dict[str, Any], path: Path) -> None:
    """Bars per pool class of the exact and near copies of probe items (``stats["leakage"]``)."""
    plt = _plt()
    per_class = leakage.get("per_class", {})
    classes = sorted(per_class, key=int)
    pos = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(5.5, 0.35 * len(classes) + 2), 4))
    if classes:
        ax.bar(pos - 0.2, [per_class[c]["exact"] for c in classes], width=0.4, color="C3", label="exact copies")
        ax.bar(pos + 0.2, [per_class[c]["near"] for c in classes], width=0.4, color="C1",
               label=f"near copies (cosine ≥ {leakage['threshold']:g}, {leakage['near_space']})")
        ax.set_xticks(pos)
        ax.set_xticklabels([str(c) for c in classes], fontsize=8)
        ax.legend()
    ax.set_xlabel("pool class")
    ax.set_ylabel("pool items")
    removed = ", removed" if leakage.get("decontaminated") else ""
    ax.set_title(f"Probe items copied in the pool: {leakage['flagged']} items{removed}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def map_coordinates(x: Any, rows: np.ndarray, seed: int, sample_size: int = MAP_SAMPLE
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """2-D coordinates of a seeded pool sample and of a seeded selection sample.

    Returns ``(pool_index, pool_xy, sel_index, sel_xy, how)`` where ``how`` is ``"data"`` (2-D input)
    or ``"PCA"``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7002]))
    n = len(x)
    pool_idx = np.sort(rng.choice(n, size=min(n, sample_size), replace=False))
    rows = np.asarray(rows)
    sel_idx = np.sort(rng.choice(rows, size=min(rows.size, sample_size), replace=False)) if rows.size else rows
    pool = _rows(x, pool_idx)
    sel = _rows(x, sel_idx) if sel_idx.size else np.zeros((0, pool.shape[1]))
    if pool.shape[1] == 2:
        return pool_idx, pool, sel_idx, sel, "data"
    if pool.shape[1] == 1:
        return pool_idx, np.c_[pool, np.zeros(len(pool))], sel_idx, np.c_[sel, np.zeros(len(sel))], "data"
    mean, axes = pca_2d(pool)
    return pool_idx, (pool - mean) @ axes.T, sel_idx, (sel - mean) @ axes.T, "PCA"


def plot_map(x: Any, rows: np.ndarray, labels: np.ndarray | None, seed: int, path: Path,
             sample_size: int = MAP_SAMPLE, title: str = "") -> None:
    plt = _plt()
    _, pool_xy, sel_idx, sel_xy, how = map_coordinates(x, rows, seed, sample_size)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(pool_xy[:, 0], pool_xy[:, 1], s=2, c="0.8", lw=0, label=f"pool ({len(x)})", rasterized=True)
    classes = np.unique(labels) if labels is not None and (labels >= 0).all() and sel_idx.size else None
    if classes is not None and classes.size <= 10:  # one colour per label, in the legend
        sel_labels = labels[sel_idx]
        for i, c in enumerate(classes):
            mask = sel_labels == c
            ax.scatter(sel_xy[mask, 0], sel_xy[mask, 1], s=4, color=f"C{i}", lw=0, rasterized=True,
                       label=f"selected, label {c} ({int(mask.sum())})")
    elif classes is not None:
        sc = ax.scatter(sel_xy[:, 0], sel_xy[:, 1], s=4, c=labels[sel_idx], cmap="viridis", lw=0,
                        label=f"selection ({len(rows)})", rasterized=True)
        fig.colorbar(sc, ax=ax, label="label")
    else:
        ax.scatter(sel_xy[:, 0], sel_xy[:, 1], s=4, c="C3", lw=0, label=f"selection ({len(rows)})",
                   rasterized=True)
    ax.set_title(title or ("Pool and selection" + (" (PCA)" if how == "PCA" else "")))
    if how == "PCA":
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    ax.legend(markerscale=4, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_diagnostics(folder: str | Path, x: Any, rows: np.ndarray, labels: np.ndarray | None,
                      level_sizes: Sequence[np.ndarray] | None, seed: int, map_sample_size: int = MAP_SAMPLE,
                      method: str = "", *, space: str | None = None,
                      leakage: dict[str, Any] | None = None) -> list[str]:
    """Write the PNG diagnostics of a curation into ``folder``; return the written paths.

    Args:
        folder: Output folder (created).
        x: ``(n, d)`` curated-on features of the pool (array or memmap).
        rows: Selected row indices.
        labels: ``(n,)`` pool labels (``labels.png`` only when every label is known) or None.
        level_sizes: Data points per cluster for every level (``cluster_sizes.png``), or None.
        seed: Seed of the map's samples.
        map_sample_size: Largest pool (and selection) sample on the map.
        method: Curation method named in the map's title.
        space: The feature space's label, named in the map's title too.
        leakage: ``stats["leakage"]``: ``leakage.png`` when it flagged any pool item.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    if level_sizes:
        path = folder / "cluster_sizes.png"
        plot_cluster_sizes(level_sizes, path)
        written.append(str(path))
    if labels is not None and len(labels) and (labels >= 0).all():
        path = folder / "labels.png"
        plot_labels(labels, rows, path)
        written.append(str(path))
    if leakage and leakage.get("flagged"):
        path = folder / "leakage.png"
        plot_leakage(leakage, path)
        written.append(str(path))
    path = folder / "map.png"
    where = f" in {space} features" if space else ""
    plot_map(x, rows, labels, seed, path, map_sample_size,
             title=f"{method}{where}: pool (grey) and selection" if method else "")
    written.append(str(path))
    return written
