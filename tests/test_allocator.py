"""The malloc settings of the stages' processes (workflow/allocator.py): freed buffers are kept, not faulted in anew."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workflow import allocator
from workflow.distributed import RAY_ENV_DEFAULTS

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
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_training_steps_keep_their_buffers() -> None:
    default, kept = _faults_per_step("default"), _faults_per_step("keep")
    assert default > 500  # glibc's defaults: megabytes of buffers unmapped or trimmed, and faulted in anew
    assert kept < 0.25 * default


def test_ray_processes_get_the_same_settings() -> None:
    assert {k: RAY_ENV_DEFAULTS[k] for k in allocator.ENV} == allocator.ENV
    assert allocator.ENV == {"MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD),
                             "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD)}
