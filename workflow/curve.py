""""By how much": the paired effect of a size sweep (``summary.curve``) at each curated size.

For every (dataset, ssl) and every size of :func:`workflow.comparisons.curve_points`, the table holds the
treatment's and the control's mean with their 95% t-intervals, and the paired difference treatment − control
over matched seeds (:func:`workflow.effects.paired_difference`) with its verdict
(:func:`workflow.verdict.classify`). Outputs: ``results/<study>/curve.md`` (this table) and
``results/<study>/curve.png`` (:func:`workflow.summary_figures.plot_curve`), only for studies that declare
``summary.curve``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from workflow.comparisons import CurvePoint
from workflow.effects import paired_difference, t_interval
from workflow.tables import atomic_path
from workflow.verdict import classify

CURVE_COLUMNS = ["dataset", "ssl", "size", "pool_fraction", "treatment", "control", "n", "treatment_mean",
                 "treatment_ci_low", "treatment_ci_high", "control_mean", "control_ci_low", "control_ci_high",
                 "diff_mean", "ci_low", "ci_high", "p_value", "prob_improvement", "verdict"]


def pool_sizes(paths: list[str]) -> dict[str, int]:
    """Pool size per data set from the variants' ``metrics.json`` (``curation.pool_size``), where recorded."""
    sizes: dict[str, int] = {}
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            sizes[record["variant"]["dataset"]] = int(record["curation"]["pool_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sizes


def curve_table(df: pd.DataFrame, points: list[CurvePoint], primary: str, rope: float,
                pools: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per (dataset, ssl, size): both methods' means and the paired effect on ``primary``.

    Args:
        df: Per-variant frame.
        points: The sweep's (size, treatment, control) pairs.
        primary: Metric of the curve.
        rope: Half-width of the region of practical equivalence (for the verdict column).
        pools: Pool size per data set, for ``pool_fraction`` (NaN where unknown).

    Returns:
        Frame with :data:`CURVE_COLUMNS`, sorted by dataset, ssl and size; sizes with a missing side are skipped.
    """
    rows: list[dict[str, Any]] = []
    for (dataset, ssl), g in df.groupby(["dataset", "ssl"], sort=True):
        for p in points:
            x = g[g["curation"] == p.treatment].set_index("seed")[primary]
            b = g[g["curation"] == p.control].set_index("seed")[primary]
            if x.empty or b.empty:
                continue
            _, tm, _, th = t_interval(x)
            _, cm, _, ch = t_interval(b)
            d = paired_difference(x, b)
            pool = (pools or {}).get(dataset)
            rows.append({"dataset": dataset, "ssl": ssl, "size": p.size,
                         "pool_fraction": p.size / pool if pool else float("nan"),
                         "treatment": p.treatment, "control": p.control, "n": d["diff_n"],
                         "treatment_mean": tm, "treatment_ci_low": tm - th, "treatment_ci_high": tm + th,
                         "control_mean": cm, "control_ci_low": cm - ch, "control_ci_high": cm + ch,
                         "diff_mean": d["diff_mean"], "ci_low": d["diff_ci95_low"], "ci_high": d["diff_ci95_high"],
                         "p_value": d["p_value"], "prob_improvement": d["prob_improvement"],
                         "verdict": classify(d["diff_ci95_low"], d["diff_ci95_high"], rope)})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _f(value: float, fmt: str) -> str:
    return "n/a" if pd.isna(value) else format(value, fmt)


def curve_markdown(table: pd.DataFrame, primary: str, rope: float, treatment: str, control: str) -> str:
    """The curve table as Markdown (``results/<study>/curve.md``)."""
    lines = [f"# By how much: {treatment} − {control} on {primary} against the curated size", "",
             f"Paired over matched seeds; 95% Student-t intervals; verdict with rope ±{rope:g} "
             "(docs/metrics.md). wins = share of seeds where the treatment is ahead (ties half).", "",
             f"| data · ssl | size | % of pool | n | {treatment} | {control} | Δ [95% CI] | p | wins | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(
            f"| {r.dataset} · {r.ssl} | {r.size} | {_f(100 * r.pool_fraction, '.0f')} | {r.n} "
            f"| {_f(r.treatment_mean, '.3f')} ± {_f(r.treatment_ci_high - r.treatment_mean, '.3f')} "
            f"| {_f(r.control_mean, '.3f')} ± {_f(r.control_ci_high - r.control_mean, '.3f')} "
            f"| {_f(r.diff_mean, '+.3f')} [{_f(r.ci_low, '+.3f')}, {_f(r.ci_high, '+.3f')}] "
            f"| {_f(r.p_value, '.3f')} | {_f(r.prob_improvement, '.2f')} | {r.verdict} |")
    return "\n".join(lines) + "\n"


def write_curve(table: pd.DataFrame, md_path: str, png_path: str, primary: str, rope: float, treatment: str,
                control: str) -> None:
    """Write ``curve.md`` and ``curve.png`` (atomically)."""
    from workflow.summary_figures import plot_curve

    with atomic_path(md_path) as tmp:
        tmp.write_text(curve_markdown(table, primary, rope, treatment, control))
    plot_curve(table, primary, rope, treatment, control, png_path)
