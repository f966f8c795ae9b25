"""Frozen-feature baselines (issue 18, item 4): an ssl entry with ``method: none`` evaluates a feature space as it
is, once per seed, beside the trained encoders, and is never compared between curations.

Config checks (in process, and through the real Snakefile: exit 2, one message, nothing created), the summary and
verdict on real metrics files, and one small real Snakemake study with a trained and a frozen entry.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import assert_config_refused, snakemake
from metric_helpers import brute_force_knn

from workflow.config import check_study, ssl_for_dataset, validate
from workflow.errors import StrataError
from workflow.frozen import FROZEN_CURATION, frozen_label
from workflow.summarize import summarize, variant_record

BLOBS = {"kind": "blobs", "n_max": 40, "dim": 8, "n_classes": 4, "probe_train_per_class": 10,
         "probe_test_per_class": 8}
STUDY: dict[str, Any] = {
    "study": "frozen", "seeds": [0, 1],
    "datasets": {"tiny": BLOBS},
    "curations": {"random": {"method": "random", "target_size": 60},
                  "kmeans": {"method": "kmeans", "target_size": 60, "n_clusters": [6], "n_iters": 5}},
    "ssl": {"simclr": {"method": "simclr", "steps": 4, "batch_size": 16, "embedding_dim": 8},
            "raw_feats": {"method": "none", "features": "raw"}},
    "evaluation": {"cluster_n_init": 1, "linear_probe": False, "knn_k": 5, "knn_temperature": 0.1},
    "report": {"figures": False},
    "summary": {"baseline": "random"},
}


def _study(**ssl_features: Any) -> dict[str, Any]:
    config = copy.deepcopy(STUDY)
    for name, features in ssl_features.items():
        config["ssl"][name] = {"method": "none", "features": features}
    return config


def _error(config: dict[str, Any]) -> str:
    with pytest.raises(StrataError) as info:
        check_study(config, "study.yaml")
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def test_a_frozen_entry_keeps_only_its_method_and_space() -> None:
    """Training keys do not apply to method none (x-applies-to): not in its parameters, hash or MLflow params."""
    cfg = validate({"method": "none", "features": "raw", "steps": 10}, "ssl")
    assert ssl_for_dataset(cfg, BLOBS) == {"method": "none", "features": "raw"}
    trained = ssl_for_dataset(validate({"method": "simclr"}, "ssl"), BLOBS)
    assert "features" not in trained and trained["steps"] == 1500
    from workflow.pretrain.methods import METHODS

    assert "none" not in METHODS


@pytest.mark.parametrize(("features", "words"), [
    ("simclr", ["ssl.bad.features", "'simclr'", "ssl entry", "Fix:"]),
    ({"table": "pool.parquet"}, ["ssl.bad.features", "probe_train", "probe_test", "Fix:"]),
    ({"table": "pool.parquet", "probe_train": "p.parquet"}, ["ssl.bad.features", "both"]),
    ({"backbone": "no/such/model"}, ["ssl.bad.features.backbone", "does not exist"]),
], ids=["ssl-space", "table-without-probes", "table-one-probe", "missing-backbone"])
def test_bad_frozen_features_are_rejected(features: Any, words: list[str]) -> None:
    message = _error(_study(bad=features))
    for word in words:
        assert word in message, (word, message)


def test_method_none_needs_features_and_other_entries_may_not_use_it() -> None:
    config = _study()
    config["ssl"]["bad"] = {"method": "none"}
    assert "needs `features`" in _error(config)
    config = _study()
    config["curations"]["kmeans"]["features"] = "raw_feats"
    message = _error(config)
    assert "curations.kmeans.features" in message and "frozen" in message
    config = _study()
    config["curations"][FROZEN_CURATION] = {"method": "random", "target_size": 5}
    assert f"curations.{FROZEN_CURATION}" in _error(config) and "reserved" in _error(config)


def test_a_good_frozen_study_passes() -> None:
    config = check_study(_study(), "study.yaml")
    assert frozen_label(config["ssl"]["raw_feats"]) == "frozen features: raw"


@pytest.mark.parametrize(("features", "words"), [
    ("simclr", ["ssl.frozen_bad.features", "ssl entry"]),
    ("TABLE", ["ssl.frozen_bad.features", "probe_train", "probe_test"]),
], ids=["ssl-space", "table-without-probes"])
def test_snakemake_rejects_bad_frozen_features(features: Any, words: list[str], tmp_path: Path) -> None:
    """Through the real Snakefile: exit 2, one `strata: invalid config:` line naming the key, nothing created."""
    if features == "TABLE":
        table = tmp_path / "emb.npy"
        np.save(table, np.zeros((3, 2), dtype=np.float32))
        features = {"table": str(table)}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(frozen_bad=features)))
    assert_config_refused(path, tmp_path / "work", words, "-n")


# --------------------------------------------------------------------------------------------------
# Summary and verdict
# --------------------------------------------------------------------------------------------------


def _metrics_files(tmp: Path, frozen_curations: list[str]) -> list[str]:
    """metrics.json files: simclr under random and kmeans (kmeans clearly ahead), and the frozen entry under
    ``frozen_curations`` with the same values for every curation (as frozen features give)."""
    rng = np.random.default_rng(0)
    paths = []
    for seed in range(4):
        rows = [("random", "simclr", 0.60 + 0.01 * rng.standard_normal()),
                ("kmeans", "simclr", 0.70 + 0.01 * rng.standard_normal())]
        frozen_value = 0.50 + 0.01 * rng.standard_normal()
        rows += [(c, "raw_feats", frozen_value) for c in frozen_curations]
        for curation, ssl, knn in rows:
            path = tmp / f"{curation}-{ssl}-{seed}.json"
            metrics = {"knn_accuracy": knn, "cluster_nmi": knn / 2}
            path.write_text(json.dumps(variant_record("tiny", curation, ssl, seed, metrics)))
            paths.append(str(path))
    return paths


@pytest.mark.parametrize("frozen_curations", [[FROZEN_CURATION], ["random", "kmeans"]],
                         ids=["once-per-seed", "grid"])
def test_frozen_entries_are_reference_rows_never_comparisons(frozen_curations: list[str], tmp_path: Path) -> None:
    """Once per seed (the workflow) or across the curation grid (any other producer): no comparison inside a
    frozen entry (it would be `equivalent` by construction), a reference row in summary.md."""
    paths = _metrics_files(tmp_path, frozen_curations)
    out = {k: str(tmp_path / f"summary{k}") for k in (".csv", ".md", "_stats.csv", ".json")}
    curations = {"random": {"method": "random", "target_size": 60}, "kmeans": {"method": "kmeans", "target_size": 60}}
    summarize(paths, out[".csv"], out[".md"], stats_path=out["_stats.csv"], verdict_path=out[".json"],
              summary={"baseline": "random"}, curations=curations,
              frozen={"raw_feats": "frozen features: raw"})
    verdict = json.loads(Path(out[".json"]).read_text())
    assert [(c["ssl"], c["curation"]) for c in verdict["comparisons"]] == [("simclr", "kmeans")]
    assert verdict["comparisons"][0]["verdict"] == "better"
    import pandas as pd

    stats = pd.read_csv(out["_stats.csv"], keep_default_na=False)
    frozen = stats[stats["ssl"] == "raw_feats"]
    assert len(frozen) > 0 and (frozen["baseline"] == "").all() and (frozen["diff_n"] == 0).all()
    md = Path(out[".md"]).read_text()
    assert re.search(r"\| \*frozen features: raw\* \(raw_feats, reference\) \| 4 \| 0\.5\d\d ± ", md), md
    assert "## tiny · raw_feats" not in md  # shown beside the trained encoder, not as a section of its own
    assert "raw_feats" not in md.split("## tiny · simclr")[1].split("Paired difference")[1].split("## Every")[0]


# --------------------------------------------------------------------------------------------------
# A real study
# --------------------------------------------------------------------------------------------------


def _knn(train: Any, test: Any, k: int, temperature: float) -> float:
    """Weighted kNN as docs/metrics.md defines it, on two probe tables (metric_helpers.brute_force_knn)."""
    x_tr, x_te = (np.stack(t.column("vector").to_numpy(zero_copy_only=False)) for t in (train, test))
    y_tr, y_te = (np.asarray(t.column("label").to_numpy()) for t in (train, test))
    return brute_force_knn(x_tr, y_tr, x_te, y_te, k, temperature)


def _outputs(work: Path, name: str) -> list[Path]:
    """The workflow's files called ``name`` under results/ (results/<study>/ or results/), not MLflow's copies."""
    return [p for p in work.glob(f"results/**/{name}") if "mlartifacts" not in p.parts]


def _planned(summary: str, rule: str) -> list[str]:
    """The output files of a rule's jobs in the plan (`snakemake --summary`: output_file, date, rule, ...)."""
    rows = (line.split("\t") for line in summary.splitlines())
    return [row[0] for row in rows if len(row) > 2 and row[2] == rule]


@pytest.mark.e2e
def test_a_study_with_a_frozen_raw_entry(tmp_path: Path) -> None:
    """mnist1d-lt (raw kNN well below 1, so the check below means something), one seed, no figures: ~1 min."""
    config = copy.deepcopy(STUDY)
    config["seeds"] = [0]
    config["datasets"] = {"tiny": {"kind": "mnist1d-lt", "n_max": 60, "imbalance_ratio": 10,
                                   "probe_train_per_class": 20, "probe_test_per_class": 10}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    work.mkdir()
    # The plan with two seeds and figures: the frozen entry is evaluated once per seed (not per curation) and
    # gets an embedding map, but no pretraining, embedding, training curves or comparative figures.
    plan = snakemake(work, "--summary", "--config", "seeds=[0,1]", "report={figures: true}", configfile=path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    text = plan.stdout + plan.stderr
    evaluated = sorted(f for f in _planned(text, "evaluate") if "/raw_feats/" in f)
    assert [f.split(f"/evaluate/{FROZEN_CURATION}/raw_feats/")[-1] for f in evaluated] == [
        "seed0/metrics.json", "seed1/metrics.json"], evaluated
    maps = [f for f in _planned(text, "plot_embeddings") if f.endswith(".png")]  # each job also saves map.parquet
    assert len(maps) == 6  # 2 curations x 2 seeds + frozen x 2 seeds
    for rule in ("pretrain", "embed_probes", "plot_training", "compare_embeddings", "compare_losses"):
        planned = _planned(text, rule)
        assert planned and not [f for f in planned if "raw_feats" in f], (rule, planned)
    result = snakemake(work, configfile=path)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    (verdict_path,) = _outputs(work, "verdict.json")
    (data,) = _outputs(work, "tiny/data")
    root = data.parent  # results/<study>/tiny (or results/tiny)
    assert not list(root.glob("pretrain/**/raw_feats")) and not list(root.glob("embed/**/raw_feats"))
    assert [p.parent.parent.parent.name for p in root.glob("evaluate/*/raw_feats/*/metrics.json")] == [
        FROZEN_CURATION]
    train, test = (pq.read_table(root / "data" / f"{split}.parquet") for split in ("probe_train", "probe_test"))
    for seed in (0,):
        record = json.loads((root / "evaluate" / FROZEN_CURATION / "raw_feats" / f"seed{seed}" /
                             "metrics.json").read_text())
        assert record["variant"] == {"dataset": "tiny", "curation": FROZEN_CURATION, "ssl": "raw_feats",
                                     "seed": seed}
        assert "curation" not in record  # no curation stats: the features were not curated
        expected = _knn(train, test, 5, 0.1)
        assert 0.1 < expected < 0.95  # raw signals: far from trivial, so the equality below means something
        assert record["metrics"]["knn_accuracy"] == pytest.approx(expected, abs=1e-9)
    verdict = json.loads(verdict_path.read_text())
    assert verdict["comparisons"] and all(c["ssl"] == "simclr" for c in verdict["comparisons"])
    (md,) = _outputs(work, "summary.md")
    assert "*frozen features: raw* (raw_feats, reference) | 1 |" in md.read_text()
    # MLflow: the frozen variant run records ssl.method none and the space, and no training keys.
    import mlflow

    (db,) = _outputs(work, "mlflow.db")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("frozen").experiment_id],
                              "params.`ssl.name` = 'raw_feats'")
    assert runs
    for run in runs:
        assert run.data.params["ssl.method"] == "none"
        assert run.data.params["ssl.feature_space"] == "raw"
        assert "ssl.steps" not in run.data.params and "curation.name" not in run.data.params


def test_frozen_probes_align_a_tables_probes_and_copy_the_labels(tmp_path: Path) -> None:
    """`strata frozen-probes` (the table case): a .npy of the probes in the table's space, in probe order, and a
    Parquet one in shuffled order both become evaluate-ready tables with the data set's ids and labels."""
    from conftest import data_cli

    from workflow.cli import main
    from workflow.tables import read_table

    rc, paths = data_cli(validate(dict(BLOBS), "dataset"), tmp_path / "data", "tiny")
    assert rc == 0
    probe = read_table(paths["probe_test"], require_labels=True)
    emb = np.random.default_rng(0).standard_normal((len(probe), 3)).astype(np.float32)
    npy = tmp_path / "probe_test.npy"
    np.save(npy, emb)
    order = np.random.default_rng(1).permutation(len(probe))
    import pyarrow as pa

    shuffled = tmp_path / "probe_test_shuffled.parquet"
    pq.write_table(pa.table({"id": probe.ids[order], "emb": pa.array(list(emb[order]), pa.list_(pa.float32()))}),
                   shuffled)
    for features in (npy, shuffled):
        out = tmp_path / f"out-{features.suffix[1:]}.parquet"
        assert main(["frozen-probes", "--table", str(npy), "--dim", "3", "--probe", str(paths["probe_test"]),
                     "--features", str(features), "--output", str(out),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
        table = read_table(out, require_labels=True)
        assert np.array_equal(table.ids, probe.ids) and np.array_equal(table.labels, probe.labels)
        assert np.array_equal(table.vectors, emb)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, emb[:-1])
    assert main(["frozen-probes", "--table", str(npy), "--probe", str(paths["probe_test"]), "--features",
                 str(wrong), "--output", str(tmp_path / "never.parquet")]) == 2
    assert not (tmp_path / "never.parquet").exists()
