"""The study's pre-registered verdict: is a curation better than its baseline on the primary metric?

The config fixes, before the study runs, the primary metric (``summary.primary``), the baseline curation
(``summary.baseline``) and the region of practical equivalence ±rope (``summary.rope``, in the primary metric's
units). For each comparison (a curation against its reference on one data set and SSL method), with
``[lo, hi]`` the 95% paired t-interval of the difference curated − reference over matched seeds
(:func:`workflow.effects.paired_difference`), the verdict is, checked in this order
(docs/metrics.md, "Verdict"):

* ``better``: ``lo > 0`` (the interval lies above 0);
* ``worse``: ``hi < 0`` (the interval lies below 0);
* ``equivalent``: ``−rope ≤ lo`` and ``hi ≤ rope`` (the interval lies inside ±rope);
* ``unresolved``: anything else, including an undefined interval (fewer than 2 matched seeds).

An interval inside ±rope that excludes 0 is ``better``/``worse``: a resolved but practically small effect,
which the reported interval shows.

With two or more trained SSL entries, each (data set, curation) also gets a **pooled** comparison over them:
per seed, the mean over the entries of the curated − reference difference, ``d_s = (1/M) Σ_m (x_ms − b_ms)``,
over the seeds where every entry has both values; the same t-interval, p-value, share of wins and verdict rule
apply to ``d_s`` (docs/metrics.md, "Pooled over SSL methods"). Seeds stay the unit: the entries of one seed
share its curated subset, so they are averaged, not counted as independent pairs.

``python -m workflow.verdict results/<study>/verdict.json`` prints the verdict.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd

from workflow.effects import bootstrap_aggregate, paired_difference
from workflow.errors import StrataError
from workflow.tables import atomic_path

VERDICTS = ("better", "worse", "equivalent", "unresolved")


def classify(ci_low: float, ci_high: float, rope: float) -> str:
    """The verdict of one 95% interval ``[ci_low, ci_high]`` of a difference, given the rope half-width.

    Returns:
        One of :data:`VERDICTS` (see the module docstring); ``unresolved`` if a bound is not finite.
    """
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "unresolved"
    if ci_low > 0:
        return "better"
    if ci_high < 0:
        return "worse"
    if -rope <= ci_low and ci_high <= rope:
        return "equivalent"
    return "unresolved"


def _finite(value: Any) -> Any:
    """JSON-safe number: NaN/inf → None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_verdict(df: pd.DataFrame, primary: str, baseline: str, rope: float, refs: dict[str, str],
                  metrics: list[str], sizes: dict[str, int] | None = None, n_resamples: int = 2000,
                  seed: int = 0, frozen: Collection[str] = ()) -> dict[str, Any]:
    """The verdict record (the contract of ``results/<study>/verdict.json``, docs/tables.md).

    Args:
        df: Per-variant frame (``dataset``, ``ssl``, ``curation``, ``seed``, metric columns).
        primary: The primary metric (``summary.primary``).
        baseline: ``summary.baseline`` (recorded; each comparison names its own reference).
        rope: Half-width of the region of practical equivalence, in the primary metric's units.
        refs: Compared curation → its reference (:func:`workflow.comparisons.references`).
        metrics: Metrics of the normalised aggregate (larger = better).
        sizes: Curation → target_size, recorded as ``size`` where known.
        n_resamples: Bootstrap resamples of the aggregate.
        seed: Seed of the bootstrap.
        frozen: Frozen-feature ssl entries (method none, :mod:`workflow.frozen`): their features do not depend
            on the curation, so a comparison inside one would be 0 by construction and read as ``equivalent``;
            they get none, whatever curations their rows carry.

    Returns:
        ``primary``, ``baseline``, ``rope``, ``n_seeds`` and ``comparisons``: one entry per
        (dataset, ssl, curation) with a reference, in the frame's order (frozen entries: none).

    Raises:
        StrataError: If the primary metric is not in the metrics.
    """
    if primary not in df.columns:
        available = [c for c in df.columns if c not in ("dataset", "ssl", "curation", "seed")]
        raise StrataError(f"primary metric {primary!r} is not among the variants' metrics {available}",
                          where="summary.primary", fix="choose one of those metrics in the config.")
    comparisons = []
    for (dataset, ssl), group in df.groupby(["dataset", "ssl"], sort=True):
        if ssl in frozen:
            continue
        present = list(dict.fromkeys(group["curation"]))
        for curation in sorted(present, key=lambda c: (sizes or {}).get(c, 0)):
            ref = refs.get(curation)
            if ref is None or ref not in present:
                continue
            x = group[group["curation"] == curation].set_index("seed")
            b = group[group["curation"] == ref].set_index("seed")
            diff = paired_difference(x[primary], b[primary])
            agg = bootstrap_aggregate(group, curation, ref, metrics, [(dataset, ssl)], n_resamples, seed)
            entry = {"dataset": dataset, "ssl": ssl, "curation": curation, "baseline": ref,
                     "n": diff["diff_n"], "diff_mean": diff["diff_mean"], "ci_low": diff["diff_ci95_low"],
                     "ci_high": diff["diff_ci95_high"], "p_value": diff["p_value"],
                     "prob_improvement": diff["prob_improvement"],
                     "verdict": classify(diff["diff_ci95_low"], diff["diff_ci95_high"], rope),
                     "mean": float(x[primary].mean()), "baseline_mean": float(b[primary].mean()),
                     "sd": float(x[primary].std(ddof=1)), "baseline_sd": float(b[primary].std(ddof=1)),
                     "aggregate": {k: _finite(v) for k, v in agg.items()}}
            if sizes and curation in sizes:
                entry["size"] = int(sizes[curation])
            comparisons.append({k: _finite(v) for k, v in entry.items()})
    return {"primary": primary, "baseline": baseline, "rope": float(rope), "n_seeds": int(df["seed"].nunique()),
            "confidence": 0.95, "comparisons": comparisons,
            "pooled": pooled_comparisons(df, primary, rope, refs, frozen, sizes)}


def pooled_comparisons(df: pd.DataFrame, primary: str, rope: float, refs: dict[str, str],
                       frozen: Collection[str] = (), sizes: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Per (data set, curation): the comparison pooled over the trained SSL entries (module docstring).

    Only where two or more entries have the comparison; the entries are listed in ``ssl_entries`` and ``ssl``
    reads ``mean of M SSL entries``; ``size`` (target_size) as in :func:`build_verdict`. Empty for a study with
    one SSL method.
    """
    pooled = []
    for dataset, group in df[~df["ssl"].isin(list(frozen))].groupby("dataset", sort=True):
        for curation in dict.fromkeys(group["curation"]):
            ref = refs.get(curation)
            if ref is None:
                continue
            diffs = {}
            for ssl, g in group.groupby("ssl", sort=True):
                x = g[g["curation"] == curation].set_index("seed")[primary]
                b = g[g["curation"] == ref].set_index("seed")[primary]
                d = (x - b).dropna()
                if len(d):
                    diffs[ssl] = d
            if len(diffs) < 2:
                continue
            d = pd.concat(diffs, axis=1, join="inner").mean(axis=1)  # seeds every entry has
            diff = paired_difference(d, pd.Series(0.0, index=d.index))
            entry = {"dataset": dataset, "ssl": f"mean of {len(diffs)} SSL entries", "ssl_entries": sorted(diffs),
                     "curation": curation, "baseline": ref, "n": diff["diff_n"], "diff_mean": diff["diff_mean"],
                     "ci_low": diff["diff_ci95_low"], "ci_high": diff["diff_ci95_high"], "p_value": diff["p_value"],
                     "prob_improvement": diff["prob_improvement"],
                     "verdict": classify(diff["diff_ci95_low"], diff["diff_ci95_high"], rope)}
            if sizes and curation in sizes:
                entry["size"] = int(sizes[curation])
            pooled.append({k: _finite(v) for k, v in entry.items()})
    return pooled


def write_verdict(verdict: dict[str, Any], path: str) -> None:
    """Write the verdict as strict JSON (undefined numbers are ``null``), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(verdict, indent=2, allow_nan=False) + "\n")


def read_verdict(path: str | Path) -> dict[str, Any]:
    """Read ``verdict.json``.

    Raises:
        StrataError: If it is missing or not JSON.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StrataError(f"cannot read the verdict ({err})", where=str(path),
                          fix="run the study (make run) first.") from err


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def comparison_line(c: dict[str, Any]) -> str:
    """One short line: ``hkmeans vs random (mnist1d-lt · simclr): BETTER  +0.031 [+0.012, +0.050] ...``."""
    p = "n/a" if c["p_value"] is None else ("<0.001" if c["p_value"] < 0.001 else f"{c['p_value']:.3f}")
    wins = "n/a" if c["prob_improvement"] is None else f"{c['prob_improvement']:.2f}"
    size = f" @ {c['size']}" if "size" in c else ""
    return (f"{c['curation']} vs {c['baseline']}{size} ({c['dataset']} · {c['ssl']}): {c['verdict'].upper()}  "
            f"{_num(c['diff_mean'])} [{_num(c['ci_low'])}, {_num(c['ci_high'])}], p {p}, wins {wins}")


def header(verdict: dict[str, Any]) -> str:
    """The pre-registered design in one line."""
    return (f"Verdict on {verdict['primary']} (95% paired t-interval over {verdict['n_seeds']} seeds; "
            f"equivalent within ±{verdict['rope']:g}):")


def verdict_lines(verdict: dict[str, Any]) -> list[str]:
    """A few short lines for the terminal (``make run``)."""
    lines = [header(verdict)]
    lines += [f"  {comparison_line(c)}" for c in verdict["comparisons"]] or ["  (no comparison: no baseline runs)"]
    lines += [f"  pooled: {comparison_line(c)}" for c in verdict.get("pooled", [])]
    lines.append("  wins = share of seeds where the curated variant is ahead (ties half); see docs/metrics.md")
    return lines


def verdict_markdown(verdict: dict[str, Any]) -> str:
    """Markdown for the MLflow study run's description (``mlflow.note.content``)."""
    rows = [f"- {comparison_line(c)}" for c in verdict["comparisons"]] or ["- no comparison (no baseline runs)"]
    rows += [f"- pooled: {comparison_line(c)}" for c in verdict.get("pooled", [])]
    return f"**{header(verdict)}**\n\n" + "\n".join(rows) + "\n\nwins = share of seeds where the curated " \
        "variant is ahead (ties count half). Definitions: docs/metrics.md.\n"


def verdict_rst(verdict: dict[str, Any]) -> str:
    """reStructuredText for the first page of the Snakemake report."""
    rows = [f"* ``{comparison_line(c)}``" for c in verdict["comparisons"]] or ["* no comparison (no baseline runs)"]
    rows += [f"* ``pooled: {comparison_line(c)}``" for c in verdict.get("pooled", [])]
    return f"**{header(verdict)}**\n\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the verdict of a ``verdict.json`` (``make run`` passes ``results/<study>/verdict.json``)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m workflow.verdict results/<study>/verdict.json", file=sys.stderr)
        return 2
    try:
        verdict = read_verdict(args[0])
    except StrataError as err:
        print(f"verdict: error: {err}", file=sys.stderr)
        return 2
    lines = verdict_lines(verdict)
    if any(c["verdict"] == "unresolved" for c in [*verdict["comparisons"], *verdict.get("pooled", [])]):
        lines.append(f"  unresolved: the seeds a fresh-seed confirmatory study needs: python -m workflow.power "
                     f"{shlex.quote(args[0])} --effect <the smallest difference that matters>")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
