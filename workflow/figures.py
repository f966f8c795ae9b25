"""Per-variant figures for the report: training curves and a 2-D map of the ``probe_test`` embeddings.

* ``plot_training``: one panel per logged series of a pretraining run (``history.parquet``): every loss
  term, the learning rate, throughput, and the collapse monitors (embedding std, RankMe, alignment,
  uniformity), which exist only at checkpoints and are drawn as points.
* ``plot_embedding_map``: t-SNE (van der Maaten & Hinton 2008, "Visualizing Data using t-SNE", JMLR 9)
  of the L2-normalised embeddings, through scikit-learn, seeded, PCA-initialised; points coloured by label.
  The map's trustworthiness (Venna & Kaski 2001; ``sklearn.manifold.trustworthiness``, 1 = every
  neighbour in the map is a neighbour in the embedding space) is printed in the title, so a misleading
  map is visible as such. The map's coordinates can be saved (``write_map``) so that the comparative figure
  draws the same map without computing t-SNE again (``read_map``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from workflow.errors import StrataError
from workflow.tables import atomic_path

#: History columns that are not plotted (the x axis and bookkeeping).
_NOT_SERIES = ("step", "epoch")
#: Collapse monitors, logged only at checkpoints.
MONITORS = ("embedding_std", "rankme", "alignment", "uniformity")
#: Parquet schema metadata key of a saved map: JSON with its trustworthiness, seed and source table.
MAP_METADATA_KEY = b"strata.map"
#: Largest number of points a map draws (a seeded sample above it); t-SNE is O(n log n) but slow past this.
MAP_MAX_POINTS = 5000


def figure_grid(nrows: int, ncols: int, width: float, height: float) -> tuple[Any, np.ndarray]:
    """A figure (Agg, constrained layout) and its axes as a flat array, row by row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    return fig, axes


def _order(columns: list[str]) -> list[str]:
    """Loss first, then its terms, then lr and throughput, then the monitors."""
    tail = ["lr", "samples_per_s", *MONITORS]
    head = ["loss"] if "loss" in columns else []
    terms = [c for c in columns if c not in (*head, *tail, *_NOT_SERIES)]
    return head + terms + [c for c in tail if c in columns]


def plot_training(history_path: str, png_path: str, title: str = "") -> list[str]:
    """Draw every series of a pretraining history; returns the series drawn.

    Raises:
        StrataError: If the history cannot be read or holds no rows.
    """
    import pyarrow.parquet as pq

    try:
        df = pq.read_table(history_path).to_pandas()
    except Exception as err:
        raise StrataError(f"cannot read the training history: {err}", where=history_path,
                          fix="re-run the pretrain job that writes it.") from err
    if df.empty or "step" not in df.columns:
        raise StrataError("the training history has no rows (or no `step` column)", where=history_path,
                          fix="re-run the pretrain job; it logs one row per logging interval.")
    series = _order([c for c in df.columns if np.issubdtype(df[c].dtype, np.number)])
    ncols = min(4, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig, axes = figure_grid(nrows, ncols, 3.4 * ncols + 0.4, 2.6 * nrows + 0.6)
    step = df["step"].to_numpy()
    for ax, name in zip(axes, series, strict=False):
        y = df[name].to_numpy(dtype=np.float64)
        ok = np.isfinite(y)
        if name in MONITORS:
            ax.plot(step[ok], y[ok], marker="o", ms=3, lw=1, color="C3")
        else:
            ax.plot(step[ok], y[ok], lw=1, color="C0")
        if name == "lr" or (name == "loss" and ok.any() and (y[ok] > 0).all() and y[ok].max() > 20 * y[ok].min()):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    fig.suptitle(title or Path(history_path).parent.as_posix())
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return series


def embedding_map(embeddings: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE coordinates (n × 2) of L2-normalised embeddings; deterministic for a seed."""
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"a map needs at least 4 points, got {n}")
    # scikit-learn requires perplexity < n; ~n/3 keeps small probe sets meaningful.
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="euclidean")
    return tsne.fit_transform(x)


def map_points(embeddings_path: str, seed: int = 0, max_points: int = MAP_MAX_POINTS
               ) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The t-SNE map of an embedding table: ``(xy, labels, trustworthiness@5)``, on a seeded sample of at most
    ``max_points`` rows.

    Raises:
        StrataError: If the table cannot be read (see ``read_table``: also NaN or infinite values) or has
            fewer than 4 rows.
    """
    from sklearn.manifold import trustworthiness

    from workflow.tables import read_table

    table = read_table(embeddings_path)
    x, labels = table.vectors, table.labels
    if x.shape[0] < 4:
        raise StrataError(f"{x.shape[0]} embeddings; a map needs at least 4", where=embeddings_path,
                          fix="embed a larger probe_test split (datasets.<name>.probe_test_per_class).")
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_points:
        rows = np.sort(rng.choice(x.shape[0], size=max_points, replace=False))
        x = x[rows]
        labels = labels[rows] if labels is not None else None
    xy = embedding_map(x, seed)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    trust = float(trustworthiness(xn, xy, n_neighbors=min(5, (x.shape[0] - 1) // 2)))
    return xy, labels, trust


def scatter_by_label(ax: Any, xy: np.ndarray, labels: np.ndarray | None, classes: np.ndarray | None = None,
                     legend: bool = True, size: float = 6) -> None:
    """Draw map points coloured by label (one colour per class of ``classes``, the same in every panel)."""
    from matplotlib import colormaps

    if labels is None or (labels < 0).all():
        ax.scatter(xy[:, 0], xy[:, 1], s=size, color="C0", alpha=0.7, linewidths=0)
    else:
        classes = np.unique(labels[labels >= 0]) if classes is None else classes
        colors = colormaps["tab10" if classes.size <= 10 else "tab20"]
        for i, c in enumerate(classes):
            mask = labels == c
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colors(i % colors.N), alpha=0.8, linewidths=0,
                       label=str(int(c)))
        if legend:
            ax.legend(title="label", fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5),
                      frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])


def write_map(path: str, xy: np.ndarray, labels: np.ndarray | None, trust: float, seed: int, source: str) -> None:
    """Save a map's coordinates (Parquet: ``x``, ``y`` and ``label`` when known), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"x": pa.array(xy[:, 0], pa.float64()), "y": pa.array(xy[:, 1], pa.float64())}
    if labels is not None:
        columns["label"] = pa.array(np.asarray(labels, dtype=np.int64))
    info = {"trustworthiness": trust, "seed": seed, "embeddings": source}
    table = pa.table(columns).replace_schema_metadata({MAP_METADATA_KEY: json.dumps(info).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_map(path: str) -> tuple[np.ndarray, np.ndarray | None, float]:
    """A map saved by ``write_map``: ``(xy, labels, trustworthiness@5)``.

    Raises:
        StrataError: If the file cannot be read, or is not a map (no ``x``/``y`` columns, no trustworthiness,
            fewer than 4 points, or values that are not finite).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    fix = "re-run the plot_embeddings job that writes it (delete the file first)."
    try:
        table = pq.read_table(path)
        info = json.loads((table.schema.metadata or {})[MAP_METADATA_KEY])
        trust = float(info["trustworthiness"])
        xy = np.column_stack([table.column("x").to_numpy(), table.column("y").to_numpy()]).astype(np.float64)
        labels = None
        if "label" in table.column_names:
            column = table.column("label")
            if column.null_count or not pa.types.is_integer(column.type):
                raise ValueError(f"`label` must be integers without nulls, got {column.type} with "
                                 f"{column.null_count} null(s)")
            labels = column.to_numpy().astype(np.int64)
    except Exception as err:  # pyarrow, JSON and key errors alike: the file is not a readable map
        raise StrataError(f"cannot read the t-SNE map ({type(err).__name__}: {err})", where=path, fix=fix) from err
    if xy.shape[0] < 4 or not np.isfinite(xy).all() or not np.isfinite(trust):
        raise StrataError(f"not a t-SNE map: {xy.shape[0]} points, finite {bool(np.isfinite(xy).all())}, "
                          f"trustworthiness {trust}", where=path, fix=fix)
    return xy, labels, trust


def plot_embedding_map(embeddings_path: str, png_path: str, seed: int = 0, title: str = "",
                       max_points: int = MAP_MAX_POINTS, map_path: str | None = None) -> dict[str, float]:
    """Draw the t-SNE map of an embedding table coloured by label; returns ``{"trustworthiness", "points"}``.

    With ``map_path``, the map's coordinates are also saved there (``write_map``), for the comparative figure.

    Raises:
        StrataError: If the table cannot be read (see ``read_table``: also NaN or infinite values) or has
            fewer than 4 rows.
    """
    xy, labels, trust = map_points(embeddings_path, seed, max_points)
    if map_path:
        write_map(map_path, xy, labels, trust, seed, embeddings_path)
    fig, axes = figure_grid(1, 1, 6.0, 5.2)
    ax = axes[0]
    scatter_by_label(ax, xy, labels)
    ax.set_title(f"{title or Path(embeddings_path).parent.as_posix()}\n"
                 f"t-SNE of {xy.shape[0]} probe_test embeddings, trustworthiness@5 {trust:.3f}", fontsize=9)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return {"trustworthiness": trust, "points": float(xy.shape[0])}
