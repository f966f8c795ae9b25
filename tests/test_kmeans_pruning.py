"""Exact Lloyd assignment and its bound-based pruning (workflow/kmeans/exact.py, bounds.py, pruner.py).

Pruning (Hamerly 2010; Yinyang k-means, Ding et al. 2015) must not change anything: the pruned and unpruned
runs are compared *bitwise* (assignments, centroids, inertia and distances), on clustered data, uniform
noise, duplicated points, exact ties and k close to n. The exact assignment rule itself is checked against a
float64 brute force.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from workflow.errors import StrataError
from workflow.kmeans import DataSource, exact, kmeans, kmeans_plusplus, tuning
from workflow.kmeans.api import prune_for
from workflow.kmeans.engine import LocalLloyd
from workflow.kmeans.lloyd import update_centroids


def brute_argmin(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """First index of the smallest float64 squared distance (the exact rule, by brute force)."""
    d = ((x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1)
    return d.argmin(1)


def datasets() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)
    blobs, _ = make_blobs(n_samples=3000, centers=40, n_features=16, cluster_std=1.0, center_box=(-20, 20),
                          random_state=0)
    dup = np.repeat(rng.normal(size=(150, 8)), 8, axis=0)  # every point 8 times: exact ties everywhere
    grid = np.stack(np.meshgrid(np.arange(12), np.arange(12)), -1).reshape(-1, 2)  # integer grid: symmetric ties
    far = rng.normal(size=(2000, 32)) + 1000.0  # far from the origin: large float32 cancellation
    return {
        "blobs": (blobs.astype(np.float32), 64),
        "uniform": (rng.random((2500, 24), dtype=np.float32), 48),
        "duplicates": (dup.astype(np.float32), 40),
        "grid_ties": (np.repeat(grid, 3, axis=0).astype(np.float32), 36),
        "far_from_origin": (far.astype(np.float32), 32),
        "k_close_to_n": (rng.normal(size=(70, 5)).astype(np.float32), 64),
    }


@pytest.mark.parametrize("name", list(datasets()))
@pytest.mark.parametrize("init_method", ["kmeans++", "random"])
def test_pruned_kmeans_is_bitwise_identical(name: str, init_method: str) -> None:
    x, k = datasets()[name]
    plain = kmeans(x, k, n_iters=15, seed=3, init_method=init_method, prune="never")
    pruned = kmeans(x, k, n_iters=15, seed=3, init_method=init_method, prune="always")
    np.testing.assert_array_equal(pruned.assignment, plain.assignment)
    np.testing.assert_array_equal(pruned.centroids, plain.centroids)  # bitwise: same sums, same order
    np.testing.assert_array_equal(pruned.distances, plain.distances)
    assert pruned.inertia == plain.inertia and pruned.n_iters_run == plain.n_iters_run
    # and the assignment is the exact (float64, first index on ties) nearest centroid
    np.testing.assert_array_equal(plain.assignment, brute_argmin(x, plain.centroids))


def run_passes(x: np.ndarray, c0: np.ndarray, n_passes: int, **engine_kwargs: object
               ) -> tuple[list[torch.Tensor], list[dict | None], LocalLloyd]:
    engine = LocalLloyd(DataSource(x), **engine_kwargs)
    c = torch.from_numpy(c0)
    assignments, stats = [], []
    for _ in range(n_passes):
        part = engine.accumulate(c)
        assignments.append(engine.assignment.clone())
        stats.append(part.stats)
        c = update_centroids(part.sums, part.counts, c)
    return assignments, stats, engine


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("chunk_size", [None, 37])
def test_every_pass_exact_and_pruning_skips_rows(groups: int, chunk_size: int | None) -> None:
    # Hamerly (one group) and Yinyang groups; odd chunks exercise the block edges. Every pass equals the plain
    # engine's, whichever passes were pruned, plain (backed off) or rebuilt.
    x, _ = make_blobs(n_samples=6000, centers=60, n_features=12, cluster_std=0.6, center_box=(-30, 30),
                      random_state=1)
    x = x.astype(np.float32)
    c0 = x[np.random.default_rng(2).choice(len(x), 128, replace=False)]
    plain, _, _ = run_passes(x, c0, 12, prune=False, chunk_size=chunk_size)
    pruned, stats, engine = run_passes(x, c0, 12, prune=True, groups=groups, chunk_size=chunk_size)
    for a, b in zip(plain, pruned, strict=True):
        assert torch.equal(a, b)
    assert stats[0] is None  # the first pass is dense (it builds the bounds)
    assert engine.pruner.bounds is not None and engine.pruner.bounds.n_groups == groups
    if groups > 1:  # clustered data: once the centroids settle, most rows are skipped
        skipped = [(s["global"] + s["tight"]) / s["rows"] for s in stats if s is not None]
        assert max(skipped) > 0.75 and sum(f > 0.5 for f in skipped) >= 3


def test_bounds_are_valid() -> None:
    # u ≥ ‖x − c_a‖ and l_g ≤ min_{j∈g, j≠a} ‖x − c_j‖ after every pass (true distances, float64)
    x, _ = make_blobs(n_samples=3000, centers=40, n_features=6, cluster_std=1.0, center_box=(-30, 30),
                      random_state=4)
    x = x.astype(np.float32)
    c = torch.from_numpy(x[:128].copy())
    engine = LocalLloyd(DataSource(x), prune=True, groups=4)
    checked = 0
    for _ in range(12):
        part = engine.accumulate(c)
        b = engine.pruner.bounds
        if b.centroids is None:  # backed off to plain passes (no bounds kept)
            c = update_centroids(part.sums, part.counts, c)
            continue
        checked += 1
        cc = b.centroids.double().numpy()
        d = np.sqrt(((x.astype(np.float64)[:, None, :] - cc[None]) ** 2).sum(-1))
        a = engine.assignment.numpy()
        rows = np.arange(len(x))
        assert np.all(b.upper.numpy() >= d[rows, a])
        d[rows, a] = np.inf
        group = b.layout.group.numpy()
        for g in range(b.n_groups):
            assert np.all(b.lower[:, g].numpy() <= d[:, group == g].min(1))
        c = update_centroids(part.sums, part.counts, c)
    assert checked >= 6


def test_dense_assign_resolves_near_ties_exactly() -> None:
    # points exactly between two centroids (far from the origin, where float32 GEMM values are ~1e6 and their
    # rounding exceeds the gap) and duplicated centroids: the float64 rule decides, first index on ties
    rng = np.random.default_rng(5)
    c = (rng.normal(size=(20, 10)) + 300).astype(np.float32)
    c[7] = c[3]  # duplicate centroid: index 3 must win
    mid = ((c[:10].astype(np.float64) + c[10:].astype(np.float64)) / 2).astype(np.float32)
    x = np.concatenate([mid, c, c[3:4] + 1e-3, rng.normal(size=(200, 10)).astype(np.float32) + 300])
    cen = exact.Centroids.build(torch.from_numpy(c), None)
    xt = torch.from_numpy(x)
    out = exact.dense_assign(xt, xt.double().norm(dim=1), cen)
    np.testing.assert_array_equal(out.idx.numpy(), brute_argmin(x, c))
    assert 7 not in out.idx.tolist()
    # the reference value is computed the same way whatever the batch
    f_all = exact.exact_sq(xt, xt.flip(0))
    for s in (0, 3, 100):
        np.testing.assert_array_equal(exact.exact_sq(xt[s:s + 17], xt.flip(0)[s:s + 17]).numpy(), f_all[s:s + 17])


def test_float32_rounding_helpers() -> None:
    v = torch.tensor([0.1, 1 / 3, 1e-30, 3.0, float("inf")], dtype=torch.float64)
    up, down = exact.f32_up(v), exact.f32_down(v)
    assert up.dtype == torch.float32 and bool((up.double() >= v).all()) and bool((down.double() <= v).all())
    assert up[3] == 3.0 and down[3] == 3.0 and torch.isinf(up[4]) and torch.isinf(down[4])
    assert exact.matmul_roundoff(torch.device("cpu")) == 2.0**-24
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # reduced-precision matmuls widen the error bound
        assert exact.matmul_roundoff(torch.device("cpu")) == 2.0**-8
    finally:
        torch.set_float32_matmul_precision(previous)


def test_sum_blocks_and_memmap_with_pruning(tmp_path: object) -> None:
    # a multiple of the chunk, at least n/64 rows and 2^27 / (k·d) rows, at most about 2^14 rows
    assert tuning.sum_block_rows(100000, 500, 1000 * 128) % 500 == 0
    assert tuning.sum_block_rows(10**7, 300, 1000 * 128) <= 2**14 + 300
    assert tuning.sum_block_rows(20000, 2048, 256 * 64) == 8192 and tuning.sum_block_rows(10, 4) >= 10
    x, _ = make_blobs(n_samples=2500, centers=12, n_features=8, random_state=3)
    x = x.astype(np.float32)
    path = tmp_path / "x.npy"  # type: ignore[operator]
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    a = kmeans(x, 24, n_iters=10, seed=1, chunk_size=100, prune="never")
    b = kmeans(mm, 24, n_iters=10, seed=1, chunk_size=100, prune="always")
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    # threads change neither result
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c = kmeans(x, 24, n_iters=10, seed=1, chunk_size=100, prune="always")
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(a.centroids, c.centroids)


def test_ray_pruned_equals_unpruned_and_local() -> None:
    # Each actor keeps the bounds of its shard: pruned Ray == unpruned Ray bitwise, and == the local run
    # (assignments exact; centroids up to the float64 summation order of the shard partials).
    x, _ = make_blobs(n_samples=3000, centers=20, n_features=8, cluster_std=0.8, random_state=7)
    x = x.astype(np.float32)
    local = kmeans(x, 32, n_iters=10, seed=2, chunk_size=250)
    ray_plain = kmeans(x, 32, n_iters=10, seed=2, chunk_size=250, workers=2, prune="never")
    ray_pruned = kmeans(x, 32, n_iters=10, seed=2, chunk_size=250, workers=2, prune="always")
    np.testing.assert_array_equal(ray_pruned.assignment, ray_plain.assignment)
    np.testing.assert_array_equal(ray_pruned.centroids, ray_plain.centroids)
    np.testing.assert_array_equal(ray_pruned.assignment, local.assignment)
    np.testing.assert_allclose(ray_pruned.centroids, local.centroids, atol=1e-6, rtol=0)


def test_backoff_to_plain_passes_on_unstructured_data() -> None:
    # uniform noise: pruned passes compute most distances, so the engine backs off to plain passes (no bounds)
    # and retries later; every pass still equals the plain engine's
    x = np.random.default_rng(6).random((3000, 16), dtype=np.float32)
    c0 = x[:128].copy()
    plain, _, _ = run_passes(x, c0, 10, prune=False)
    pruned, stats, _ = run_passes(x, c0, 10, prune=True)
    for a, b in zip(plain, pruned, strict=True):
        assert torch.equal(a, b)
    assert stats[0] is None and any(s is None for s in stats[2:])  # plain passes after a pruned one


def test_kmeans_plusplus_pruning_keeps_the_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    # The triangle-inequality skipping of k-means++ (rows no candidate can improve) leaves the seeds unchanged:
    # same candidates, same choice (compared with the path that computes every row).

    x, _ = make_blobs(n_samples=6000, centers=60, n_features=16, cluster_std=1.0, center_box=(-40, 40),
                      random_state=8)
    xt = torch.from_numpy(x.astype(np.float32))
    monkeypatch.setattr(tuning, "KMPP_PRUNE_MIN", 0)  # prune even this small input
    pruned = [kmeans_plusplus(xt, 150, torch.Generator().manual_seed(s)) for s in range(3)]
    monkeypatch.setattr(tuning, "KMPP_PRUNE_MIN", 2**62)  # every row, every step
    full = [kmeans_plusplus(xt, 150, torch.Generator().manual_seed(s)) for s in range(3)]
    for a, b in zip(pruned, full, strict=True):
        assert torch.equal(a, b)


def test_default_prunes_only_large_passes(monkeypatch: pytest.MonkeyPatch) -> None:

    x = np.random.default_rng(9).normal(size=(2000, 8)).astype(np.float32)
    assert not LocalLloyd(DataSource(x)).pruning(64)  # 2000 x 64 x 8 multiply-adds: a plain pass is cheaper
    assert LocalLloyd(DataSource(x), prune=True).pruning(64) and not LocalLloyd(DataSource(x), prune=True).pruning(8)
    assert not LocalLloyd(DataSource(x), prune=False).pruning(64)
    monkeypatch.setattr(tuning, "PRUNE_MIN_WORK", 2000 * 64 * 8)
    assert LocalLloyd(DataSource(x)).pruning(64)
    assert prune_for("auto", 2) == "never" and prune_for("always", 2) == "always" and prune_for("auto", 50) == "auto"
    assert prune_for("never", 50) == "never"
    with pytest.raises(StrataError, match="prune"):
        kmeans(np.zeros((4, 2), dtype=np.float32), 2, prune=True)  # the old boolean: say which mode


@pytest.mark.parametrize("name", ["blobs", "duplicates", "far_from_origin"])
def test_compiled_sums_are_index_add_bit_for_bit(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large passes add their float64 sums with the compiled loop of workflow.kmeans.compiled_sums, small ones
    with index_add_: both add the same rows in the same order, so every pass, plain or pruned, gives the same bits."""
    from workflow.kmeans import compiled_sums
    from workflow.kmeans.compiled_sums import add_rows, clear_empty

    x, k = datasets()[name]
    rng = np.random.default_rng(1)
    assignment = rng.integers(0, k, len(x))
    assignment[assignment == 1] = 0  # an empty cluster
    x = x.copy()
    x[assignment == 2, 0] = -0.0  # a sum of −0s is +0, as index_add_ on zeros gives
    expected = torch.zeros((k, x.shape[1]), dtype=torch.float64).index_add_(
        0, torch.from_numpy(assignment), torch.from_numpy(x).double())
    for start in (np.zeros((k, x.shape[1])), np.full((k, x.shape[1]), np.nan)):  # zeroed, or not zeroed at all
        sums, counts = start, np.zeros(k, dtype=np.int64)
        for piece in range(0, len(x), 70):  # in pieces, as the engine adds a block
            add_rows(sums, counts, x[piece:piece + 70], assignment[piece:piece + 70])
        clear_empty(sums, counts)
        np.testing.assert_array_equal(sums, expected.numpy())
        assert sums[2, 0] == 0 and not np.signbit(sums[2, 0])
        np.testing.assert_array_equal(counts, np.bincount(assignment, minlength=k))

    calls = []
    monkeypatch.setattr(compiled_sums, "add_rows", lambda *a: calls.append(1) or add_rows(*a))
    runs = {}
    for threshold in (2**62, 0):  # never, always compiled
        monkeypatch.setattr(tuning, "COMPILED_SUMS_MIN", threshold)
        runs[threshold] = [kmeans(x, k, n_iters=8, seed=4, chunk_size=97, prune=prune) for prune in ("never", "always")]
        assert bool(calls) == (threshold == 0)  # the compiled loop ran exactly when asked to
    for never, always in zip(runs[2**62], runs[0], strict=True):
        np.testing.assert_array_equal(never.centroids, always.centroids)
        np.testing.assert_array_equal(never.assignment, always.assignment)
        assert never.inertia == always.inertia
