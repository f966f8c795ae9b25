"""Lloyd passes sharded over Ray actors: the Ray variant of the engine protocol.

With ``workers > 1`` the passes run on Ray actors, one per contiguous row shard (one per GPU when
``device="cuda"`` and the cluster has GPUs); each actor holds its shard and a local engine (with the pruning bounds
of its rows), receives the centroids every iteration and returns per-cluster float64 sums, counts, the inertia
part and the number of changed assignments; the driver reduces them in shard order. Shards are aligned to the chunk
grid, and every assignment is exact, so the assignments equal the in-process run's (the centroids up to the
float64 summation order of the shard partials).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from workflow.kmeans import tuning
from workflow.kmeans.engine import PassResult, local_engine
from workflow.kmeans.source import DataSource, from_numpy_readonly, resolve_device


@contextlib.contextmanager
def ray_context(workers: int, ray_address: str | None = None, num_gpus: int = 0) -> Iterator[None]:
    """Use the already-initialised Ray, or start/join one with :func:`workflow.distributed.ray_session`."""
    import ray

    if ray.is_initialized():
        yield
        return
    from workflow.distributed import ray_session

    with ray_session(num_cpus=workers, num_gpus=num_gpus, address=ray_address):
        yield


def shard_bounds(n: int, shards: int, chunk: int) -> list[tuple[int, int]]:
    """Contiguous row ranges, aligned to the chunk grid when every shard gets at least one chunk."""
    shards = max(1, min(shards, n))
    if n >= shards * chunk:
        n_chunks = -(-n // chunk)
        cuts = [min(n, (i * n_chunks // shards) * chunk) for i in range(shards + 1)]
    else:
        cuts = [i * n // shards for i in range(shards + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


class ShardWorker:
    """Body of the Ray actor: a local engine over one shard, loaded from a memmap path or an array."""

    def __init__(self, data: Any, start: int, stop: int, chunk_size: int | None, device: str,
                 threads: int | None = None, prune: bool | None = None) -> None:
        if threads is not None:  # inside a Ray actor: one CPU each
            torch.set_num_threads(threads)
        if isinstance(data, str):  # a .npy path: open the memmap and slice the shard (still a memmap)
            arr = np.load(data, mmap_mode="r")[start:stop]
        else:  # the shard itself (a read-only array from the object store)
            arr = data
        # the pruning bounds of the shard's rows live here, in the actor, across passes
        self.engine = local_engine(DataSource(arr, resolve_device(device), check=False), chunk_size, prune=prune)

    def accumulate(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
        """One pass over the shard: ``(sums, counts, inertia, changed)`` as NumPy (cheap to ship back)."""
        res = self.engine.accumulate(from_numpy_readonly(centroids))
        return res.sums.cpu().numpy(), res.counts.cpu().numpy(), res.inertia, res.changed

    def finalize(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The shard's final assignment and squared distances."""
        idx, dist = self.engine.finalize(from_numpy_readonly(centroids))
        return idx.cpu().numpy(), dist.cpu().numpy()


class RayLloyd:
    """Lloyd passes on Ray actors, one per contiguous row shard; the driver reduces float64 sums.

    Must be created inside a Ray session (:func:`ray_context`). With ``device="cuda"`` and GPUs in the
    cluster there is one actor per GPU (each asks for one GPU), otherwise ``workers`` CPU actors.
    A memmap source is shipped as its file path (each actor maps its own rows); an in-memory one as
    one array per shard through the object store. With ``prune`` every actor keeps the Yinyang bounds of its
    own rows; assignments are exact either way, so pruning does not change the result.
    """

    def __init__(self, source: DataSource, workers: int, k: int, chunk_size: int | None = None,
                 device: str = "cpu", prune: bool | None = None) -> None:
        import ray

        self.source = source
        n = source.n
        gpus = int(ray.cluster_resources().get("GPU", 0)) if str(device).startswith("cuda") else 0
        shards = gpus if gpus > 0 else workers
        grid = chunk_size or tuning.default_chunk_size(n, k, "cuda" if gpus else "cpu")
        self.bounds = shard_bounds(n, shards, grid)
        actor_cls = ray.remote(ShardWorker).options(num_cpus=0 if gpus else 1, num_gpus=1 if gpus else 0)
        path = memmap_path(source)
        self.actors = []
        for a, b in self.bounds:
            if path is not None:
                data: Any = path
            else:
                data = ray.put(np.ascontiguousarray(source.numpy_or_memmap()[a:b], dtype=np.float32))
            self.actors.append(actor_cls.remote(data, a, b, chunk_size, "cuda" if gpus else "cpu", 1, prune))
        self.n_shards = len(self.actors)

    def accumulate(self, centroids: torch.Tensor) -> PassResult:
        """One pass on every actor; the shard partials are reduced in shard order (shard 0 first)."""
        import ray

        c = np.ascontiguousarray(centroids.detach().cpu().numpy(), dtype=np.float32)
        ref = ray.put(c)
        parts = ray.get([actor.accumulate.remote(ref) for actor in self.actors])
        sums = np.zeros_like(parts[0][0])
        counts = np.zeros_like(parts[0][1])
        inertia, changed = 0.0, 0
        for s, cnt, inert, ch in parts:  # fixed order: shard 0 first
            sums += s
            counts += cnt
            inertia += inert
            changed += ch
        return PassResult(sums=torch.from_numpy(sums), counts=torch.from_numpy(counts), inertia=inertia,
                          changed=changed)

    def finalize(self, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final assignment and distances, shard by shard, concatenated in row order."""
        import ray

        c = np.ascontiguousarray(centroids.detach().cpu().numpy(), dtype=np.float32)
        ref = ray.put(c)
        parts = ray.get([actor.finalize.remote(ref) for actor in self.actors])
        return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts])))

    def close(self) -> None:
        """Kill the actors (the bounds of their rows go with them)."""
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def memmap_path(source: DataSource) -> str | None:
    """The ``.npy`` file behind a memmap source when the memmap covers the whole file's array."""
    mm = source.memmap
    if mm is None:
        return None
    name = getattr(mm, "filename", None)
    if not name or not str(name).endswith(".npy"):
        return None
    try:
        whole = np.load(name, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if whole.shape == mm.shape and whole.dtype == mm.dtype and getattr(whole, "offset", None) == getattr(
            mm, "offset", None):
        return str(name)
    return None

