"""Jobs of a local run spool their MLflow records (no MLflow import in the job); the run logs them at its end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow.tracking import SPOOL_ENV, StageRecord, TrackingSpec, flush_spool, log_stage


def test_a_spooled_record_is_logged_by_the_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = tmp_path / "spool"
    output = tmp_path / "out.txt"
    output.write_text("x")
    spec = TrackingSpec(uri=uri, experiment="spool", parent_kind="variant", parent_key="v:1", parent_name="v",
                        parent_params={"seed": 1}, job="pretrain/d/c/s/seed1")
    record = StageRecord(stage="pretrain", params={"lr": 0.1}, metrics={"compute_s": 1.5},
                         series=[("loss", 2.0, 1), ("loss", 1.0, 2)], artifacts=[str(output)])
    monkeypatch.setenv(SPOOL_ENV, str(spool))
    log_stage(spec, record, parent_metrics={"knn": 0.5})
    assert len(list(spool.glob("*.json"))) == 1 and not (tmp_path / "mlflow.db").exists()

    assert flush_spool(spool) == 1
    assert not list(spool.glob("*.json"))
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("spool")
    runs = {r.data.tags["strata.key"]: r for r in client.search_runs([exp.experiment_id])}
    stage = runs["pretrain/d/c/s/seed1"]
    assert stage.data.metrics["compute_s"] == 1.5 and stage.data.params["lr"] == "0.1"
    assert [m.value for m in client.get_metric_history(stage.info.run_id, "loss")] == [2.0, 1.0]
    assert runs["v:1"].data.metrics["knn"] == 0.5
    assert flush_spool(spool) == 0 and flush_spool(tmp_path / "missing") == 0


def test_spooling_does_not_import_mlflow(tmp_path: Path) -> None:
    code = ("import sys; from workflow.tracking import StageRecord, TrackingSpec, log_stage; "
            "log_stage(TrackingSpec(uri='sqlite:///x.db', experiment='e', parent_kind='variant', parent_key='k', "
            "parent_name='n', parent_params={}, job='j'), StageRecord(stage='s')); "
            "assert 'mlflow' not in sys.modules, 'mlflow imported'")
    env = {**os.environ, SPOOL_ENV: str(tmp_path / "spool"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp_path)
    assert len(list((tmp_path / "spool").glob("*.json"))) == 1
