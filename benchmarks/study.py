"""A whole study end to end: wall time, compute time, efficiency and each stage's fixed cost per job.

    python benchmarks/study.py [--configfile configs/test.yaml] [--cores 2] [--label after]

Runs the real ``snakemake`` on the repository's workflow in a temporary directory (default study:
``configs/test.yaml``) and reads, per job, its wall time (the ``s`` column of its Snakemake benchmark file) and
its compute time: the seconds it spent in its own work (training steps, embedding batches, clustering, metrics,
drawing), measured inside the job and printed to its log as ``strata: compute_s=…`` (``workflow/timing.py``).

* ``compute_s``: the sum of the jobs' compute times;
* ``efficiency`` = compute_s / (wall_s × cores): the share of the cores' time spent on the study's own work;
* per stage, ``fixed_cost_s``: the median over its jobs of job wall minus job compute (start, imports, Ray,
  MLflow, teardown).

Writes ``benchmarks/results/study.json`` (the latest run; earlier runs given a ``--label`` stay under ``runs``)
and prints a table. The machine's load average before and after is recorded: on a shared machine other
processes take cores from the study.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import RESULTS, print_table  # noqa: E402
from workflow.config import load_study, study_results  # noqa: E402
from workflow.timing import COMPUTE_PREFIX  # noqa: E402

COMPUTE_RE = re.compile(re.escape(COMPUTE_PREFIX) + r"([0-9.]+)")


def job_compute(log: Path) -> float | None:
    """The last ``compute_s`` a job printed to its log (None when it printed none)."""
    if not log.is_file():
        return None
    found = COMPUTE_RE.findall(log.read_text(errors="replace"))
    return float(found[-1]) if found else None


def collect(results: Path) -> list[dict[str, Any]]:
    """One row per job: stage, job, wall (Snakemake's benchmark file) and compute (the job's log)."""
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(results / "benchmarks").with_suffix("")
        lines = tsv.read_text().splitlines()
        wall = float(lines[1].split("\t")[0])
        compute = job_compute(results / "logs" / rel.with_suffix(".log"))
        rows.append({"stage": rel.parts[0], "job": str(rel), "wall_s": wall, "compute_s": compute})
    return rows


def summarise(jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = {}
    for stage in sorted({j["stage"] for j in jobs}):
        mine = [j for j in jobs if j["stage"] == stage]
        timed = [j for j in mine if j["compute_s"] is not None]
        stages[stage] = {
            "jobs": len(mine),
            "median_wall_s": statistics.median(j["wall_s"] for j in mine),
            "median_compute_s": statistics.median(j["compute_s"] for j in timed) if timed else None,
            "fixed_cost_s": statistics.median(j["wall_s"] - j["compute_s"] for j in timed) if timed else None,
            "untimed_jobs": len(mine) - len(timed),
        }
    return stages


def run_study(configfile: Path, cores: int, workdir: Path) -> tuple[float, float, str]:
    """Run Snakemake on the study; returns its wall seconds, the CPU seconds of it and its jobs, and its output."""
    env = dict(os.environ)
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(var, None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", str(cores), "--configfile", str(configfile)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed (exit {proc.returncode}); study kept in {workdir}\n{proc.stderr[-4000:]}")
    return wall, cpu, proc.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "configs" / "test.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--label", default=None, help="keep this run under runs.<label> in study.json")
    parser.add_argument("--keep", action="store_true", help="keep the study's temporary directory")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="run the study in this folder and keep it (e.g. the checkout, for make readme-results)")
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="strata-study-"))
    load_before = os.getloadavg()
    wall, cpu, _ = run_study(args.configfile.resolve(), args.cores, workdir)
    load_after = os.getloadavg()
    study = load_study(args.configfile)
    jobs = collect(workdir / study_results(study))  # results/<study>/
    if not jobs:
        sys.exit(f"no job benchmarks under {workdir / study_results(study)}; study kept in {workdir}")
    stages = summarise(jobs)
    compute = sum(j["compute_s"] or 0.0 for j in jobs)
    record: dict[str, Any] = {
        "label": args.label, "configfile": str(args.configfile), "cores": args.cores, "machine_cpus": os.cpu_count(),
        "wall_s": round(wall, 2), "compute_s": round(compute, 2),
        "efficiency": round(compute / (wall * args.cores), 4),
        "cpu_s": round(cpu, 2), "jobs": len(jobs), "job_wall_sum_s": round(sum(j["wall_s"] for j in jobs), 2),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "stages": stages, "per_job": jobs,
    }
    print_table([{"stage": s, "jobs": v["jobs"], "median wall s": v["median_wall_s"],
                  "median compute s": v["median_compute_s"] if v["median_compute_s"] is not None else "-",
                  "fixed cost s": v["fixed_cost_s"] if v["fixed_cost_s"] is not None else "-"}
                 for s, v in stages.items()])
    print(f"\nwall {wall:.1f} s on {args.cores} cores, compute {compute:.1f} s, efficiency "
          f"{record['efficiency']:.3f}, {len(jobs)} jobs (job walls sum {record['job_wall_sum_s']:.0f} s), "
          f"CPU {cpu:.0f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "study.json"
    runs = {}
    if path.is_file():
        try:
            runs = json.loads(path.read_text()).get("runs", {})
        except (json.JSONDecodeError, AttributeError):
            runs = {}
    if args.label:
        runs[args.label] = {k: v for k, v in record.items() if k != "per_job"}
    path.write_text(json.dumps({**record, "runs": runs}, indent=2) + "\n")
    print(f"wrote {path}")
    if args.keep or args.workdir:
        print(f"study kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
