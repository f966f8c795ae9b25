"""Start the MLflow UI on a study's tracking store, bound to localhost, and print where to look.

MLflow 3's UI opens in its GenAI (traces) mode; the printed address opens the study's experiment in
"Model training" mode, where the variant runs are listed: filter them with
``tags.`strata.kind` = 'variant'``, select all, press *Compare*.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from workflow.errors import StrataError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def experiment_url(base: str, tracking_uri: str, experiment: str) -> str:
    """The UI address of the experiment's runs in model-training mode (or of the experiment list)."""
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    if exp is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    return f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"


def start_ui(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000, timeout: float = 180.0,
             log_path: str | None = None) -> subprocess.Popen:
    """Start ``mlflow ui`` and wait until it answers ``/health``; the caller terminates the process.

    Raises:
        StrataError: If the store is missing or the server does not answer within ``timeout`` seconds.
    """
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise StrataError("no tracking store", where=tracking_uri,
                          fix="run the study first (`make run`), or point --tracking-uri at an existing store.")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port),
           "--backend-store-uri", tracking_uri]
    # the child keeps its own copy of the log's descriptor; the parent closes its one at once
    with open(log_path, "w") if log_path else contextlib.nullcontext(subprocess.DEVNULL) as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StrataError(f"mlflow ui exited with status {proc.returncode}", where=" ".join(cmd),
                              fix=f"see {log_path or 'its output'}; is port {port} already in use?")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise StrataError(f"mlflow ui did not answer within {timeout:.0f} s", where=" ".join(cmd),
                      fix=f"see {log_path or 'its output'}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow.ui", description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{Path('results/mlflow.db').resolve()}")
    parser.add_argument("--experiment", default=None, help="study name (default: the only experiment in the store)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address; keep 127.0.0.1 unless you mean to share")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--config", default=None,
                        help="a study config: its tracking store and experiment (what `make ui CONFIG=…` passes)")
    args = parser.parse_args(argv)
    print(f"strata ui: starting the MLflow UI on {args.host}:{args.port} (the first start can take a minute) ...",
          flush=True)
    try:
        if args.config:
            args.tracking_uri, args.experiment = _study_store(args.config)
        proc = start_ui(args.tracking_uri, args.host, args.port)
    except StrataError as err:
        print(f"strata ui: error: {err}", file=sys.stderr)
        return 2
    base = f"http://{args.host}:{args.port}"
    experiment = args.experiment or _only_study(args.tracking_uri)
    url = experiment_url(base, args.tracking_uri, experiment) if experiment else base
    print(f"MLflow UI: {url}\n(filter tags.`strata.kind` = 'variant', select all, Compare; Ctrl-C to stop)",
          flush=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
    return 0


def _study_store(config_path: str) -> tuple[str, str]:
    """The tracking URI and experiment name a study config logs to (the workflow's own resolution)."""
    from workflow.config import load_study
    from workflow.tracking import resolve_tracking_uri

    study = load_study(config_path)
    return resolve_tracking_uri(study["tracking"]["uri"], "results"), study["study"]


def _only_study(tracking_uri: str) -> str | None:
    from mlflow.tracking import MlflowClient

    names = [e.name for e in MlflowClient(tracking_uri).search_experiments() if e.name != "Default"]
    return names[0] if len(names) == 1 else None


if __name__ == "__main__":
    sys.exit(main())
