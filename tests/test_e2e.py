"""End to end: the real `snakemake --cores 2` on configs/test.yaml, then the results and the MLflow store."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, snakemake

from workflow.report_layout import CATEGORY

pytestmark = pytest.mark.e2e


def test_summary_has_every_variant(study: Path) -> None:
    df = pd.read_csv(study / "results" / "strata-test" / "summary.csv")
    assert len(df) == 3 * 2  # curations x seeds
    assert set(df["curation"]) == {"none", "random", "hkmeans"}
    assert set(df["seed"]) == {0, 1}
    for metric in ["knn_accuracy", "linear_accuracy", "recall_at_1", "map_at_r", "cluster_acc", "cluster_nmi",
                   "cluster_ari"]:
        assert df[metric].between(-1, 1).all() and df[metric].notna().all(), metric
    # Learned embeddings beat chance (10 classes) on the kNN probe.
    assert df["knn_accuracy"].mean() > 0.15
    md = (study / "results" / "strata-test" / "summary.md").read_text()
    for name in ("none", "random", "hkmeans", "hkmeans − random", "knn_accuracy", "map_at_r", "cluster_nmi"):
        assert name in md


def test_verdict_json(study: Path) -> None:
    from workflow.verdict import VERDICTS, classify

    results = study / "results" / "strata-test"
    verdict = json.loads((results / "verdict.json").read_text())
    assert (verdict["primary"], verdict["baseline"], verdict["rope"], verdict["n_seeds"]) == (
        "knn_accuracy", "random", 0.01, 2)
    comps = {c["curation"]: c for c in verdict["comparisons"]}
    assert set(comps) == {"hkmeans", "none"}
    stats = pd.read_csv(results / "summary_stats.csv").set_index(["curation", "metric"])
    for name, c in comps.items():
        assert {"dataset", "ssl", "curation", "diff_mean", "ci_low", "ci_high", "p_value", "prob_improvement",
                "verdict"} <= set(c)
        assert (c["dataset"], c["ssl"], c["baseline"]) == ("tiny", "simclr", "random") and c["verdict"] in VERDICTS
        row = stats.loc[(name, "knn_accuracy")]  # the same paired interval as the statistics table
        assert c["diff_mean"] == pytest.approx(row["diff_mean"], abs=1e-5)
        assert c["ci_low"] == pytest.approx(row["diff_ci95_low"], abs=1e-5)
        assert c["verdict"] == classify(c["ci_low"], c["ci_high"], 0.01)
        assert c["prob_improvement"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    for name in ("forest.png", "summary.png"):
        assert (results / name).read_bytes()[:4] == b"\x89PNG"
    assert not (results / "curve.png").exists()  # no size sweep in this study
    assert (results / "summary.md").read_text().startswith("# Strata study summary\n\n```\nVerdict on knn_accuracy")


def test_report_opens_with_the_verdict(study: Path) -> None:
    report = study / "results" / "strata-test" / "report.html"
    result = snakemake(study, "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text()
    assert "Verdict on knn_accuracy" in html and "hkmeans vs random" in html
    assert json.dumps(CATEGORY["verdict"]) in html and "forest.png" in html  # the first category
    # The comparative figures: every curation of a seed side by side, loss overlays, kept per class.
    compare = study / "results" / "strata-test" / "tiny" / "compare"
    for path in ("simclr/seed0/embeddings.png", "simclr/losses/hkmeans.png", "simclr/losses/none.png",
                 "kept_per_class/seed1.png"):
        assert (compare / path).read_bytes()[:4] == b"\x89PNG", path


def test_curated_subsets(study: Path) -> None:
    root = study / "results" / "strata-test" / "tiny" / "curate"
    pool = pq.read_table(study / "results" / "strata-test" / "tiny" / "data" / "pool.parquet")
    pool_ids = set(pool.column("id").to_pylist())
    for method in ("random", "hkmeans"):
        sel = pq.read_table(root / method / "seed0" / "selection.parquet")
        ids = sel.column("id").to_pylist()
        assert len(ids) == len(set(ids)) == 200 and set(ids) <= pool_ids
    stats = json.loads((root / "hkmeans" / "seed0" / "stats.json").read_text())
    assert stats["n_clusters"] == [20, 5]
    # The label diagnostics describe the pool and the selection. (Whether curation flattens the long tail
    # is tested on raw features in test_cli; here hkmeans clusters the embeddings of a 40-step encoder.)
    def counts(labels: list[int]) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(labels).items())}

    assert stats["labels_before"]["histogram"] == counts(pool.column("label").to_pylist())
    selected = pq.read_table(root / "hkmeans" / "seed0" / "selection.parquet")
    assert stats["labels_after"]["histogram"] == counts(selected.column("label").to_pylist())
    # hkmeans curated on the embeddings of the encoder pretrained on the whole pool (the `none` job).
    embed = study / "results" / "strata-test" / "tiny" / "embed"
    assert (embed / "none" / "simclr" / "seed0" / "pool.parquet").exists()


def test_mlflow_store(study: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("strata-test")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    variants = [r for r in runs if r.data.tags.get("strata.kind") == "variant"]
    stages = [r for r in runs if r.data.tags.get("strata.kind") == "stage"]
    assert len(variants) == 6
    study_run = next(r for r in runs if r.data.tags.get("strata.kind") == "study")
    assert "Verdict on knn_accuracy" in study_run.data.tags["mlflow.note.content"]  # the run's description
    for run in variants:
        params = run.data.params
        assert {"dataset.name", "curation.name", "curation.method", "ssl.method", "seed", "config_hash"} <= set(params)
        for metric in ("knn_accuracy", "recall_at_1", "map_at_r", "cluster_acc", "cluster_nmi", "cluster_ari"):
            assert metric in run.data.metrics
    ids = {r.info.run_id for r in runs}
    assert all(r.data.tags["mlflow.parentRunId"] in ids for r in stages)
    by_stage = {}
    for run in stages:
        by_stage.setdefault(run.data.tags["strata.stage"], []).append(run)
    counts = {k: len(v) for k, v in by_stage.items()}
    assert counts == {"data": 1, "curate": 6, "pretrain": 6, "embed_pool": 2, "embed": 6, "evaluate": 6,
                      "plot_training": 6, "plot_embeddings": 6}
    # The per-variant figures are artifacts of stage runs nested under their variant.
    variant_ids = {r.info.run_id for r in variants}
    for stage in ("plot_training", "plot_embeddings"):
        for run in by_stage[stage]:
            assert run.data.tags["mlflow.parentRunId"] in variant_ids
            assert any(a.path.endswith(".png") for a in client.list_artifacts(run.info.run_id, "outputs"))
    pretrain = by_stage["pretrain"][0]
    assert len(client.get_metric_history(pretrain.info.run_id, "loss")) > 1
    job_files = [a.path for a in client.list_artifacts(pretrain.info.run_id, "job")]
    assert any(p.endswith(".log") for p in job_files) and any(p.endswith(".tsv") for p in job_files)
    outputs = [a.path for a in client.list_artifacts(pretrain.info.run_id, "outputs")]
    assert any(p.endswith("encoder.safetensors") for p in outputs)
    assert any(k.startswith("input.") for k in pretrain.data.params)  # lineage: input digests


def test_second_invocation_has_nothing_to_do(study: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("strata-test")
    before = len(client.search_runs([exp.experiment_id], max_results=1000))
    result = snakemake(study)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == before


def test_invalid_config_stops_before_running(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "test.yaml").read_text().replace("steps: 40", "steps: 40\n    stpes: 3"))
    result = snakemake(tmp_path, configfile=bad)
    assert result.returncode != 0
    assert "ssl.simclr" in result.stderr and "stpes" in result.stderr and str(bad) in result.stderr
    assert not (tmp_path / "results").exists()
