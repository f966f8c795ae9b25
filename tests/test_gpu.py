"""CUDA paths, checked against the CPU paths that the rest of the suite tests (skipped where no GPU is visible).

CI has no GPU: these run on a GPU machine (``python -m pytest tests/test_gpu.py``). Every random choice of the
k-means comes from a CPU ``torch.Generator``, so the CUDA run draws the same candidates as the CPU run; the
float32 GEMM rounds differently on the GPU, but the exact assignment rule (float64 re-check of near ties,
workflow/kmeans/exact.py) makes the assignments, and with them the float64 centroid sums, agree.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from workflow.curate.hierarchical import hierarchical_kmeans
from workflow.curate.sampling import balanced_hierarchical_sample
from workflow.data.builtin import make_rings
from workflow.kmeans import kmeans

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


def blobs(n: int = 20000, d: int = 32, centers: int = 50) -> np.ndarray:
    x, _ = make_blobs(n_samples=n, centers=centers, n_features=d, cluster_std=1.5, center_box=(-10, 10),
                      random_state=0)
    return x.astype(np.float32)


@pytest.mark.parametrize("init_method", ["kmeans++", "random"])
def test_kmeans_cuda_matches_cpu(init_method: str) -> None:
    x = blobs()
    cpu = kmeans(x, 64, n_iters=20, seed=1, init_method=init_method, device="cpu")
    gpu = kmeans(x, 64, n_iters=20, seed=1, init_method=init_method, device="cuda")
    np.testing.assert_array_equal(gpu.assignment, cpu.assignment)
    np.testing.assert_allclose(gpu.centroids, cpu.centroids, rtol=0, atol=1e-5)
    assert gpu.n_iters_run == cpu.n_iters_run
    np.testing.assert_allclose(gpu.inertia, cpu.inertia, rtol=1e-6)


def test_kmeans_cuda_pruned_is_bitwise_identical() -> None:
    x = blobs(40000, 16, 100)
    plain = kmeans(x, 128, n_iters=15, seed=0, device="cuda", prune="never")
    pruned = kmeans(x, 128, n_iters=15, seed=0, device="cuda", prune="always")
    np.testing.assert_array_equal(pruned.assignment, plain.assignment)
    np.testing.assert_array_equal(pruned.centroids, plain.centroids)


def test_kmeans_cuda_on_memmap(tmp_path: os.PathLike) -> None:
    x = blobs(30000, 24, 40)
    path = f"{tmp_path}/pool.npy"
    np.save(path, x)
    from_file = kmeans(np.load(path, mmap_mode="r"), 40, n_iters=10, seed=2, device="cuda", chunk_size=4096)
    in_memory = kmeans(x, 40, n_iters=10, seed=2, device="cuda", chunk_size=4096)
    np.testing.assert_array_equal(from_file.assignment, in_memory.assignment)
    np.testing.assert_array_equal(from_file.centroids, in_memory.centroids)


def test_rings_tree_cuda() -> None:
    """The five-ring tree on the GPU: the same level-1 partition as the CPU run up to float rounding of the
    centroids (the chunk and sum-block sizes differ, so centroids may differ in the last bits, and level 2
    clusters those centroids), a reproducible selection, and the fidelity of the CPU test (balanced shares)."""
    from sklearn.metrics import adjusted_rand_score

    from workflow.data.builtin import RING_SIZES

    x, ring = make_rings(0)
    kwargs = dict(sample_sizes=[15, 2], n_resamples=3, n_iters=20, seed=0)
    cpu = hierarchical_kmeans(x, [1000, 300], device="cpu", **kwargs)
    gpu = hierarchical_kmeans(x, [1000, 300], device="cuda", **kwargs)
    assert adjusted_rand_score(cpu[0].assignment, gpu[0].assignment) > 0.99
    sel = balanced_hierarchical_sample(gpu, 1000, seed=0)
    again = balanced_hierarchical_sample(hierarchical_kmeans(x, [1000, 300], device="cuda", **kwargs), 1000, seed=0)
    np.testing.assert_array_equal(sel, again)
    counts = np.bincount(ring[sel], minlength=len(RING_SIZES))
    assert counts[1] >= 100 and counts[[0, 2, 3, 4]].min() >= 0.5 * counts[[0, 2, 3, 4]].max()


def test_kmeans_ray_gpu_actor_matches_local() -> None:
    """workers > 1 with device cuda: one Ray actor per GPU holds its shard on the GPU; same result as in process."""
    x = blobs(30000, 16, 30)
    local = kmeans(x, 48, n_iters=10, seed=4, device="cuda")
    on_ray = kmeans(x, 48, n_iters=10, seed=4, device="cuda", workers=2)
    np.testing.assert_array_equal(on_ray.assignment, local.assignment)
    np.testing.assert_array_equal(on_ray.centroids, local.centroids)


def test_embed_stage_on_gpu(tmp_path: os.PathLike) -> None:
    """The embed stage with one GPU (a Ray actor on the GPU) writes the embeddings of the CPU run."""
    from workflow.embed import run_embed
    from workflow.pretrain.models import build_encoder, save_encoder
    from workflow.tables import VectorTable, read_table, write_table

    spec = {"input_kind": "vector", "input_dim": 24, "embedding_dim": 16}
    torch.manual_seed(0)
    save_encoder(build_encoder(spec), spec, f"{tmp_path}/encoder.safetensors")
    x = np.random.default_rng(0).normal(size=(5000, 24)).astype(np.float32)
    write_table(VectorTable(ids=np.arange(len(x)), vectors=x, labels=None), f"{tmp_path}/in.parquet")
    outputs = {}
    for gpus in (0, 1):
        out = f"{tmp_path}/out{gpus}.parquet"
        run_embed(f"{tmp_path}/encoder.safetensors", [(f"{tmp_path}/in.parquet", out)], threads=2, gpus=gpus)
        outputs[gpus] = read_table(out)
    np.testing.assert_array_equal(outputs[1].ids, outputs[0].ids)
    np.testing.assert_allclose(outputs[1].vectors, outputs[0].vectors, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["simclr", "byol", "barlowtwins", "vicreg", "swav", "tldr"])
def test_ssl_step_cuda_bf16_autocast(method: str) -> None:
    """One training step per method on the GPU with bf16 autocast (the stage's GPU setting): the loss is finite,
    close to the float32 CPU loss of the same weights and views, and the weights move."""
    from workflow.config import validate
    from workflow.pretrain.methods import Method, resolved
    from workflow.pretrain.models import build_encoder

    params = resolved(validate({"method": method, "steps": 10, "batch_size": 64}, "ssl"), 1000)
    spec = {"input_kind": "vector", "input_dim": 40, "embedding_dim": 32}
    g = torch.Generator().manual_seed(0)
    v0, v1 = torch.randn(64, 40, generator=g), torch.randn(64, 40, generator=g)
    losses = {}
    for device, amp in (("cpu", False), ("cuda", True)):
        torch.manual_seed(0)
        m = Method(build_encoder(spec), params, spec["embedding_dim"]).to(device)
        opt = m.make_optimizer()  # the stage's optimiser: the method's parameter groups and settings
        before = [p.detach().clone() for p in m.module.parameters()]
        out = m.train_step(m.module, opt, v0.to(device), v1.to(device), 0, 10, params["lr"], amp)
        losses[device] = out.scalars()["loss"]
        assert np.isfinite(losses[device])
        assert any(not torch.equal(b, p.detach()) for b, p in zip(before, m.module.parameters(), strict=True))
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=0.05, abs=0.05)


def test_image_augment_cuda_is_seeded() -> None:
    """kornia's augmentations run on the GPU, drawn from a CUDA generator: same seed, same views."""
    from workflow.pretrain.augment import build_augment

    augment = build_augment("image", [1, 16, 16], {})
    x = torch.rand(32, 256, device="cuda")
    a = augment(x, torch.Generator(device="cuda").manual_seed(3))
    b = augment(x, torch.Generator(device="cuda").manual_seed(3))
    c = augment(x, torch.Generator(device="cuda").manual_seed(4))
    assert a.device.type == "cuda" and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_kmeans_cuda_is_deterministic() -> None:
    """Two CUDA runs give the same centroids bit for bit (the float64 sums run in a fixed order there too)."""
    x = np.random.default_rng(0).random((200_000, 64), dtype=np.float32)
    first = kmeans(x, 256, n_iters=8, seed=0, device="cuda")
    second = kmeans(x, 256, n_iters=8, seed=0, device="cuda")
    np.testing.assert_array_equal(first.centroids, second.centroids)
    np.testing.assert_array_equal(first.assignment, second.assignment)


def test_lowdim_kmeans_plusplus_on_cuda_data_is_the_cpu_seeding() -> None:
    """Data of d ≤ LOWDIM_MAX_DIM are seeded by the host's compiled loop whatever their device: the centres of
    CUDA data are those of the same data on the CPU, returned on the GPU."""
    from workflow.kmeans import kmeans_plusplus

    x, _ = make_rings(0)
    on_gpu = kmeans_plusplus(torch.from_numpy(x).cuda(), 500, torch.Generator().manual_seed(3))
    on_cpu = kmeans_plusplus(torch.from_numpy(x), 500, torch.Generator().manual_seed(3))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)
