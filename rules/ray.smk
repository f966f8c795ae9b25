# One Ray cluster per local Snakemake run (workflow/raycluster.py, docs/cluster.md): started by `onstart`
# when the run has Ray jobs, attached to by every Ray job, stopped by `onsuccess` / `onerror` (and by its
# supervisor as soon as this Snakemake process is gone: Ctrl-C, kill).

import os
import sys

# Rules whose jobs use Ray; curate only with more than one thread (its k-means then runs on Ray actors).
RAY_RULES = {"pretrain", "embed_pool", "embed_probes"}


def _resource_value(name):
    value = workflow.global_resources.get(name)
    value = getattr(value, "value", value)
    return int(value) if isinstance(value, (int, float)) and value < 2**31 else None


def _run_needs_ray():
    try:
        jobs = list(workflow.dag.needrun_jobs())
    except Exception:  # an older Snakemake without this API: assume it does
        return True
    return any(job.rule.name in RAY_RULES or (job.rule.name == "curate" and job.threads > 1) for job in jobs)


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
