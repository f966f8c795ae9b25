# One Ray cluster per local Snakemake run (workflow/raycluster.py, docs/cluster.md): started by `onstart`
# when the run has Ray jobs, attached to by every Ray job, stopped by `onsuccess` / `onerror` (and by its
# supervisor as soon as this Snakemake process is gone: Ctrl-C, kill).

import os
import sys

# Rules whose jobs use Ray: embed with more than one thread or a GPU (with one CPU thread it runs the encoder in
# the job's process); pretrain with GPUs or `num_workers` (on CPU with one worker it runs in Ray Train's local
# mode, in the job's process); curate with more than one thread (k-means on Ray actors).
EMBED_RULES = {"embed_pool", "embed_probes", "embed_backbone"}
ALWAYS_RAY = set()  # rules whose jobs always use Ray: none of the workflow's (tests/ray_study's stand-in jobs)


def _resource_value(name):
    value = workflow.global_resources.get(name)
    value = getattr(value, "value", value)
    return int(value) if isinstance(value, (int, float)) and value < 2**31 else None


def _run_needs_ray():
    try:
        jobs = list(workflow.dag.needrun_jobs())
    except Exception:  # an older Snakemake without this API: assume it does
        return True
    workers = any((cfg or {}).get("num_workers") for cfg in config.get("ssl", {}).values())

    def uses_ray(job):
        name = job.rule.name
        if name in ALWAYS_RAY:
            return True
        try:
            gpu = int(job.resources.get("gpu", 0) or 0) if name == "pretrain" or name in EMBED_RULES else 0
        except Exception:  # resources not evaluable here: assume Ray
            return True
        if name == "pretrain":
            return bool(workers) or gpu > 0
        if name in EMBED_RULES:
            return job.threads > 1 or gpu > 0
        return name == "curate" and job.threads > 1

    return any(uses_ray(job) for job in jobs)


def start_run_cluster():
    """`onstart`: the run-wide Ray cluster, for a local run with Ray jobs and no external cluster."""
    from workflow.raycluster import start_cluster

    if (not workflow.local_exec or not workflow.is_main_process or workflow.touch
            or config["ray"]["address"] or os.environ.get("RAY_ADDRESS") or not _run_needs_ray()):
        return
    cdir = start_cluster(RESULTS, num_cpus=workflow.cores, num_gpus=_resource_value("gpu"))
    print(f"strata: starting the run's Ray cluster ({workflow.cores} CPUs) in {cdir}", file=sys.stderr)


def stop_run_cluster():
    """`onsuccess` / `onerror`: stop the run-wide Ray cluster this run started (if any)."""
    from workflow.raycluster import stop_cluster

    try:
        stop_cluster()
    except Exception as err:  # the supervisor stops it anyway once this process is gone
        print(f"strata: could not stop the run's Ray cluster: {err}", file=sys.stderr)


TRACKING_SPOOL = os.path.abspath(f"{RESULTS}/.work/tracking-spool")
SPOOL_FLUSHERS = []  # the thread that logs spooled records while the run goes on (workflow/spool_flusher.py)


def start_tracking_spool():
    """`onstart`: local jobs spool their MLflow records (workflow/tracking.py, SPOOL_ENV); log a killed run's,
    then log new ones every few seconds while the jobs run, so that the run's end has few left."""
    from workflow.spool_flusher import SpoolFlusher
    from workflow.tracking import SPOOL_ENV, bound_http_retries

    if not workflow.local_exec or not workflow.is_main_process or workflow.touch:
        return
    flush_tracking()
    os.environ[SPOOL_ENV] = TRACKING_SPOOL
    bound_http_retries()  # here, not in the thread: the environment is changed before any job starts
    SPOOL_FLUSHERS.append(SpoolFlusher(TRACKING_SPOOL))
    SPOOL_FLUSHERS[-1].start()


def flush_tracking():
    """`onsuccess` / `onerror` (before attach_job_files): stop the flushing thread, then log what is left
    (the study summary last) in this one process."""
    from workflow.tracking import flush_spool

    logged = 0
    while SPOOL_FLUSHERS:
        flusher = SPOOL_FLUSHERS.pop()
        flusher.stop()
        logged += flusher.logged
        if flusher.error is not None:
            print(f"strata: logging during the run stopped at an error; retrying now: {flusher.error}",
                  file=sys.stderr)
    try:
        n = logged + flush_spool(TRACKING_SPOOL)
    except Exception as err:  # tracking must never turn a finished workflow into a failed one
        print(f"strata: could not log the jobs' records to MLflow (kept in {TRACKING_SPOOL}): {err}",
              file=sys.stderr)
    else:
        if n:
            print(f"strata: logged {n} job record(s) to MLflow", file=sys.stderr)
