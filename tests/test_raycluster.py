"""The run-wide Ray cluster of a local Snakemake run (workflow/raycluster.py, rules/ray.smk), with real Snakemake
and Ray: started once, shared by Ray jobs that run side by side with their share of CPUs and (declared) GPUs,
gone after success, error, Ctrl-C and kill -9, and a driver's death takes its Ray Train worker with it.

The workflow runs are of tests/ray_study (the real hooks around stand-in Ray jobs: seconds, not minutes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from workflow.raycluster import (
    STATE,
    SUPERVISOR_LOG,
    alive,
    cluster_dir,
    cluster_processes,
    read_state,
    reap,
    start_cluster,
    stop_cluster,
    wait_for_cluster,
)

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "tests" / "ray_study" / "Snakefile"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("RAY_ADDRESS", "STRATA_RAY_CLUSTER", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def _study(workdir: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
           "--cores", "2", *args]
    # A process group of its own, as a shell gives a foreground command (Ctrl-C signals the whole group).
    return subprocess.Popen(cmd, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def _assert_cluster_gone(cdir: Path, timeout: float = 45) -> None:
    _wait(lambda: not cluster_processes(cdir), timeout, f"the Ray processes of {cdir} to end")
    _wait(lambda: not (cdir / STATE).exists(), timeout, f"{cdir / STATE} to go")


def test_a_run_starts_ray_once_and_ray_jobs_share_it_side_by_side(tmp_path: Path) -> None:
    """Two studies at once, each: one cluster (2 CPUs, 2 declared GPUs), two 1-CPU/1-GPU jobs overlapping."""
    workdirs = [tmp_path / "a", tmp_path / "b"]
    procs = [_study(w, "--resources", "gpu=2", "--config", "gpu=1", "jobs=2", "sleep=4") for w in workdirs]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    addresses = []
    for workdir in workdirs:
        cdir = cluster_dir(workdir / "results")
        jobs = [json.loads((workdir / "results" / "pretrain" / f"{i}.json").read_text()) for i in range(2)]
        assert {j["cluster"] for j in jobs} == {str(cdir)}
        assert len({j["address"] for j in jobs}) == 1  # both joined the one cluster of their run ...
        log = (cdir / SUPERVISOR_LOG).read_text()
        assert log.count(" up in ") == 1 and "(CPU 2, GPU 2)" in log, log  # ... started once, sized to the run
        assert max(j["task_start"] for j in jobs) < min(j["task_end"] for j in jobs), jobs  # side by side
        assert sorted(g for j in jobs for g in j["gpu_ids"]) == ["0", "1"], jobs  # each on its own GPU
        assert "asked to stop" in log, log
        _assert_cluster_gone(cdir)
        addresses.append(jobs[0]["address"])
    assert addresses[0] != addresses[1]  # two studies, two clusters, no shared port


def test_a_failed_run_leaves_no_ray(tmp_path: Path) -> None:
    proc = _study(tmp_path, "--config", "jobs=2", "sleep=1", "fail=0")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode != 0 and "failing on purpose" in out, out[-4000:]
    cdir = cluster_dir(tmp_path / "results")
    assert "asked to stop" in (cdir / SUPERVISOR_LOG).read_text()
    _assert_cluster_gone(cdir)


def _running_task(workdir: Path, proc: subprocess.Popen) -> int:
    """Wait until a job's Ray task runs; its pid."""
    markers = workdir / "results" / "pretrain"
    _wait(lambda: any(markers.glob("*.running")) or proc.poll() is not None, 300,
          "a Ray task of the study to start")
    assert proc.poll() is None, proc.communicate()[0][-4000:]
    return int(next(markers.glob("*.running")).read_text())


def test_ctrl_c_leaves_no_ray(tmp_path: Path) -> None:
    """Ctrl-C in the terminal: SIGINT to Snakemake's foreground process group (Snakemake and its jobs)."""
    proc = _study(tmp_path, "--config", "jobs=2", "sleep=300")
    task = _running_task(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    _wait(lambda: not alive(task), 45, "the job's Ray task to end")
    _assert_cluster_gone(cluster_dir(tmp_path / "results"))


def test_a_killed_runs_cluster_is_recovered(tmp_path: Path) -> None:
    """kill -9 of Snakemake and of the cluster's supervisor: the cluster goes, and the next run starts afresh."""
    proc = _study(tmp_path, "--config", "jobs=1", "sleep=300")
    _running_task(tmp_path, proc)
    cdir = cluster_dir(tmp_path / "results")
    state = read_state(cdir)
    assert state.get("supervisor_pid"), (state, (cdir / SUPERVISOR_LOG).read_text())
    supervisor = state["supervisor_pid"]
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its jobs
    os.kill(supervisor, signal.SIGKILL)
    proc.communicate(timeout=60)
    _wait(lambda: not cluster_processes(cdir), 60, "the killed run's Ray to end")
    unlock = _study(tmp_path, "--unlock")  # Snakemake's own lock on the folder outlives a kill -9
    assert unlock.wait(timeout=300) == 0
    rerun = _study(tmp_path, "--config", "jobs=1", "sleep=1", "--rerun-incomplete")
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out[-4000:]
    assert json.loads((tmp_path / "results" / "pretrain" / "0.json").read_text())["cluster"] == str(cdir)
    _assert_cluster_gone(cdir)


def test_leftovers_of_a_dead_supervisor_are_reaped(tmp_path: Path) -> None:
    """A cluster dir whose supervisor is gone but whose Ray processes are not (stand-ins here) is cleaned up."""
    cdir = cluster_dir(tmp_path / "results")
    cdir.mkdir(parents=True)
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": f"{cdir}/auth_token"}  # what the cluster's workers inherit
    worker = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
    daemon = subprocess.Popen(["sleep", "301"], start_new_session=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (cdir / STATE).write_text(json.dumps({"supervisor_pid": dead.pid, "ray_pgid": daemon.pid, "address": "x:1"}))
    try:
        assert set(cluster_processes(cdir)) == {worker.pid}
        assert reap(cdir) == 2
        worker.wait(timeout=10)
        daemon.wait(timeout=10)
        assert not (cdir / STATE).exists()
    finally:
        for p in (worker, daemon):
            if p.poll() is None:
                p.kill()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_a_pretrain_driver_leaves_no_training_worker(tiny_pool: tuple[Path, Path], tmp_path: Path,
                                                              sig: signal.Signals,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A pretrain job on the run's cluster (one Ray Train worker) whose driver dies: worker and controller go."""
    pool, selection = tiny_pool
    monkeypatch.setenv("STRATA_RAY_CLUSTER", "")  # start_cluster exports it: restored (unset) after the test
    cdir = start_cluster(tmp_path / "results", num_cpus=2)
    try:
        wait_for_cluster(cdir, timeout=300)
        params = {"method": "simclr", "steps": 100000, "batch_size": 64, "embedding_dim": 16,
                  "projector_hidden_dim": 32, "num_workers": 1, "checkpoint_every": 1}
        log = tmp_path / "pretrain.log"
        with open(log, "w") as out:
            driver = subprocess.Popen(
                ["strata", "pretrain", "--params", json.dumps(params), "--pool", str(pool), "--selection",
                 str(selection), "--encoder", str(tmp_path / "out" / "encoder.safetensors"), "--history",
                 str(tmp_path / "out" / "history.parquet"), "--threads", "1", "--work-root", str(tmp_path / "work")],
                env={**_env(), "STRATA_RAY_CLUSTER": str(cdir)}, stdout=out, stderr=subprocess.STDOUT)
        _wait(lambda: "pretrain: step" in log.read_text() or driver.poll() is not None, 300, "training to start")
        assert driver.poll() is None, log.read_text()[-4000:]
        train = [p for p in cluster_processes(cdir) if _title(p).startswith(("ray::RayTrainWorker", "ray::Train"))]
        assert any(_title(p).startswith("ray::RayTrainWorker") for p in train), [_title(p) for p in train]
        driver.send_signal(sig)
        driver.wait(timeout=60)
        _wait(lambda: not any(alive(p) for p in train), 60, "the Train worker and controller to end")
        work = tmp_path / "work"
        before = sorted((str(p), p.stat().st_mtime) for p in work.rglob("*") if p.is_file())
        time.sleep(3)
        after = sorted((str(p), p.stat().st_mtime) for p in work.rglob("*") if p.is_file())
        assert before == after  # nothing writes into the work folder any more
    finally:
        stop_cluster(cdir)
    _assert_cluster_gone(cdir)


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


PRIVATE_JOB = """
import sys, time
import ray
from workflow.distributed import ray_session

with ray_session(num_cpus=1):
    actor = ray.remote(num_cpus=1)(type("Spin", (), {"spin": lambda self: time.sleep(600)})).remote()
    actor.spin.remote()
    time.sleep(2)
    print("READY", flush=True)
    time.sleep(600)
"""


def test_a_killed_driver_of_a_private_ray_leaves_no_ray_process(tmp_path: Path) -> None:
    """Outside a Snakemake run (``strata`` by hand, SLURM) a job starts a private Ray; kill -9 of its driver
    leaves none of its processes, Ray's agents included (the guard of workflow.raycluster)."""
    from workflow.raycluster import descendants

    env = {**_env(), "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-c", PRIVATE_JOB], env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert driver.stdout is not None
    for line in driver.stdout:
        if "READY" in line:
            break
    started = [p for p in descendants(driver.pid) if _title(p)]
    assert any(_title(p).startswith("ray::") for p in started), [_title(p) for p in started]
    driver.kill()
    driver.wait()
    _wait(lambda: not [p for p in started if alive(p)], 30,
          f"the private Ray's processes to end: {[_title(p) for p in started if alive(p)]}")
