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
