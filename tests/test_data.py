"""Tests of the data stage (workflow.data): long-tailed pools, balanced probes, determinism, user data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from workflow.config import validate
from workflow.data import DataSplits, build_dataset
from workflow.data.builtin import (
    POOL_ID_OFFSET,
    PROBE_TEST_ID_OFFSET,
    PROBE_TRAIN_ID_OFFSET,
    long_tail_counts,
)
from workflow.errors import StrataError
from workflow.tables import VectorTable, write_table


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return validate(dict(kwargs), "dataset", source="test")


def _class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=n_classes)


def _originals_per_class(splits: DataSplits, cfg: dict[str, Any], n_classes: int) -> np.ndarray:
    """Pool items per class after merging near-duplicates with their source (independent of the generator).

    A near-duplicate is its source plus N(0, (noise * std)^2) per coordinate, so it lies within a few
    ``noise * std * sqrt(dim)`` of the source; distinct items are much farther apart.
    """
    x, y = splits.pool.vectors.astype(np.float64), splits.pool.labels
    radius = 4.0 * cfg["duplicate_noise"] * float(x.std()) * np.sqrt(x.shape[1])
    _, component = connected_components(cdist(x, x) < radius, directed=False)
    for comp in np.unique(component):  # a duplicate always carries its source's label
        assert len(np.unique(y[component == comp])) == 1
    return np.array([len(np.unique(component[y == c])) for c in range(n_classes)])


def _assert_balanced(table: VectorTable, n_classes: int, per_class: int) -> None:
    assert table.has_labels
    np.testing.assert_array_equal(_class_counts(table.labels, n_classes), np.full(n_classes, per_class))


def _assert_same(a: DataSplits, b: DataSplits) -> None:
    for name in ("pool", "probe_train", "probe_test"):
        ta, tb = getattr(a, name), getattr(b, name)
        np.testing.assert_array_equal(ta.ids, tb.ids)
        np.testing.assert_array_equal(ta.labels, tb.labels)
        assert ta.vectors.tobytes() == tb.vectors.tobytes(), name


# --------------------------------------------------------------------------------------------------
# long-tailed profile
# --------------------------------------------------------------------------------------------------


def test_long_tail_counts_profile() -> None:
    counts = long_tail_counts(1000, 100, 10)
    expected = np.array([round(1000 * 100.0 ** (-c / 9)) for c in range(10)])
    np.testing.assert_array_equal(counts, np.round(1000 * np.power(100.0, -np.arange(10) / 9)))
    np.testing.assert_array_equal(counts, expected)
    assert counts[0] == 1000 and counts[-1] == 10
    assert counts.dtype.kind == "i" and np.all(np.diff(counts) < 0)


def test_long_tail_counts_edge_cases() -> None:
    np.testing.assert_array_equal(long_tail_counts(50, 1, 4), [50, 50, 50, 50])  # rho = 1: balanced
    assert long_tail_counts(3, 1000, 5).min() == 1  # never an empty class
    np.testing.assert_array_equal(long_tail_counts(7, 10, 1), [7])


# --------------------------------------------------------------------------------------------------
# mnist1d-lt
# --------------------------------------------------------------------------------------------------

MNIST_SMALL = {"kind": "mnist1d-lt", "n_max": 100, "imbalance_ratio": 10, "duplicate_fraction": 0.2,
               "probe_train_per_class": 20, "probe_test_per_class": 10}


@pytest.fixture(scope="module")
def mnist_small() -> tuple[dict[str, Any], DataSplits]:
    cfg = _cfg(**MNIST_SMALL)
    return cfg, build_dataset(cfg, "mnist-small")


def test_mnist1d_lt_pool_is_long_tailed_with_duplicates(mnist_small) -> None:
    cfg, splits = mnist_small
    counts = long_tail_counts(100, 10, 10)
    n_dup = round(0.2 * counts.sum())
    pool = splits.pool
    assert len(pool) == counts.sum() + n_dup
    assert splits.info["class_counts"] == counts.tolist() and splits.info["n_duplicates"] == n_dup
    assert pool.dim == 40 and pool.vectors.dtype == np.float32 and pool.has_labels
    np.testing.assert_array_equal(np.sort(pool.ids), POOL_ID_OFFSET + np.arange(len(pool)))
    per_class = _class_counts(pool.labels, 10)
    assert np.all(per_class >= counts) and per_class.sum() - counts.sum() == n_dup
    np.testing.assert_array_equal(_originals_per_class(splits, cfg, 10), counts)
    assert splits.input_kind == "signal"


def test_mnist1d_lt_probes_are_balanced_and_labelled(mnist_small) -> None:
    _, splits = mnist_small
    _assert_balanced(splits.probe_train, 10, 20)
    _assert_balanced(splits.probe_test, 10, 10)
    assert splits.probe_train.dim == splits.probe_test.dim == 40
    np.testing.assert_array_equal(np.sort(splits.probe_train.ids), PROBE_TRAIN_ID_OFFSET + np.arange(200))
    np.testing.assert_array_equal(np.sort(splits.probe_test.ids), PROBE_TEST_ID_OFFSET + np.arange(100))
    # the two probes are disjoint draws of the same signals
    train_rows = {row.tobytes() for row in splits.probe_train.vectors}
    assert not any(row.tobytes() in train_rows for row in splits.probe_test.vectors)


def test_mnist1d_lt_is_deterministic_and_seeded(mnist_small) -> None:
    _, first = mnist_small
    _assert_same(first, build_dataset(_cfg(**MNIST_SMALL), "mnist-small"))
    other = build_dataset(_cfg(**MNIST_SMALL, seed=1), "mnist-small")
    assert len(other.pool) == len(first.pool)  # same profile ...
    assert other.pool.vectors.tobytes() != first.pool.vectors.tobytes()  # ... different items
    assert not np.array_equal(other.pool.labels, first.pool.labels)


def test_mnist1d_lt_default_probes_are_the_standard_split() -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    splits = build_dataset(_cfg(kind="mnist1d-lt", n_max=20, imbalance_ratio=10), "mnist-default")
    standard = make_dataset(get_dataset_args())
    train, test = splits.probe_train, splits.probe_test
    assert (len(train), len(test), train.dim, test.dim) == (4000, 1000, 40, 40)
    np.testing.assert_array_equal(train.vectors, standard["x"].astype(np.float32))
    np.testing.assert_array_equal(train.labels, standard["y"])
    np.testing.assert_array_equal(test.vectors, standard["x_test"].astype(np.float32))
    np.testing.assert_array_equal(test.labels, standard["y_test"])
    np.testing.assert_array_equal(train.ids, PROBE_TRAIN_ID_OFFSET + np.arange(4000))
    np.testing.assert_array_equal(test.ids, PROBE_TEST_ID_OFFSET + np.arange(1000))
    assert len(splits.pool) == long_tail_counts(20, 10, 10).sum() + round(0.1 * long_tail_counts(20, 10, 10).sum())


@pytest.mark.parametrize(("num_samples", "seed", "train_split", "shuffle_seq"),
                         [(1000, 10_000, 1.0, False), (300, 7, 0.5, True)])
def test_mnist1d_generator_is_the_package_bit_for_bit(num_samples: int, seed: int, train_split: float,
                                                      shuffle_seq: bool) -> None:
    """The fast generator against the package itself: the pool's settings (all train, another seed) and the
    sequence shuffle, which draws once more from the generator."""
    from mnist1d.data import get_dataset_args, make_dataset

    from workflow.data.mnist1d import make_dataset as fast

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split, args.shuffle_seq = num_samples, seed, train_split, shuffle_seq
    ours, package = fast(args), make_dataset(args)
    for key in ("x", "y", "x_test", "y_test"):
        assert ours[key].dtype == package[key].dtype
        np.testing.assert_array_equal(ours[key], package[key])


# --------------------------------------------------------------------------------------------------
# digits and blobs
# --------------------------------------------------------------------------------------------------


def test_digits() -> None:
    cfg = _cfg(kind="digits", n_max=60, imbalance_ratio=10, duplicate_fraction=0.25, duplicate_noise=0.002)
    splits = build_dataset(cfg, "digits")
    counts = long_tail_counts(60, 10, 10)
    assert splits.pool.dim == splits.probe_train.dim == splits.probe_test.dim == 64
    assert len(splits.pool) == counts.sum() + round(0.25 * counts.sum())
    np.testing.assert_array_equal(_originals_per_class(splits, cfg, 10), counts)
    assert splits.pool.vectors.min() >= -0.1 and splits.pool.vectors.max() <= 1.1  # pixels / 16 (+ tiny noise)
    _assert_balanced(splits.probe_train, 10, 50)  # defaults
    _assert_balanced(splits.probe_test, 10, 30)
    assert splits.input_kind == "vector"
    _assert_same(splits, build_dataset(cfg, "digits"))


def test_digits_n_max_too_large() -> None:
    with pytest.raises(StrataError, match="n_max") as info:
        build_dataset(_cfg(kind="digits", n_max=500), "dg")
    assert info.value.where == "datasets.dg.n_max"


def test_blobs() -> None:
    cfg = _cfg(kind="blobs", n_max=50, imbalance_ratio=10, n_classes=4, dim=3, duplicate_fraction=0.2,
               duplicate_noise=0.001, probe_train_per_class=7, probe_test_per_class=5)
    splits = build_dataset(cfg, "blobs")
    counts = long_tail_counts(50, 10, 4)
    assert counts.tolist() == [50, 23, 11, 5]
    assert splits.pool.dim == splits.probe_train.dim == splits.probe_test.dim == 3
    assert len(splits.pool) == counts.sum() + round(0.2 * counts.sum())
    assert set(np.unique(splits.pool.labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(_originals_per_class(splits, cfg, 4), counts)
    _assert_balanced(splits.probe_train, 4, 7)
    _assert_balanced(splits.probe_test, 4, 5)
    _assert_same(splits, build_dataset(cfg, "blobs"))
    other = build_dataset({**cfg, "seed": 3}, "blobs")
    assert other.pool.vectors.tobytes() != splits.pool.vectors.tobytes()


def test_blobs_defaults_and_input_kind_override() -> None:
    splits = build_dataset(_cfg(kind="blobs", n_max=30, dim=5, n_classes=3, input_kind="signal"), "b")
    assert splits.pool.dim == 5 and splits.input_kind == "signal"
    _assert_balanced(splits.probe_train, 3, 400)
    _assert_balanced(splits.probe_test, 3, 100)


# --------------------------------------------------------------------------------------------------
# user data (kind: file)
# --------------------------------------------------------------------------------------------------


def _probe(path: Path, n: int, dim: int, seed: int, labels: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    write_table(VectorTable(ids=np.arange(n) + 100, vectors=rng.standard_normal((n, dim)).astype(np.float32),
                           labels=rng.integers(0, 3, n) if labels else None), path)
    return path


def test_user_npy_pool(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((25, 6))
    np.save(tmp_path / "pool.npy", x)
    labels = np.arange(25) % 3
    np.save(tmp_path / "labels.npy", labels)
    cfg = _cfg(kind="file", path=str(tmp_path / "pool.npy"), labels_path=str(tmp_path / "labels.npy"),
               probe_train_path=str(_probe(tmp_path / "tr.parquet", 12, 6, 1)),
               probe_test_path=str(_probe(tmp_path / "te.parquet", 9, 6, 2)))
    splits = build_dataset(cfg, "mine")
    np.testing.assert_array_equal(splits.pool.ids, np.arange(25))
    np.testing.assert_array_equal(splits.pool.vectors, x.astype(np.float32))
    np.testing.assert_array_equal(splits.pool.labels, labels)
    assert (len(splits.probe_train), len(splits.probe_test)) == (12, 9)
    assert splits.probe_train.has_labels and splits.probe_test.has_labels
    assert splits.input_kind == "vector" and splits.info["source"] == str(tmp_path / "pool.npy")


def test_user_parquet_pool_without_labels(tmp_path: Path) -> None:
    pool = _probe(tmp_path / "pool.parquet", 30, 4, 0, labels=False)
    cfg = _cfg(kind="file", path=str(pool), probe_train_path=str(_probe(tmp_path / "tr.parquet", 6, 4, 1)),
               probe_test_path=str(_probe(tmp_path / "te.parquet", 6, 4, 2)))
    splits = build_dataset(cfg, "mine")
    assert len(splits.pool) == 30 and splits.pool.labels is None


def test_user_npy_with_nan(tmp_path: Path) -> None:
    x = np.ones((10, 3))
    x[4, 1] = np.nan
    np.save(tmp_path / "pool.npy", x)
    cfg = _cfg(kind="file", path=str(tmp_path / "pool.npy"),
               probe_train_path=str(_probe(tmp_path / "tr.parquet", 6, 3, 1)),
               probe_test_path=str(_probe(tmp_path / "te.parquet", 6, 3, 2)))
    with pytest.raises(StrataError, match="NaN") as info:
        build_dataset(cfg, "mine")
    assert str(tmp_path / "pool.npy") in str(info.value)
    assert "first row 4" in str(info.value)


def test_user_data_without_probe_train(tmp_path: Path) -> None:
    np.save(tmp_path / "pool.npy", np.ones((10, 3)))
    cfg = _cfg(kind="file", path=str(tmp_path / "pool.npy"),
               probe_test_path=str(_probe(tmp_path / "te.parquet", 6, 3, 2)))
    with pytest.raises(StrataError, match="probe_train_path") as info:
        build_dataset(cfg, "mine")
    assert info.value.where == "datasets.mine.probe_train_path"


def test_user_probe_must_match_pool_and_be_labelled(tmp_path: Path) -> None:
    np.save(tmp_path / "pool.npy", np.ones((10, 3)))
    wide = _probe(tmp_path / "wide.parquet", 6, 4, 1)
    unlabelled = _probe(tmp_path / "unlabelled.parquet", 6, 3, 1, labels=False)
    good = _probe(tmp_path / "good.parquet", 6, 3, 1)
    base = {"kind": "file", "path": str(tmp_path / "pool.npy"), "probe_test_path": str(good)}
    with pytest.raises(StrataError, match="4-wide, expected 3") as info:
        build_dataset(_cfg(**base, probe_train_path=str(wide)), "mine")
    assert str(wide) in str(info.value)
    with pytest.raises(StrataError, match="labels are required") as info:
        build_dataset(_cfg(**base, probe_train_path=str(unlabelled)), "mine")
    assert str(unlabelled) in str(info.value)


def test_user_pool_bad_files(tmp_path: Path) -> None:
    probes = {"probe_train_path": str(_probe(tmp_path / "tr.parquet", 6, 3, 1)),
              "probe_test_path": str(_probe(tmp_path / "te.parquet", 6, 3, 2))}
    (tmp_path / "pool.csv").write_text("1,2,3\n")
    np.save(tmp_path / "flat.npy", np.ones(10))
    for name, match in (("missing.npy", "not found"), ("pool.csv", "unsupported file type"),
                        ("flat.npy", "2-D array")):
        path = str(tmp_path / name)
        with pytest.raises(StrataError, match=match) as info:
            build_dataset(_cfg(kind="file", path=path, **probes), "mine")
        assert path in str(info.value)
