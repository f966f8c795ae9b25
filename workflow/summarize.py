"""Stage ``summarize``: one table for the whole study.

``summary.csv`` has one row per variant (dataset, curation, ssl, seed) and every metric;
``summary.md`` shows, per (dataset, ssl, curation), the mean and standard deviation over seeds of the
headline metrics, and the paired difference of each curation to the baseline over matched seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.errors import StrataError
from workflow.tables import atomic_path

HEADLINE = ["knn_accuracy", "linear_accuracy", "recall_at_1", "map_at_r", "cluster_acc", "cluster_nmi", "cluster_ari"]
KEYS = ["dataset", "ssl", "curation", "seed"]


def load_metrics(paths: list[str]) -> pd.DataFrame:
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


def _fmt(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{mean:.3f}"


def summarize(paths: list[str], csv_path: str, md_path: str, baseline: str = "random") -> pd.DataFrame:
    """Write the study's summary; returns the per-variant frame."""
    df = load_metrics(paths)
    metrics = [c for c in HEADLINE if c in df.columns]
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    lines = ["# Strata study summary", "",
             "Mean ± standard deviation over seeds (n = number of seeds). Metrics on `probe_test`; kNN and linear "
             "probe trained on `probe_train`.", ""]
    for (dataset, ssl), group in df.groupby(["dataset", "ssl"], sort=True):
        lines += [f"## {dataset} · {ssl}", "", "| curation | n | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for curation, sub in group.groupby("curation", sort=True):
            cells = [_fmt(sub[c].mean(), sub[c].std(ddof=1) if len(sub) > 1 else float("nan")) for c in metrics]
            lines.append(f"| {curation} | {len(sub)} | " + " | ".join(cells) + " |")
        lines.append("")
        if baseline in set(group["curation"]):
            base = group[group["curation"] == baseline].set_index("seed")
            diffs = []
            for curation, sub in group.groupby("curation", sort=True):
                if curation == baseline:
                    continue
                sub = sub.set_index("seed")
                seeds = sorted(set(sub.index) & set(base.index))
                if not seeds:
                    continue
                cells = []
                for c in metrics:
                    d = sub.loc[seeds, c].to_numpy() - base.loc[seeds, c].to_numpy()
                    cells.append(_fmt(d.mean(), d.std(ddof=1) if len(d) > 1 else float("nan")))
                diffs.append(f"| {curation} − {baseline} | {len(seeds)} | " + " | ".join(cells) + " |")
            if diffs:
                lines += [f"Paired difference to `{baseline}` over matched seeds:", "",
                          "| curation | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics),
                          *diffs, ""]
    lines += ["## Every variant", "", "| " + " | ".join(KEYS + metrics) + " |",
              "|" + "---|" * (len(KEYS) + len(metrics))]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join([str(row[k]) for k in KEYS] + [f"{row[c]:.3f}" for c in metrics]) + " |")
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return df


def variant_record(dataset: str, curation: str, ssl: str, seed: int, metrics: dict[str, float],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"variant": {"dataset": dataset, "curation": curation, "ssl": ssl, "seed": seed},
            "metrics": metrics, **(extra or {})}
