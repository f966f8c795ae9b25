"""Ray inside Snakemake jobs.

A job finds its Ray in this order:

1. an external cluster: ``--ray-address``, the config's ``ray.address`` or ``$RAY_ADDRESS``;
2. the **run-wide cluster** of a local Snakemake run (``$STRATA_RAY_CLUSTER``, set by the Snakefile's ``onstart``;
   ``workflow/raycluster.py``): the job waits until it is up and attaches (~0.1-1 s instead of ~7-10 s to
   start a Ray). Ray jobs of the run then run side by side: Snakemake's ``threads`` and ``gpu`` resources
   are the gate and each job asks the cluster for exactly its share (``job_resources``), so no lock;
3. otherwise (``strata`` run by hand, a SLURM job) a **private local Ray** sized to the job's allocation
   (threads, GPUs), stopped at the end. Several local Ray instances started by ``ray.init`` on one machine
   collide (random port collisions, GCS races: ray PR #45836, ray#53906), so private Rays take turns per
   machine with an exclusive ``flock`` on ``/tmp/strata-ray-<uid>.lock`` (``$STRATA_RAY_LOCK``); under SLURM
   the lock serialises the Rays of jobs that share a node.

A private Ray keeps its sockets under a short temp dir derived from the job's ``$RAY_TMPDIR`` or ``$TMPDIR``
(Snakemake's ``tmpdir`` resource, SLURM's job tmp): AF_UNIX paths are limited to 107 bytes (ray#7724), so a
long ``$TMPDIR`` falls back to ``/tmp/strata-ray-<uid>-<pid>``.

A driver that dies takes its work with it: its actors and tasks are not detached, so Ray kills them when the
driver's connection drops (tested with a SIGKILLed pretrain driver, tests/test_raycluster.py). A private Ray's
daemons die with the driver too, but not the agents its raylet starts; a guard process
(:func:`workflow.raycluster.guard`) kills those.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from workflow import allocator
from workflow.errors import StrataError
from workflow.joblog import ray_noise_filtered
from workflow.raycluster import CLUSTER_ENV


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


RAY_ENV_DEFAULTS = {
    # Ray Train's controller polls its workers every 2 s and runs a preemption watcher and a state
    # reconciler by default; for the short jobs of a study that adds ~7 s per job (measured here).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # otherwise every worker line reaches the log twice
    # Workers' lines reach the job's log as "(RayTrainWorker pid=…) …": without colour codes (MLflow shows the
    # log raw). Read by the driver when it prints them (ray/_private/worker.py, print_worker_logs).
    "RAY_COLOR_PREFIX": "0",
    # Ray starts its workers at nice 15, so they lose the CPU to every other process of the node, other
    # Snakemake jobs included, though the scheduler already gave them their cores: on 2 busy cores that cost
    # the training loop 10-25% of its throughput (benchmarks/pretrain_throughput.py).
    "RAY_worker_niceness": "0",
    # Ray Train runs the training loop in a thread of the worker, whose glibc malloc arena hands the freed
    # activation buffers back to the OS and page-faults them in again at every step: 440k minor faults per
    # 400 steps of the MNIST-1D CNN, and 20% of the throughput. A fixed mmap threshold and a high trim threshold
    # keep the buffers (workflow/allocator.py; read when each Ray process starts).
    **allocator.ENV,
}


RAY_LOG_LEVEL = "WARNING"  # Ray's and Ray Train's own log lines in a job's log: warnings and errors only
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class RayInfoFilter(logging.Filter):
    """Drops Ray's own log records below WARNING, told by their source file (some Ray loggers are named by file
    path, outside the ``ray`` hierarchy: Ray Train's "Reporting training result …" at every report)."""

    def __init__(self) -> None:
        super().__init__()
        import ray

        self.ray_dir = os.path.dirname(ray.__file__) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(self.ray_dir)


def quiet_ray_logs() -> Any:
    """Keep Ray's and Ray Train's INFO lines out of the job's log in this process; returns the
    ``RunConfig(logging_config=…)`` that does it on the Train controller and workers (None on a Ray without it).

    Called by the driver and again by the training loop (a Ray Train worker, or the driver itself in local mode):
    the ``ray`` logger goes to WARNING ("Running in local mode", "Moving model to device", "Reported metrics: …")
    and the root logger's handlers (a Train worker's console) get a :class:`RayInfoFilter`.
    """
    import ray.train

    logging.getLogger("ray").setLevel(RAY_LOG_LEVEL)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RayInfoFilter) for f in handler.filters):
            handler.addFilter(RayInfoFilter())
    config = getattr(ray.train, "LoggingConfig", None)
    return config(log_level=RAY_LOG_LEVEL) if config is not None else None


def ray_lock_path() -> str:
    return os.environ.get("STRATA_RAY_LOCK", f"/tmp/strata-ray-{os.getuid()}.lock")


# Longest part of a Ray socket path below its temp dir:
# "/session_<%Y-%m-%d_%H-%M-%S_%f>_<pid up to 7 digits>/sockets/plasma_store.<n>".
RAY_SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.9")
AF_UNIX_PATH_MAX = 107


def ray_temp_dir() -> str:
    """A new, short temp dir for a local Ray: under ``$RAY_TMPDIR`` / ``$TMPDIR`` when its socket paths fit.

    The caller removes it. Falls back to ``/tmp/strata-ray-<uid>-<pid>`` when the job's temp dir is
    too long for Ray's AF_UNIX sockets (or not writable).
    """
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    # mkdtemp's name is "ray-" + 8 characters; check before creating anything.
    if len(os.path.join(os.path.abspath(base), "ray-xxxxxxxx").encode()) + RAY_SOCKET_SUFFIX <= AF_UNIX_PATH_MAX:
        with contextlib.suppress(OSError):
            return tempfile.mkdtemp(prefix="ray-", dir=base)
    fallback = f"/tmp/strata-ray-{os.getuid()}-{os.getpid()}"
    os.makedirs(fallback, exist_ok=True)
    return fallback


def visible_gpus() -> int:
    """GPUs this process can use (honours ``CUDA_VISIBLE_DEVICES``, which SLURM sets for ``--gpus``)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_address(address: str | None) -> str | None:
    """The Ray cluster to join: the explicit address, else ``$RAY_ADDRESS``, else None (start a local one)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def job_resources(threads: int, gpus: int, parts: int = 1) -> dict[str, float]:
    """What each of ``parts`` Ray workers of a job asks for: its share of the job's ``threads`` and ``gpus``.

    On the run-wide cluster this is the job's exact share of what Snakemake gave it, so Ray places the job
    at once (Snakemake already checked that the cores and GPUs are free) and two jobs never share a GPU.
    """
    parts = max(1, parts)
    share = {"CPU": max(1, threads) / parts}
    if gpus > 0:
        share["GPU"] = gpus / parts
    return share


@contextlib.contextmanager
def ray_session(num_cpus: int, num_gpus: int = 0, address: str | None = None) -> Iterator[dict[str, float]]:
    """Join the external or the run-wide Ray cluster, or start a private one, for one job; leave it afterwards.

    Yields the cluster's resources. Fails at once with a clear message when the job asks for GPUs
    that Ray cannot see (Ray would otherwise wait forever for an infeasible request).
    """
    import ray

    address = resolve_address(address)
    cluster = os.environ.get(CLUSTER_ENV) if address is None else None
    # A private Ray is told how many GPUs it has (num_gpus), so it would believe in GPUs that do not
    # exist: check the devices before starting anything.
    if address is None and not cluster and num_gpus > 0 and visible_gpus() < num_gpus:
        raise StrataError(f"this job asks for {num_gpus} GPU(s) but this machine shows {visible_gpus()} "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                          where="resources.gpu", fix=_GPU_FIX)
    lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if address is None and not cluster:
        lock = file_lock(ray_lock_path(), "waiting for another local Ray job on this machine to finish ...")
    # What Ray prints for its workers and actors reaches the job's log without colour codes and without the
    # PlacementGroupCleaner's traceback (workflow/joblog.py), from ray.init to ray.shutdown.
    with lock, ray_noise_filtered():
        start = time.time()
        # Settings for the Ray processes this job starts (see RAY_ENV_DEFAULTS; the environment wins). A Ray
        # cluster started elsewhere keeps its own: docs/cluster.md says which to export there.
        for var, value in RAY_ENV_DEFAULTS.items():
            os.environ.setdefault(var, value)
        temp_dir, guard = None, None
        if cluster:
            from workflow.raycluster import wait_for_cluster

            address = wait_for_cluster(cluster)
            ray.init(address=address, logging_level="WARNING")
            how = f"joined the run's Ray cluster {address}"
        elif address is None:
            temp_dir = ray_temp_dir()
            # Ray 2.60 turns token authentication on for a new local cluster (RAY_AUTH_MODE unset), with a
            # warning that says so in every job's log: kept out of it (errors still show).
            logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.ERROR)
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     _temp_dir=temp_dir, logging_level="WARNING", configure_logging=True)
            from workflow.raycluster import start_guard

            guard = start_guard()  # Ray's agents outlive a killed driver: the guard ends them
            how = f"started a private local Ray (temp dir {temp_dir})"
        else:
            ray.init(address=address, logging_level="WARNING")
            how = f"joined {address}"
        failed = True
        try:
            resources = ray.cluster_resources()
            print(f"ray: {how} in {time.time() - start:.1f}s, cluster resources CPU={resources.get('CPU', 0):g} "
                  f"GPU={resources.get('GPU', 0):g}; this job asks for CPU={num_cpus} GPU={num_gpus}", flush=True)
            if num_gpus > 0 and resources.get("GPU", 0) < num_gpus:
                raise StrataError(f"this job asks for {num_gpus} GPU(s) but the Ray cluster at {address} has "
                                  f"{resources.get('GPU', 0):g}", where="resources.gpu", fix=_GPU_FIX)
            yield resources
            failed = False
        finally:
            ray.shutdown()
            if guard is not None:  # a clean end: nothing left to guard
                guard.terminate()
                guard.wait()
            if temp_dir is not None:
                if failed:  # keep Ray's session logs for the post-mortem
                    print(f"ray: session logs kept in {temp_dir}", file=sys.stderr, flush=True)
                else:
                    shutil.rmtree(temp_dir, ignore_errors=True)


_GPU_FIX = ("run on a machine (or SLURM partition) with GPUs, or set the rule's gpu resource to 0 "
            "(e.g. --set-resources pretrain:gpu=0).")
