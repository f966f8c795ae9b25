"""Pretraining reads its rows by streaming the pool: the same rows, in pool order, as loading it whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workflow.errors import StrataError
from workflow.pretrain.rows import TrainingRows, scan_pool, write_training_rows
from workflow.tables import VectorTable, read_table, write_table


@pytest.fixture()
def pool(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    ids = rng.permutation(10_000)[:1000].astype(np.int64) + 5  # ids unrelated to row positions
    table = VectorTable(ids=ids, vectors=rng.normal(size=(1000, 6)).astype(np.float32),
                        labels=rng.integers(0, 3, 1000))
    write_table(table, tmp_path / "pool.parquet")
    return tmp_path / "pool.parquet"


def test_streamed_rows_equal_the_loaded_selection(pool: Path, tmp_path: Path) -> None:
    whole = read_table(pool)
    selected = np.random.default_rng(1).choice(whole.ids, size=300, replace=False)
    assert scan_pool(str(pool), np.unique(selected), "sel") == 6
    ids, digest = write_training_rows(str(pool), selected, tmp_path / "rows.npy", batch_rows=64)  # many batches
    expected = whole.take(np.flatnonzero(np.isin(whole.ids, selected)))
    assert np.array_equal(ids, expected.ids) and len(digest) == 64
    rows = TrainingRows(tmp_path / "rows.npy")
    assert len(rows) == 300 and rows.dim == 6
    index = np.random.default_rng(2).integers(0, 300, 50)  # unsorted, with repeats
    assert np.array_equal(rows.batch(index), expected.vectors[index])
    assert np.array_equal(rows.all(), expected.vectors)
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_and_repeated_ids_are_refused_before_any_work(pool: Path, tmp_path: Path) -> None:
    ids = read_table(pool).ids
    with pytest.raises(StrataError, match="2 selected ids are not in the pool") as err:
        scan_pool(str(pool), np.array([ids[0], -1, -2]), "selection.parquet")
    assert err.value.where == "selection.parquet"
    with pytest.raises(StrataError, match="not in the pool"):
        write_training_rows(str(pool), np.array([ids[0], -1]), tmp_path / "rows.npy")
    assert not list(tmp_path.glob("rows.npy*"))
    doubled = read_table(pool)
    twice = VectorTable(ids=np.concatenate([doubled.ids, doubled.ids[:1]]),
                        vectors=np.concatenate([doubled.vectors, doubled.vectors[:1]]))
    write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(StrataError, match="repeats ids"):
        scan_pool(str(tmp_path / "twice.parquet"), np.array([ids[0]]), "selection.parquet")
