"""The study-level MLflow writes, in the Snakemake main process: job files attached to stage runs
(:func:`attach_job_files`) and the study summary (:func:`log_study`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workflow.distributed import file_lock
from workflow.tracking import (
    KIND_TAG,
    _lock_path,
    bound_http_retries,
    check_tracking_uri,
    experiment_id,
)
from workflow.tracking_store import log_metrics, parent_run


def attach_job_files(uri: str, experiment: str) -> int:
    """Attach the Snakemake log and benchmark files to stage runs that wait for them.

    Snakemake writes a job's benchmark file after the job ends, so the job itself cannot log it;
    the workflow's ``onsuccess``/``onerror`` handlers call this once, in the main process.
    Returns the number of runs updated.
    """
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return 0  # no job logged anything (e.g. the run failed on its config): do not create the database
    check_tracking_uri(uri)  # an unreachable store fails in seconds, not after MLflow's retries
    bound_http_retries()
    with file_lock(_lock_path(uri)):
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return 0
        runs = client.search_runs([exp.experiment_id], filter_string="tags.`strata.pending_files` = '1'",
                                  max_results=5000)
        for run in runs:
            for tag in ("strata.log_file", "strata.benchmark_file"):
                path = run.data.tags.get(tag)
                if path and Path(path).is_file():
                    client.log_artifact(run.info.run_id, path, artifact_path="job")
            client.set_tag(run.info.run_id, "strata.pending_files", "0")
        return len(runs)


def log_study(uri: str, experiment: str, metrics: dict[str, float], files: Sequence[str] = (), *,
              note: str | None = None, baseline: str | None = None, compared: Sequence[str] = ()) -> None:
    """Log a study's summary: its study run, and every variant run's differences to its baseline variant.

    Under the tracking store's ``flock``:

    * the **study run** (tags ``strata.kind=study``, ``strata.key=study:<experiment>``) is found or created;
      ``metrics`` are logged on it, ``files`` as artifacts under ``summary/`` (missing files are skipped), and
      ``note`` (Markdown) becomes its description (tag ``mlflow.note.content``);
    * with a ``baseline`` curation, every **variant run** (tag ``strata.kind=variant``, params ``dataset.name``,
      ``ssl.name``, ``curation.name``, ``seed``) gets ``{metric}.diff_vs_{baseline}`` = its metric minus the
      metric of the baseline variant run with the same dataset, ssl and seed (the most recently started one if
      there are several), for each metric of ``compared`` both runs have; non-finite differences are skipped.

    Args:
        uri: MLflow tracking URI (e.g. ``sqlite:///results/mlflow.db``).
        experiment: Experiment name (the config's ``study``).
        metrics: The study run's metrics (:func:`workflow.summarize.study_metrics`).
        files: Summary files to attach.
        note: Markdown description of the study run (:func:`workflow.verdict.verdict_markdown`).
        baseline: The baseline curation of the per-variant differences; None logs none.
        compared: The metrics to difference.
    """
    import math

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    study = {"parent_kind": "study", "parent_key": f"study:{experiment}", "parent_name": "study summary",
             "parent_params": {}}
    now = int(time.time() * 1000)
    with file_lock(_lock_path(uri)):
        client = MlflowClient(uri)
        exp_id = experiment_id(client, experiment, uri)
        study_id = parent_run(client, exp_id, study, now)
        log_metrics(client, study_id, [Metric(k, float(v), now, 0) for k, v in metrics.items()])
        if note is not None:
            client.set_tag(study_id, "mlflow.note.content", note)
        for path in files:
            if Path(path).is_file():
                client.log_artifact(study_id, str(path), artifact_path="summary")
        if baseline is None:
            return
        variants = client.search_runs([exp_id], filter_string=f"tags.`{KIND_TAG}` = 'variant'", max_results=50000)
        base_runs: dict[tuple[str | None, str | None, str | None], Any] = {}
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
                     for m in compared if m in run.data.metrics and m in base.data.metrics}
            log_metrics(client, run.info.run_id,
                         [Metric(k, float(v), now, 0) for k, v in diffs.items() if math.isfinite(v)])
