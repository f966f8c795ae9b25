"""Stage ``summarize``: one table for the whole study, with uncertainty over seeds.

Outputs (every file written atomically):

* ``summary.csv``: one row per variant (dataset, curation, ssl, seed) and every metric;
* ``summary_stats.csv``: long format, one row per (dataset, ssl, curation, metric) with the number of
  seeds ``n``, mean, standard deviation, the Student-t 95% confidence interval of the mean, and the
  paired difference to the baseline curation over matched seeds (mean, sd, 95% CI, paired t-test
  p-value);
* ``summary.md``: mean ± 95% CI half-width per curation, the paired differences, and every variant;
* optionally a PNG bar chart of the headline metrics with 95% CI error bars.

:func:`log_summary_to_mlflow` puts the same numbers into the study's MLflow experiment.

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
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from workflow.errors import StrataError
from workflow.tables import atomic_path

HEADLINE = ["knn_accuracy", "linear_accuracy", "recall_at_1", "map_at_r", "cluster_acc", "cluster_nmi", "cluster_ari"]
KEYS = ["dataset", "ssl", "curation", "seed"]
#: Grouping of a summary row: one (dataset, ssl method, curation) cell, statistics over seeds.
GROUP = ["dataset", "ssl", "curation"]
#: Columns of ``summary_stats.csv``, in order.
STATS_COLUMNS = [*GROUP, "metric", "n", "mean", "sd", "ci95_low", "ci95_high", "diff_n", "diff_mean", "diff_sd",
                 "diff_ci95_low", "diff_ci95_high", "p_value"]
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


def t_interval(values: Sequence[float] | np.ndarray) -> tuple[int, float, float, float]:
    """Mean and Student-t 95% confidence half-width of the finite ``values``.

    ``half = t_{0.975, n−1} · sd / √n`` with ``sd`` the sample standard deviation (ddof = 1).

    Args:
        values: Observations (NaN entries are ignored).

    Returns:
        ``(n, mean, sd, half)``; ``sd`` and ``half`` are NaN when ``n < 2``, all but ``n`` are NaN
        when ``n = 0``.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return n, mean, math.nan, math.nan
    sd = float(x.std(ddof=1))
    return n, mean, sd, float(sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def _metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric, non-key columns of the per-variant frame, headline metrics first."""
    numeric = [c for c in df.columns if c not in KEYS and pd.api.types.is_numeric_dtype(df[c])]
    return [c for c in HEADLINE if c in numeric] + [c for c in numeric if c not in HEADLINE]


def summary_stats(df: pd.DataFrame, baseline: str = "random", metrics: list[str] | None = None) -> pd.DataFrame:
    """Per (dataset, ssl, curation, metric) statistics over seeds and paired differences to ``baseline``.

    See the module docstring for the formulas. The paired difference of the baseline to itself is
    not reported (NaN), nor is any difference in a (dataset, ssl) group without the baseline.

    Args:
        df: Per-variant frame with :data:`KEYS` and metric columns (as from :func:`load_metrics`).
        baseline: Curation every other curation is compared with.
        metrics: Metric columns to summarise; default every numeric non-key column.

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
    rows: list[dict[str, Any]] = []
    for (dataset, ssl), group in df.groupby(["dataset", "ssl"], sort=True):
        base = group[group["curation"] == baseline].set_index("seed")
        for curation, sub in group.groupby("curation", sort=True):
            sub = sub.set_index("seed")
            for metric in metrics:
                n, mean, sd, half = t_interval(sub[metric])
                row: dict[str, Any] = {"dataset": dataset, "ssl": ssl, "curation": curation, "metric": metric,
                                       "n": n, "mean": mean, "sd": sd, "ci95_low": mean - half,
                                       "ci95_high": mean + half}
                row.update(_paired_difference(sub[metric], base[metric] if curation != baseline and len(base)
                                              else None))
                rows.append(row)
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def _paired_difference(values: pd.Series, base: pd.Series | None) -> dict[str, float]:
    """Paired difference ``values − base`` over the seeds (index) where both are finite."""
    empty = {"diff_n": 0, "diff_mean": math.nan, "diff_sd": math.nan, "diff_ci95_low": math.nan,
             "diff_ci95_high": math.nan, "p_value": math.nan}
    if base is None:
        return empty
    both = pd.concat([values.rename("x"), base.rename("b")], axis=1, join="inner").dropna()
    if both.empty:
        return empty
    n, mean, sd, half = t_interval(both["x"] - both["b"])
    p = math.nan
    if n >= 2:
        with warnings.catch_warnings():  # zero-variance differences: SciPy warns and returns nan / 0
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(sps.ttest_rel(both["x"], both["b"]).pvalue)
    return {"diff_n": n, "diff_mean": mean, "diff_sd": sd, "diff_ci95_low": mean - half,
            "diff_ci95_high": mean + half, "p_value": p}


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


def _markdown(df: pd.DataFrame, st: pd.DataFrame, metrics: list[str], baseline: str) -> str:
    lines = ["# Strata study summary", "",
             "Metrics on `probe_test`; kNN and linear probe trained on `probe_train`. Cells: mean ± half-width of "
             "the 95% confidence interval over seeds (Student t, n − 1 degrees of freedom: t₀.₉₇₅ · sd / √n); "
             f"n = number of seeds; `{NA}` where it is undefined (n = 1).", ""]
    for (dataset, ssl), group in st.groupby(["dataset", "ssl"], sort=True):
        cells = group.set_index(["curation", "metric"])
        curations = list(dict.fromkeys(group["curation"]))
        n_seeds = df[(df["dataset"] == dataset) & (df["ssl"] == ssl)].groupby("curation").size()
        lines += [f"## {dataset} · {ssl}", "", "| curation | n | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for curation in curations:
            row = [_mean_ci_cell(cells.loc[(curation, m)]) for m in metrics]
            lines.append(f"| {curation} | {int(n_seeds[curation])} | " + " | ".join(row) + " |")
        lines.append("")
        diffs = []
        for curation in curations:
            if curation == baseline:
                continue
            sub = [cells.loc[(curation, m)] for m in metrics]
            n_pairs = max(int(r["diff_n"]) for r in sub) if sub else 0
            if n_pairs == 0:
                continue
            diffs.append(f"| {curation} − {baseline} | {n_pairs} | " + " | ".join(_diff_cell(r) for r in sub) + " |")
        if diffs:
            lines += [f"Paired difference to `{baseline}` over matched seeds: mean difference [95% CI], "
                      "p = two-sided paired t-test (n = matched seeds):", "",
                      "| curation | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics),
                      *diffs, ""]
    lines += ["## Every variant", "", "| " + " | ".join(KEYS + metrics) + " |",
              "|" + "---|" * (len(KEYS) + len(metrics))]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join([str(row[k]) for k in KEYS] + [_num(row[c]) for c in metrics]) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(st: pd.DataFrame, png_path: str, metrics: list[str]) -> None:
    """Bar chart of ``metrics`` per curation with 95% CI error bars, one panel per metric (PNG, Agg).

    Within a panel, bars are grouped by (dataset, ssl) and coloured by curation; cells with
    ``n = 1`` have no error bar (the interval is undefined).

    Args:
        st: Frame from :func:`summary_stats`.
        png_path: Output file, written atomically.
        metrics: Metrics to draw (those absent from ``st`` are skipped).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if m in set(st["metric"])] or list(dict.fromkeys(st["metric"]))
    groups = list(dict.fromkeys(zip(st["dataset"], st["ssl"], strict=True)))
    curations = sorted(set(st["curation"]))
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.6, 3.0 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    width = 0.8 / max(1, len(curations))
    cells = st.set_index(["dataset", "ssl", "curation", "metric"])
    for ax, metric in zip(axes, metrics, strict=False):
        for j, curation in enumerate(curations):
            means, errs = [], []
            for dataset, ssl in groups:
                key = (dataset, ssl, curation, metric)
                row = cells.loc[key] if key in cells.index else None
                means.append(row["mean"] if row is not None else np.nan)
                errs.append(row["ci95_high"] - row["mean"] if row is not None else np.nan)
            x = np.arange(len(groups)) + (j - (len(curations) - 1) / 2) * width
            ax.bar(x, np.nan_to_num(means), width, label=curation, color=f"C{j}")
            err = np.asarray(errs, dtype=np.float64)
            ok = np.isfinite(err) & np.isfinite(means)
            if ok.any():
                ax.errorbar(x[ok], np.asarray(means)[ok], yerr=err[ok], fmt="none", ecolor="black", capsize=3,
                            linewidth=1)
        ax.set_title(metric)
        ax.set_xticks(np.arange(len(groups)), [f"{d}\n{s}" for d, s in groups], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(curations), 6), title="curation")
    fig.suptitle("Mean over seeds with 95% CI (Student t)")
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def summarize(paths: list[str], csv_path: str, md_path: str, baseline: str = "random", png_path: str | None = None,
              stats_path: str | None = None) -> pd.DataFrame:
    """Write the study's summary files; returns the per-variant frame.

    Args:
        paths: The variants' ``metrics.json`` files.
        csv_path: Per-variant table (``summary.csv``).
        md_path: Markdown report (``summary.md``).
        baseline: Curation the others are compared with (paired over seeds).
        png_path: Optional bar chart of the headline metrics with 95% CI error bars.
        stats_path: Long-format statistics; default ``<csv_path stem>_stats.csv`` beside ``csv_path``
            (``summary.csv`` -> ``summary_stats.csv``).

    Returns:
        The per-variant frame (as written to ``csv_path``).

    Raises:
        StrataError: If a metrics file cannot be read or a variant occurs twice.
    """
    df = load_metrics(paths)
    st = summary_stats(df, baseline)
    headline = [c for c in HEADLINE if c in df.columns]
    if stats_path is None:
        stats_path = str(Path(csv_path).with_name(f"{Path(csv_path).stem}_stats.csv"))
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(stats_path) as tmp:
        st.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(md_path) as tmp:
        tmp.write_text(_markdown(df, st, headline, baseline))
    if png_path is not None:
        plot_summary(st, png_path, headline)
    return df


# --------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------


def log_summary_to_mlflow(tracking_uri: str, experiment: str, stats: pd.DataFrame, files: list[str],
                          baseline: str = "random") -> None:
    """Log the study summary to MLflow: a study run with aggregates and files, and per-variant differences.

    Under the tracking store's ``flock`` (as in :mod:`workflow.tracking`):

    * the **study run** (tags ``strata.kind=study``, ``strata.key=study:<experiment>``) is found or
      created; ``files`` are logged as artifacts under ``summary/``, and for every row of ``stats``
      the metrics ``{curation}.{metric}.n``, ``.mean``, ``.sd``, ``.ci95`` (half-width) and, for
      curations other than the baseline, ``.diff_mean``, ``.diff_ci95`` (half-width), ``.p_value``;
      undefined values (n = 1) are not logged. If ``stats`` spans several (dataset, ssl) pairs
      the names are prefixed ``{dataset}.{ssl}.`` so they stay unique;
    * every **variant run** (tag ``strata.kind=variant``, params ``dataset.name``, ``ssl.name``,
      ``curation.name``, ``seed``) gets ``{metric}.diff_vs_{baseline}`` = its metric minus the
      metric of the baseline variant run with the same dataset, ssl and seed (the most recently
      started one if there are several), for the metrics of ``stats`` both runs have.

    Args:
        tracking_uri: MLflow tracking URI (e.g. ``sqlite:///results/mlflow.db``).
        experiment: Experiment name (the config's ``study``).
        stats: Frame from :func:`summary_stats`.
        files: Summary files to attach (missing files are skipped).
        baseline: The baseline curation of the paired differences.
    """
    from mlflow.tracking import MlflowClient

    from workflow.distributed import file_lock
    from workflow.tracking import KIND_TAG, TrackingSpec, _experiment_id, _lock_path, _parent_run

    spec = TrackingSpec(uri=tracking_uri, experiment=experiment, parent_kind="study",
                        parent_key=f"study:{experiment}", parent_name="study summary", parent_params={},
                        job="summarize")
    now = int(time.time() * 1000)
    multi = stats[["dataset", "ssl"]].drop_duplicates().shape[0] > 1
    study_metrics: dict[str, float] = {}
    for _, row in stats.iterrows():
        prefix = f"{row['dataset']}.{row['ssl']}.{row['curation']}" if multi else str(row["curation"])
        values = {"n": row["n"], "mean": row["mean"], "sd": row["sd"], "ci95": row["ci95_high"] - row["mean"]}
        if row["curation"] != baseline:
            values.update(diff_mean=row["diff_mean"], diff_ci95=row["diff_ci95_high"] - row["diff_mean"],
                          p_value=row["p_value"])
        for stat, value in values.items():
            if value is not None and np.isfinite(value):
                study_metrics[f"{prefix}.{row['metric']}.{stat}"] = float(value)
    wanted = list(dict.fromkeys(stats["metric"]))

    with file_lock(_lock_path(tracking_uri)):
        client = MlflowClient(tracking_uri)
        exp_id = _experiment_id(client, spec)
        study_id = _parent_run(client, exp_id, spec)
        _log_metrics(client, study_id, study_metrics, now)
        for path in files:
            if Path(path).is_file():
                client.log_artifact(study_id, str(path), artifact_path="summary")

        variants = client.search_runs([exp_id], filter_string=f"tags.`{KIND_TAG}` = 'variant'", max_results=50000)
        base_runs: dict[tuple[str, str, str], Any] = {}
        for run in sorted(variants, key=lambda r: r.info.start_time or 0):
            p = run.data.params
            if p.get("curation.name") == baseline:
                base_runs[(p.get("dataset.name"), p.get("ssl.name"), p.get("seed"))] = run  # latest wins
        for run in variants:
            p = run.data.params
            base = base_runs.get((p.get("dataset.name"), p.get("ssl.name"), p.get("seed")))
            if base is None:
                continue
            diffs = {f"{m}.diff_vs_{baseline}": run.data.metrics[m] - base.data.metrics[m]
                     for m in wanted if m in run.data.metrics and m in base.data.metrics}
            _log_metrics(client, run.info.run_id, {k: v for k, v in diffs.items() if np.isfinite(v)}, now)


def _log_metrics(client: Any, run_id: str, metrics: dict[str, float], timestamp: int) -> None:
    """``log_batch`` in chunks of 1000 metrics (the MLflow limit per call)."""
    from mlflow.entities import Metric

    items = [Metric(k, float(v), timestamp, 0) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i:i + 1000])


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
