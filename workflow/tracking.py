"""MLflow tracking for Snakemake jobs (separate processes, possibly in parallel).

Layout of a study in MLflow (experiment = the config's ``study``):

* one **variant run** per (dataset, curation, ssl method, seed, config hash), tagged
  ``strata.kind=variant``: it carries the whole chain's parameters and the final metrics, so that
  selecting variant runs and pressing *Compare* shows the study side by side;
* one **dataset run** per data set, tagged ``strata.kind=dataset``, parent of the shared stages
  (``data`` and ``curate``, which several variants share);
* one **stage run** per Snakemake job, nested under its variant or dataset run, with the job's
  parameters, metrics, per-epoch series, output files, log and input digests (lineage);
* one **study run**, tagged ``strata.kind=study``, with the summary's statistics, files and verdict
  (:func:`log_study`), which also gives every variant run its differences to the baseline variant.

Runs are found by their ``strata.key`` tag, never created anew for the same key, and a re-run of a
job replaces its previous stage run. Writers on one machine are serialised by an exclusive ``flock``
beside the SQLite file, which avoids "database is locked" under parallel jobs; the whole job's
logging happens in one short locked block at its end.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflow.config import code_version, config_hash
from workflow.distributed import file_lock

KEY_TAG = "strata.key"
KIND_TAG = "strata.kind"


def resolve_tracking_uri(uri: str | None, results_dir: str | os.PathLike[str] = "results") -> str:
    """Config value, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs results>/mlflow.db``."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


#: Seconds the tracking store has to answer before a job starts (:func:`check_tracking_uri`).
CHECK_TIMEOUT_S = 5.0
#: MLflow's HTTP client settings while a job logs (MLflow's defaults retry for minutes); the environment wins.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def _bound_http_retries() -> None:
    """Apply :data:`MLFLOW_HTTP_DEFAULTS` to this process (variables the user set win)."""
    for var, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(var, value)


_DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}
_TRACKING_FIX = ("start the tracking server, or point `tracking.uri` (or $MLFLOW_TRACKING_URI, or --tracking) at "
                 "a store you can reach or write, e.g. sqlite:///results/mlflow.db.")


def _writable_folder(folder: Path) -> str | None:
    """Why ``folder`` cannot hold new files (None when it can): checked on its nearest existing ancestor."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:  # a real write (os.access says yes to root on read-only or virtual file systems)
        tempfile.TemporaryDirectory(dir=probe, prefix=".strata-check-").cleanup()
    except OSError as err:
        return f"cannot create files in {probe} ({err.strerror or err})"
    return None


def check_tracking_uri(uri: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Check, before a job does any work, that its MLflow store can be reached or written.

    ``sqlite:///`` and local paths: the database file, if present, is an SQLite file this user can write, and
    its folder can hold new files (the database, its journal and the lock file). ``http(s)://``: the server
    answers within ``timeout`` seconds (any HTTP status counts as an answer). Database URIs with a host: the
    host accepts a TCP connection within ``timeout``. Other schemes are left to MLflow.

    Raises:
        StrataError: naming the URI, what failed and how to fix it.
    """
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    from workflow.errors import StrataError

    where = f"tracking store {uri}"
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    problem = None
    if scheme in ("sqlite", "file", ""):
        if scheme == "sqlite":
            target = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
            if target is None or not str(target):
                raise StrataError("an SQLite tracking URI needs a file path", where=where,
                                  fix="write it as sqlite:///<absolute path>/mlflow.db.")
            if target.is_dir():
                problem = f"{target} is a folder, not a database file"
            elif target.exists():
                with contextlib.suppress(OSError):
                    with open(target, "rb") as f:
                        head = f.read(16)
                    if head and head != b"SQLite format 3\x00":
                        problem = f"{target} is not an SQLite database"
                if problem is None and not os.access(target, os.R_OK | os.W_OK):
                    problem = f"{target} is not readable and writable by this user"
            folder = target.parent
        else:
            folder = Path(urllib.parse.unquote(parsed.path) if scheme == "file" else uri)
        problem = problem or _writable_folder(folder)
    elif scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            problem = f"the server does not answer within {timeout:g} s ({reason})"
    elif parsed.hostname and (parsed.port or _DB_PORTS.get(scheme.split("+")[0])):
        try:
            with socket.create_connection((parsed.hostname, parsed.port or _DB_PORTS[scheme.split("+")[0]]),
                                          timeout=timeout):
                pass
        except (OSError, ValueError) as err:
            problem = f"the database host does not answer within {timeout:g} s ({err})"
    if problem:
        raise StrataError(f"cannot use the MLflow tracking store: {problem}", where=where, fix=_TRACKING_FIX)


def _lock_path(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///"):] + ".lock"
    return f"/tmp/strata-mlflow-{os.getuid()}.lock"


@dataclass
class StageRecord:
    """Everything one job logs, collected while it runs and written at its end."""

    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: list[tuple[str, float, int]] = field(default_factory=list)  # (key, value, step)
    artifacts: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # path -> sha256
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class TrackingSpec:
    """Where a job logs; built by the Snakemake rules (``rules/common.smk``) and passed as JSON."""

    uri: str
    experiment: str
    parent_kind: str  # "variant" or "dataset"
    parent_key: str
    parent_name: str
    parent_params: dict[str, Any]
    job: str  # unique job key, e.g. "pretrain/mnist1d-lt/none/simclr/seed0"
    log: str | None = None
    benchmark: str | None = None
    artifact_root: str | None = None

    @classmethod
    def from_json(cls, text: str) -> TrackingSpec:
        from workflow.errors import StrataError

        try:
            data = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError) as err:  # not JSON, not an object, missing or unknown keys
            raise StrataError(f"not a valid tracking spec ({err})", where="--tracking",
                              fix="pass the JSON object the Snakemake rules write, or omit --tracking.") from err


#: MLflow 3's UI opens an experiment in its GenAI (traces) view unless this tag says it holds training runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(client: Any, name: str, uri: str, artifact_root: str | None = None) -> str:
    """The id of the study's experiment, created (tagged as model training) or restored when needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if EXPERIMENT_KIND[0] not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    root = artifact_root
    if root is None and uri.startswith("sqlite:///"):
        root = str(Path(uri[len("sqlite:///"):]).parent / "mlartifacts")
    location = Path(root).resolve().as_uri() if root and "://" not in root else root
    return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))


def _experiment_id(client: Any, spec: TrackingSpec) -> str:
    return experiment_id(client, spec.experiment, spec.uri, spec.artifact_root)


def _find_run(client: Any, exp_id: str, key: str) -> Any | None:
    runs = client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=10)
    return runs[0] if runs else None


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj
    return out


def flatten_params(obj: dict[str, Any]) -> dict[str, str]:
    """Nested config -> ``{"a.b": "value"}`` strings, as MLflow params."""
    return {k: json.dumps(v) if isinstance(v, list | tuple) else str(v) for k, v in _flatten("", obj, {}).items()}


def _parent_run(client: Any, exp_id: str, spec: TrackingSpec) -> str:
    run = _find_run(client, exp_id, spec.parent_key)
    if run is not None:
        return run.info.run_id
    from mlflow.entities import Param, RunTag

    run = client.create_run(exp_id, run_name=spec.parent_name,
                            tags={KEY_TAG: spec.parent_key, KIND_TAG: spec.parent_kind})
    params = flatten_params(spec.parent_params)
    params["config_hash"] = config_hash(spec.parent_params)
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in params.items()],
                     tags=[RunTag("strata.code_version", code_version())])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def log_stage(spec: TrackingSpec | None, record: StageRecord, parent_metrics: dict[str, float] | None = None) -> None:
    """Write one job's record as a stage run nested under its variant/dataset run.

    ``parent_metrics`` are also logged on the parent run (the variant's final metrics). MLflow's HTTP retries
    are bounded (:data:`MLFLOW_HTTP_DEFAULTS`), and a store that fails while logging is a :class:`StrataError`
    naming the URI (the store is checked before the job's work by :func:`check_tracking_uri`).
    """
    if spec is None:
        return
    if os.environ.get(SPOOL_ENV):  # a local Snakemake run: its main process logs the record (flush_spool)
        _spool(Path(os.environ[SPOOL_ENV]), spec, record, parent_metrics)
        return
    from workflow.errors import StrataError

    _bound_http_retries()
    try:
        _log_stage(spec, record, parent_metrics)
    except StrataError:
        raise
    except Exception as err:  # the store failed (server gone, database locked or corrupt ...)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise StrataError(f"logging to the MLflow tracking store failed ({type(err).__name__}: {first})",
                          where=f"tracking store {spec.uri}", fix=_TRACKING_FIX) from err


#: A local Snakemake run sets this to a folder (rules/ray.smk): jobs then write their records there as JSON
#: instead of importing MLflow (2-3 s of a short job's fixed cost on 2 cores, more under load) and the run's
#: main process logs them all at its end, or at the start of the next run after a kill (flush_spool).
SPOOL_ENV = "STRATA_TRACKING_SPOOL"


def _spool(folder: Path, spec: TrackingSpec, record: StageRecord, parent_metrics: dict[str, float] | None) -> None:
    import dataclasses
    import uuid

    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
    data = {"spec": dataclasses.asdict(spec), "record": dataclasses.asdict(record), "parent_metrics": parent_metrics}
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, folder / name)


def flush_spool(folder: str | os.PathLike[str]) -> int:
    """Log the records that jobs spooled into ``folder`` (oldest first), deleting each once logged.

    Returns how many were logged. Raises :class:`StrataError` on the first record the store refuses (that
    record and the later ones stay spooled for the next run).
    """
    files = sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []
    environ = os.environ.pop(SPOOL_ENV, None)
    try:
        for path in files:
            data = json.loads(path.read_text())
            record = StageRecord(**data["record"])
            record.series = [tuple(x) for x in record.series]  # type: ignore[misc]
            log_stage(TrackingSpec(**data["spec"]), record, data["parent_metrics"])
            path.unlink()
    finally:
        if environ is not None:
            os.environ[SPOOL_ENV] = environ
    return len(files)


def _log_stage(spec: TrackingSpec, record: StageRecord, parent_metrics: dict[str, float] | None) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    with file_lock(_lock_path(spec.uri)):
        client = MlflowClient(spec.uri)
        exp_id = _experiment_id(client, spec)
        parent_id = _parent_run(client, exp_id, spec)
        # A re-run of the same job replaces its earlier stage run.
        for old in client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{spec.job}'", max_results=50):
            client.delete_run(old.info.run_id)
        tags = {KEY_TAG: spec.job, KIND_TAG: "stage", "strata.stage": spec.job.split("/")[0],
                "mlflow.parentRunId": parent_id, "strata.code_version": code_version(),
                "strata.pending_files": "1", **record.tags}
        if spec.log:
            tags["strata.log_file"] = str(Path(spec.log).resolve())
        if spec.benchmark:
            tags["strata.benchmark_file"] = str(Path(spec.benchmark).resolve())
        run = client.create_run(exp_id, run_name=spec.job, tags=tags)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        params = flatten_params(record.params)
        for path, digest in record.inputs.items():
            params[f"input.{Path(path).name}.sha256"] = digest[:16]
        metrics = [Metric(k, float(v), now, 0) for k, v in record.metrics.items()]
        metrics += [Metric(k, float(v), now, int(step)) for k, v, step in record.series]
        param_list = [Param(k, v[:6000]) for k, v in params.items()]
        # log_batch takes at most 100 params and 1000 metrics per call.
        for i in range(0, len(param_list), 100):
            client.log_batch(run_id, params=param_list[i:i + 100])
        _log_metrics(client, run_id, metrics)
        client.log_batch(run_id, tags=[RunTag("strata.inputs", json.dumps(record.inputs)[:5000])])
        for path in record.artifacts:
            if Path(path).is_file():
                client.log_artifact(run_id, path, artifact_path="outputs")
        client.set_terminated(run_id, "FINISHED")
        if parent_metrics:
            _log_metrics(client, parent_id, [Metric(k, float(v), now, 0) for k, v in parent_metrics.items()])


def _log_metrics(client: Any, run_id: str, metrics: list[Any]) -> None:
    """``log_batch`` of MLflow ``Metric`` entities in chunks of 1000 (the MLflow limit per call)."""
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


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
    _bound_http_retries()
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

    spec = TrackingSpec(uri=uri, experiment=experiment, parent_kind="study", parent_key=f"study:{experiment}",
                        parent_name="study summary", parent_params={}, job="summarize")
    now = int(time.time() * 1000)
    with file_lock(_lock_path(uri)):
        client = MlflowClient(uri)
        exp_id = _experiment_id(client, spec)
        study_id = _parent_run(client, exp_id, spec)
        _log_metrics(client, study_id, [Metric(k, float(v), now, 0) for k, v in metrics.items()])
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
            _log_metrics(client, run.info.run_id,
                         [Metric(k, float(v), now, 0) for k, v in diffs.items() if math.isfinite(v)])
