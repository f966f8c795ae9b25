"""The end-to-end study's MLflow store as its users expect it: real stage times, MLflow's source tags, datasets,
the encoders as logged models that load back, the variants' loss history and figures, curations under their
variants, and only the parameters that apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.e2e


def _store(study: Path) -> tuple[Any, str, list[Any]]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{min(study.glob('results/**/mlflow.db'), key=lambda p: len(p.parts))}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("strata-test")
    return client, uri, client.search_runs([exp.experiment_id], max_results=1000)


def test_stage_runs_show_their_jobs(study: Path) -> None:
    _, _, runs = _store(study)
    variants = {r.info.run_id: r for r in runs if r.data.tags.get("strata.kind") == "variant"}
    stages = [r for r in runs if r.data.tags.get("strata.kind") == "stage"]
    pretrain = [r for r in stages if r.data.tags["strata.stage"] == "pretrain"]
    # Real times: a pretraining takes seconds (the job's benchmark), not the milliseconds of writing its record.
    for run in pretrain:
        assert run.info.end_time - run.info.start_time > 1000, run.info.run_name
    for run in variants.values():
        assert run.info.end_time - run.info.start_time > 1000, run.info.run_name
    # MLflow's source tags, and short names that keep the seed.
    for run in stages + list(variants.values()):
        assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.source.name"]
        assert run.info.run_name.endswith(("s0", "s1", "tiny")) and len(run.info.run_name) <= 40, run.info.run_name
    # Curations sit under a variant; the variants that share one link to it.
    for run in stages:
        if run.data.tags["strata.stage"] == "curate":
            assert run.data.tags["mlflow.parentRunId"] in variants
    # Only the parameters that apply: no other method's keys on a random curation or a signal data set's SimCLR.
    curate = next(r for r in stages if r.info.run_name == "curate random/s0")
    assert "n_clusters" not in curate.data.params and "target_size" in curate.data.params
    assert not any(k.startswith(("image_augment", "resnet_", "dino_")) for k in pretrain[0].data.params)


def test_variants_carry_history_figures_datasets_and_model(study: Path) -> None:
    import mlflow.pytorch
    import pyarrow.parquet as pq
    import torch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    client, uri, runs = _store(study)
    run = next(r for r in runs if r.data.tags.get("strata.kind") == "variant"
               and r.data.params["curation.name"] == "hkmeans" and r.data.params["seed"] == "0")
    run = client.get_run(run.info.run_id)
    assert len(client.get_metric_history(run.info.run_id, "loss")) > 1
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert len(figures) == 2 and all(f.endswith(".png") for f in figures)
    contexts = {tag.value for d in run.inputs.dataset_inputs for tag in d.tags if tag.key == "mlflow.data.context"}
    assert {"pool", "selection", "probe_train", "probe_test"} <= contexts
    names = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert any(n.endswith("tiny/curate/hkmeans/seed0/selection") for n in names), names
    # The encoder: loaded back by MLflow, it gives the embeddings of the embed stage.
    (output,) = run.outputs.model_outputs
    with _use_tracking_uri(uri):
        model = mlflow.pytorch.load_model(f"models:/{output.model_id}")
    root = next(study.glob("results/**/tiny/embed/hkmeans/simclr/seed0"))
    probe = pq.read_table(next(study.glob("results/**/tiny/data/probe_test.parquet")))
    vectors = np.asarray(probe.column("vector").to_pylist(), dtype=np.float32)
    embedded = np.asarray(pq.read_table(root / "probe_test.parquet").column("embedding").to_pylist())
    with torch.inference_mode():
        ours = model(torch.as_tensor(vectors)).numpy()
    np.testing.assert_allclose(ours, embedded, rtol=1e-4, atol=1e-5)
    assert client.get_logged_model(output.model_id).metrics  # the variant's metrics, on its model
