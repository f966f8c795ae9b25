"""Stage ``summarize``: one table for the whole study, with uncertainty over seeds.

Outputs (every file written atomically):

* ``summary.csv``: one row per variant (dataset, curation, ssl, seed) and every metric;
* ``summary_stats.csv``: long format, one row per (dataset, ssl, curation, metric) with the number of
  seeds ``n``, mean, standard deviation, the Student-t 95% confidence interval of the mean, and the
  paired difference to the baseline curation over matched seeds (mean, sd, 95% CI, paired t-test
  p-value);
* ``summary.md``: mean ± 95% CI half-width per curation, the paired differences, and every variant;
* optionally ``summary.png``, per-metric dot plots zoomed to the data (:mod:`workflow.summary_figures`);
* optionally ``verdict.json`` and ``forest.png``: the pre-registered verdict on the primary metric
  (:mod:`workflow.verdict`) and the forest plot of every paired difference;
* for a size sweep (``summary.curve``), ``curve.md`` and ``curve.png`` (:mod:`workflow.curve`).

Each curation is compared with its reference (:func:`workflow.comparisons.references`): the baseline, or in
a size sweep the control of the same size. The statistics themselves live in :mod:`workflow.effects`.

:func:`log_summary_to_mlflow` puts the same numbers into the study's MLflow experiment, through
:func:`workflow.tracking.log_study`.

Statistics (``n`` seeds, values ``x_1..x_n``):

    mean = (1/n) Σ x_i,   sd = sqrt(Σ (x_i − mean)² / (n − 1)),
    95% CI = mean ± t_{0.975, n−1} · sd / √n

(Student 1908; the t quantile from ``scipy.stats.t.ppf``). For ``n = 1`` the sd and the interval are
undefined: they are NaN in the CSV files and "n/a" in the Markdown, never 0. The paired difference
to the baseline uses ``d_s = x_s(curation) − x_s(baseline)`` over the seeds ``s`` both have, with the
same formulas, and the two-sided paired t-test ``scipy.stats.ttest_rel`` (``t = mean(d) / (sd(d)/√n)``,
n − 1 degrees of freedom) for ``n ≥ 2``. If every ``d_s`` is equal the test is degenerate: SciPy
returns p = NaN when they are all 0 and p = 0 otherwise (t = ±∞); those values are reported as is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.effects import paired_difference, t_interval
from workflow.errors import StrataError
from workflow.tables import atomic_path

__all__ = ["HEADLINE", "KEYS", "STATS_COLUMNS", "load_metrics", "log_summary_to_mlflow", "study_metrics",
           "summarize", "summary_stats", "t_interval", "variant_record"]

HEADLINE = ["knn_accuracy", "linear_accuracy", "recall_at_1", "map_at_r", "cluster_acc", "cluster_nmi", "cluster_ari"]
KEYS = ["dataset", "ssl", "curation", "seed"]
#: Grouping of a summary row: one (dataset, ssl method, curation) cell, statistics over seeds.
GROUP = ["dataset", "ssl", "curation"]
#: Columns of ``summary_stats.csv``, in order.
STATS_COLUMNS = [*GROUP, "baseline", "metric", "n", "mean", "sd", "ci95_low", "ci95_high", "diff_n", "diff_mean",
                 "diff_sd", "diff_ci95_low", "diff_ci95_high", "p_value", "prob_improvement"]
NA = "n/a"


def load_metrics(paths: list[str]) -> pd.DataFrame:
    """Read the ``metrics.json`` of every variant into one frame sorted by :data:`KEYS`.

    Args:
        paths: Files written by the evaluate stage (see :func:`variant_record`).

    Returns:
        One row per file: the variant keys and every metric.

    Raises:
        StrataError: If a file cannot be read or parsed, or no file is given.
    """
    rows = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise StrataError(f"cannot read metrics ({err})", where=str(path), fix="re-run its evaluate job.") from err
        rows.append({**record["variant"], **record["metrics"]})
    if not rows:
        raise StrataError("no metrics files given", where="summarize", fix="pass at least one metrics.json.")
    return pd.DataFrame(rows).sort_values(KEYS).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def _metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric, non-key columns of the per-variant frame, headline metrics first."""
    numeric = [c for c in df.columns if c not in KEYS and pd.api.types.is_numeric_dtype(df[c])]
    return [c for c in HEADLINE if c in numeric] + [c for c in numeric if c not in HEADLINE]


def summary_stats(df: pd.DataFrame, baseline: str = "random", metrics: list[str] | None = None,
                  refs: dict[str, str] | None = None, frozen: Collection[str] = ()) -> pd.DataFrame:
    """Per (dataset, ssl, curation, metric) statistics over seeds and paired differences to the reference.

    See the module docstring for the formulas. A curation without a reference (the baseline itself, a
    size sweep's controls) has no paired difference (NaN, ``baseline`` empty), nor has any curation in a
    (dataset, ssl) group without its reference.

    Args:
        df: Per-variant frame with :data:`KEYS` and metric columns (as from :func:`load_metrics`).
        baseline: Curation every other curation is compared with when ``refs`` is None.
        metrics: Metric columns to summarise; default every numeric non-key column.
        refs: Curation → the curation it is compared with (:func:`workflow.comparisons.references`).
        frozen: Frozen-feature ssl entries (:mod:`workflow.frozen`): statistics over seeds, but no paired
            difference (their features do not depend on the curation: it would be 0 by construction).

    Returns:
        Long-format frame with :data:`STATS_COLUMNS`, sorted by dataset, ssl, curation and the order
        of ``metrics``.

    Raises:
        StrataError: If a key column is missing or a variant occurs twice.
    """
    missing = [k for k in KEYS if k not in df.columns]
    if missing:
        raise StrataError(f"the metrics table lacks the key columns {missing}.", where="summarize",
                          fix="Write metrics.json files with workflow.summarize.variant_record.")
    dup = df.duplicated(KEYS, keep=False)
    if dup.any():
        first = df.loc[dup, KEYS].iloc[0].to_dict()
        raise StrataError(f"{int(dup.sum())} rows share their variant keys, e.g. {first}.", where="summarize",
                          fix="Pass each variant's metrics.json once.")
    metrics = _metric_columns(df) if metrics is None else metrics
    if refs is None:
        refs = {c: baseline for c in df["curation"].unique() if c != baseline}
    rows: list[dict[str, Any]] = []
    for (dataset, ssl), group in df.groupby(["dataset", "ssl"], sort=True):
        for curation, sub in group.groupby("curation", sort=True):
            sub = sub.set_index("seed")
            ref = None if ssl in frozen else refs.get(curation)
            base = group[group["curation"] == ref].set_index("seed") if ref is not None else None
            if base is not None and base.empty:
                base = None
            for metric in metrics:
                n, mean, sd, half = t_interval(sub[metric])
                row: dict[str, Any] = {"dataset": dataset, "ssl": ssl, "curation": curation,
                                       "baseline": ref if base is not None else "", "metric": metric,
                                       "n": n, "mean": mean, "sd": sd, "ci95_low": mean - half,
                                       "ci95_high": mean + half}
                row.update(paired_difference(sub[metric], base[metric] if base is not None else None))
                rows.append(row)
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


# --------------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------------


def _num(value: float, signed: bool = False) -> str:
    if not np.isfinite(value):
        return NA
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _p(value: float) -> str:
    if not np.isfinite(value):
        return f"p = {NA}"
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


def _mean_ci_cell(row: pd.Series) -> str:
    if row["n"] == 0:
        return NA
    half = row["ci95_high"] - row["mean"]
    return f"{_num(row['mean'])} ± {_num(half)}"


def _diff_cell(row: pd.Series) -> str:
    if row["diff_n"] == 0:
        return NA
    ci = (f"[{_num(row['diff_ci95_low'], True)}, {_num(row['diff_ci95_high'], True)}]"
          if np.isfinite(row["diff_ci95_low"]) else f"[CI {NA}]")
    return f"{_num(row['diff_mean'], True)} {ci}, {_p(row['p_value'])}"


def _frozen_rows(df: pd.DataFrame, st: pd.DataFrame, dataset: str, frozen: dict[str, str],
                 metrics: list[str]) -> list[str]:
    """A data set's frozen-feature entries as reference rows (every curation they carry: one, in a study run)."""
    lines = []
    for ssl, label in frozen.items():
        group = st[(st["dataset"] == dataset) & (st["ssl"] == ssl)]
        cells = group.set_index(["curation", "metric"])
        for curation in dict.fromkeys(group["curation"]):
            n = int(((df["dataset"] == dataset) & (df["ssl"] == ssl) & (df["curation"] == curation)).sum())
            row = [_mean_ci_cell(cells.loc[(curation, m)]) for m in metrics]
            lines.append(f"| *{label}* ({ssl}, reference) | {n} | " + " | ".join(row) + " |")
    return lines


def _markdown(df: pd.DataFrame, st: pd.DataFrame, metrics: list[str], verdict_lines: list[str] | None = None,
              frozen: dict[str, str] | None = None) -> str:
    frozen = frozen or {}
    lines = ["# Strata study summary", "", *(["```", *verdict_lines, "```", ""] if verdict_lines else []),
             "Metrics on `probe_test`; kNN and linear probe trained on `probe_train`. Cells: mean ± half-width of "
             "the 95% confidence interval over seeds (Student t, n − 1 degrees of freedom: t₀.₉₇₅ · sd / √n); "
             f"n = number of seeds; `{NA}` where it is undefined (n = 1).", ""]
    if frozen:
        lines += ["Rows in *italics* are frozen features (ssl method none): evaluated as they are, once per seed, "
                  "without pretraining or curation. They are references beside the trained encoders, never "
                  "compared between curations (every difference would be 0 by construction).", ""]
    groups = list(st.groupby(["dataset", "ssl"], sort=True))
    trained = {dataset for (dataset, ssl), _ in groups if ssl not in frozen}
    for (dataset, ssl), group in groups:
        if ssl in frozen and dataset in trained:
            continue  # shown as reference rows in the data set's trained tables
        cells = group.set_index(["curation", "metric"])
        curations = list(dict.fromkeys(group["curation"]))
        n_seeds = df[(df["dataset"] == dataset) & (df["ssl"] == ssl)].groupby("curation").size()
        title = f"frozen features of {dataset}" if ssl in frozen else f"{dataset} · {ssl}"
        lines += [f"## {title}", "", "| curation | n | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        if ssl in frozen:
            lines += _frozen_rows(df, st, dataset, frozen, metrics)
            lines.append("")
            continue
        for curation in curations:
            row = [_mean_ci_cell(cells.loc[(curation, m)]) for m in metrics]
            lines.append(f"| {curation} | {int(n_seeds[curation])} | " + " | ".join(row) + " |")
        lines += _frozen_rows(df, st, dataset, frozen, metrics)
        lines.append("")
        diffs = []
        for curation in curations:
            sub = [cells.loc[(curation, m)] for m in metrics]
            n_pairs = max(int(r["diff_n"]) for r in sub) if sub else 0
            if n_pairs == 0:
                continue
            ref = sub[0]["baseline"]
            diffs.append(f"| {curation} − {ref} | {n_pairs} | " + " | ".join(_diff_cell(r) for r in sub) + " |")
        if diffs:
            lines += ["Paired difference to the baseline over matched seeds: mean difference [95% CI], "
                      "p = two-sided paired t-test (n = matched seeds):", "",
                      "| curation | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics),
                      *diffs, ""]
    lines += ["## Every variant", "", "| " + " | ".join(KEYS + metrics) + " |",
              "|" + "---|" * (len(KEYS) + len(metrics))]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join([str(row[k]) for k in KEYS] + [_num(row[c]) for c in metrics]) + " |")
    return "\n".join(lines) + "\n"


def summarize(paths: list[str], csv_path: str, md_path: str, baseline: str = "random", png_path: str | None = None,
              stats_path: str | None = None, *, summary: dict[str, Any] | None = None,
              curations: dict[str, dict[str, Any]] | None = None, verdict_path: str | None = None,
              forest_path: str | None = None, curve_md: str | None = None,
              curve_png: str | None = None, frozen: dict[str, str] | None = None) -> pd.DataFrame:
    """Write the study's summary files; returns the per-variant frame.

    Args:
        paths: The variants' ``metrics.json`` files.
        csv_path: Per-variant table (``summary.csv``).
        md_path: Markdown report (``summary.md``), opening with the verdict when one is written.
        baseline: Curation the others are compared with, when ``summary`` does not name one.
        png_path: Optional per-metric dot plots (:func:`workflow.summary_figures.plot_metrics`).
        stats_path: Long-format statistics; default ``<csv_path stem>_stats.csv`` beside ``csv_path``
            (``summary.csv`` -> ``summary_stats.csv``).
        summary: The config's ``summary`` section (``baseline``, ``primary``, ``rope``, ``curve``,
            ``bootstrap_resamples``, ``bootstrap_seed``; schema defaults where absent).
        curations: The config's ``curations`` (``method``, ``target_size``; ``features``, ``features_seed``):
            needed for a size sweep; the figures' titles name each curation's feature space from them.
        verdict_path: Optional ``verdict.json`` (:mod:`workflow.verdict`).
        forest_path: Optional forest plot of the paired differences (needs ``verdict_path``).
        curve_md: Optional size-sweep table (needs ``summary.curve``).
        curve_png: Optional size-sweep figure (needs ``summary.curve``).
        frozen: Frozen-feature ssl entries (method none) → their label (``frozen features: raw``,
            :func:`workflow.frozen.frozen_label`): reference rows in ``summary.md``, no paired difference, no
            comparison in the verdict or the forest plot.

    Returns:
        The per-variant frame (as written to ``csv_path``).

    Raises:
        StrataError: If a metrics file cannot be read, a variant occurs twice, the primary metric is missing,
            or curve outputs are asked for without ``summary.curve``.
    """
    from workflow.comparisons import curve_points, references
    from workflow.verdict import build_verdict, verdict_lines, write_verdict

    cfg = {"baseline": baseline, "primary": "knn_accuracy", "rope": 0.01, "curve": None,
           "bootstrap_resamples": 2000, "bootstrap_seed": 0, **(summary or {})}
    df = load_metrics(paths)
    spaces = None  # each curation's feature space in words, for the figures' titles
    if curations is None:
        curations = {c: {"method": c} for c in df["curation"].unique()}
    else:
        from workflow.report_layout import feature_space

        spaces = {name: feature_space(c, None) for name, c in curations.items()}
    refs = references(curations, cfg["baseline"], cfg["curve"], source="summary")
    frozen = frozen or {}
    if spaces is not None and frozen:
        from workflow.frozen import FROZEN_CURATION

        spaces[FROZEN_CURATION] = "; ".join(dict.fromkeys(frozen.values()))
    st = summary_stats(df, cfg["baseline"], refs=refs, frozen=frozen)
    headline = [c for c in HEADLINE if c in df.columns]
    sizes = {name: int(c["target_size"]) for name, c in curations.items() if c.get("target_size") is not None}
    verdict = None
    if verdict_path is not None:
        verdict = build_verdict(df, cfg["primary"], cfg["baseline"], cfg["rope"], refs, headline,
                                sizes if cfg["curve"] else None, cfg["bootstrap_resamples"], cfg["bootstrap_seed"],
                                frozen=frozen)
    if stats_path is None:
        stats_path = str(Path(csv_path).with_name(f"{Path(csv_path).stem}_stats.csv"))
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(stats_path) as tmp:
        st.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(md_path) as tmp:
        tmp.write_text(_markdown(df, st, headline, verdict_lines(verdict) if verdict else None, frozen))
    if verdict is not None:
        write_verdict(verdict, verdict_path)
    if png_path is not None or forest_path is not None:
        from workflow.summary_figures import plot_forest, plot_metrics

        if png_path is not None:
            plot_metrics(df, st, headline, cfg["baseline"], png_path, spaces)
        if forest_path is not None and verdict is not None:
            plot_forest(st, verdict, headline, forest_path, spaces)
    if curve_md is not None or curve_png is not None:
        if not cfg["curve"]:
            raise StrataError("curve outputs were asked for, but the study declares no size sweep",
                              where="summary.curve", fix="set summary.curve: {treatment: ..., control: ...}.")
        from workflow.curve import curve_table, pool_sizes, write_curve

        points = curve_points(curations, cfg["curve"], source="summary")
        table = curve_table(df, points, cfg["primary"], cfg["rope"], pool_sizes(paths))
        write_curve(table, curve_md or str(Path(md_path).with_name("curve.md")),
                    curve_png or str(Path(md_path).with_name("curve.png")), cfg["primary"], cfg["rope"],
                    cfg["curve"]["treatment"], cfg["curve"]["control"])
    return df


# --------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------


def study_metrics(stats: pd.DataFrame) -> dict[str, float]:
    """The study run's metrics from the statistics of :func:`summary_stats`.

    For every row, ``{curation}.{metric}.n``, ``.mean``, ``.sd``, ``.ci95`` (half-width) and, for curations
    with a reference, ``.diff_mean``, ``.diff_ci95`` (half-width), ``.p_value``, ``.prob_improvement``;
    undefined values (n = 1) are left out. If ``stats`` spans several (dataset, ssl) pairs the names are
    prefixed ``{dataset}.{ssl}.`` so they stay unique.
    """
    multi = stats[["dataset", "ssl"]].drop_duplicates().shape[0] > 1
    out: dict[str, float] = {}
    for _, row in stats.iterrows():
        prefix = f"{row['dataset']}.{row['ssl']}.{row['curation']}" if multi else str(row["curation"])
        values = {"n": row["n"], "mean": row["mean"], "sd": row["sd"], "ci95": row["ci95_high"] - row["mean"]}
        if row["diff_n"] > 0:
            values.update(diff_mean=row["diff_mean"], diff_ci95=row["diff_ci95_high"] - row["diff_mean"],
                          p_value=row["p_value"], prob_improvement=row.get("prob_improvement", math.nan))
        for stat, value in values.items():
            if value is not None and np.isfinite(value):
                out[f"{prefix}.{row['metric']}.{stat}"] = float(value)
    return out


def log_summary_to_mlflow(tracking_uri: str, experiment: str, stats: pd.DataFrame, files: list[str],
                          baseline: str = "random", note: str | None = None) -> None:
    """Log the study summary to MLflow (:func:`workflow.tracking.log_study`): the study run with
    :func:`study_metrics`, ``files`` and ``note``, and every variant run's ``{metric}.diff_vs_{baseline}``
    for the metrics of ``stats``.

    Args:
        tracking_uri: MLflow tracking URI (e.g. ``sqlite:///results/mlflow.db``).
        experiment: Experiment name (the config's ``study``).
        stats: Frame from :func:`summary_stats`.
        files: Summary files to attach (missing files are skipped).
        baseline: The baseline curation of the per-variant differences.
        note: Markdown description of the study run (:func:`workflow.verdict.verdict_markdown`).
    """
    from workflow.tracking import log_study

    log_study(tracking_uri, experiment, study_metrics(stats), files, note=note, baseline=baseline,
              compared=list(dict.fromkeys(stats["metric"])))


def variant_record(dataset: str, curation: str, ssl: str, seed: int, metrics: dict[str, float],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` record of one variant, as read back by :func:`load_metrics`.

    Args:
        dataset: Data set name.
        curation: Curation name.
        ssl: SSL method name.
        seed: Seed of the variant.
        metrics: Flat ``{metric: value}``.
        extra: Further top-level fields.

    Returns:
        ``{"variant": {...keys...}, "metrics": metrics, **extra}``.
    """
    return {"variant": {"dataset": dataset, "curation": curation, "ssl": ssl, "seed": seed},
            "metrics": metrics, **(extra or {})}
