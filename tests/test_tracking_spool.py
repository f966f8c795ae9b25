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


def _spool_variant_records(spool: Path, uri: str, monkeypatch: pytest.MonkeyPatch, diff_mean: float = 0.125,
                           files: tuple[str, ...] = ()) -> None:
    """A spooled study summary first, then two variants' evaluate records (as summarize and evaluate spool them)."""
    from workflow.tracking import log_study

    monkeypatch.setenv(SPOOL_ENV, str(spool))
    log_study(uri, "spool", {"hk.knn_accuracy.diff_mean": diff_mean}, list(files), note="**better**",
              baseline="random", compared=["knn_accuracy"])
    for curation, knn in (("random", 0.5), ("hk", 0.625)):
        params = {"dataset": {"name": "d"}, "curation": {"name": curation}, "ssl": {"name": "s"}, "seed": 1}
        spec = TrackingSpec(uri=uri, experiment="spool", parent_kind="variant", parent_key=f"v:{curation}",
                            parent_name=curation, parent_params=params, job=f"evaluate/d/{curation}/s/seed1")
        log_stage(spec, StageRecord(stage="evaluate"), parent_metrics={"knn_accuracy": knn})


def test_a_spooled_study_summary_is_logged_after_the_variant_runs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """summarize spools the study summary; the flush logs it last, so its per-variant differences find the
    variant runs even when it was spooled first."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = tmp_path / "spool"
    summary = tmp_path / "summary.md"
    summary.write_text("# summary\n")
    _spool_variant_records(spool, uri, monkeypatch, diff_mean=0.1, files=(str(summary),))
    assert len(list(spool.glob("*.json"))) == 3 and not (tmp_path / "mlflow.db").exists()

    assert flush_spool(spool) == 3
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("spool")
    runs = {r.data.tags["strata.key"]: r for r in client.search_runs([exp.experiment_id])}
    study = runs["study:spool"]
    assert study.data.metrics["hk.knn_accuracy.diff_mean"] == 0.1
    assert study.data.tags["mlflow.note.content"] == "**better**"
    assert [a.path for a in client.list_artifacts(study.info.run_id, "summary")] == ["summary/summary.md"]
    assert runs["v:hk"].data.metrics["knn_accuracy.diff_vs_random"] == pytest.approx(0.125)


def test_the_flusher_logs_stage_records_during_the_run_and_leaves_the_summary_to_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from mlflow.tracking import MlflowClient

    from workflow.spool_flusher import SpoolFlusher

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = tmp_path / "spool"
    _spool_variant_records(spool, uri, monkeypatch)
    flusher = SpoolFlusher(spool, interval=0.05)
    flusher.start()
    deadline = time.monotonic() + 120
    while len(list(spool.glob("*.json"))) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    flusher.stop()
    assert flusher.error is None and flusher.logged == 2 and not flusher.is_alive()
    assert os.environ[SPOOL_ENV] == str(spool)  # jobs started meanwhile still spool
    [left] = spool.glob("*.json")
    assert '"study"' in left.read_text()  # the summary waits for the final flush
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("spool")
    keys = {r.data.tags["strata.key"] for r in client.search_runs([exp.experiment_id])}
    assert {"v:random", "v:hk", "evaluate/d/hk/s/seed1"} <= keys and "study:spool" not in keys

    assert flush_spool(spool) == 1 and not list(spool.glob("*.json"))
    runs = {r.data.tags["strata.key"]: r for r in client.search_runs([exp.experiment_id])}
    assert runs["study:spool"].data.metrics["hk.knn_accuracy.diff_mean"] == 0.125


def test_during_a_run_records_that_log_a_model_wait_and_a_halt_stops_between_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = tmp_path / "spool"
    _spool_variant_records(spool, uri, monkeypatch)
    spec = TrackingSpec(uri=uri, experiment="spool", parent_kind="variant", parent_key="v:hk", parent_name="hk",
                        parent_params={}, job="pretrain/d/hk/s/seed1")
    log_stage(spec, StageRecord(stage="pretrain", models=[{"path": str(tmp_path / "encoder.safetensors")}]))
    halted = threading.Event()
    halted.set()
    assert flush_spool(spool, during_run=True, halt=halted) == 0 and len(list(spool.glob("*.json"))) == 4
    assert flush_spool(spool, during_run=True) == 2  # the two evaluate records
    left = sorted(path.read_text() for path in spool.glob("*.json"))
    assert len(left) == 2 and any('"study"' in t for t in left) and any('"models": [{' in t for t in left)


def test_the_flusher_stops_at_a_store_error_and_keeps_the_records(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from workflow.errors import StrataError
    from workflow.spool_flusher import SpoolFlusher

    (tmp_path / "blocker").write_text("a file, not a folder")
    spool = tmp_path / "spool"
    _spool_variant_records(spool, f"sqlite:///{tmp_path / 'blocker' / 'mlflow.db'}", monkeypatch)
    flusher = SpoolFlusher(spool, interval=0.05)
    flusher.start()
    flusher.join(timeout=120)
    assert not flusher.is_alive() and isinstance(flusher.error, StrataError) and flusher.logged == 0
    assert len(list(spool.glob("*.json"))) == 3  # nothing lost: the final flush tries them again
    flusher.stop()  # a stopped thread: returns at once
