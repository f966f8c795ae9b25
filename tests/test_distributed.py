"""Ray inside jobs (workflow.distributed): short temp dirs, GPU requests that cannot be met, two private Rays
that become ready at once on one machine (serialised, neither colliding nor deadlocking), and the local study's
Ray jobs on the run's one cluster (tests/test_raycluster.py tests that cluster itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from workflow.distributed import AF_UNIX_PATH_MAX, RAY_SOCKET_SUFFIX, ray_session, ray_temp_dir, visible_gpus
from workflow.errors import StrataError

REPO = Path(__file__).resolve().parent.parent


def _use_tmpdir(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", path)
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its first answer


def test_ray_temp_dir_lives_in_a_short_job_tmpdir(monkeypatch: pytest.MonkeyPatch) -> None:
    base = tempfile.mkdtemp(prefix="sj", dir="/tmp")  # like Snakemake's tmpdir resource / SLURM's job tmp
    _use_tmpdir(monkeypatch, base)
    path = ray_temp_dir()
    try:
        assert Path(path).parent == Path(base) and Path(path).is_dir()
        assert len(path.encode()) + RAY_SOCKET_SUFFIX <= AF_UNIX_PATH_MAX
    finally:
        os.rmdir(path)
        os.rmdir(base)


def test_ray_temp_dir_falls_back_when_the_tmpdir_is_too_long(monkeypatch: pytest.MonkeyPatch) -> None:
    base = Path(tempfile.mkdtemp(prefix="sj", dir="/tmp"))
    long = base / ("x" * 50)
    long.mkdir()
    _use_tmpdir(monkeypatch, str(long))
    path = ray_temp_dir()
    try:
        assert path == f"/tmp/strata-ray-{os.getuid()}-{os.getpid()}" and Path(path).is_dir()
        assert not any(long.iterdir())
    finally:
        os.rmdir(path)
        long.rmdir()
        base.rmdir()


@pytest.mark.skipif(visible_gpus() > 0, reason="this machine has a GPU")
def test_gpu_request_without_gpus_fails_at_once() -> None:
    import ray

    start = time.perf_counter()
    with pytest.raises(StrataError, match=r"asks for 1 GPU\(s\) but this machine shows 0") as err:
        with ray_session(num_cpus=1, num_gpus=1):
            pytest.fail("Ray started without a GPU")
    assert "gpu=0" in str(err.value) and "resources.gpu" in str(err.value)
    assert not ray.is_initialized() and time.perf_counter() - start < 5


JOB = """
import json, sys, time
import ray
from workflow.distributed import ray_session

with ray_session(num_cpus=1):
    start = time.time()
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
    time.sleep(1)
    end = time.time()
print(json.dumps([start, end]))
"""


def test_two_local_ray_jobs_ready_at_once_take_turns() -> None:
    """What two Snakemake jobs (or two SLURM jobs on one node) do: the flock serialises their local Rays."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    procs = [subprocess.Popen([sys.executable, "-c", JOB], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
    spans = sorted(json.loads(out.strip().splitlines()[-1]) for out, _ in results)
    assert spans[0][1] <= spans[1][0], spans  # one Ray after the other
    assert any("waiting for another local Ray job" in err for _, err in results)


@pytest.mark.e2e
def test_the_local_study_ran_without_starting_ray(study: Path) -> None:
    """`snakemake --cores 2` on configs/test.yaml: every job has one CPU thread, so pretrain runs in Ray Train's
    local mode and embed runs its encoder in the job's process; nothing needs Ray, so the run starts no cluster
    and no job starts a Ray of its own. (Jobs that need Ray join the run's one cluster: tests/test_raycluster.py.)"""
    from workflow.raycluster import SUPERVISOR_LOG, cluster_dir

    results = study / "results" / "strata-test"
    logs = [log for stage in ("embed", "embed_pool") for log in (results / "logs" / stage).rglob("*.log")]
    assert len(logs) >= 2
    for log in logs:
        text = log.read_text()
        assert "embed: in this process" in text and "ray: " not in text, log  # no Ray session
    for log in (results / "logs" / "pretrain").rglob("*.log"):
        assert "pretrain: Ray Train local mode" in log.read_text(), log
        assert "started a private local Ray" not in log.read_text(), log
    assert not (cluster_dir(results) / SUPERVISOR_LOG).exists()
