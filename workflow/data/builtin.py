"""Built-in data sets, generated locally and deterministically (no download).

Each builder returns three tables: an uncurated ``pool`` with long-tailed class frequencies plus
near-duplicates, and two balanced labelled splits ``probe_train`` / ``probe_test`` used only for
evaluation. Class ``c`` (0-based, of ``C``) gets ``n_c = round(n_max * rho ** (-c / (C - 1)))`` pool
items, the long-tailed profile of Cui et al. 2019 / Cao et al. 2019 (CIFAR-LT), so class 0 is the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workflow.errors import StrataError
from workflow.tables import VectorTable

POOL_ID_OFFSET = 0
PROBE_TRAIN_ID_OFFSET = 10_000_000
PROBE_TEST_ID_OFFSET = 20_000_000


@dataclass
class DataSplits:
    pool: VectorTable
    probe_train: VectorTable
    probe_test: VectorTable
    input_kind: str  # "signal" (1-D CNN backbone), "image" (ResNet) or "vector" (MLP backbone)
    info: dict[str, Any] = field(default_factory=dict)
    table_meta: dict[str, Any] = field(default_factory=dict)  # extra `strata` metadata of the tables (image_shape)


def long_tail_counts(n_max: int, imbalance_ratio: float, n_classes: int) -> np.ndarray:
    """Pool size per class: ``n_c = round(n_max * rho^(-c/(C-1)))``, at least 1."""
    c = np.arange(n_classes)
    counts = np.round(n_max * imbalance_ratio ** (-c / max(n_classes - 1, 1))).astype(np.int64)
    return np.maximum(counts, 1)


def _long_tailed_pool(x: np.ndarray, y: np.ndarray, counts: np.ndarray, duplicate_fraction: float,
                      duplicate_noise: float, rng: np.random.Generator, name: str) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    """Pick ``counts[c]`` items of each class, add near-duplicates, shuffle.

    Returns vectors, labels, and ``duplicate_of`` (index into the returned pool of the original an
    item copies, -1 for originals).
    """
    rows = []
    for c, n_c in enumerate(counts):
        members = np.flatnonzero(y == c)
        if len(members) < n_c:
            raise StrataError(f"class {c} has {len(members)} items, the long-tailed pool needs {n_c}",
                              where=f"datasets.{name}.n_max", fix="lower n_max (or imbalance_ratio).")
        rows.append(rng.choice(members, size=n_c, replace=False))
    base = np.concatenate(rows)
    xb, yb = x[base], y[base]
    n_dup = round(duplicate_fraction * len(base))
    src = rng.choice(len(base), size=n_dup, replace=True)
    noise = rng.normal(0.0, duplicate_noise * float(xb.std()), size=(n_dup, x.shape[1]))
    xs = np.concatenate([xb, xb[src] + noise]).astype(np.float32)
    ys = np.concatenate([yb, yb[src]])
    dup_of = np.concatenate([np.full(len(base), -1), src])
    perm = rng.permutation(len(xs))
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    dup_of = dup_of[perm]
    dup_of = np.where(dup_of >= 0, inverse[np.maximum(dup_of, 0)], -1)
    return xs[perm], ys[perm], dup_of


def _balanced(x: np.ndarray, y: np.ndarray, per_class: int, rng: np.random.Generator, name: str,
              field_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < per_class:
            raise StrataError(f"class {c} has only {len(members)} items left for {per_class} per class",
                              where=f"datasets.{name}.{field_name}", fix="ask for fewer items per class.")
        rows.append(rng.choice(members, size=per_class, replace=False))
    idx = rng.permutation(np.concatenate(rows))
    return x[idx], y[idx], idx


def _table(x: np.ndarray, y: np.ndarray, offset: int) -> VectorTable:
    return VectorTable(ids=np.arange(len(x), dtype=np.int64) + offset, vectors=np.asarray(x, dtype=np.float32),
                       labels=np.asarray(y, dtype=np.int64))


def make_mnist1d_lt(cfg: dict[str, Any], name: str) -> DataSplits:
    """MNIST-1D (Greydanus & Kobak 2024, ``mnist1d.data.make_dataset``, generated bit for bit by
    :func:`workflow.data.mnist1d.make_dataset`; 40-dim signals, 10 classes).

    probe_train / probe_test are the package's standard split (``get_dataset_args()``: 5000 signals,
    seed 42, first 4000 train, last 1000 test) unless per-class sizes are given. The pool is a separate
    draw of the generator (seed ``10_000 + cfg.seed``) arranged as a long-tailed pool with near-duplicates.
    """
    from mnist1d.data import get_dataset_args

    from workflow.data.mnist1d import make_dataset

    args = get_dataset_args()
    standard = make_dataset(args)
    rng = np.random.default_rng(cfg["seed"])
    if cfg["probe_train_per_class"] is None and cfg["probe_test_per_class"] is None:
        probe_train = _table(standard["x"], standard["y"], PROBE_TRAIN_ID_OFFSET)
        probe_test = _table(standard["x_test"], standard["y_test"], PROBE_TEST_ID_OFFSET)
    else:
        x_all = np.concatenate([standard["x"], standard["x_test"]])
        y_all = np.concatenate([standard["y"], standard["y_test"]])
        n_tr = cfg["probe_train_per_class"] or 400
        n_te = cfg["probe_test_per_class"] or 100
        xtr, ytr, used = _balanced(x_all, y_all, n_tr, rng, name, "probe_train_per_class")
        keep = np.setdiff1d(np.arange(len(y_all)), used)
        xte, yte, _ = _balanced(x_all[keep], y_all[keep], n_te, rng, name, "probe_test_per_class")
        probe_train, probe_test = _table(xtr, ytr, PROBE_TRAIN_ID_OFFSET), _table(xte, yte, PROBE_TEST_ID_OFFSET)
    counts = long_tail_counts(cfg["n_max"] or 1000, cfg["imbalance_ratio"], 10)
    pool_args = get_dataset_args()
    pool_args.num_samples = int(counts[0]) * 10
    pool_args.train_split = 1.0
    pool_args.seed = 10_000 + int(cfg["seed"])
    generated = make_dataset(pool_args)
    x, y, dup_of = _long_tailed_pool(generated["x"], generated["y"], counts, cfg["duplicate_fraction"],
                                     cfg["duplicate_noise"], rng, name)
    return DataSplits(_table(x, y, POOL_ID_OFFSET), probe_train, probe_test, "signal",
                      {"class_counts": counts.tolist(), "n_duplicates": int((dup_of >= 0).sum())})


def make_digits(cfg: dict[str, Any], name: str) -> DataSplits:
    """scikit-learn's 8x8 digits (1797 images, 64-dim, pixel values / 16), long-tailed pool + balanced probes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    return digits_splits(x, y, cfg, name, "vector")


def digits_splits(x: np.ndarray, y: np.ndarray, cfg: dict[str, Any], name: str, input_kind: str) -> DataSplits:
    """The digits data sets' splits of ``x`` (one row per digit): balanced probe_test, then balanced probe_train
    out of the rest, then a long-tailed pool with near-duplicates out of what is left."""
    rng = np.random.default_rng(cfg["seed"])
    n_te = cfg["probe_test_per_class"] or 30
    n_tr = cfg["probe_train_per_class"] or 50
    xte, yte, used_te = _balanced(x, y, n_te, rng, name, "probe_test_per_class")
    rest = np.setdiff1d(np.arange(len(y)), used_te)
    xtr, ytr, used_tr = _balanced(x[rest], y[rest], n_tr, rng, name, "probe_train_per_class")
    rest = np.setdiff1d(rest, rest[used_tr])
    counts = long_tail_counts(cfg["n_max"] or 90, cfg["imbalance_ratio"], 10)
    xp, yp, dup_of = _long_tailed_pool(x[rest], y[rest], counts, cfg["duplicate_fraction"], cfg["duplicate_noise"],
                                       rng, name)
    return DataSplits(_table(xp, yp, POOL_ID_OFFSET), _table(xtr, ytr, PROBE_TRAIN_ID_OFFSET),
                      _table(xte, yte, PROBE_TEST_ID_OFFSET), input_kind,
                      {"class_counts": counts.tolist(), "n_duplicates": int((dup_of >= 0).sum())})


def make_blobs(cfg: dict[str, Any], name: str) -> DataSplits:
    """A long-tailed hierarchical Gaussian mixture: classes -> sub-modes -> points.

    Class centres ~ N(0, 4^2 I); each class has ``n_subclusters`` sub-modes at centre + N(0, 1.5^2 I);
    points are a uniformly chosen sub-mode + N(0, 0.5^2 I). Any size and dimension.
    """
    rng = np.random.default_rng(cfg["seed"])
    n_classes, dim, n_sub = cfg["n_classes"], cfg["dim"], cfg["n_subclusters"]
    centres = rng.normal(0.0, 4.0, size=(n_classes, dim))
    modes = centres[:, None, :] + rng.normal(0.0, 1.5, size=(n_classes, n_sub, dim))

    def sample(per_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ys = np.repeat(np.arange(n_classes), per_class)
        which = rng.integers(0, n_sub, size=len(ys))
        xs = modes[ys, which] + rng.normal(0.0, 0.5, size=(len(ys), dim))
        return xs.astype(np.float32), ys

    counts = long_tail_counts(cfg["n_max"] or 1000, cfg["imbalance_ratio"], n_classes)
    x, y = sample(counts)
    xp, yp, dup_of = _long_tailed_pool(x, y, counts, cfg["duplicate_fraction"], cfg["duplicate_noise"], rng, name)
    n_tr = cfg["probe_train_per_class"] or 400
    n_te = cfg["probe_test_per_class"] or 100
    xtr, ytr = sample(np.full(n_classes, n_tr))
    xte, yte = sample(np.full(n_classes, n_te))
    ptr, pte = rng.permutation(len(ytr)), rng.permutation(len(yte))
    return DataSplits(_table(xp, yp, POOL_ID_OFFSET), _table(xtr[ptr], ytr[ptr], PROBE_TRAIN_ID_OFFSET),
                      _table(xte[pte], yte[pte], PROBE_TEST_ID_OFFSET), "vector",
                      {"class_counts": counts.tolist(), "n_duplicates": int((dup_of >= 0).sum())})


RING_SIZES = [20000, 200, 1000, 500, 8000]
RING_CENTRES = [(-2.2, 1.0), (0.0, 1.0), (2.2, 1.0), (-1.2, 0.2), (1.2, 0.2)]


def make_rings(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The reference curation README's toy (Vo et al. 2024): five overlapping 2-D rings (radius 0.7-1.0) of
    20000/200/1000/500/8000 points. Returns float32 points and the ring index of each."""
    rng = np.random.default_rng(seed)
    pts, labels = [], []
    for i, (n, (cx, cy)) in enumerate(zip(RING_SIZES, RING_CENTRES, strict=True)):
        angle = rng.uniform(0.0, 2 * np.pi, n)
        radius = rng.uniform(0.7, 1.0, n)
        pts.append(np.c_[cx + radius * np.cos(angle), cy + radius * np.sin(angle)])
        labels.append(np.full(n, i))
    return np.concatenate(pts).astype(np.float32), np.concatenate(labels)
