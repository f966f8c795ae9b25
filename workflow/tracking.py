"""MLflow tracking for Snakemake jobs (separate processes, possibly in parallel).

Layout of a study in MLflow (experiment = the config's ``study``):

* one **variant run** per (dataset, curation, ssl method, seed, config hash), tagged
  ``strata.kind=variant`` and named ``<curation>/<ssl>/s<seed> · <dataset>``: the chain's parameters (only
  those that apply), the final metrics, the loss history (step metrics), the figures, the pool, selection
  and probes as datasets and the encoder as a logged model, so that selecting variant runs and pressing
  *Compare* (or the chart view) shows the study side by side;
* one **dataset run** per data set, tagged ``strata.kind=dataset``, parent of the ``data`` stage and holder
  of the pool and probe datasets;
* one **stage run** per Snakemake job, nested under its variant (a curation, shared by the variants of each
  ssl method, under the first and linked from the others by the tag ``strata.curate_run``) or dataset run,
  with the job's real start and end, parameters, metrics, per-step series, output files, datasets, log and
  input digests (lineage) and MLflow's source tags (command, git commit);
* one **study run**, tagged ``strata.kind=study``, with the summary's statistics, files and verdict
  (:func:`log_study`), which also gives every variant run its differences to the baseline variant.

Runs are found by their ``strata.key`` tag, never created anew for the same key, and a re-run of a
job replaces its previous stage run. Writers on one machine are serialised by an exclusive ``flock``
beside the SQLite file, which avoids "database is locked" under parallel jobs; the whole job's
logging happens in one short locked block at its end (:mod:`workflow.tracking_store`). In a local
Snakemake run the jobs spool their records instead (:data:`SPOOL_ENV`), with their start and end times,
and the run's main process writes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from workflow.config import code_version
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


def bound_http_retries() -> None:
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
    """Everything one job logs, collected while it runs and written at its end (:mod:`workflow.tracking_store`)."""

    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: list[tuple[str, float, int]] = field(default_factory=list)  # (key, value, step)
    artifacts: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # path -> sha256
    tags: dict[str, str] = field(default_factory=dict)
    #: The job's real start and end (ms since the epoch); :func:`log_stage` fills them in when None.
    start_ms: int | None = None
    end_ms: int | None = None
    #: Tables logged as MLflow dataset inputs (:func:`dataset_entry`).
    datasets: list[dict[str, Any]] = field(default_factory=list)
    #: Encoder files logged as MLflow models: ``{"path": ..., "name": ..., "tags": {...}}``.
    models: list[dict[str, Any]] = field(default_factory=list)
    #: Also log :attr:`series` on the parent run (the variant's loss history).
    share_series: bool = False
    #: Files also logged on the parent run, under ``figures/`` (the variant's figures).
    parent_artifacts: list[str] = field(default_factory=list)

    def add_datasets(self, tables: list[tuple[str, str]], to_parent: bool = True) -> None:
        """Log these ``(path, context)`` tables as datasets (:func:`dataset_entry`; digests of inputs reused)."""
        self.datasets += [dataset_entry(path, context, digest=self.inputs.get(path), to_parent=to_parent)
                          for path, context in tables if Path(path).is_file()]


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
    #: Further runs the job belongs to (same keys as the parent: ``parent_kind``, ``parent_key``, ...): a curation
    #: shared by several variants nests under the first and is linked from the others.
    links: list[dict[str, Any]] = field(default_factory=list)

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


def find_run(client: Any, exp_id: str, key: str) -> Any | None:
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


@cache
def _git(*args: str) -> str:
    """A git answer about the code's repository ('' when there is none)."""
    import subprocess

    from workflow.config import REPO_ROOT

    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def source_tags(name: str) -> dict[str, str]:
    """MLflow's own source tags, which fill the runs table's *Source* column: the command (``name``, e.g.
    ``strata pretrain`` or ``Snakefile``), the type ``LOCAL``, the git commit, and the remote and branch when
    known. ``strata.code_version`` keeps the commit with ``-dirty`` for a tree with local changes, and
    ``strata.machine`` the CPU (:func:`workflow.machine.machine_tag`)."""
    import getpass

    from workflow.machine import machine_tag

    tags = {"mlflow.source.name": name, "mlflow.source.type": "LOCAL"}
    with contextlib.suppress(Exception):  # the runs table's "Created by"
        tags["mlflow.user"] = getpass.getuser()
    version = code_version()
    commit = version.removesuffix("-dirty")
    if len(commit) == 40 and all(c in "0123456789abcdef" for c in commit):
        tags["mlflow.source.git.commit"] = commit
        if remote := _git("config", "--get", "remote.origin.url"):
            tags["mlflow.source.git.repoURL"] = remote
        if (branch := _git("rev-parse", "--abbrev-ref", "HEAD")) and branch != "HEAD":
            tags["mlflow.source.git.branch"] = branch
    tags["strata.code_version"] = version
    tags["strata.machine"] = machine_tag()  # results reproduce bit for bit on one machine only
    return tags


def stage_run_name(spec: TrackingSpec) -> str:
    """A stage run's short name: its stage and what tells its jobs apart, the data set (named by the parent)
    left out and ``seedN`` written ``sN``, e.g. ``pretrain hkmeans/simclr/s0`` or ``data mnist1d-lt``."""
    stage, *parts = spec.job.split("/")
    dataset = spec.parent_params.get("dataset", {}).get("name")
    rest = [f"s{p[4:]}" if p.startswith("seed") and p[4:].isdigit() else p for p in parts if p != dataset]
    return f"{stage} {'/'.join(rest or parts)}".strip()


def dataset_entry(path: str | os.PathLike[str], context: str, *, digest: str | None = None,
                  to_parent: bool = True) -> dict[str, Any]:
    """A Parquet table as an MLflow dataset (logged by :mod:`workflow.tracking_store`, without its rows).

    Args:
        path: The table.
        context: Its role for the run (``pool``, ``selection``, ``training``, ``probe_train`` ...).
        digest: The file's SHA-256 when already known (else computed).
        to_parent: Also log it on the job's parent run (variant or data set).

    Returns:
        ``name`` (the path under ``results/``, without ``.parquet``), ``digest`` (16 hex characters of the
        file's SHA-256), ``source`` (its absolute path), ``context``, ``rows`` and ``schema`` (``[name, MLflow
        type, is a list]`` per column), and ``to_parent``.
    """
    from workflow.tables import file_digest

    path = Path(path)
    parts = path.with_suffix("").parts
    name = "/".join(parts[parts.index("results") + 1:] if "results" in parts else parts[-3:])
    entry: dict[str, Any] = {"name": name, "digest": (digest or file_digest(path))[:16],
                             "source": str(path.resolve()), "context": context, "to_parent": to_parent,
                             "rows": None, "schema": []}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        entry["rows"] = meta.num_rows
        for column in meta.schema.to_arrow_schema():
            kind = column.type
            is_list = pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind)
            if is_list:
                kind = kind.value_type
            entry["schema"].append([column.name, _mlflow_type(kind), is_list])
    except Exception:  # not Parquet: a dataset with a digest and a source only
        pass
    return entry


def _mlflow_type(kind: Any) -> str:
    """The name of the MLflow ``DataType`` of an Arrow type."""
    import pyarrow as pa

    checks = [(pa.types.is_boolean, "boolean"), (pa.types.is_int64, "long"), (pa.types.is_integer, "integer"),
              (pa.types.is_float64, "double"), (pa.types.is_floating, "float"), (pa.types.is_string, "string"),
              (pa.types.is_large_string, "string"), (pa.types.is_timestamp, "datetime")]
    return next((name for check, name in checks if check(kind)), "binary")


def log_stage(spec: TrackingSpec | None, record: StageRecord, parent_metrics: dict[str, float] | None = None, *,
              parent_start_ms: int | None = None) -> None:
    """Write one job's record as a stage run nested under its variant/dataset run.

    ``parent_metrics`` are also logged on the parent run (the variant's final metrics); ``parent_start_ms``
    is the start of a parent run created now (default: this job's start). The record's start and end default
    to this process's start and now, so that MLflow shows how long the job took. MLflow's HTTP retries are
    bounded (:data:`MLFLOW_HTTP_DEFAULTS`), and a store that fails while logging is a :class:`StrataError`
    naming the URI (the store is checked before the job's work by :func:`check_tracking_uri`).
    """
    if spec is None:
        return
    if record.end_ms is None:
        record.end_ms = int(time.time() * 1000)
    if record.start_ms is None:
        record.start_ms = process_start_ms()
    if os.environ.get(SPOOL_ENV):  # a local Snakemake run: its main process logs the record (flush_spool)
        _spool(Path(os.environ[SPOOL_ENV]), spec, record, parent_metrics)
        return
    _log_stage_now(spec, record, parent_metrics, parent_start_ms)


def _log_stage_now(spec: TrackingSpec, record: StageRecord, parent_metrics: dict[str, float] | None,
                   parent_start_ms: int | None) -> None:
    """Write the record to the store in this process (never spooled)."""
    from workflow.errors import StrataError

    bound_http_retries()
    try:
        from workflow.tracking_store import log_stage_run

        with file_lock(_lock_path(spec.uri)):
            log_stage_run(spec, record, parent_metrics, parent_start_ms)
    except StrataError:
        raise
    except Exception as err:  # the store failed (server gone, database locked or corrupt ...)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise StrataError(f"logging to the MLflow tracking store failed ({type(err).__name__}: {first})",
                          where=f"tracking store {spec.uri}", fix=_TRACKING_FIX) from err


def process_start_ms() -> int:
    """When this process started (ms since the epoch): a job's start, imports included."""
    try:
        import psutil

        return int(psutil.Process().create_time() * 1000)
    except Exception:  # no psutil: when this module was imported
        return _IMPORTED_MS


_IMPORTED_MS = int(time.time() * 1000)


#: A local Snakemake run sets this to a folder (rules/ray.smk): jobs then write their records there as JSON
#: instead of importing MLflow (2-3 s of a short job's fixed cost on 2 cores, more under load) and the run's
#: main process logs them (flush_spool): a thread while the jobs run, the rest at the end, or at the start of
#: the next run after a kill.
SPOOL_ENV = "STRATA_TRACKING_SPOOL"


def _spool(folder: Path, spec: TrackingSpec, record: StageRecord, parent_metrics: dict[str, float] | None) -> None:
    import dataclasses

    _write_spooled(folder, {"spec": dataclasses.asdict(spec), "record": dataclasses.asdict(record),
                            "parent_metrics": parent_metrics})


def _write_spooled(folder: Path, data: dict[str, Any]) -> None:
    import uuid

    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, folder / name)


def flush_spool(folder: str | os.PathLike[str], *, during_run: bool = False,
                halt: threading.Event | None = None) -> int:
    """Log the records that jobs spooled into ``folder`` (oldest first), deleting each once logged.

    A parent run created by the flush starts with the earliest of this flush's jobs that belong to it.
    ``during_run`` (the run's :class:`workflow.spool_flusher.SpoolFlusher`, a thread beside the one that starts
    jobs) leaves two kinds of record for the final flush: the study summary (it annotates the variant runs) and
    records that log an encoder as an MLflow model (that goes through ``$MLFLOW_EXPERIMENT_ID``, which a thread
    must not set while jobs start). ``halt`` (a ``threading.Event``) stops the flush between two records.
    Returns how many were logged. Raises :class:`StrataError` on the first record the store refuses (that
    record and the later ones stay spooled for the next run). Never reads or changes :data:`SPOOL_ENV`.
    """
    files = sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []
    spooled = [(path, json.loads(path.read_text())) for path in files]
    if during_run:
        spooled = [item for item in spooled if "study" not in item[1] and not item[1]["record"].get("models")]
    # The study summary annotates the variant runs, which the stage records create: it goes last.
    spooled.sort(key=lambda item: "study" in item[1])
    starts: dict[str, int] = {}
    for _, data in spooled:
        if "study" in data:
            continue
        start = data["record"].get("start_ms")
        spec = data["spec"]
        for key in [spec["parent_key"], *(link["parent_key"] for link in spec.get("links", []))]:
            if start is not None:
                starts[key] = min(starts.get(key, start), start)
    logged = 0
    for path, data in spooled:
        if halt is not None and halt.is_set():
            break
        if "study" in data:
            from workflow.tracking_study import log_study as log_study_now

            log_study_now(**data["study"])
        else:
            record = StageRecord(**data["record"])
            record.series = [tuple(x) for x in record.series]  # type: ignore[misc]
            spec = TrackingSpec(**data["spec"])
            _log_stage_now(spec, record, data["parent_metrics"], starts.get(spec.parent_key))
        path.unlink()
        logged += 1
    return logged


def attach_job_files(uri: str, experiment: str) -> int:
    """Attach the Snakemake log and benchmark files to the stage runs that wait for them
    (:func:`workflow.tracking_study.attach_job_files`)."""
    from workflow.tracking_study import attach_job_files as attach

    return attach(uri, experiment)


def log_study(uri: str, experiment: str, metrics: dict[str, float], files: Sequence[str] = (), *,
              note: str | None = None, baseline: str | None = None, compared: Sequence[str] = ()) -> None:
    """Log a study's summary (:func:`workflow.tracking_study.log_study`); in a local Snakemake run, spool it
    (:data:`SPOOL_ENV`): the run's main process logs it after the stage records, so the summarize job does not
    import MLflow."""
    if os.environ.get(SPOOL_ENV):
        _write_spooled(Path(os.environ[SPOOL_ENV]), {"study": {
            "uri": uri, "experiment": experiment, "metrics": metrics, "files": [str(Path(f).resolve()) for f in files],
            "note": note, "baseline": baseline, "compared": list(compared)}})
        return
    from workflow.tracking_study import log_study as log

    log(uri, experiment, metrics, files, note=note, baseline=baseline, compared=compared)
