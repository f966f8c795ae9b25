"""TLDR's training pairs: each training row and one of its k nearest neighbours in input space.

Kalantidis et al. 2022, "TLDR: Twin Learning for Dimensionality Reduction" (TMLR; arXiv 2110.09455), Sec. 3:
the two "views" of an item are the item itself and a neighbour drawn from its k-NN graph, mined once before
training over every training row (:meth:`workflow.pretrain.rows.TrainingRows.all`); the loss is
:class:`workflow.pretrain.losses.TLDRLoss`.
"""

from __future__ import annotations

import numpy as np


def knn_pairs(x: np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """For each row of ``x``, the index of one of its ``k`` nearest neighbours, drawn uniformly (TLDR's pairs).

    Exact Euclidean search (``faiss.IndexFlatL2``); a row is never its own neighbour, duplicates included.
    (``naver/tldr`` builds its graph with inner products on unnormalised data; L2 here.)

    Args:
        x: (N, D) data.
        k: neighbours to draw from; 1 <= k < N.
        seed: seed of the draw; the same seed gives the same pairs.

    Returns:
        (N,) int64 array of neighbour indices.
    """
    import faiss

    if x.ndim != 2:
        raise ValueError(f"expected an (N, D) array, got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must satisfy 1 <= k < N = {n}, got {k}")
    data = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatL2(data.shape[1])
    index.add(data)
    _, idx = index.search(data, k + 1)
    rows = np.arange(n)
    keep = idx != rows[:, None]
    keep[keep.all(axis=1), -1] = False  # self not among the k + 1 (ties with duplicates): drop the farthest
    neighbours = idx[keep].reshape(n, k)
    choice = np.random.default_rng(seed).integers(0, k, size=n)
    return neighbours[rows, choice].astype(np.int64)
