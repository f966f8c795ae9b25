"""Greedy k-means++ of low-dimensional data (workflow/kmeans/seeding_lowdim.py, numba).

The compiled kernel skips rows by the triangle inequality and draws by block sums; it must pick the same centroids
as an independent float64 NumPy implementation of the definition (Arthur & Vassilvitskii 2007, greedy variant of
scikit-learn and Vo et al. 2024) fed the same random draws, and as the torch path of ``kmeans_plusplus``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from workflow.data.builtin import make_rings
from workflow.kmeans import DataSource, kmeans_plusplus, tuning
from workflow.kmeans.seeding_lowdim import kmeans_plusplus_lowdim


def reference_kpp(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ in float64 with full passes (no skipping), the draws of ``kmeans_plusplus``."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    trials = 2 + int(math.log(k))
    xd = x.astype(np.float64)
    chosen = [int(torch.randint(n, (1,), generator=g).item())]
    closest = ((xd - xd[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        u = torch.rand(trials, generator=g, dtype=torch.float64).numpy()
        cum = np.cumsum(closest)
        cand = np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), n - 1)
        dist = ((xd[None, :, :] - xd[cand][:, None, :]) ** 2).sum(-1)  # (trials, n)
        gains = np.maximum(closest[None] - dist, 0).sum(1)
        best = int(np.argmax(gains))
        chosen.append(int(cand[best]))
        closest = np.minimum(closest, dist[best])
    return np.array(chosen)


def lowdim(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return kmeans_plusplus_lowdim(x, k, torch.Generator().manual_seed(seed), 2 + int(math.log(k)))


def potential(x: np.ndarray, centroids: np.ndarray) -> float:
    return float(((x.astype(np.float64)[:, None] - centroids.astype(np.float64)[None]) ** 2).sum(-1).min(1).sum())


CASES = {
    "gauss_2d": (np.random.default_rng(0).normal(size=(1200, 2)), 80),
    "line_1d": (np.random.default_rng(1).exponential(size=(600, 1)), 40),
    "blobs_3d": (make_blobs(n_samples=2000, centers=25, n_features=3, random_state=2)[0], 120),
    "uniform_2d_k_near_n": (np.random.default_rng(3).random((150, 2)), 140),
}


@pytest.mark.parametrize("name", CASES)
def test_lowdim_kpp_matches_float64_reference(name: str) -> None:
    x, k = CASES[name]
    x = x.astype(np.float32)
    for seed in range(3):
        np.testing.assert_array_equal(lowdim(x, k, seed), reference_kpp(x, k, seed))


def test_lowdim_kpp_matches_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    x, k = CASES["blobs_3d"]
    xt = torch.from_numpy(x.astype(np.float32))
    fused = [kmeans_plusplus(xt, k, torch.Generator().manual_seed(s)) for s in range(3)]
    monkeypatch.setattr(tuning, "LOWDIM_MAX_DIM", 0)  # the torch path
    plain = [kmeans_plusplus(xt, k, torch.Generator().manual_seed(s)) for s in range(3)]
    for a, b in zip(fused, plain, strict=True):
        assert torch.equal(a, b)


def test_lowdim_kpp_on_rings_is_as_good_as_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The ring points lie close to circles: near-ties of the candidates' gains may resolve differently under
    # different float32 rounding, so the seeds can part ways; their quality must not.
    x, _ = make_rings(0)
    x = x[np.random.default_rng(0).choice(len(x), 4000, replace=False)]
    fused = [kmeans_plusplus(torch.from_numpy(x), 300, torch.Generator().manual_seed(s)).numpy()
             for s in range(3)]
    monkeypatch.setattr(tuning, "LOWDIM_MAX_DIM", 0)
    plain = [kmeans_plusplus(torch.from_numpy(x), 300, torch.Generator().manual_seed(s)).numpy()
             for s in range(3)]
    for c in fused:  # distinct rows of x
        assert len({tuple(r) for r in c.tolist()}) == len(c)
        assert bool((c[:, None, :] == x[None]).all(-1).any(1).all())
    ratio = np.mean([potential(x, c) for c in fused]) / np.mean([potential(x, c) for c in plain])
    assert 0.97 < ratio < 1.03


def test_lowdim_kpp_with_fewer_distinct_points_than_k(monkeypatch: pytest.MonkeyPatch) -> None:
    base = np.random.default_rng(4).normal(size=(30, 2)).astype(np.float32)
    x = np.repeat(base, 5, axis=0)
    chosen = lowdim(x, 40, 0)
    assert len(chosen) == 40
    assert len({tuple(r) for r in x[chosen[:30]].tolist()}) == 30  # every distinct point before any repeat
    # the same distinct points as the torch path; the repeats after them differ: here a duplicate's D² is
    # exactly 0 (so the last row is taken, as the torch path does when every D² is 0), there GEMM rounding
    # leaves some at ~1e-7 and the draw lands on those
    assert (x[chosen[30:]] == x[-1]).all()
    xt = torch.from_numpy(x)
    fused = kmeans_plusplus(xt, 40, torch.Generator().manual_seed(0))
    monkeypatch.setattr(tuning, "LOWDIM_MAX_DIM", 0)
    assert torch.equal(fused[:30], kmeans_plusplus(xt, 40, torch.Generator().manual_seed(0))[:30])


def test_lowdim_kpp_single_centroid_and_k_equal_n() -> None:
    x = np.random.default_rng(5).normal(size=(50, 2)).astype(np.float32)
    assert lowdim(x, 1, 0).tolist() == reference_kpp(x, 1, 0).tolist()
    assert sorted(lowdim(x, 50, 0).tolist()) == list(range(50))


def test_lowdim_kpp_reads_a_memmap(tmp_path) -> None:
    x = CASES["gauss_2d"][0].astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    from_file = kmeans_plusplus(DataSource(np.load(path, mmap_mode="r")), 50, torch.Generator().manual_seed(1))
    in_memory = kmeans_plusplus(torch.from_numpy(x), 50, torch.Generator().manual_seed(1))
    assert torch.equal(from_file, in_memory)
