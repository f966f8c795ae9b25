"""Tests for workflow.summarize: statistics over seeds, output files and MLflow logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from workflow.errors import StrataError
from workflow.summarize import (
    STATS_COLUMNS,
    log_summary_to_mlflow,
    study_metrics,
    summarize,
    summary_stats,
    t_interval,
    variant_record,
)


def _frame(rows: list[tuple[str, int, float, float]]) -> pd.DataFrame:
    """Per-variant frame for dataset d / ssl s from (curation, seed, knn_accuracy, map_at_r) tuples."""
    return pd.DataFrame([{"dataset": "d", "ssl": "s", "curation": c, "seed": seed, "knn_accuracy": a, "map_at_r": b}
                         for c, seed, a, b in rows])


def _write(tmp_path: Path, df: pd.DataFrame) -> list[str]:
    paths = []
    for i, row in df.iterrows():
        metrics = {k: float(v) for k, v in row.items() if k not in ("dataset", "ssl", "curation", "seed")}
        path = tmp_path / "metrics" / f"{i}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(variant_record(row["dataset"], row["curation"], row["ssl"], int(row["seed"]),
                                                  metrics)))
        paths.append(str(path))
    return paths


PAIRED = _frame([
    ("random", 0, 0.50, 0.20), ("random", 1, 0.55, 0.25), ("random", 2, 0.47, 0.21),
    ("hkmeans", 0, 0.58, 0.22), ("hkmeans", 1, 0.57, 0.31), ("hkmeans", 2, 0.55, 0.24),
    ("hkmeans", 3, 0.90, 0.90),  # no random run with seed 3: in the mean, not in the paired difference
    ("none", 0, 0.61, 0.30),  # a single seed: sd and CI undefined
])


def test_t_interval_hand_computation():
    n, mean, sd, half = t_interval([1.0, 2.0, 3.0])
    assert (n, mean, sd) == (3, 2.0, 1.0)
    # Student t with 2 df has the closed-form quantile t(p) = (2p − 1) / sqrt(2p(1 − p)): t(0.975) = 4.3027.
    t975 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert half == pytest.approx(t975 / math.sqrt(3), rel=1e-12)
    assert half == pytest.approx(sps.t.ppf(0.975, 2) / math.sqrt(3), rel=1e-12)
    n, mean, sd, half = t_interval([0.7, np.nan])
    assert (n, mean) == (1, 0.7) and math.isnan(sd) and math.isnan(half)


def test_summary_stats_against_scipy():
    st = summary_stats(PAIRED, baseline="random")
    assert list(st.columns) == STATS_COLUMNS
    assert len(st) == 3 * 2
    cell = st.set_index(["curation", "metric"])
    for curation in ("random", "hkmeans"):
        for metric in ("knn_accuracy", "map_at_r"):
            x = PAIRED.loc[PAIRED["curation"] == curation, metric].to_numpy()
            row = cell.loc[(curation, metric)]
            lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
            assert row["n"] == len(x) and row["mean"] == pytest.approx(x.mean())
            assert row["sd"] == pytest.approx(np.std(x, ddof=1))
            assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((lo, hi), rel=1e-10)
    for metric in ("knn_accuracy", "map_at_r"):
        base = PAIRED[PAIRED["curation"] == "random"].set_index("seed")[metric]
        hk = PAIRED[PAIRED["curation"] == "hkmeans"].set_index("seed")[metric].loc[[0, 1, 2]]
        d = (hk - base).to_numpy()
        row = cell.loc[("hkmeans", metric)]
        lo, hi = sps.t.interval(0.95, 2, loc=d.mean(), scale=sps.sem(d))
        assert row["diff_n"] == 3
        assert row["diff_mean"] == pytest.approx(d.mean()) and row["diff_sd"] == pytest.approx(np.std(d, ddof=1))
        assert (row["diff_ci95_low"], row["diff_ci95_high"]) == pytest.approx((lo, hi), rel=1e-10)
        assert row["p_value"] == pytest.approx(sps.ttest_rel(hk.to_numpy(), base.to_numpy()).pvalue, rel=1e-12)
        assert row["p_value"] == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue, rel=1e-9)
    # The baseline has no difference to itself.
    assert cell.loc[("random", "map_at_r"), "diff_n"] == 0 and math.isnan(cell.loc[("random", "map_at_r"), "p_value"])


def test_single_seed_is_undefined_not_zero(tmp_path):
    st = summary_stats(PAIRED, baseline="random").set_index(["curation", "metric"])
    none = st.loc[("none", "knn_accuracy")]
    assert none["n"] == 1 and none["mean"] == pytest.approx(0.61)
    for col in ("sd", "ci95_low", "ci95_high", "diff_sd", "diff_ci95_low", "p_value"):
        assert math.isnan(none[col]), col
    assert none["diff_n"] == 1 and none["diff_mean"] == pytest.approx(0.61 - 0.50)

    out = tmp_path / "out"
    summarize(_write(tmp_path, PAIRED), str(out / "summary.csv"), str(out / "summary.md"))
    md = (out / "summary.md").read_text()
    assert "| none | 1 | 0.610 ± n/a | 0.300 ± n/a |" in md
    assert "| none − random | 1 | +0.110 [CI n/a], p = n/a |" in md
    assert "± 0.000" not in md
    back = pd.read_csv(out / "summary_stats.csv").set_index(["curation", "metric"])
    assert math.isnan(back.loc[("none", "knn_accuracy"), "sd"])


def test_summarize_writes_every_file(tmp_path):
    out = tmp_path / "out"
    df = summarize(_write(tmp_path, PAIRED), str(out / "summary.csv"), str(out / "summary.md"), baseline="random",
                   png_path=str(out / "summary.png"))
    assert len(df) == len(PAIRED)
    assert len(pd.read_csv(out / "summary.csv")) == len(PAIRED)
    stats = pd.read_csv(out / "summary_stats.csv")
    assert list(stats.columns) == STATS_COLUMNS and len(stats) == 3 * 2
    md = (out / "summary.md").read_text()
    st = summary_stats(PAIRED).set_index(["curation", "metric"])
    row = st.loc[("random", "knn_accuracy")]
    assert f"| random | 3 | {row['mean']:.3f} ± {row['ci95_high'] - row['mean']:.3f} |" in md
    assert "95% confidence interval" in md and "hkmeans − random" in md and "## Every variant" in md
    diff = st.loc[("hkmeans", "knn_accuracy")]
    assert f"{diff['diff_mean']:+.3f} [{diff['diff_ci95_low']:+.3f}, {diff['diff_ci95_high']:+.3f}]" in md
    png = (out / "summary.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing behind


def test_duplicate_variant_raises(tmp_path):
    dup = pd.concat([PAIRED, PAIRED.iloc[[0]]], ignore_index=True)
    with pytest.raises(StrataError, match="share their variant keys"):
        summarize(_write(tmp_path, dup), str(tmp_path / "s.csv"), str(tmp_path / "s.md"))



def test_study_metrics_names_and_undefined_values():
    st = summary_stats(PAIRED, baseline="random")
    m = study_metrics(st)
    row = st.set_index(["curation", "metric"]).loc[("hkmeans", "map_at_r")]
    assert m["hkmeans.map_at_r.sd"] == pytest.approx(row["sd"])
    assert m["hkmeans.map_at_r.diff_ci95"] == pytest.approx(row["diff_ci95_high"] - row["diff_mean"])
    assert m["none.knn_accuracy.n"] == 1 and "none.knn_accuracy.sd" not in m  # one seed: no sd, no interval
    assert m["none.knn_accuracy.diff_mean"] == pytest.approx(0.61 - 0.50) and "none.knn_accuracy.p_value" not in m
    assert not any(k.startswith("random.") and ".diff_" in k for k in m)  # the baseline has no difference
    two = pd.concat([PAIRED, PAIRED.assign(ssl="t")], ignore_index=True)  # two (dataset, ssl) pairs: prefixed
    assert set(study_metrics(summary_stats(two, baseline="random"))) == {f"d.{ssl}.{k}" for ssl in "st" for k in m}

def test_log_summary_to_mlflow(tmp_path):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("study-x", artifact_location=(tmp_path / "artifacts").as_uri())
    run_ids = {}
    for curation, knn in (("random", 0.50), ("hkmeans", 0.58)):
        run = client.create_run(exp_id, tags={"strata.kind": "variant", "strata.key": f"variant:{curation}"})
        params = {"dataset.name": "d", "ssl.name": "s", "curation.name": curation, "seed": "0"}
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                         metrics=[Metric("knn_accuracy", knn, 0, 0), Metric("map_at_r", 0.2, 0, 0)])
        run_ids[curation] = run.info.run_id

    frame = _frame([("random", 0, 0.50, 0.2), ("random", 1, 0.54, 0.2),
                    ("hkmeans", 0, 0.58, 0.2), ("hkmeans", 1, 0.60, 0.3)])
    st = summary_stats(frame, baseline="random")
    report = tmp_path / "summary.md"
    report.write_text("# summary\n")
    for _ in range(2):  # a second call finds the same study run
        log_summary_to_mlflow(uri, "study-x", st, [str(report), str(tmp_path / "missing.csv")], baseline="random")

    studies = client.search_runs([exp_id], filter_string="tags.`strata.kind` = 'study'")
    assert len(studies) == 1 and studies[0].data.tags["strata.key"] == "study:study-x"
    m = studies[0].data.metrics
    row = st.set_index(["curation", "metric"]).loc[("hkmeans", "knn_accuracy")]
    assert m["hkmeans.knn_accuracy.mean"] == pytest.approx(row["mean"])
    assert m["hkmeans.knn_accuracy.ci95"] == pytest.approx(row["ci95_high"] - row["mean"])
    assert m["hkmeans.knn_accuracy.n"] == 2 and m["random.map_at_r.sd"] == 0.0
    assert m["hkmeans.knn_accuracy.diff_mean"] == pytest.approx(row["diff_mean"])
    assert "random.knn_accuracy.diff_mean" not in m
    assert [a.path for a in client.list_artifacts(studies[0].info.run_id, "summary")] == ["summary/summary.md"]

    hk = client.get_run(run_ids["hkmeans"]).data.metrics
    assert hk["knn_accuracy.diff_vs_random"] == pytest.approx(0.58 - 0.50)
    assert hk["map_at_r.diff_vs_random"] == pytest.approx(0.0)
    assert client.get_run(run_ids["random"]).data.metrics["knn_accuracy.diff_vs_random"] == 0.0
