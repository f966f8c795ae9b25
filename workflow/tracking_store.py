"""The MLflow writes of one job's record (:func:`workflow.tracking.log_stage`): its stage run and what it gives
its variant or data set run.

Kept apart from :mod:`workflow.tracking` so that a job that only spools its record imports neither MLflow nor
torch. Everything here runs under the store's ``flock`` (the caller holds it).

* **Times**: the stage run gets the job's real start and end (:attr:`StageRecord.start_ms`/``end_ms``), not
  the moment its record was written; its parent starts with its first job and ends with its last.
* **Source**: MLflow's own source tags (``mlflow.source.name``/``type``/``git.commit``, and the remote URL and
  branch when known), so that the runs table's *Source* column names the command and the commit.
* **Datasets**: each table of :attr:`StageRecord.datasets` becomes an MLflow dataset input (name, digest of
  the Parquet file, source path, schema, row count), on the stage run and, when marked, on its parents; no
  rows are copied into MLflow.
* **Models**: each encoder of :attr:`StageRecord.models` becomes a logged model (``mlflow.pytorch``), loadable
  with ``mlflow.pytorch.load_model(f"models:/{model_id}")``, and an output of the stage run and its parents.
* **Parents**: a stage run nests under ``spec.parent_key``'s run; the runs of ``spec.links`` (the other
  variants that share a curation) are linked to it by the tag ``strata.<stage>_run``. Both get the record's
  parent metrics, step series (:attr:`StageRecord.share_series`, the loss history), figures
  (:attr:`StageRecord.parent_artifacts`), datasets and models.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from workflow.config import code_version, config_hash
from workflow.tracking import (
    KEY_TAG,
    KIND_TAG,
    StageRecord,
    TrackingSpec,
    experiment_id,
    find_run,
    flatten_params,
    source_tags,
    stage_run_name,
)


def log_metrics(client: Any, run_id: str, metrics: list[Any]) -> None:
    """``log_batch`` of MLflow ``Metric`` entities in chunks of 1000 (the MLflow limit per call)."""
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """``log_batch`` of string params in chunks of 100 (the MLflow limit), values cut to MLflow's 6000 chars."""
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def parent_run(client: Any, exp_id: str, parent: dict[str, Any], start_ms: int | None = None) -> str:
    """The id of a variant / data set / study run (``parent_kind``, ``parent_key``, ``parent_name``,
    ``parent_params``), created with its params, source tags and start time when it does not exist yet."""
    from mlflow.entities import RunTag

    run = find_run(client, exp_id, parent["parent_key"])
    tags = {KEY_TAG: parent["parent_key"], KIND_TAG: parent["parent_kind"], **source_tags("Snakefile")}
    if run is not None:  # a run of an older store: today's name and source tags
        if run.info.run_name != parent["parent_name"]:
            client.update_run(run.info.run_id, name=parent["parent_name"])
        if "mlflow.source.name" not in run.data.tags:
            client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return run.info.run_id
    run = client.create_run(exp_id, run_name=parent["parent_name"], start_time=start_ms, tags=tags)
    params = flatten_params(parent["parent_params"])
    params["config_hash"] = config_hash(parent["parent_params"])
    log_params(client, run.info.run_id, params)
    client.set_terminated(run.info.run_id, "FINISHED", end_time=start_ms)
    return run.info.run_id


def _extend_end(client: Any, run_id: str, end_ms: int) -> None:
    """A parent run ends with its last job: its end time moves to ``end_ms`` when that is later."""
    info = client.get_run(run_id).info
    if info.end_time is None or info.end_time < end_ms:
        client.set_terminated(run_id, "FINISHED", end_time=end_ms)


class _TableDataset:
    """Builds an MLflow ``MetaDataset`` (with a row-count profile) from a :func:`workflow.tracking.dataset_entry`."""

    @staticmethod
    def input(entry: dict[str, Any]) -> Any:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.types.schema import Array, ColSpec, DataType, Schema
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        class ProfiledDataset(MetaDataset):
            @property
            def profile(self) -> Any | None:
                return {"num_rows": entry["rows"]} if entry.get("rows") is not None else None

            def to_dict(self) -> dict[str, str]:
                config = super().to_dict()
                if self.profile is not None:
                    config["profile"] = json.dumps(self.profile)
                return config

        cols = []
        for name, kind, is_list in entry.get("schema", []):
            dtype = getattr(DataType, kind, DataType.binary)
            cols.append(ColSpec(Array(dtype) if is_list else dtype, name))
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local file source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(entry["source"])
        dataset = ProfiledDataset(source, name=entry["name"], digest=entry["digest"],
                                  schema=Schema(cols) if cols else None)
        return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, entry["context"])])


def _log_model(client: Any, uri: str, exp_id: str, run_id: str, entry: dict[str, Any]) -> str:
    """Log an encoder file as an ``mlflow.pytorch`` logged model of ``run_id``; returns its model id."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from mlflow.types.schema import Schema, TensorSpec

    from workflow.pretrain.models import load_encoder

    model, spec = load_encoder(entry["path"])
    model.eval()
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, int(spec["input_dim"])))]),
                               outputs=Schema([TensorSpec(np.dtype("float32"), (-1, int(spec["embedding_dim"])))]))
    tags = {"strata.encoder_file": str(Path(entry["path"]).resolve()), "strata.encoder_spec": json.dumps(spec),
            **entry.get("tags", {})}
    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its notice on pickle: the weights' own file is safetensors (strata.encoder_file)
    # MLflow files a new logged model under the active experiment, else $MLFLOW_EXPERIMENT_ID: the study's.
    previous = os.environ.get("MLFLOW_EXPERIMENT_ID")
    os.environ["MLFLOW_EXPERIMENT_ID"] = exp_id
    try:
        with _use_tracking_uri(uri), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pytorch.log_model(model, name=entry.get("name", "encoder"), run_id=run_id,
                                            signature=signature, tags=tags, serialization_format="pickle",
                                            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    finally:
        quiet.setLevel(level)
        if previous is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = previous
    return info.model_id


def _log_image(client: Any, run_id: str, path: str) -> None:
    """A figure also as an MLflow image (key: the file's stem), which the runs page's chart view shows for every
    listed run side by side."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            picture = image.convert("RGB")
    except (OSError, UnidentifiedImageError):  # not a picture PIL reads: the artifact is enough
        return
    client.log_image(run_id, picture, key=Path(path).stem, step=0, synchronous=True)


def _current_model(client: Any, run_id: str) -> str | None:
    """The newest logged model that ``run_id`` lists among its outputs and that still exists (None if none)."""
    outputs = client.get_run(run_id).outputs
    for output in reversed(outputs.model_outputs if outputs else []):
        try:
            model = client.get_logged_model(output.model_id)
        except Exception:  # deleted with the stage run of an earlier run of the job
            continue
        if getattr(model, "status", None) is not None and str(model.status).endswith("READY"):
            return model.model_id
    return None


def _delete_models_of(client: Any, exp_id: str, run_id: str) -> None:
    """Delete the logged models of a stage run that a re-run of its job replaces."""
    try:
        models = client.search_logged_models([exp_id], filter_string=f"source_run_id = '{run_id}'")
    except Exception:  # a store without logged models (MLflow 2 server): nothing to delete
        return
    for model in models:
        client.delete_logged_model(model.model_id)


def log_stage_run(spec: TrackingSpec, record: StageRecord, parent_metrics: dict[str, float] | None,
                  parent_start_ms: int | None = None) -> str:
    """Write one job's record (the caller holds the store's lock); returns the stage run's id."""
    from mlflow.entities import LoggedModelOutput, Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(spec.uri)
    exp_id = experiment_id(client, spec.experiment, spec.uri, spec.artifact_root)
    end_ms = record.end_ms or int(time.time() * 1000)
    start_ms = min(record.start_ms or end_ms, end_ms)
    first = parent_start_ms if parent_start_ms is not None else start_ms
    parents = [{k: getattr(spec, k) for k in ("parent_kind", "parent_key", "parent_name", "parent_params")},
               *spec.links]
    parent_ids = [parent_run(client, exp_id, p, min(first, start_ms)) for p in parents]
    parent_id = parent_ids[0]
    # A re-run of the same job replaces its earlier stage run (and the models it logged).
    for old in client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{spec.job}'", max_results=50):
        _delete_models_of(client, exp_id, old.info.run_id)
        client.delete_run(old.info.run_id)
    tags = {KEY_TAG: spec.job, KIND_TAG: "stage", "strata.stage": spec.job.split("/")[0],
            "mlflow.parentRunId": parent_id, "strata.code_version": code_version(),
            "strata.pending_files": "1", **source_tags(f"strata {record.stage}"), **record.tags}
    if spec.log:
        tags["strata.log_file"] = str(Path(spec.log).resolve())
    if spec.benchmark:
        tags["strata.benchmark_file"] = str(Path(spec.benchmark).resolve())
    run_id = client.create_run(exp_id, run_name=stage_run_name(spec), start_time=start_ms, tags=tags).info.run_id
    params = flatten_params(record.params)
    for path, digest in record.inputs.items():
        params[f"input.{Path(path).name}.sha256"] = digest[:16]
    log_params(client, run_id, params)
    # Models before metrics: MLflow copies the run's params (and any step-0 metrics) onto a new logged model.
    models = [_log_model(client, spec.uri, exp_id, run_id, m) for m in record.models if Path(m["path"]).is_file()]
    model_id = models[-1] if models else None  # the stage's metrics are also the model's (its Models view)
    metrics = [Metric(k, float(v), end_ms, 0, model_id=model_id) for k, v in record.metrics.items()]
    series = [Metric(k, float(v), end_ms, int(step)) for k, v, step in record.series]
    log_metrics(client, run_id, metrics + series)
    client.log_batch(run_id, tags=[RunTag("strata.inputs", json.dumps(record.inputs)[:5000])])
    for path in record.artifacts:
        if Path(path).is_file():
            client.log_artifact(run_id, path, artifact_path="outputs")
    datasets = [d for d in record.datasets if Path(d["source"]).is_file()]
    if datasets:
        client.log_inputs(run_id, datasets=[_TableDataset.input(d) for d in datasets])
    client.set_terminated(run_id, "FINISHED", end_time=end_ms)

    shared = [_TableDataset.input(d) for d in datasets if d.get("to_parent", True)]
    for i, pid in enumerate(parent_ids):
        if i > 0:  # a linked variant: where its (shared) stage run is
            client.set_tag(pid, f"strata.{spec.job.split('/')[0]}_run", run_id)
        if parent_metrics:  # the variant's final metrics, also those of its encoder
            model = _current_model(client, pid)
            log_metrics(client, pid, [Metric(k, float(v), end_ms, 0, model_id=model)
                                      for k, v in parent_metrics.items()])
        if record.share_series:
            log_metrics(client, pid, series)
        for path in record.parent_artifacts:
            if Path(path).is_file():
                client.log_artifact(pid, path, artifact_path="figures")
                _log_image(client, pid, path)
        if shared:
            client.log_inputs(pid, datasets=shared)
        if models:
            client.log_outputs(pid, [LoggedModelOutput(m, step=0) for m in models])
        _extend_end(client, pid, end_ms)
    return run_id
