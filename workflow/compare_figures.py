"""Figures that compare curations at a glance, from the per-variant files the study already writes (PNG, Agg).

* :func:`plot_embedding_panels`: per data set × SSL method × seed, the t-SNE maps of every curation's
  ``probe_test`` embeddings side by side (same seed, same colours per label), each panel titled with the
  curation, its feature space, the map's trustworthiness and the primary metric. The maps are those the
  per-variant figures computed (their saved coordinates, ``workflow.figures.read_map``): t-SNE runs once.
* :func:`plot_loss_overlay`: per comparison (a curation and its reference, ``workflow.comparisons.references``),
  the pretraining loss of both overlaid, one panel per seed and one of every seed (mean and range).
* :func:`plot_kept_per_class`: per data set × seed, the fraction of each class that every curation kept, on a log
  axis (head classes left, tail classes right), from the label histograms of the curate job's ``stats.json``.

Every title names the curations, the seed(s) and the feature spaces (``workflow.report_layout.feature_space``).
The ``strata`` subcommands ``compare-embeddings``, ``compare-losses`` and ``kept-per-class`` draw them
(:func:`add_commands`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workflow import timing
from workflow.errors import StrataError
from workflow.figures import figure_grid, read_map, scatter_by_label
from workflow.tables import atomic_path


@dataclass(frozen=True)
class Panel:
    """One curation's file in a comparative figure."""

    curation: str
    features: str  # the feature space in words (report_layout.feature_space)
    path: str
    seed: int | None = None
    metrics: str | None = None  # evaluate's metrics.json (optional)


def _save(fig: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    ncols = max(1, min(max_cols, n))
    return math.ceil(n / ncols), ncols


def _metric(path: str | None, name: str) -> float | None:
    if not path:
        return None
    try:
        value = json.loads(Path(path).read_text())["metrics"][name]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StrataError(f"cannot read metric {name!r} ({type(err).__name__}: {err})", where=path,
                          fix="re-run the evaluate job that writes it.") from err
    return float(value) if value is not None else None


def plot_embedding_panels(panels: Sequence[Panel], png_path: str, seed: int, title: str, metric: str = ""
                          ) -> dict[str, float]:
    """Every curation's t-SNE map of ``probe_test`` side by side; returns each curation's trustworthiness@5.

    Args:
        panels: One per curation (``path``: its saved map, ``plot-embeddings --map``; ``metrics``: optional
            metrics.json).
        png_path: Output PNG, written atomically.
        seed: The variants' seed (shown in the titles).
        title: The figure's title (data set, SSL method, seed).
        metric: Metric of ``metrics.json`` shown in each panel's title (e.g. the primary metric).

    Raises:
        StrataError: If a map or metrics file cannot be read.
    """
    if not panels:
        raise StrataError("no curation to draw", where="compare-embeddings", fix="pass --panel at least once.")
    maps = [read_map(p.path) for p in panels]
    known = [lab[lab >= 0] for _, lab, _ in maps if lab is not None]
    classes = np.unique(np.concatenate(known)) if known else None
    nrows, ncols = _grid(len(panels))
    fig, axes = figure_grid(nrows, ncols, 4.0 * ncols + 1.0, 4.0 * nrows + 0.8)
    trust = {}
    for ax, panel, (xy, labels, t) in zip(axes, panels, maps, strict=False):
        scatter_by_label(ax, xy, labels, classes, legend=False, size=5)
        value = _metric(panel.metrics, metric) if metric else None
        score = f" · {metric} {value:.3f}" if value is not None else ""
        ax.set_title(f"{panel.curation} · seed {seed}\n[{panel.features}]\ntrust@5 {t:.3f}{score}", fontsize=9)
        trust[panel.curation] = t
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, title="label", loc="outside right center", fontsize=8, markerscale=2.5,
                   frameon=False)
    fig.suptitle(f"{title}\nt-SNE of probe_test per curation (colours: true label; compare groups, not positions)",
                 fontsize=10)
    _save(fig, png_path)
    return trust


def _loss(path: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    try:
        df = pq.read_table(path).to_pandas()
    except Exception as err:
        raise StrataError(f"cannot read the training history: {err}", where=path,
                          fix="re-run the pretrain job that writes it.") from err
    if df.empty or "step" not in df.columns or column not in df.columns:
        raise StrataError(f"the training history has no rows or no `step`/`{column}` column", where=path,
                          fix="re-run the pretrain job; it logs one row per logging interval.")
    ok = np.isfinite(df[column].to_numpy(np.float64))
    return df["step"].to_numpy(np.float64)[ok], df[column].to_numpy(np.float64)[ok]


def _band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max of curves on the steps they share."""
    steps = curves[0][0]
    for s, _ in curves[1:]:
        steps = np.intersect1d(steps, s)
    ys = np.vstack([np.interp(steps, s, y) for s, y in curves]) if steps.size else np.zeros((len(curves), 0))
    return steps, ys.mean(0), ys.min(0), ys.max(0)


def plot_loss_overlay(runs: Sequence[Panel], treatment: str, control: str, png_path: str, title: str,
                      column: str = "loss") -> list[int]:
    """Pretraining loss of a curation and of its reference overlaid: one panel per seed, one of all seeds.

    Args:
        runs: One per (curation, seed): ``path`` is its ``history.parquet``; curations other than ``treatment``
            and ``control`` are ignored.
        treatment: The compared curation (drawn in colour).
        control: Its reference (drawn in black).
        png_path: Output PNG, written atomically.
        title: The figure's title (comparison, SSL method, data set).
        column: History column to draw.

    Returns:
        The seeds drawn (those with both curations).

    Raises:
        StrataError: If a history cannot be read, or no seed has both curations.
    """
    by: dict[tuple[str, int], Panel] = {(r.curation, int(r.seed or 0)): r for r in runs}
    seeds = sorted(s for c, s in by if c == treatment and (control, s) in by)
    if not seeds:
        raise StrataError(f"no seed has both {treatment!r} and {control!r}", where="compare-losses",
                          fix="pass --run for both curations with the same seeds.")
    curves = {key: _loss(by[key].path, column) for key in by if key[1] in seeds and key[0] in (treatment, control)}
    style = {treatment: {"color": "C3"}, control: {"color": "black", "linestyle": "--"}}
    space = {c: by[(c, seeds[0])].features for c in (treatment, control)}
    nrows, ncols = _grid(len(seeds) + 1)
    fig, axes = figure_grid(nrows, ncols, 3.6 * ncols + 0.4, 2.9 * nrows + 1.0)
    positive = all((y > 0).all() for _, y in curves.values())
    spread = [y.max() / max(y.min(), 1e-12) for _, y in curves.values() if y.size] if positive else [0.0]
    for ax, seed in zip(axes, seeds, strict=False):
        for c in (treatment, control):
            ax.plot(*curves[(c, seed)], lw=1, label=c, **style[c])
        ax.set_title(f"seed {seed}", fontsize=9)
    ax = axes[len(seeds)]
    for c in (treatment, control):
        steps, mean, lo, hi = _band([curves[(c, s)] for s in seeds])
        ax.plot(steps, mean, lw=1.5, label=f"{c} (mean)", **style[c])
        ax.fill_between(steps, lo, hi, color=style[c]["color"], alpha=0.15, linewidth=0)
    ax.set_title(f"all {len(seeds)} seeds: mean, band = min–max", fontsize=9)
    for ax in axes[:len(seeds) + 1]:
        if positive and max(spread) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(column, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(seeds) + 1:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle(f"{title}\n{treatment} [{space[treatment]}] (colour) vs {control} [{space[control]}] (dashed); "
                 f"seeds {', '.join(map(str, seeds))}", fontsize=10)
    _save(fig, png_path)
    return seeds


def _histograms(path: str) -> tuple[dict[str, int], dict[str, int]] | None:
    try:
        stats = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise StrataError(f"cannot read the curation statistics ({err})", where=path,
                          fix="re-run the curate job that writes it.") from err
    try:
        return stats["labels_before"]["histogram"], stats["labels_after"]["histogram"]
    except (KeyError, TypeError):
        return None  # a pool without labels


def plot_kept_per_class(curations: Sequence[Panel], png_path: str, title: str) -> dict[str, dict[str, float]]:
    """The fraction of each class that every curation kept, on a log axis; returns curation → class → fraction.

    Left: the pool's count per class (grey bars) and each curation's selected count, log scale. Right: the
    fraction kept per class, log scale, with each curation's overall fraction dotted (what a uniform sample
    keeps of every class). Classes run from the largest in the pool to the smallest, so the tail is on the right;
    a class a curation dropped entirely is marked at the bottom (▼). A pool without labels gives a figure that
    says so.

    Args:
        curations: One per curation (``path``: its curate job's ``stats.json``).
        png_path: Output PNG, written atomically.
        title: The figure's title (data set, seed).

    Raises:
        StrataError: If a stats file cannot be read.
    """
    hists = {c.curation: _histograms(c.path) for c in curations}
    fig, axes = figure_grid(1, 2, 13, 4.8)
    labelled = {c: h for c, h in hists.items() if h is not None}
    space = {c.curation: c.features for c in curations}
    kept: dict[str, dict[str, float]] = {}
    if not labelled:
        for ax in axes:
            ax.text(0.5, 0.5, "no labels in the pool: nothing to count per class", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
    else:
        pool = next(iter(labelled.values()))[0]
        classes = sorted(pool, key=lambda k: (-pool[k], _class_key(k)))
        x = np.arange(len(classes))
        before = np.array([pool[k] for k in classes], dtype=np.float64)
        counts, frac = axes
        counts.bar(x, before, color="0.8", label=f"pool ({int(before.sum())})")
        fractions = []
        for i, (c, (_, after_hist)) in enumerate(labelled.items()):
            after = np.array([after_hist.get(k, 0) for k in classes], dtype=np.float64)
            f = np.divide(after, before, out=np.zeros_like(after), where=before > 0)
            kept[c] = {k: float(v) for k, v in zip(classes, f, strict=True)}
            fractions.append(f)
            colour = f"C{i}"
            counts.plot(x, np.where(after > 0, after, np.nan), "o-", color=colour, ms=4, lw=1,
                        label=f"{c} [{space[c]}] ({int(after.sum())})")
            frac.plot(x, np.where(f > 0, f, np.nan), "o-", color=colour, ms=4, lw=1, label=c)
            frac.axhline(after.sum() / max(before.sum(), 1), color=colour, linestyle=":", linewidth=1)
        positive = np.concatenate([f[f > 0] for f in fractions]) if fractions else np.array([1.0])
        floor = 0.5 * (positive.min() if positive.size else 1.0)
        for i, f in enumerate(fractions):
            if (f == 0).any():
                frac.plot(x[f == 0], np.full((f == 0).sum(), floor), "v", color=f"C{i}", ms=7)
        for ax in axes:
            ax.set_yscale("log")
            ax.set_xticks(x, [f"{k}\n({int(n)})" for k, n in zip(classes, before, strict=True)], fontsize=7)
            ax.set_xlabel("class (pool count), largest first: the tail is on the right", fontsize=8)
            ax.grid(alpha=0.3, which="both", axis="y")
        counts.set_ylabel("examples (log)")
        counts.set_title("Examples per class: pool and selections", fontsize=9)
        counts.legend(fontsize=7, frameon=False)
        frac.set_ylim(floor * 0.6, 1.5)
        frac.set_ylabel("fraction kept (log)")
        frac.set_title("Fraction of each class kept (dotted: the curation's overall fraction; ▼ none kept)",
                       fontsize=9)
        frac.legend(fontsize=7, frameon=False, loc="lower left")
    fig.suptitle(f"{title}\n" + "; ".join(f"{c} [{space[c]}]" for c in hists), fontsize=10)
    _save(fig, png_path)
    return kept


def _class_key(k: str) -> tuple[int, Any]:
    try:
        return 0, int(k)
    except ValueError:
        return 1, k


# ---- `strata` subcommands ---------------------------------------------------------------------------------------

def _panels(rows: list[list[str]] | None, with_seed: bool = False) -> list[Panel]:
    panels = []
    for row in rows or []:
        if with_seed:
            curation, features, seed, path = row
            try:
                panels.append(Panel(curation, features, path, seed=int(seed)))
            except ValueError:
                raise StrataError(f"seed {seed!r} is not an integer", where=f"--run {' '.join(row)}",
                                  fix="pass --run CURATION FEATURES SEED HISTORY.") from None
        else:
            curation, features, path, *rest = row
            metrics = rest[0] if rest and rest[0] != "-" else None
            panels.append(Panel(curation, features, path, metrics=metrics))
    return panels


def cmd_compare_embeddings(args: argparse.Namespace) -> None:
    with timing.compute():  # the job's own work, for benchmarks/study.py's fixed cost
        trust = plot_embedding_panels(_panels(args.panel), args.output, args.seed, args.title, args.metric)
    print(f"compare-embeddings: {len(trust)} maps (trustworthiness@5 "
          f"{', '.join(f'{c} {t:.3f}' for c, t in trust.items())}) -> {args.output}", flush=True)


def cmd_compare_losses(args: argparse.Namespace) -> None:
    with timing.compute():
        seeds = plot_loss_overlay(_panels(args.run, with_seed=True), args.treatment, args.control, args.output,
                                  args.title, args.column)
    print(f"compare-losses: {args.treatment} vs {args.control}, seeds {seeds} -> {args.output}", flush=True)


def cmd_kept_per_class(args: argparse.Namespace) -> None:
    with timing.compute():
        kept = plot_kept_per_class(_panels(args.curation), args.output, args.title)
    print(f"kept-per-class: {len(kept)} labelled curation(s) -> {args.output}", flush=True)


def add_commands(stage: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the comparative figures' subcommands to the ``strata`` parser (``stage`` is ``workflow.cli``'s helper:
    ``stage(name, func, help, outputs, params=False)`` → the subcommand's parser)."""
    p = stage("compare-embeddings", cmd_compare_embeddings, "Draw every curation's t-SNE map of probe_test side by "
              "side (one seed), from the maps plot-embeddings saved.", ["output"], params=False)
    p.add_argument("--panel", nargs=4, action="append", required=True,
                   metavar=("CURATION", "FEATURES", "MAP", "METRICS"),
                   help="a curation, its feature space in words, its probe_test map (plot-embeddings --map) and its "
                        "metrics.json (- for none)")
    p.add_argument("--output", required=True, help="output: PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--title", default="")
    p.add_argument("--metric", default="", help="metric of metrics.json shown per panel (e.g. knn_accuracy)")

    p = stage("compare-losses", cmd_compare_losses, "Overlay the pretraining loss of a curation and its reference, "
              "per seed and over all seeds.", ["output"], params=False)
    p.add_argument("--run", nargs=4, action="append", required=True,
                   metavar=("CURATION", "FEATURES", "SEED", "HISTORY"), help="one pretraining run")
    p.add_argument("--treatment", required=True, help="the compared curation")
    p.add_argument("--control", required=True, help="its reference")
    p.add_argument("--output", required=True, help="output: PNG")
    p.add_argument("--title", default="")
    p.add_argument("--column", default="loss", help="history column to draw")

    p = stage("kept-per-class", cmd_kept_per_class, "Draw the fraction of each class every curation kept (log "
              "axis).", ["output"], params=False)
    p.add_argument("--curation", nargs=3, action="append", required=True,
                   metavar=("CURATION", "FEATURES", "STATS"), help="a curation and its curate job's stats.json")
    p.add_argument("--output", required=True, help="output: PNG")
    p.add_argument("--title", default="")
