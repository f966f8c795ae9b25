"""What a study looks like in MLflow: datasets, the encoder as a model, source tags, real times, the variant's
loss history and figures, curations linked to their variants, short run names and only the params that apply."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from workflow.tracking import SPOOL_ENV, StageRecord, TrackingSpec, dataset_entry, flush_spool, log_stage


def _table(path: Path, rows: int, dim: int = 8) -> Path:
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": np.arange(rows), "label": rng.integers(0, 3, rows),
                  "vector": list(rng.normal(size=(rows, dim)).astype("float32"))}).to_parquet(path)
    return path


def _encoder(path: Path) -> Path:
    from workflow.pretrain.models import build_encoder, save_encoder

    spec = {"input_kind": "vector", "input_dim": 8, "embedding_dim": 4}
    save_encoder(build_encoder(spec), spec, str(path))
    return path


def _variant(ssl: str) -> dict[str, Any]:
    params = {"dataset": {"name": "d"}, "curation": {"name": "random", "method": "random"},
              "ssl": {"name": ssl, "method": ssl}, "seed": 0}
    return {"parent_kind": "variant", "parent_key": f"variant:d/random/{ssl}/seed0", "parent_name":
            f"random/{ssl}/s0 · d", "parent_params": params}


def _spec(uri: str, job: str, parent: dict[str, Any], links: list[dict[str, Any]] | None = None) -> TrackingSpec:
    return TrackingSpec(uri=uri, experiment="e", job=job, links=links or [], **parent)


def _log_chain(tmp_path: Path, uri: str) -> dict[str, Path]:
    """The records of a curate job shared by two variants, a pretrain job and a plot job of the first variant."""
    files = {"pool": _table(tmp_path / "pool.parquet", 40), "selection": _table(tmp_path / "selection.parquet", 20),
             "encoder": _encoder(tmp_path / "encoder.safetensors"), "figure": tmp_path / "training.png"}
    from PIL import Image

    Image.new("RGB", (8, 6), "white").save(files["figure"])
    simclr, byol = _variant("simclr"), _variant("byol")
    curate = StageRecord(stage="curate", params={"method": "random"}, start_ms=1_000_000, end_ms=1_003_000)
    curate.add_datasets([(str(files["pool"]), "pool"), (str(files["selection"]), "selection")])
    log_stage(_spec(uri, "curate/d/random/seed0", simclr, [byol]), curate)
    pretrain = StageRecord(stage="pretrain", params={"method": "simclr"}, start_ms=1_004_000, end_ms=1_129_000,
                           series=[("loss", 2.0, 10), ("loss", 1.5, 20), ("loss", 1.0, 30)], share_series=True,
                           models=[{"path": str(files["encoder"]), "name": "encoder"}])
    pretrain.add_datasets([(str(files["selection"]), "training")])
    log_stage(_spec(uri, "pretrain/d/random/simclr/seed0", simclr), pretrain)
    plot = StageRecord(stage="plot_training", start_ms=1_130_000, end_ms=1_131_000,
                       parent_artifacts=[str(files["figure"])])
    log_stage(_spec(uri, "plot_training/d/random/simclr/seed0", simclr), plot, parent_metrics={"knn": 0.5})
    return files


def _runs(uri: str) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e")
    return {r.data.tags["strata.key"]: r for r in client.search_runs([exp.experiment_id])}


def test_datasets_model_times_and_links(tmp_path: Path) -> None:
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from workflow.pretrain.models import load_encoder

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    files = _log_chain(tmp_path, uri)
    client = MlflowClient(uri)
    runs = _runs(uri)
    simclr, byol = runs["variant:d/random/simclr/seed0"], runs["variant:d/random/byol/seed0"]
    curate, pretrain = runs["curate/d/random/seed0"], runs["pretrain/d/random/simclr/seed0"]

    # Real times: the stage runs last as long as their jobs, the variant from its first to its last job.
    assert (pretrain.info.start_time, pretrain.info.end_time) == (1_004_000, 1_129_000)
    assert (simclr.info.start_time, simclr.info.end_time) == (1_000_000, 1_131_000)
    # Short names with the seed; the curation under the first variant and linked from the other.
    assert pretrain.info.run_name == "pretrain random/simclr/s0" and curate.info.run_name == "curate random/s0"
    assert curate.data.tags["mlflow.parentRunId"] == simclr.info.run_id
    assert byol.data.tags["strata.curate_run"] == curate.info.run_id
    # MLflow's own source tags.
    tags = pretrain.data.tags
    assert tags["mlflow.source.name"] == "strata pretrain" and tags["mlflow.source.type"] == "LOCAL"
    if tags["strata.code_version"] not in ("unknown",) and not tags["strata.code_version"].startswith("strata-"):
        assert tags["strata.code_version"].startswith(tags["mlflow.source.git.commit"])
    assert tags["strata.machine"].endswith(f"{os.cpu_count()} logical cores, {platform.system()} {platform.release()}")

    # Datasets: digest, source, schema and row count, on the stage and its variants, without the rows.
    def inputs(run: Any) -> dict[tuple[str, str], Any]:
        found = client.get_run(run.info.run_id).inputs.dataset_inputs
        return {(d.dataset.name, next(t.value for t in d.tags if t.key == "mlflow.data.context")): d.dataset
                for d in found}

    sel = dataset_entry(files["selection"], "selection")
    assert set(inputs(curate)) == {(dataset_entry(files["pool"], "pool")["name"], "pool"), (sel["name"], "selection")}
    dataset = inputs(curate)[(sel["name"], "selection")]
    assert dataset.digest == sel["digest"] and str(files["selection"].resolve()) in dataset.source
    schema = json.loads(dataset.schema)["mlflow_colspec"]
    assert [c["name"] for c in schema] == ["id", "label", "vector"] and schema[2]["type"] == "array"
    assert json.loads(dataset.profile)["num_rows"] == 20
    assert (sel["name"], "selection") in inputs(simclr) and (sel["name"], "selection") in inputs(byol)
    assert (sel["name"], "training") in inputs(pretrain)

    # The encoder: a logged model of the pretrain run and an output of its variant, loaded back by MLflow.
    model_ids = [o.model_id for o in client.get_run(simclr.info.run_id).outputs.model_outputs]
    assert len(model_ids) == 1
    assert client.get_logged_model(model_ids[0]).source_run_id == pretrain.info.run_id
    with _use_tracking_uri(uri):
        loaded = mlflow.pytorch.load_model(f"models:/{model_ids[0]}")
    original, _ = load_encoder(str(files["encoder"]))
    x = torch.randn(5, 8)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), original(x))

    # The variant carries the loss history, its figures and the final metrics.
    assert [m.value for m in client.get_metric_history(simclr.info.run_id, "loss")] == [2.0, 1.5, 1.0]
    assert [a.path for a in client.list_artifacts(simclr.info.run_id, "figures")] == ["figures/training.png"]
    assert client.list_artifacts(simclr.info.run_id, "images")  # also an image: the chart view shows it per run
    assert simclr.data.metrics["knn"] == 0.5
    # ... and the model view shows the variant's final metrics.
    assert {m.key: m.value for m in client.get_logged_model(model_ids[0]).metrics}["knn"] == 0.5


def test_a_rerun_replaces_the_stage_run_and_its_model(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _log_chain(tmp_path, uri)
    _log_chain(tmp_path, uri)
    client = MlflowClient(uri)
    runs = _runs(uri)
    exp_id = runs["pretrain/d/random/simclr/seed0"].info.experiment_id
    (model,) = client.search_logged_models([exp_id])
    assert {m.key for m in model.metrics} >= {"knn"}  # the variant's metrics went to the current model
    assert len([r for r in runs.values() if r.data.tags.get("strata.kind") == "variant"]) == 2


def test_spooled_records_keep_the_jobs_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written at the run's end still show when their jobs ran (not 24-107 ms at flush time)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(SPOOL_ENV, str(tmp_path / "spool"))
    spec = _spec(uri, "pretrain/d/random/simclr/seed0", _variant("simclr"))
    log_stage(spec, StageRecord(stage="pretrain", start_ms=5_000, end_ms=130_000))
    log_stage(_spec(uri, "evaluate/d/random/simclr/seed0", _variant("simclr")), StageRecord(stage="evaluate"))
    assert flush_spool(tmp_path / "spool") == 2
    runs = _runs(uri)
    run = runs["pretrain/d/random/simclr/seed0"]
    assert run.info.end_time - run.info.start_time == 125_000
    assert runs["variant:d/random/simclr/seed0"].info.start_time == 5_000  # its first job's start
    evaluate = runs["evaluate/d/random/simclr/seed0"].info
    assert evaluate.start_time <= evaluate.end_time  # defaults: the process's start, and the record's writing


def test_stage_params_are_those_that_apply(tmp_path: Path) -> None:
    """`strata curate` logs the curation's own keys, not every method's defaults."""
    from conftest import data_cli

    from workflow.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc, paths = data_cli({"kind": "blobs", "n_max": 30, "n_classes": 3, "dim": 4}, tmp_path / "data", "b")
    assert rc == 0
    spec = _spec(uri, "curate/b/random/seed0", _variant("simclr"))
    spec_file = tmp_path / "tracking.json"
    spec_file.write_text(json.dumps(spec.__dict__))
    assert main(["curate", "--params", '{"method": "random", "target_size": 10}', "--pool", str(paths["pool"]),
                 "--selection", str(tmp_path / "sel.parquet"), "--stats", str(tmp_path / "stats.json"),
                 "--tracking", str(spec_file)]) == 0
    params = _runs(uri)["curate/b/random/seed0"].data.params
    assert params["method"] == "random" and "n_clusters" not in params and "n_resamples" not in params
