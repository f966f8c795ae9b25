"""Shared by the loss tests: seeded random tensors, and a function run on every rank of a gloo group (CPU)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workflow.ui import free_port


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard normal values of ``shape`` from a generator seeded with ``seed``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...], out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out[rank] = fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable[..., Any], world: int, *args: Any) -> dict[int, Any]:
    """``{rank: fn(rank, world, *args)}`` from ``world`` spawned processes in one gloo group.

    ``fn`` must be a module-level function (it is pickled into each process) and return picklable values.
    """
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_entry, args=(world, free_port(), fn, args, out), nprocs=world, join=True)
    return dict(out)
