"""Diagnostics of a curation: balance numbers for ``stats.json`` and pictures.

Numbers:

* entropy (nats) and Gini coefficient of the cluster sizes of every level;
* the Vendi score (Friedman & Dieng 2023) with the cosine kernel of seeded samples of the pool and of the
  selection: the effective number of distinct points, 1 for identical rows, m for orthogonal ones.

The measures themselves (:func:`workflow.measures.entropy`, :func:`workflow.measures.gini`,
:func:`workflow.measures.vendi_score`) live in ``workflow/measures.py``, shared with training and evaluation.

Pictures (matplotlib, Agg backend): ``cluster_sizes.png`` (rank-size plot per level, log-log),
``labels.png`` (label shares of the pool and of the selection, and the fraction of each class kept, both on log
axes so that the tail classes show), ``map.png`` (the pool in grey and the selection in colour: the points
themselves for 2-D data, else a 2-D PCA computed with NumPy's SVD on a seeded sample of the pool), and
``leakage.png`` (pool items per class that copy a probe item, exactly or nearly) when the leakage check flagged
any. Every title names the curation, its feature space and the seed (:func:`heading`).
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


def heading(curation: str, method: str, space: str | None, seed: int) -> str:
    """The first title line of every diagnostics picture: ``hkmeans [simclr features] · seed 0``.

    ``random`` and ``none`` use no features, whatever space the curation names.
    """
    if method == "none":
        where = "whole pool, no features"
    elif method == "random":
        where = "uniform, no features"
    else:
        where = f"{space or 'raw'} features"
    return f"{curation} [{where}] · seed {seed}"


def _with(title: str, what: str) -> str:
    return f"{title}\n{what}" if title else what


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cluster_sizes(level_sizes: Sequence[np.ndarray], path: Path, title: str = "") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for t, sizes in enumerate(level_sizes, start=1):
        s = np.sort(np.asarray(sizes))[::-1]
        s = s[s > 0]
        ax.loglog(np.arange(1, s.size + 1), s, marker=".", ms=3, lw=1,
                  label=f"level {t} ({len(sizes)} clusters, Gini {gini(sizes):.2f})")
    ax.set_xlabel("cluster rank")
    ax.set_ylabel("points in cluster")
    ax.set_title(_with(title, "Cluster sizes (rank-size)"), fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_labels(labels: np.ndarray, rows: np.ndarray, path: Path, title: str = "") -> Any:
    """Label shares of the pool and of the selection, and the fraction of each class kept, on log axes.

    Classes run from the largest in the pool to the smallest, so the tail is on the right. Left: each class's
    share of the pool (grey) and of the selection (colour). Right: the fraction of each class that the selection
    kept, with the overall fraction dotted (what a uniform sample keeps of every class); a class with nothing
    kept is marked at the bottom (▼). Log axes, so a tail class of 10 in 1 000 is as readable as the head.

    Args:
        labels: ``(n,)`` pool labels, all known (≥ 0).
        rows: Selected row indices.
        path: Output PNG.
        title: First line of the title (:func:`heading`: curation, feature space, seed).

    Returns:
        The matplotlib figure (closed: saved, not shown), for tests to inspect.
    """
    plt = _plt()
    classes, before = np.unique(labels, return_counts=True)
    order = np.lexsort((classes, -before))  # largest class first, ties by label
    classes, before = classes[order], before[order].astype(np.float64)
    after = np.array([(labels[rows] == c).sum() for c in classes], dtype=np.float64)
    pos = np.arange(classes.size)
    share_before = before / max(before.sum(), 1)
    share_after = after / max(after.sum(), 1)
    kept = np.divide(after, before, out=np.zeros_like(after), where=before > 0)
    overall = after.sum() / max(before.sum(), 1)
    positive = np.concatenate([share_before[share_before > 0], share_after[share_after > 0], kept[kept > 0]])
    floor = 0.5 * (positive.min() if positive.size else 1.0)

    fig, (shares, frac) = plt.subplots(1, 2, figsize=(max(9.0, 0.5 * classes.size + 4), 4.2))
    shares.bar(pos - 0.2, share_before, width=0.4, color="0.6", label=f"pool ({int(before.sum())})")
    shares.bar(pos + 0.2, np.where(share_after > 0, share_after, np.nan), width=0.4, color="C0",
               label=f"selection ({int(after.sum())})")
    shares.set_ylabel("share of the table (log)")
    shares.set_title("Label shares: pool vs selection", fontsize=9)
    shares.legend(fontsize=8, frameon=False)
    frac.plot(pos, np.where(kept > 0, kept, np.nan), "o-", color="C0", ms=4, lw=1, label="kept")
    frac.axhline(overall, color="C0", linestyle=":", linewidth=1, label=f"overall {overall:.1%}")
    if (kept == 0).any():
        frac.plot(pos[kept == 0], np.full(int((kept == 0).sum()), floor), "v", color="C3", ms=7,
                  label="none kept")
    frac.set_ylabel("fraction kept (log)")
    frac.set_title("Fraction of each class kept (dotted: overall)", fontsize=9)
    frac.legend(fontsize=8, frameon=False, loc="lower left")
    for ax in (shares, frac):
        ax.set_yscale("log")
        ax.set_ylim(floor * 0.6, 1.5)
        ax.set_xticks(pos)
        ax.set_xticklabels([f"{c}\n({int(b)})" for c, b in zip(classes, before, strict=True)], fontsize=7)
        ax.set_xlabel("label (pool count), largest first: the tail is on the right", fontsize=8)
        ax.grid(alpha=0.3, which="both", axis="y")
    fig.suptitle((f"{title}\n" if title else "") + "Label histogram before / after curation", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def plot_leakage(leakage: dict[str, Any], path: Path, title: str = "") -> None:
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
    ax.set_title(_with(title, f"Probe items copied in the pool: {leakage['flagged']} items{removed}"), fontsize=10)
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
    ax.set_title(title or ("Pool and selection" + (" (PCA)" if how == "PCA" else "")), fontsize=10)
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
                      leakage: dict[str, Any] | None = None, curation: str | None = None,
                      pool_note: str = "") -> list[str]:
    """Write the PNG diagnostics of a curation into ``folder``; return the written paths.

    Args:
        folder: Output folder (created).
        x: ``(n, d)`` curated-on features of the pool (array or memmap).
        rows: Selected row indices.
        labels: ``(n,)`` pool labels (``labels.png`` only when every label is known) or None.
        level_sizes: Data points per cluster for every level (``cluster_sizes.png``), or None.
        seed: Seed of the map's samples.
        map_sample_size: Largest pool (and selection) sample on the map.
        method: Curation method.
        space: The feature space's label.
        leakage: ``stats["leakage"]``: ``leakage.png`` when it flagged any pool item.
        pool_note: What the pool is when it is not the data set's (a chained curation: the prior selection),
            a line of the map's title.
        curation: The curation's name in the config; default: the workflow's folder layout
            (``.../<curation>/seed<seed>/diagnostics``), else ``method``. Every picture's title names it, its
            feature space and the seed (:func:`heading`).
    """
    folder = Path(folder)
    if curation is None:
        layout = folder.resolve().parent
        curation = layout.parent.name if layout.name == f"seed{seed}" and layout.parent.name else method
    title = heading(curation or "curation", method, space, seed)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    if level_sizes:
        path = folder / "cluster_sizes.png"
        plot_cluster_sizes(level_sizes, path, title)
        written.append(str(path))
    if labels is not None and len(labels) and (labels >= 0).all():
        path = folder / "labels.png"
        plot_labels(labels, rows, path, title)
        written.append(str(path))
    if leakage and leakage.get("flagged"):
        path = folder / "leakage.png"
        plot_leakage(leakage, path, title)
        written.append(str(path))
    path = folder / "map.png"
    what = "Pool (grey) and selection" + (f"\n{pool_note}" if pool_note else "")
    plot_map(x, rows, labels, seed, path, map_sample_size, title=_with(title, what))
    written.append(str(path))
    return written
