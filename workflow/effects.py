"""Paired statistics over seeds: t-interval, paired difference, probability of improvement, bootstrap aggregate.

Definitions (also in docs/metrics.md, "Comparing variants"); ``x_s`` is a curated variant's metric and ``b_s``
its reference's (the baseline curation) at seed ``s``, over the ``n`` seeds where both are finite:

* **t-interval** (Student 1908): ``mean ± t_{0.975, n−1} · sd / √n`` with ``sd`` the sample standard
  deviation (ddof = 1); undefined (NaN) for ``n < 2``.
* **paired difference**: the t-interval of ``d_s = x_s − b_s`` and the two-sided paired t-test
  (``scipy.stats.ttest_rel``). This is the main estimate.
* **probability of improvement**: ``P = (#{d_s > 0} + ½·#{d_s = 0}) / n``, the share of seeds on which the
  curated variant wins, a tie counting half (the common-language effect size of McGraw & Wong 1992 for
  paired data; 0.5 = no tendency).
* **normalised aggregate**: over several metrics (and data sets / SSL methods) ``u``, the mean relative
  difference ``A = (1/U) Σ_u (x̄_u − b̄_u) / |b̄_u|`` (x̄, b̄ the means over the matched seeds), with a
  percentile bootstrap 95% interval (Efron & Tibshirani 1993, §13.3): the *seeds* are resampled with
  replacement (one draw shared by every unit, so correlated metrics stay paired), ``n_resamples`` times from
  ``numpy.random.default_rng(seed)``; ``A*`` is recomputed from each resample and the interval is its 2.5th and
  97.5th percentiles (``numpy.percentile``, linear interpolation). Units whose baseline mean is 0 are left out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

#: Default number of bootstrap resamples and the seed of their generator (``summary.bootstrap``).
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def t_half_width(sd: float, n: int, confidence: float = 0.95) -> float:
    """Student-t half-width ``t_{(1+confidence)/2, n−1} · sd / √n`` of a mean over ``n ≥ 2`` observations."""
    return float(sps.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n))


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
    return n, mean, sd, t_half_width(sd, n)


def prob_improvement(diffs: Sequence[float] | np.ndarray) -> float:
    """Share of paired differences above 0, ties counting half: ``(#{d > 0} + ½·#{d = 0}) / n``.

    Args:
        diffs: Paired differences ``d_s = x_s − b_s`` (NaN entries are ignored).

    Returns:
        A value in [0, 1]; NaN when no difference is finite.
    """
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)


def paired_difference(values: pd.Series, base: pd.Series | None) -> dict[str, float]:
    """Paired difference ``values − base`` over the seeds (the index) where both are finite.

    Returns:
        ``diff_n``, ``diff_mean``, ``diff_sd``, ``diff_ci95_low``, ``diff_ci95_high``, ``p_value`` (two-sided
        paired t-test; NaN for n < 2, and as SciPy returns it when every difference is equal: NaN if all are 0,
        else 0) and ``prob_improvement``; all NaN and ``diff_n = 0`` without a base or a matched seed.
    """
    empty = {"diff_n": 0, "diff_mean": math.nan, "diff_sd": math.nan, "diff_ci95_low": math.nan,
             "diff_ci95_high": math.nan, "p_value": math.nan, "prob_improvement": math.nan}
    if base is None:
        return empty
    both = pd.concat([values.rename("x"), base.rename("b")], axis=1, join="inner").dropna()
    if both.empty:
        return empty
    d = both["x"] - both["b"]
    n, mean, sd, half = t_interval(d)
    p = math.nan
    if n >= 2:
        with warnings.catch_warnings():  # zero-variance differences: SciPy warns and returns nan / 0
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(sps.ttest_rel(both["x"], both["b"]).pvalue)
    return {"diff_n": n, "diff_mean": mean, "diff_sd": sd, "diff_ci95_low": mean - half,
            "diff_ci95_high": mean + half, "p_value": p, "prob_improvement": prob_improvement(d)}


def _unit_arrays(df: pd.DataFrame, curation: str, reference: str, metrics: list[str],
                 groups: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(units × seeds) arrays of the curated and reference values over the seeds every unit has."""
    xs, bs, seeds_per_unit = [], [], []
    for dataset, ssl in groups:
        g = df[(df["dataset"] == dataset) & (df["ssl"] == ssl)]
        x = g[g["curation"] == curation].set_index("seed")
        b = g[g["curation"] == reference].set_index("seed")
        for metric in metrics:
            if metric not in g.columns:
                continue
            both = pd.concat([x[metric].rename("x"), b[metric].rename("b")], axis=1, join="inner").dropna()
            xs.append(both["x"])
            bs.append(both["b"])
            seeds_per_unit.append(set(both.index))
    if not xs:
        return np.empty((0, 0)), np.empty((0, 0)), []
    seeds = sorted(set.intersection(*seeds_per_unit))
    return (np.array([s.loc[seeds].to_numpy(np.float64) for s in xs]).reshape(len(xs), len(seeds)),
            np.array([s.loc[seeds].to_numpy(np.float64) for s in bs]).reshape(len(bs), len(seeds)), seeds)


def _relative(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean over units of (x̄ − b̄)/|b̄| along the last axis (seeds); units with b̄ = 0 are NaN and skipped."""
    xm, bm = x.mean(axis=-1), b.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(bm != 0, (xm - bm) / np.abs(bm), np.nan)
    return np.nanmean(rel, axis=-1)


def bootstrap_aggregate(df: pd.DataFrame, curation: str, reference: str, metrics: list[str],
                        groups: list[tuple[str, str]] | None = None, n_resamples: int = N_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Mean relative difference of ``curation`` to ``reference`` over metrics × (dataset, ssl), with a bootstrap CI.

    See the module docstring for the definition and the resampling scheme.

    Args:
        df: Per-variant frame (``dataset``, ``ssl``, ``curation``, ``seed`` and metric columns).
        curation: The curated variant.
        reference: The curation it is compared with.
        metrics: Metric columns (larger = better) to aggregate.
        groups: (dataset, ssl) pairs to include; default every pair of ``df``.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of ``numpy.random.default_rng`` for the resamples.

    Returns:
        ``mean`` (a fraction: 0.02 = +2%), ``ci_low``, ``ci_high``, ``n_units`` (metrics × groups with a
        nonzero baseline mean), ``n_seeds`` (seeds shared by every unit), ``n_resamples``, ``seed``; the
        interval is NaN with fewer than 2 seeds, everything but the counts without a unit.
    """
    if groups is None:
        groups = sorted(set(zip(df["dataset"], df["ssl"], strict=True)))
    x, b, seeds = _unit_arrays(df, curation, reference, metrics, groups)
    out: dict[str, Any] = {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_units": 0,
                           "n_seeds": len(seeds), "n_resamples": int(n_resamples), "seed": int(seed)}
    if x.size == 0:
        return out
    out["n_units"] = int((b.mean(axis=-1) != 0).sum())
    if out["n_units"] == 0:
        return out
    out["mean"] = float(_relative(x, b))
    if len(seeds) >= 2:
        idx = np.random.default_rng(seed).integers(0, len(seeds), size=(n_resamples, len(seeds)))
        # x[:, idx] is (units, resamples, seeds): every unit uses the same resampled seeds.
        with warnings.catch_warnings():  # a resample whose baseline means are all 0: NaN, dropped below
            warnings.simplefilter("ignore", RuntimeWarning)
            stars = _relative(np.moveaxis(x[:, idx], 0, 1), np.moveaxis(b[:, idx], 0, 1))
        stars = stars[np.isfinite(stars)]
        if stars.size:
            out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(stars, [2.5, 97.5]))
    return out
