"""Tests of the curate stage's methods, memmapped features, Ray k-means and diagnostics.

Methods: ``kmeans`` (flat balanced baseline), ``hkmeans`` (Vo et al. 2024, arXiv:2405.15613) and
``semdedup`` (Abbas et al. 2023, arXiv:2303.09540). Every check compares against an independent
computation: hand counts, a brute-force greedy loop, the in-memory / single-process result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from workflow.config import validate
from workflow.curate.features import load_features_memmap
from workflow.curate.hierarchical import hierarchical_kmeans
from workflow.curate.semdedup import semdedup_keep
from workflow.curate.stage import Curation, curate
from workflow.errors import StrataError
from workflow.kmeans import DataSource, kmeans
from workflow.kmeans.engine import LocalLloyd
from workflow.kmeans.ray_shards import ShardWorker, memmap_path, shard_bounds
from workflow.measures import entropy, gini
from workflow.tables import VectorTable, write_table


def curation(cfg: dict[str, Any]) -> Curation:
    """A curation entry as the CLI hands it to the stage: validated (defaults filled), then typed."""
    return Curation.from_config(validate(dict(cfg), "curation"))


def table(x: np.ndarray, labels: np.ndarray | None = None) -> VectorTable:
    n = len(x)
    return VectorTable(ids=np.arange(n, dtype=np.int64) * 3 + 7, vectors=x.astype(np.float32), labels=labels)


def separated_blobs(sizes: list[int], dim: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blobs of the given sizes around far-apart centres (k-means recovers them exactly)."""
    rng = np.random.default_rng(seed)
    centres = 20.0 * np.eye(len(sizes), dim)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[labels] + rng.normal(0, 0.5, (labels.size, dim))
    perm = rng.permutation(labels.size)
    return x[perm].astype(np.float32), labels[perm]


# ---------------------------------------------------------------------------------------------
# semdedup


def test_semdedup_drops_exact_and_near_duplicates() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(80, 32))
    base /= np.linalg.norm(base, axis=1, keepdims=True)  # random directions: pairwise cosine < 0.8
    exact = np.repeat(np.arange(10), 3)  # groups 0-9: three exact copies each
    near = np.repeat(np.arange(10, 20), 2)  # groups 10-19: two near-duplicates each
    group = np.concatenate([np.arange(80), exact, near])
    x = base[group] + np.r_[np.zeros((80 + exact.size, 32)), rng.normal(0, 1e-3, (near.size, 32))]
    perm = rng.permutation(group.size)
    x, group = x[perm], group[perm]
    messages: list[str] = []
    rows, levels_ids, stats = curate(table(x), table(x), curation({"method": "semdedup", "n_clusters": [6]}), seed=0,
                                     progress=messages.append)
    assert np.bincount(group[rows], minlength=80).tolist() == [1] * 80  # one survivor per group
    assert stats["semdedup"] == {"epsilon": 0.05, "survivors": 80, "removed": 50}
    assert stats["selected_size"] == 80 and stats["warnings"] == []
    assert levels_ids.shape == (group.size, 1) and stats["n_clusters"] == [6]
    # duplicates share their cluster
    for g in range(20):
        members = np.flatnonzero(group == g)
        assert len(np.unique(levels_ids[members, 0])) == 1
    # a target below the survivors draws a seeded subset of them; above, all survivors and a warning
    sub, _, _ = curate(table(x), table(x), curation({"method": "semdedup", "n_clusters": [6], "target_size": 30}),
                       seed=0, progress=messages.append)
    assert len(sub) == 30 and set(sub) <= set(rows)
    more, _, st = curate(table(x), table(x), curation({"method": "semdedup", "n_clusters": [6], "target_size": 100}),
                         seed=0, progress=messages.append)
    np.testing.assert_array_equal(more, rows)
    assert len(st["warnings"]) == 1 and "80" in st["warnings"][0]
    assert any(m.startswith("warning:") for m in messages)


def greedy_loop(x: np.ndarray, assignment: np.ndarray, sq_dist: np.ndarray, epsilon: float) -> np.ndarray:
    """SemDeDup's greedy rule, one point at a time (closest to the centroid first)."""
    keep = []
    for c in np.unique(assignment):
        members = np.flatnonzero(assignment == c)
        kept: list[int] = []
        for p in members[np.lexsort((members, sq_dist[members]))]:
            if all(float(x[p] @ x[q]) <= 1 - epsilon for q in kept):
                kept.append(int(p))
        keep += kept
    return np.sort(np.array(keep, dtype=np.int64))


def test_semdedup_keep_equals_greedy_loop_for_any_block_size() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # dense on the sphere: many chains of similar points
    assignment = rng.integers(0, 3, 400)
    sq_dist = rng.random(400)
    expected = greedy_loop(x, assignment, sq_dist, 0.05)
    assert 20 < len(expected) < 300
    for block in (1024, 7, 1):
        np.testing.assert_array_equal(semdedup_keep(x.astype(np.float32), assignment, sq_dist, 0.05, block=block),
                                      expected)
    # the closest point of an exact-duplicate pair is the one kept
    y = np.repeat(x[:1], 2, axis=0).astype(np.float32)
    assert semdedup_keep(y, np.zeros(2, dtype=np.int64), np.array([0.5, 0.1]), 0.05).tolist() == [1]
    with pytest.raises(StrataError):
        semdedup_keep(y, np.zeros(2, dtype=np.int64), np.zeros(2), 0.0)


# ---------------------------------------------------------------------------------------------
# kmeans baseline and target larger than the pool


def test_kmeans_baseline_is_balanced() -> None:
    sizes = [800, 200, 80, 40, 20]
    x, labels = separated_blobs(sizes)
    params = {"method": "kmeans", "n_clusters": [5, 2], "target_size": 100, "normalize": False}
    rows, levels_ids, stats = curate(table(x, labels), table(x, labels), curation(params), seed=0,
                                     progress=lambda m: None)
    assert np.bincount(labels[rows], minlength=5).tolist() == [20] * 5  # water-filling: equal shares
    assert levels_ids.shape == (len(x), 1) and stats["n_clusters"] == [5]
    assert sorted(stats["cluster_sizes"][0]) == sorted(sizes)
    assert stats["cluster_size_gini"] == [pytest.approx(gini(sizes))]
    assert stats["cluster_size_entropy"] == [pytest.approx(entropy(sizes))]
    assert stats["labels_after"]["normalized_entropy"] == pytest.approx(1.0)
    assert set(stats["vendi"]) == {"selected", "pool", "sample_size"} and stats["vendi"]["sample_size"] == 100
    # small clusters (40 and 20 points) cannot give more than they have: the rest flows to the others
    # (cap 46: 3 * 46 + 40 + 20 = 198, and the 2 left go to two of the three large clusters)
    rows, _, _ = curate(table(x, labels), table(x, labels), curation({**params, "target_size": 200}), seed=0,
                        progress=lambda m: None)
    counts = np.bincount(labels[rows], minlength=5)
    assert sorted(counts[:3].tolist()) == [46, 47, 47] and counts[3:].tolist() == [40, 20]


@pytest.mark.parametrize("method", ["kmeans", "hkmeans", "random"])
def test_target_larger_than_pool_selects_everything_with_a_warning(method: str) -> None:
    x, labels = separated_blobs([30, 20, 10])
    messages: list[str] = []
    params = {"method": method, "n_clusters": [4, 2], "target_size": len(x) + 5, "n_iters": 10}
    rows, _, stats = curate(table(x, labels), table(x, labels), curation(params), seed=0, progress=messages.append)
    np.testing.assert_array_equal(rows, np.arange(len(x)))
    assert len(stats["warnings"]) == 1 and "larger than the pool (60 items)" in stats["warnings"][0]
    assert any(m.startswith("warning:") and "65" in m for m in messages)
    with pytest.raises(StrataError, match="target_size"):
        curate(table(x), table(x), curation({"method": method}), seed=0, progress=messages.append)


# ---------------------------------------------------------------------------------------------
# memmapped features


def test_memmap_features_equal_in_memory(tmp_path: Path) -> None:
    x, labels = separated_blobs([300, 120, 60, 30], dim=6, seed=2)
    pool = table(x, labels)
    path = tmp_path / "pool.parquet"
    write_table(pool, path)
    cache = tmp_path / "cache"
    mm = load_features_memmap(path, cache)
    assert isinstance(mm, np.memmap) and mm.dtype == np.float32
    np.testing.assert_array_equal(mm, x)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    mtime = files[0].stat().st_mtime_ns
    assert load_features_memmap(path, cache).filename == mm.filename and files[0].stat().st_mtime_ns == mtime
    normed = load_features_memmap(path, cache, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-6)

    # k-means on the memmap (several chunks, never loaded whole) equals the in-memory run
    assert DataSource(mm).tensor is None
    a, b = kmeans(x, 7, n_iters=20, seed=3, chunk_size=64), kmeans(mm, 7, n_iters=20, seed=3, chunk_size=64)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    assert a.inertia == b.inertia

    # the whole stage from the Parquet path (memmapped, normalised in the cache) equals the in-memory stage
    params = {"method": "hkmeans", "n_clusters": [12, 3], "target_size": 80, "n_iters": 15, "n_resamples": 3,
              "leaf_strategy": "closest", "chunk_size": 100}
    r1, ids1, s1 = curate(pool, pool, curation(params), seed=1, progress=lambda m: None)
    r2, ids2, s2 = curate(pool, str(path), curation(params), seed=1, progress=lambda m: None, cache_dir=str(cache))
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(ids1, ids2)
    assert s1 == s2
    with pytest.raises(StrataError, match="ids are not in the pool"):
        curate(table(x[:-1]), str(path), curation(params), seed=1, progress=lambda m: None, cache_dir=str(cache))


# ---------------------------------------------------------------------------------------------
# Ray


def test_distributed_kmeans_equals_single_process() -> None:
    # One Ray start (~7 s here) and one set of 2 actors (~2 s each): kmeans starts a private local Ray itself.
    x = np.random.default_rng(4).normal(size=(2000, 8)).astype(np.float32)
    single = kmeans(x, 16, n_iters=12, seed=5, chunk_size=300)
    messages: list[str] = []
    dist = kmeans(x, 16, n_iters=12, seed=5, chunk_size=300, workers=2, progress=messages.append)
    np.testing.assert_array_equal(dist.assignment, single.assignment)
    np.testing.assert_allclose(dist.centroids, single.centroids, atol=1e-6, rtol=0)
    assert dist.n_iters_run == single.n_iters_run
    assert dist.inertia == pytest.approx(single.inertia, rel=1e-9)
    np.testing.assert_allclose(dist.distances, single.distances, rtol=1e-9)
    assert "on 2 Ray actors" in messages[0] and any("iteration 10/12" in m for m in messages)


def test_shard_worker_maps_its_rows_of_a_npy_file(tmp_path: Path) -> None:
    # The body of the Ray actor, run in process: a shard opened from the .npy path (as actors do for a
    # memmap) gives the same partial sums as the same rows in memory, and the shards add up to the whole.
    x = np.random.default_rng(5).normal(size=(1000, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert memmap_path(DataSource(mm)) == str(tmp_path / "x.npy")
    assert memmap_path(DataSource(mm[:10])) is None  # a slice is not the whole file
    bounds = shard_bounds(1000, 2, 300)
    assert bounds == [(0, 600), (600, 1000)]  # aligned to the 300-row chunk grid
    c = x[:9].copy()
    whole = LocalLloyd(DataSource(x), 300).accumulate(torch.from_numpy(c))
    sums = np.zeros((9, 6))
    counts = np.zeros(9, dtype=np.int64)
    for a, b in bounds:
        s, n, _, changed = ShardWorker(str(tmp_path / "x.npy"), a, b, 300, "cpu").accumulate(c)
        s_mem, n_mem, _, _ = ShardWorker(x[a:b], a, b, 300, "cpu").accumulate(c)
        np.testing.assert_array_equal(s, s_mem)
        np.testing.assert_array_equal(n, n_mem)
        assert changed == b - a
        sums += s
        counts += n
    np.testing.assert_array_equal(counts, whole.counts.numpy())
    np.testing.assert_allclose(sums, whole.sums.numpy(), rtol=1e-12)
    # hierarchical k-means on the memmap equals the in-memory run
    a = hierarchical_kmeans(x, [20, 4], sample_sizes=[4, 2], n_resamples=2, n_iters=8, seed=6, chunk_size=128)
    b = hierarchical_kmeans(mm, [20, 4], sample_sizes=[4, 2], n_resamples=2, n_iters=8, seed=6, chunk_size=128)
    for la, lb in zip(a, b, strict=True):
        np.testing.assert_array_equal(la.assignment, lb.assignment)
        np.testing.assert_array_equal(la.centroids, lb.centroids)


# ---------------------------------------------------------------------------------------------
# diagnostics files


def test_diagnostics_files_and_stats(tmp_path: Path) -> None:
    x, labels = separated_blobs([200, 60, 20], dim=5, seed=3)
    params = {"method": "hkmeans", "n_clusters": [9, 3], "target_size": 45, "n_iters": 10, "n_resamples": 2}
    _, _, stats = curate(table(x, labels), table(x, labels), curation(params), seed=0, progress=lambda m: None,
                         diagnostics_dir=str(tmp_path / "diag"))
    assert stats["diagnostics"] == ["cluster_sizes.png", "labels.png", "map.png"]
    for name in stats["diagnostics"]:
        head = (tmp_path / "diag" / name).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n"
    for t, sizes in enumerate(stats["cluster_sizes"]):
        assert stats["cluster_size_gini"][t] == pytest.approx(gini(sizes))
        assert stats["cluster_size_entropy"][t] == pytest.approx(entropy(sizes))
    assert stats["labels_after"]["entropy"] > stats["labels_before"]["entropy"]
    # 2-D data without labels: the map draws the points themselves, no labels.png
    y = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    _, _, st = curate(table(y), table(y), curation({"method": "random", "target_size": 40}), seed=0,
                      progress=lambda m: None, diagnostics_dir=str(tmp_path / "diag2"))
    assert st["diagnostics"] == ["map.png"] and "cluster_size_gini" not in st
    assert sorted(os.listdir(tmp_path / "diag2")) == ["map.png"]
