"""TLDR's training pairs (k nearest neighbours) against a brute-force search."""

from __future__ import annotations

import numpy as np
import pytest

from workflow.pretrain.pairs import knn_pairs


def test_knn_pairs_are_true_neighbours_and_deterministic() -> None:
    x = np.random.default_rng(0).normal(size=(150, 6)).astype(np.float32)
    k = 5
    d2 = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    true_knn = np.argsort(d2, axis=1)[:, :k]
    pairs = knn_pairs(x, k=k, seed=3)
    assert pairs.shape == (150,) and pairs.dtype == np.int64
    assert all(pairs[i] in true_knn[i] for i in range(len(x)))
    assert not np.any(pairs == np.arange(len(x)))
    np.testing.assert_array_equal(pairs, knn_pairs(x, k=k, seed=3))
    assert not np.array_equal(pairs, knn_pairs(x, k=k, seed=4))
    # Every one of the k neighbours is drawn somewhere (uniform choice, not always the nearest).
    ranks = [int(np.flatnonzero(true_knn[i] == pairs[i])[0]) for i in range(len(x))]
    assert set(ranks) == set(range(k))
    np.testing.assert_array_equal(knn_pairs(x, k=1), true_knn[:, 0])


def test_knn_pairs_never_returns_itself_with_duplicates() -> None:
    base = np.random.default_rng(1).normal(size=(10, 3))
    x = np.concatenate([base, base, base])  # every point has two exact copies at distance 0
    for seed in range(5):
        pairs = knn_pairs(x, k=2, seed=seed)
        assert not np.any(pairs == np.arange(len(x)))
        np.testing.assert_array_equal(pairs % 10, np.arange(len(x)) % 10)  # the copies are the 2 nearest


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        knn_pairs(np.zeros((4, 2)), k=4)
    with pytest.raises(ValueError):
        knn_pairs(np.zeros(4))
