"""Small embedding fixtures shared by the evaluation-protocol tests (imported as ``metric_helpers``)."""

from __future__ import annotations

import numpy as np


def blobs(n_per_class: int, n_classes: int, dim: int, seed: int, std: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Blobs around 5·e_c (distinct directions, so they are separated in cosine geometry too)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centers = 5.0 * np.eye(dim)[:n_classes]
    x = centers[labels] + std * rng.standard_normal((labels.size, dim))
    perm = rng.permutation(labels.size)
    return x[perm].astype(np.float32), labels[perm]


def angles(deg: list[float]) -> np.ndarray:
    """Unit vectors in the plane at the given angles (degrees), float32."""
    a = np.deg2rad(np.asarray(deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def brute_force_knn(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, k: int,
                    t: float) -> float:
    """Weighted kNN accuracy (Wu et al. 2018; docs/metrics.md) by exhaustive cosine search in float64: the
    independent reference of the metric's tests."""
    a = x_tr / np.linalg.norm(x_tr, axis=1, keepdims=True)
    b = x_te / np.linalg.norm(x_te, axis=1, keepdims=True)
    sim = b.astype(np.float64) @ a.T.astype(np.float64)
    n_cls = int(max(y_tr.max(), y_te.max())) + 1
    correct = 0
    for i in range(len(y_te)):
        top = np.argsort(-sim[i], kind="stable")[:k]
        scores = np.zeros(n_cls)
        for j in top:
            scores[y_tr[j]] += np.exp(sim[i, j] / t)
        correct += int(np.argmax(scores) == y_te[i])
    return correct / len(y_te)
