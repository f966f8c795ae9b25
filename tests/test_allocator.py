"""The malloc settings of the stages' processes (workflow/allocator.py): freed buffers are kept, not faulted in anew."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from workflow import allocator, cli
from workflow.distributed import RAY_ENV_DEFAULTS

REPO = Path(__file__).resolve().parent.parent

# Ten SimCLR steps of the default study's operating point (MNIST-1D CNN, batch 512) on one thread, after two
# warm-up steps; prints the minor page faults per step.
STEPS = """
import resource, sys
import torch
from workflow import allocator
from workflow.config import validate
from workflow.pretrain.augment import build_augment
from workflow.pretrain.methods import Method, resolved
from workflow.pretrain.models import build_encoder
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
torch.set_num_threads(1)
params = resolved(validate({"method": "simclr", "steps": 12, "batch_size": 512, "temperature": 0.2}, "ssl"), 1024)
spec = {"input_kind": "signal", "input_dim": 40, "embedding_dim": 128}
torch.manual_seed(0)
method = Method(build_encoder(spec), params, 128)
optimizer, augment = method.make_optimizer(), build_augment("signal")
gen = torch.Generator().manual_seed(0)
x = torch.randn(512, 40, generator=gen)
for step in range(12):
    if step == 2:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    v0, v1 = method.views(x, augment, gen)
    method.train_step(method.module, optimizer, v0, v1, step, 12, 0.01)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_step(mode: str) -> float:
    # glibc's defaults in the "default" run: none of the settings may come in from this process's environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
def test_training_steps_keep_their_buffers() -> None:
    default, kept = _faults_per_step("default"), _faults_per_step("keep")
    if default < 200:  # e.g. transparent huge pages or 64 KiB pages: few faults to save on this machine
        pytest.skip(f"glibc's defaults fault only {default:.0f} pages per step here")
    assert kept < 0.25 * default


@pytest.mark.parametrize("env, expected", [
    ({}, [(-3, allocator.MMAP_THRESHOLD), (-1, allocator.TRIM_THRESHOLD)]),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, [(-1, allocator.TRIM_THRESHOLD)]),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, [(-3, allocator.MMAP_THRESHOLD)]),
])
def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                              expected: list[tuple[int, int]]) -> None:
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:  # a function: ctypes' argtypes and restype are set on it
        calls.append((param, value))
        return 1

    # a C library whose mallopt records what keep_freed_memory asks for
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda _name: SimpleNamespace(mallopt=mallopt))
    assert allocator.keep_freed_memory()
    assert calls == expected


def test_every_strata_command_sets_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(cli.allocator, "keep_freed_memory", lambda: calls.append(True))
    outputs = [str(tmp_path / n) for n in ("pool.parquet", "tr.parquet", "te.parquet", "info.json")]
    rc = cli.main(["data", "--name", "x", "--params", '{"kind": "cifar"}', "--pool", outputs[0],
                   "--probe-train", outputs[1], "--probe-test", outputs[2], "--info", outputs[3]])
    assert rc == 2 and calls == [True]  # (a refused config: the cheapest whole command)


def test_ray_processes_and_the_cluster_docs_use_the_same_settings() -> None:
    assert {k: RAY_ENV_DEFAULTS[k] for k in allocator.ENV} == allocator.ENV
    # docs/cluster.md's SLURM script exports them for the Ray it starts by hand
    exported = dict(re.findall(r"(MALLOC_\w+)=(\d+)", (REPO / "docs" / "cluster.md").read_text()))
    assert exported == allocator.ENV
