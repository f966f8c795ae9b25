"""Tests of the Parquet table contract (workflow.tables): schema, round trips, atomic writes, validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow.errors import StrataError
from workflow.tables import (
    EMBEDDING_COLUMN,
    TableWriter,
    VectorTable,
    atomic_path,
    read_metadata,
    read_table,
    write_table,
)


def _table(n: int = 12, dim: int = 5, seed: int = 0, labels: bool = True) -> VectorTable:
    rng = np.random.default_rng(seed)
    ids = rng.permutation(1000)[:n].astype(np.int64) + 7  # unsorted, non-contiguous ids
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return VectorTable(ids=ids, vectors=vectors, labels=rng.integers(0, 3, n).astype(np.int64) if labels else None)


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Files in ``folder`` other than ``keep`` (temporary files of atomic writes start with a dot)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _write_arrow(path: Path, columns: dict[str, pa.Array]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _vec(rows: list[list[float]]) -> pa.Array:
    return pa.array(rows, pa.list_(pa.float32(), len(rows[0])))


# --------------------------------------------------------------------------------------------------
# round trips and schema
# --------------------------------------------------------------------------------------------------


def test_round_trip_ids_labels_vectors(tmp_path: Path) -> None:
    table = _table(n=12, dim=5)
    path = tmp_path / "t.parquet"
    write_table(table, path)
    back = read_table(path)
    np.testing.assert_array_equal(back.ids, table.ids)
    np.testing.assert_array_equal(back.labels, table.labels)
    assert back.vectors.dtype == np.float32 and back.ids.dtype == np.int64 and back.labels.dtype == np.int64
    np.testing.assert_array_equal(back.vectors, table.vectors)  # bit-exact for float32
    assert back.dim == 5 and len(back) == 12 and back.has_labels
    assert _leftovers(tmp_path, {"t.parquet"}) == []


def test_arrow_schema_is_exactly_the_contract(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    write_table(_table(dim=7), path, column=EMBEDDING_COLUMN, metadata={"stage": "embed", "n": 3})
    schema = pq.read_schema(path)
    assert schema.names == ["id", "label", EMBEDDING_COLUMN]
    assert schema.field("id").type == pa.int64() and not schema.field("id").nullable
    assert schema.field("label").type == pa.int64() and schema.field("label").nullable
    vec = schema.field(EMBEDDING_COLUMN)
    assert pa.types.is_fixed_size_list(vec.type)
    assert vec.type.list_size == 7 and vec.type.value_type == pa.float32()
    assert read_metadata(path) == {"stage": "embed", "n": 3}
    assert read_table(path, column=EMBEDDING_COLUMN, expected_dim=7).dim == 7


def test_partly_null_labels_become_minus_one(tmp_path: Path) -> None:
    table = _table(n=6)
    table.labels = np.array([2, -1, 0, -1, 1, 1], dtype=np.int64)
    path = tmp_path / "t.parquet"
    write_table(table, path)
    arrow = pq.read_table(path)
    assert arrow.column("label").null_count == 2  # stored as nulls, not as -1
    assert arrow.column("label").to_pylist() == [2, None, 0, None, 1, 1]
    back = read_table(path)
    np.testing.assert_array_equal(back.labels, [2, -1, 0, -1, 1, 1])
    assert not back.has_labels


def test_table_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    write_table(_table(n=4, labels=False), path)
    arrow = pq.read_table(path)
    assert arrow.column("label").null_count == 4
    back = read_table(path)
    assert back.labels is None and not back.has_labels
    assert back.take(np.array([2, 0])).labels is None


def test_float64_input_is_stored_as_float32(tmp_path: Path) -> None:
    x = np.array([[0.1, 1e-3], [2.5, -3.0]])
    table = VectorTable(ids=np.array([5, 9]), vectors=x, labels=np.array([0, 1]))
    path = tmp_path / "t.parquet"
    write_table(table, path)
    back = read_table(path)
    assert back.vectors.dtype == np.float32
    np.testing.assert_array_equal(back.vectors, x.astype(np.float32))


def test_plain_variable_list_column_is_accepted(tmp_path: Path) -> None:
    path = _write_arrow(tmp_path / "plain.parquet", {
        "id": pa.array([3, 1, 2], pa.int64()),
        "feat": pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.5]], pa.list_(pa.float32())),
    })
    assert not pa.types.is_fixed_size_list(pq.read_schema(path).field("feat").type)
    back = read_table(path)
    np.testing.assert_array_equal(back.ids, [3, 1, 2])
    np.testing.assert_array_equal(back.vectors, np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9.5]], np.float32))
    assert back.labels is None and back.dim == 3


# --------------------------------------------------------------------------------------------------
# TableWriter and atomic writes
# --------------------------------------------------------------------------------------------------


def test_table_writer_streams_row_groups_like_write_table(tmp_path: Path) -> None:
    table = _table(n=30, dim=4, seed=3)
    table.labels[[1, 7]] = -1
    whole, streamed = tmp_path / "whole.parquet", tmp_path / "streamed.parquet"
    write_table(table, whole, metadata={"a": 1})
    with TableWriter(streamed, dim=4, metadata={"a": 1}) as writer:
        for start in range(0, 30, 8):  # 8, 8, 8, 6 rows
            writer.write(table.take(np.arange(start, min(start + 8, 30))))
        assert not streamed.exists()  # only renamed into place on close
    assert writer.rows == 30
    assert pq.ParquetFile(streamed).metadata.num_row_groups == 4
    assert pq.read_table(streamed).equals(pq.read_table(whole))
    assert pq.read_schema(streamed).equals(pq.read_schema(whole), check_metadata=True)
    a, b = read_table(streamed), read_table(whole)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert read_metadata(streamed) == {"a": 1}
    assert _leftovers(tmp_path, {"whole.parquet", "streamed.parquet"}) == []


def test_table_writer_leaves_nothing_when_the_block_raises(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError, match="boom"), TableWriter(path, dim=5) as writer:
        writer.write(_table(n=10, dim=5))
        raise RuntimeError("boom")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_table_writer_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    old = _table(n=3, dim=5, seed=1)
    write_table(old, path)
    with pytest.raises(ValueError), TableWriter(path, dim=5) as writer:
        writer.write(_table(n=10, dim=5))
        raise ValueError("abort")
    np.testing.assert_array_equal(read_table(path).ids, old.ids)
    assert _leftovers(tmp_path, {"out.parquet"}) == []


def test_atomic_path_success_and_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("ok")
        assert not target.exists()
    assert target.read_text() == "ok"

    with pytest.raises(KeyError), atomic_path(target) as tmp:
        tmp.write_text("half-written")
        raise KeyError("fail")
    assert target.read_text() == "ok"  # untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]

    fresh = tmp_path / "fresh.json"
    with pytest.raises(OSError), atomic_path(fresh) as tmp:
        tmp.write_text("partial")
        raise OSError("disk full")
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


# --------------------------------------------------------------------------------------------------
# read_table errors: each a StrataError naming the file
# --------------------------------------------------------------------------------------------------


def _raises_naming(path: Path, match: str, **kwargs) -> StrataError:
    with pytest.raises(StrataError, match=match) as info:
        read_table(path, **kwargs)
    assert str(path) in str(info.value)
    assert info.value.where == str(path)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    _raises_naming(tmp_path / "nope.parquet", "not found")


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _raises_naming(path, "not a readable Parquet file")


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "trunc.parquet"
    write_table(_table(n=50), path)
    path.write_bytes(path.read_bytes()[:-20])
    _raises_naming(path, "not a readable Parquet file")


def test_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    with TableWriter(path, dim=3):
        pass
    assert pq.read_table(path).num_rows == 0
    _raises_naming(path, "empty")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows(tmp_path: Path, bad: float) -> None:
    table = _table(n=8, dim=4)
    table.vectors[5, 2] = bad
    path = tmp_path / "bad.parquet"
    write_table(table, path)
    err = _raises_naming(path, "1 rows hold NaN or infinite")
    assert f"first id {table.ids[5]}" in str(err)


def test_wrong_expected_dim(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    write_table(_table(dim=5), path)
    _raises_naming(path, "5-wide, expected 6", expected_dim=6)
    assert read_table(path, expected_dim=5).dim == 5


def test_duplicate_ids(tmp_path: Path) -> None:
    table = _table(n=5)
    table.ids[3] = table.ids[1]
    path = tmp_path / "dup.parquet"
    write_table(table, path)
    _raises_naming(path, "duplicates")


def test_missing_id_column(tmp_path: Path) -> None:
    path = _write_arrow(tmp_path / "noid.parquet", {"label": pa.array([0, 1]), "vector": _vec([[1.0], [2.0]])})
    _raises_naming(path, "missing column `id`")


@pytest.mark.parametrize("ids", [pa.array([1, None, 3], pa.int64()), pa.array([1.5, 2.0, 3.0]),
                                 pa.array(["a", "b", "c"])], ids=["null", "float", "string"])
def test_id_column_must_be_non_null_integers(tmp_path: Path, ids: pa.Array) -> None:
    path = _write_arrow(tmp_path / "badid.parquet", {"id": ids, "vector": _vec([[1.0], [2.0], [3.0]])})
    _raises_naming(path, "column `id` must hold integers without nulls")


def test_variable_length_list_column(tmp_path: Path) -> None:
    path = _write_arrow(tmp_path / "ragged.parquet", {
        "id": pa.array([0, 1, 2], pa.int64()),
        "vector": pa.array([[1.0, 2.0], [3.0], [4.0, 5.0]], pa.list_(pa.float32())),
    })
    _raises_naming(path, "different lengths")


def test_null_vector(tmp_path: Path) -> None:
    path = _write_arrow(tmp_path / "nullvec.parquet", {
        "id": pa.array([0, 1], pa.int64()),
        "vector": pa.array([[1.0, 2.0], None], pa.list_(pa.float32())),
    })
    _raises_naming(path, "null vectors")


def test_vector_column_choice(tmp_path: Path) -> None:
    path = _write_arrow(tmp_path / "two.parquet", {
        "id": pa.array([0, 1], pa.int64()), "a": _vec([[1.0, 2.0], [3.0, 4.0]]), "b": _vec([[5.0], [6.0]]),
    })
    _raises_naming(path, "exactly one list-typed vector column")
    _raises_naming(path, "no column 'c'", column="c")
    np.testing.assert_array_equal(read_table(path, column="b").vectors, [[5.0], [6.0]])


def test_require_labels(tmp_path: Path) -> None:
    unlabelled, partial = tmp_path / "unlabelled.parquet", tmp_path / "partial.parquet"
    write_table(_table(n=4, labels=False), unlabelled)
    table = _table(n=4)
    table.labels[0] = -1
    write_table(table, partial)
    _raises_naming(unlabelled, "labels are required", require_labels=True)
    _raises_naming(partial, "labels are required", require_labels=True)
    nolabelcol = _write_arrow(tmp_path / "nolabelcol.parquet", {"id": pa.array([0, 1]), "vector": _vec([[1.0], [2.0]])})
    _raises_naming(nolabelcol, "labels are required", require_labels=True)
    labelled = tmp_path / "labelled.parquet"
    write_table(_table(n=4), labelled)
    assert read_table(labelled, require_labels=True).has_labels
