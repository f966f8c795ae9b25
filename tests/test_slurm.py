"""The test study through a real SLURM scheduler (profiles/slurm-ci on the cluster of .ci/slurm-setup.sh).

Every rule becomes an ``sbatch`` job (checked with ``sacct``: rule, partition, account, state), Ray stages run
on partition ``cpu2`` and the others on ``cpu``, and the results equal those of the local run of the same
variants (the session's ``study`` fixture, configs/test.yaml): a variant's outputs do not depend on the other
variants of the study, so the reduced study here (seed 0, curations none and random) is compared with that
run's seed-0 variants instead of paying for a second local run.

Without SLURM the tests skip, unless ``STRATA_REQUIRE_SLURM=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "profiles" / "slurm-ci"
CURATIONS = ("none", "random")
RAY_RULES = {"pretrain", "embed_pool", "embed_probes"}
TOLERANCE = 1e-6
pytestmark = pytest.mark.slurm


def slurm_problem() -> str | None:
    """Why the SLURM test cluster cannot be used here, or None."""
    for tool in ("sbatch", "sacct", "sinfo"):
        if shutil.which(tool) is None:
            return f"SLURM is not installed ({tool} not found; run `sudo .ci/slurm-setup.sh`)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -r requirements.lock)"
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%R %t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the SLURM controller does not answer (sinfo timed out; run `sudo .ci/slurm-setup.sh`)"
    if info.returncode != 0:
        return f"the SLURM controller does not answer: {info.stderr.strip()} (run `sudo .ci/slurm-setup.sh`)"
    partitions = {line.split()[0] for line in info.stdout.splitlines() if line.strip()}
    if not {"cpu", "cpu2"} <= partitions:
        return f"partitions cpu and cpu2 of .ci/slurm-setup.sh not found (sinfo lists {sorted(partitions)})"
    return None


@pytest.fixture(scope="module", autouse=True)
def _require_slurm() -> None:
    problem = slurm_problem()
    if problem is None:
        return
    if os.environ.get("STRATA_REQUIRE_SLURM") == "1":
        pytest.fail(f"STRATA_REQUIRE_SLURM=1 but {problem}")
    pytest.skip(f"{problem}; set STRATA_REQUIRE_SLURM=1 to make this a failure")


@dataclass
class SlurmStudy:
    workdir: Path
    run_id: str  # the plugin's SLURM job name for every job of the run
    since: str  # sacct --starttime
    output: str
    seconds: float


@pytest.fixture(scope="module")
def slurm_study(tmp_path_factory: pytest.TempPathFactory) -> SlurmStudy:
    workdir = tmp_path_factory.mktemp("slurm-study")
    config = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    config["seeds"] = [0]
    config["curations"] = {name: config["curations"][name] for name in CURATIONS}
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))

    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    # sbatch --export=ALL hands this PATH to the jobs, which call `strata` from the venv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    since = (datetime.now() - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", str(PROFILE), "--configfile", str(configfile),
           "--retries", "0",  # fail fast in the test
           "results/strata-test/summary.csv", "results/strata-test/summary.md"]
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=workdir)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    run_id = re.search(r"SLURM run ID: (\S+)", output)
    assert run_id, output[-3000:]
    print(f"SLURM study: {seconds:.0f} s")
    return SlurmStudy(workdir, run_id.group(1), since, output, seconds)


def planned_jobs(output: str) -> collections.Counter[str]:
    """Jobs per rule from Snakemake's first 'Job stats' table, without the local target rule `all`."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts: collections.Counter[str] = collections.Counter()
    for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE):
        if rule not in ("all", "total"):
            counts[rule] = int(count)
    return counts


def sacct_jobs(study: SlurmStudy, expected: int) -> list[dict[str, str]]:
    """The run's jobs as accounting records them (records reach slurmdbd a few seconds after a job ends)."""
    fields = ["JobID", "Partition", "Account", "State", "Comment"]
    for _ in range(30):
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", study.since, "--name", study.run_id,
                              "-o", ",".join(fields)], capture_output=True, text=True, check=True).stdout
        jobs = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]
        if len(jobs) >= expected and all(j["State"] == "COMPLETED" for j in jobs):
            return jobs
        time.sleep(1)
    return jobs


def test_every_rule_ran_as_a_slurm_job(slurm_study: SlurmStudy) -> None:
    planned = planned_jobs(slurm_study.output)
    assert {"data", "curate", "pretrain", "embed_probes", "evaluate", "summarize"} <= set(planned), planned
    jobs = sacct_jobs(slurm_study, sum(planned.values()))
    assert all(j["State"] == "COMPLETED" and j["Account"] == "strata" for j in jobs), jobs
    # The plugin's --comment is rule_<rule>[_wildcards_<values>].
    rules = [j["Comment"].removeprefix("rule_").split("_wildcards_")[0] for j in jobs]
    assert collections.Counter(rules) == planned, jobs
    partitions = {rule: {j["Partition"] for j, r in zip(jobs, rules, strict=True) if r == rule} for rule in planned}
    for rule, used in partitions.items():
        assert used == ({"cpu2"} if rule in RAY_RULES else {"cpu"}), (rule, used)


def test_results_equal_the_local_run(slurm_study: SlurmStudy, request: pytest.FixtureRequest) -> None:
    """Curated ids identical, every metric within 1e-6 of the local run's seed-0 variants."""
    # Asked for here, not as an argument: a session fixture would be set up before the SLURM check skips.
    study: Path = request.getfixturevalue("study")
    mine, local = slurm_study.workdir / "results" / "strata-test" / "tiny", study / "results" / "strata-test" / "tiny"
    for curation in CURATIONS:
        ids = pq.read_table(mine / "curate" / curation / "seed0" / "selection.parquet").column("id").to_pylist()
        ref = pq.read_table(local / "curate" / curation / "seed0" / "selection.parquet").column("id").to_pylist()
        assert ids == ref, curation
        got = json.loads((mine / "evaluate" / curation / "simclr" / "seed0" / "metrics.json").read_text())["metrics"]
        want = json.loads((local / "evaluate" / curation / "simclr" / "seed0" / "metrics.json").read_text())["metrics"]
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert math.isclose(got[key], value, rel_tol=0, abs_tol=TOLERANCE), (curation, key, got[key], value)

    rows = pd.read_csv(slurm_study.workdir / "results" / "strata-test" / "summary.csv")
    ref_rows = pd.read_csv(study / "results" / "strata-test" / "summary.csv")
    ref_rows = ref_rows[(ref_rows["seed"] == 0) & ref_rows["curation"].isin(CURATIONS)]
    assert len(rows) == len(ref_rows) == len(CURATIONS)
    rows, ref_rows = (df.sort_values("curation").reset_index(drop=True) for df in (rows, ref_rows))
    numeric = [c for c in ref_rows.select_dtypes("number").columns if c in rows.columns]
    assert "knn_accuracy" in numeric
    diff = (rows[numeric] - ref_rows[numeric]).abs().max()
    assert (diff.fillna(0) <= TOLERANCE).all(), diff[diff > TOLERANCE]


def test_jobs_logged_to_one_mlflow_store(slurm_study: SlurmStudy) -> None:
    """Jobs on the cluster log their stage runs into the study's store (a shared file system here)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{slurm_study.workdir / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("strata-test")
    stages = collections.Counter(run.data.tags.get("strata.stage")
                                 for run in client.search_runs([exp.experiment_id], max_results=1000)
                                 if run.data.tags.get("strata.kind") == "stage")
    planned = planned_jobs(slurm_study.output)
    # Stage runs are named after the job's stage (embed_probes logs as "embed").
    assert stages["pretrain"] == planned["pretrain"] and stages["evaluate"] == planned["evaluate"], stages
    assert stages["data"] == 1 and stages["curate"] == planned["curate"], stages


def test_two_ray_jobs_on_one_node_take_turns() -> None:
    """Two 1-CPU SLURM jobs on the same node, each starting a local Ray: both run, their Rays one after the other."""
    from test_distributed import JOB

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    name = f"strata-ray-turns-{os.getpid()}"
    cmd = ["srun", "-J", name, "-p", "cpu2", "-A", "strata", "-n", "1", "-c", "1", "--mem=1000", "-t", "10",
           sys.executable, "-c", JOB]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
    spans = sorted(json.loads(out.strip().splitlines()[-1]) for out, _ in results)
    assert spans[0][1] <= spans[1][0], spans
    assert any("waiting for another local Ray job" in err for _, err in results)
    # SLURM ran the two jobs at the same time on one node (so only the lock kept their Rays apart).
    fields = ["JobID", "NodeList", "Start", "End"]
    for _ in range(30):
        out = subprocess.run(["sacct", "-X", "-n", "-P", "--name", name, "-o", ",".join(fields)],
                             capture_output=True, text=True, check=True).stdout
        jobs = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]
        if len(jobs) == 2 and all(j["End"] not in ("", "Unknown") for j in jobs):
            break
        time.sleep(1)
    assert len(jobs) == 2 and jobs[0]["NodeList"] == jobs[1]["NodeList"], jobs
    assert max(j["Start"] for j in jobs) < min(j["End"] for j in jobs), jobs
