"""The study's figures of differences (PNG, Agg): forest plot, per-metric dot plots, size curve.

* :func:`plot_forest` (``results/<study>/forest.png``, the report's first figure): the paired differences of every
  comparison. Left, the primary metric in its own units with the ±rope band and the verdict: the
  pre-registered question. Right, every headline metric as a *relative* difference (% of the reference's mean),
  so metrics on different scales (ARI ≈ 0.1, kNN ≈ 0.8) share one axis, plus the bootstrap aggregate of those
  relative differences. Whiskers are the 95% paired t-intervals (scaled by the reference mean on the right).
* :func:`plot_metrics` (``results/<study>/summary.png``): one panel per metric, zoomed to the data (no bars from 0):
  each seed's value (thin lines join a seed across curations, since seeds are paired), the mean with its 95%
  t-interval, and the baseline's mean as a dashed line.
* :func:`plot_curve` (``results/<study>/curve.png``): the paired effect treatment − control at each curated size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from workflow.tables import atomic_path

VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", "equivalent": "tab:blue", "unresolved": "tab:gray"}


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kw: Any) -> tuple[Any, np.ndarray]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, **kw)).ravel()
    return fig, axes


def _save(fig: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _label(c: dict[str, Any], multi: bool) -> str:
    size = f" @ {c['size']}" if "size" in c else ""
    where = f"\n{c['dataset']} · {c['ssl']}" if multi else ""
    return f"{c['curation']} − {c['baseline']}{size}{where}"


def _spaces_line(names: list[str], spaces: dict[str, str] | None) -> str:
    """``"\nhkmeans [simclr features, ...]; random [uniform, no features]"`` for a title, or ``""``."""
    named = [f"{n} [{spaces[n]}]" for n in dict.fromkeys(names) if spaces and spaces.get(n)]
    return "\n" + "; ".join(named) if named else ""


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def plot_forest(stats: pd.DataFrame, verdict: dict[str, Any], metrics: list[str], png_path: str,
                spaces: dict[str, str] | None = None) -> None:
    """Forest plot of paired differences (see the module docstring).

    Args:
        stats: ``summary_stats.csv`` frame (with ``baseline`` = each row's reference and ``diff_*`` columns).
        verdict: The verdict record (:func:`workflow.verdict.build_verdict`).
        metrics: Metrics of the right panel (those absent from ``stats`` are skipped).
        png_path: Output PNG, written atomically.
        spaces: Each curation's feature space in words (``workflow.report_layout.feature_space``), named in the
            title.
    """
    comps = verdict["comparisons"]
    multi = len({(c["dataset"], c["ssl"]) for c in comps}) > 1
    metrics = [m for m in metrics if m in set(stats["metric"])]
    cells = stats.set_index(["dataset", "ssl", "curation", "metric"])
    n_right = max(1, len(comps) * (len(metrics) + 1))
    fig, (left, right) = _figure(12, 1.6 + 0.24 * n_right + 0.3 * len(comps), ncols=2,
                                 gridspec_kw={"width_ratios": [1, 1.25]})
    rope, primary = verdict["rope"], verdict["primary"]
    # Left: primary metric, own units, rope band, verdict.
    left.axvspan(-rope, rope, color="tab:blue", alpha=0.12, label=f"rope ±{rope:g}")
    left.axvline(0, color="black", linewidth=0.8)
    for i, c in enumerate(comps):
        y = len(comps) - 1 - i
        lo, hi, mean = _nan(c["ci_low"]), _nan(c["ci_high"]), _nan(c["diff_mean"])
        colour = VERDICT_COLOURS[c["verdict"]]
        if math.isfinite(lo):
            left.plot([lo, hi], [y, y], color=colour, linewidth=2.2)
        left.plot([mean], [y], "o", color=colour, markersize=7)
        left.annotate(c["verdict"], (1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                      textcoords="offset points", va="center", color=colour, fontweight="bold", fontsize=9)
    left.set_yticks(range(len(comps)), [_label(c, multi) for c in reversed(comps)], fontsize=8)
    left.set_ylim(-0.7, len(comps) - 0.3)
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(nbins=5))  # long labels such as −0.015 must not touch
    left.set_xlabel(f"Δ {primary} (curated − reference), 95% paired t-interval")
    left.set_title(f"Primary metric: {primary}", fontsize=10)
    left.legend(loc="lower left", fontsize=8, frameon=False)
    left.grid(axis="x", alpha=0.3)
    # Right: every metric as % of the reference mean, plus the bootstrap aggregate; each row names its comparison
    # (its curation, and its data set and SSL method where the study has several).
    datasets = len({c["dataset"] for c in comps}) > 1
    tags = [c["curation"] + (f" @ {c['size']}" if "size" in c else "")
            + (f" · {c['dataset'] + ' · ' if datasets else ''}{c['ssl']}" if multi else "") for c in comps]
    labels, y = [], n_right - 1
    right.axvline(0, color="black", linewidth=0.8)
    for k, c in enumerate(comps):
        for m in metrics:
            key = (c["dataset"], c["ssl"], c["curation"], m)
            ref_key = (c["dataset"], c["ssl"], c["baseline"], m)
            if key in cells.index and ref_key in cells.index and cells.loc[ref_key, "mean"] != 0:
                scale = 100.0 / abs(cells.loc[ref_key, "mean"])
                row = cells.loc[key]
                lo, hi = row["diff_ci95_low"] * scale, row["diff_ci95_high"] * scale
                if np.isfinite(lo):
                    right.plot([lo, hi], [y, y], color=f"C{k}", linewidth=1.6)
                right.plot([row["diff_mean"] * scale], [y], "o", color=f"C{k}", markersize=5,
                           markeredgecolor="black" if m == primary else f"C{k}")
            labels.append((y, f"{m}" + (f"  [{tags[k]}]" if len(comps) > 1 else "")))
            y -= 1
        agg = c.get("aggregate") or {}
        mean, lo, hi = (_nan(agg.get(k2)) * 100 for k2 in ("mean", "ci_low", "ci_high"))
        if math.isfinite(lo):
            right.plot([lo, hi], [y, y], color=f"C{k}", linewidth=3)
        right.plot([mean], [y], "D", color=f"C{k}", markersize=7, markeredgecolor="black")
        labels.append((y, f"aggregate, bootstrap CI  [{tags[k]}]"))
        y -= 1
    right.set_yticks([p for p, _ in labels], [t for _, t in labels], fontsize=8)
    right.set_ylim(-0.7, n_right - 0.3)
    right.set_xlabel("Δ in % of the reference's mean (95% CI)")
    right.set_title("Every metric, relative difference", fontsize=10)
    right.grid(axis="x", alpha=0.3)
    names = [n for c in comps for n in (c["curation"], c["baseline"])]
    fig.suptitle(f"Paired differences over {verdict['n_seeds']} seeds: is the curated variant ahead?"
                 + _spaces_line(names, spaces))
    _save(fig, png_path)


def plot_metrics(df: pd.DataFrame, stats: pd.DataFrame, metrics: list[str], baseline: str, png_path: str,
                 spaces: dict[str, str] | None = None) -> None:
    """Per-metric dot plots zoomed to the data, baseline marked (see the module docstring).

    Args:
        df: Per-variant frame (one row per dataset, ssl, curation, seed).
        stats: ``summary_stats`` frame (mean and 95% CI per cell).
        metrics: Metrics to draw, one panel each.
        baseline: The baseline curation: drawn first, its mean as a dashed line across its group.
        png_path: Output PNG, written atomically.
        spaces: Each curation's feature space in words, named in the title.
    """
    metrics = [m for m in metrics if m in df.columns] or [c for c in stats["metric"].unique()]
    groups = list(dict.fromkeys(zip(df["dataset"], df["ssl"], strict=True)))
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = _figure(3.8 * ncols + 0.4, 3.2 * nrows + 0.6, ncols=ncols, nrows=nrows)
    cells = stats.set_index(["dataset", "ssl", "curation", "metric"])
    ticks: list[tuple[float, str]] = []
    for ax, metric in zip(axes, metrics, strict=False):
        x0, ticks = 0, []
        for dataset, ssl in groups:
            g = df[(df["dataset"] == dataset) & (df["ssl"] == ssl)]
            curs = sorted(g["curation"].unique(), key=lambda c: (c != baseline, c))
            pos = {c: x0 + i for i, c in enumerate(curs)}
            wide = g.pivot(index="seed", columns="curation", values=metric)[curs]
            for _, seed_row in wide.iterrows():  # one seed across curations: pairing made visible
                ax.plot([pos[c] for c in curs], seed_row.to_numpy(), color="0.7", linewidth=0.7, zorder=1)
                ax.scatter([pos[c] for c in curs], seed_row.to_numpy(), s=12, color="0.45", zorder=2)
            for j, c in enumerate(curs):
                row = cells.loc[(dataset, ssl, c, metric)]
                err = row["ci95_high"] - row["mean"]
                ax.errorbar([pos[c] + 0.18], [row["mean"]], yerr=[[err], [err]] if np.isfinite(err) else None,
                            fmt="o", color=f"C{j}", capsize=3, markersize=6, zorder=3)
                ticks.append((pos[c], c if len(groups) == 1 else f"{c}\n{dataset}·{ssl}"))
            if baseline in pos:
                base = cells.loc[(dataset, ssl, baseline, metric)]
                ax.hlines(base["mean"], x0 - 0.4, x0 + len(curs) - 0.6, colors="black", linestyles="--",
                          linewidth=1, zorder=0, label=f"{baseline} mean")
            x0 += len(curs) + 1
        ax.set_xticks([p for p, _ in ticks], [t for _, t in ticks], fontsize=7, rotation=30 if len(ticks) > 4 else 0)
        ax.set_title(metric, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles[:1], labels[:1], loc="outside lower center", fontsize=8, frameon=False)
    seeds = ", ".join(str(s) for s in sorted(df["seed"].unique()))
    fig.suptitle(f"Seeds {seeds} (grey, joined by seed), mean with 95% t-interval (colour); y axes zoomed to the "
                 f"data" + _spaces_line(sorted(df["curation"].unique(), key=lambda c: (c != baseline, c)), spaces))
    _save(fig, png_path)


def plot_curve(table: pd.DataFrame, primary: str, rope: float, treatment: str, control: str, png_path: str) -> None:
    """The paired effect ``treatment − control`` against the curated size, with 95% CIs (one line per group).

    Args:
        table: :func:`workflow.curve.curve_table` frame.
        primary: The primary metric (drawn; the table may hold it only).
        rope: Half-width of the equivalence band drawn around 0.
        treatment: Treatment method name (for labels).
        control: Control method name (for labels).
        png_path: Output PNG, written atomically.
    """
    fig, (eff, absolute) = _figure(11, 4.2, ncols=2)
    eff.axhspan(-rope, rope, color="tab:blue", alpha=0.12, label=f"rope ±{rope:g}")
    eff.axhline(0, color="black", linewidth=0.8)
    for k, ((dataset, ssl), g) in enumerate(table.groupby(["dataset", "ssl"], sort=True)):
        g = g.sort_values("size")
        x = g["size"].to_numpy(np.float64)
        lo, hi, mean = (g[c].to_numpy(np.float64) for c in ("ci_low", "ci_high", "diff_mean"))
        err = np.vstack([mean - lo, hi - mean])
        eff.errorbar(x, mean, yerr=np.where(np.isfinite(err), err, 0), fmt="o-", color=f"C{k}", capsize=4,
                     label=f"{dataset} · {ssl}")
        for xi, yi, v in zip(x, mean, g["verdict"], strict=True):
            eff.annotate(v, (xi, yi), xytext=(5, 6), textcoords="offset points", fontsize=7,
                         color=VERDICT_COLOURS.get(v, "black"))
        for name, style in (("treatment", "o-"), ("control", "s--")):
            m = g[f"{name}_mean"].to_numpy(np.float64)
            h = g[f"{name}_ci_high"].to_numpy(np.float64) - m
            absolute.errorbar(x, m, yerr=np.where(np.isfinite(h), h, 0), fmt=style, color=f"C{k}", capsize=3,
                              label=f"{treatment if name == 'treatment' else control} · {dataset} · {ssl}")
    for ax in (eff, absolute):
        ax.set_xscale("log")
        frac = table.groupby("size")["pool_fraction"].first()
        ax.set_xticks(list(frac.index), [f"{s}\n({100 * f:.0f}% of pool)" if np.isfinite(f) else str(s)
                                         for s, f in frac.items()], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("curated size (target_size)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    eff.set_ylabel(f"Δ {primary} ({treatment} − {control}), 95% paired CI")
    eff.set_title("Paired effect at equal size", fontsize=10)
    absolute.set_ylabel(f"{primary}, mean ± 95% CI")
    absolute.set_title("Both methods", fontsize=10)
    fig.suptitle(f"By how much? {treatment} against {control} as the curated subset grows")
    _save(fig, png_path)
