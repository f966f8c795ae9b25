"""Ray inside Snakemake jobs.

A job either joins an existing Ray cluster (``--ray-address``, the config's ``ray.address`` or
``$RAY_ADDRESS``) or starts a private local Ray sized to the job's allocation (threads, GPUs).

Several local Ray instances on one machine are not supported by Ray (random port collisions, GCS
races: ray PR #45836, ray#53906). Strata therefore serialises *local* Ray instances per machine with
an exclusive ``flock`` on ``/tmp/strata-ray-<uid>.lock`` (override with ``$STRATA_RAY_LOCK``); the
default Snakemake profile also gives every Ray rule one unit of the ``ray`` resource with a global
limit of 1, so Snakemake schedules other, non-Ray jobs on the free cores instead of blocking them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Iterator

from workflow.errors import StrataError


@contextlib.contextmanager
def file_lock(path: str, message: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if message:
                print(message, file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


RAY_TRAIN_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # otherwise every worker line reaches the log twice
}


def ray_lock_path() -> str:
    return os.environ.get("STRATA_RAY_LOCK", f"/tmp/strata-ray-{os.getuid()}.lock")


def resolve_address(address: str | None) -> str | None:
    """The Ray cluster to join: the explicit address, else ``$RAY_ADDRESS``, else None (start a local one)."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(num_cpus: int, num_gpus: int = 0, address: str | None = None) -> Iterator[dict[str, float]]:
    """Start (or join) Ray for one job and shut it down afterwards.

    Yields the cluster's resources. Fails at once with a clear message when the job asks for GPUs
    that Ray cannot see (Ray would otherwise wait forever for an infeasible request).
    """
    import ray

    address = resolve_address(address)
    lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if address is None:
        lock = file_lock(ray_lock_path(), "waiting for another local Ray job on this machine to finish ...")
    with lock:
        start = time.time()
        # Ray Train's controller polls its workers every 2 s and runs a preemption watcher and a state
        # reconciler by default; for the short jobs of a study that adds ~7 s per job (measured here).
        for var, value in RAY_TRAIN_DEFAULTS.items():
            os.environ.setdefault(var, value)
        if address is None:
            # Short temp dir: Ray's AF_UNIX socket paths must stay under 107 bytes (ray#7724).
            temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     _temp_dir=temp_dir, logging_level="WARNING", configure_logging=True)
        else:
            ray.init(address=address, logging_level="WARNING")
        try:
            resources = ray.cluster_resources()
            print(f"ray: {'joined ' + address if address else 'started local Ray'} in {time.time() - start:.1f}s, "
                  f"resources CPU={resources.get('CPU', 0):g} GPU={resources.get('GPU', 0):g}", flush=True)
            if num_gpus > 0 and resources.get("GPU", 0) < 1:
                raise StrataError(f"this job asks for {num_gpus} GPU(s) but Ray sees none", where="resources.gpu",
                                  fix="run on a machine with GPUs, or set the rule's gpu resource to 0 "
                                  "(e.g. --set-resources pretrain:gpu=0).")
            yield resources
        finally:
            ray.shutdown()
