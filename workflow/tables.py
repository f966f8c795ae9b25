"""Parquet table contracts shared by every stage.

Every table Strata writes or reads is Parquet (through pyarrow) with this schema:

==========  ===============================  ==========================================
column      Arrow type                       meaning
==========  ===============================  ==========================================
``id``      ``int64`` (not null, unique)     row identity, kept through every stage
``label``   ``int64`` (nullable)             class label, null when unknown
vector      ``fixed_size_list<float32>[d]``  the vector; column name given per table
==========  ===============================  ==========================================

Writes are atomic: a table is written to a temporary file next to its destination and
renamed into place, so a failed job never leaves a half-written table behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workflow.errors import StrataError

VECTOR_COLUMN = "vector"
EMBEDDING_COLUMN = "embedding"


@dataclass
class VectorTable:
    """An in-memory table: ids, optional labels and a float32 matrix."""

    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, d) float32
    labels: np.ndarray | None = None  # (n,) int64 with -1 for unknown, or None when no label column

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def take(self, rows: np.ndarray) -> VectorTable:
        labels = None if self.labels is None else self.labels[rows]
        return VectorTable(ids=self.ids[rows], vectors=self.vectors[rows], labels=labels)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None and bool((self.labels >= 0).all())


def vector_schema(dim: int, column: str = VECTOR_COLUMN) -> pa.Schema:
    """The Arrow schema of a vector table with ``dim``-wide vectors in ``column``."""
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("label", pa.int64(), nullable=True),
            pa.field(column, pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def to_arrow(table: VectorTable, column: str = VECTOR_COLUMN) -> pa.Table:
    """Convert to an Arrow table with the documented schema."""
    n, dim = table.vectors.shape
    flat = pa.array(np.ascontiguousarray(table.vectors, dtype=np.float32).reshape(-1))
    vectors = pa.FixedSizeListArray.from_arrays(flat, dim)
    if table.labels is None:
        labels = pa.nulls(n, pa.int64())
    else:
        labels = pa.array(table.labels.astype(np.int64), mask=table.labels < 0)
    return pa.Table.from_arrays(
        [pa.array(table.ids.astype(np.int64)), labels, vectors], schema=vector_schema(dim, column)
    )


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (a short window in which the mask is 022)
    os.umask(mask)
    return mask


def output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path``'s folder (and its parents) if needed; an impossible folder is a :class:`StrataError`."""
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StrataError(f"cannot create the output folder {str(parent)!r} ({err.strerror or err})",
                          where=str(path), fix="choose an output path in a folder you can write to.") from err
    return parent


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it to ``path`` on success only.

    The file gets the mode an ordinary ``open`` would give it (0666 less the umask), not ``mkstemp``'s 0600,
    so that results are as readable as the user's other files (e.g. by the group on a shared cluster).
    """
    path = Path(path)
    output_dir(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise StrataError(f"cannot write in {str(path.parent)!r} ({err.strerror or err})", where=str(path),
                          fix="choose an output path in a folder you can write to.") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # After the write: some writers (safetensors) replace the file instead of writing into it.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_table(table: VectorTable, path: str | os.PathLike[str], column: str = VECTOR_COLUMN,
                metadata: dict[str, Any] | None = None) -> None:
    """Write ``table`` atomically as Parquet; ``metadata`` goes to the file's key-value metadata as JSON."""
    arrow = to_arrow(table, column)
    if metadata:
        arrow = arrow.replace_schema_metadata({"strata": json.dumps(metadata, sort_keys=True)})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp, row_group_size=65536)


class TableWriter:
    """Write a vector table row group by row group (bounded memory), atomically on ``close``."""

    def __init__(self, path: str | os.PathLike[str], dim: int, column: str = VECTOR_COLUMN,
                 metadata: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.column = column
        schema = vector_schema(dim, column)
        if metadata:
            schema = schema.with_metadata({"strata": json.dumps(metadata, sort_keys=True)})
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, schema)
        self.rows = 0

    def write(self, table: VectorTable) -> None:
        arrow = to_arrow(table, self.column).replace_schema_metadata(self._writer.schema.metadata)
        self._writer.write_table(arrow)
        self.rows += len(table)

    def close(self, ok: bool = True) -> None:
        self._writer.close()
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(ok=exc_type is None)


def _vector_column(schema: pa.Schema, path: Path, column: str | None) -> str:
    if column is not None:
        if column not in schema.names:
            raise StrataError(
                f"no column {column!r}; columns are {schema.names}",
                where=str(path), fix="name an existing vector column in the config (field `vector_column`).",
            )
        return column
    candidates = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                  or pa.types.is_large_list(f.type)]
    if len(candidates) != 1:
        raise StrataError(
            f"expected exactly one list-typed vector column, found {candidates or 'none'}",
            where=str(path), fix="store the vectors as one fixed-size list<float32> column, or name it with "
            "`vector_column` in the config.",
        )
    return candidates[0]


def _open(path: Path, pre_buffer: bool = True) -> pq.ParquetFile:
    if not path.exists():
        raise StrataError("file not found", where=str(path), fix="check the path, or run the stage that makes it.")
    try:
        return pq.ParquetFile(path, pre_buffer=pre_buffer)
    except (pa.ArrowInvalid, OSError) as err:
        raise StrataError(f"not a readable Parquet file ({err})", where=str(path),
                          fix="regenerate the file; Strata tables are Parquet written by pyarrow.") from err


def _check_schema(schema: pa.Schema, path: Path, column: str | None) -> str:
    if "id" not in schema.names:
        raise StrataError("missing column `id` (int64)", where=str(path), fix="add a unique int64 `id` column.")
    return _vector_column(schema, path, column)


def _convert(arrow: pa.Table | pa.RecordBatch, path: Path, name: str, expected_dim: int | None) -> VectorTable:
    """Validate one table or record batch and convert it to numpy (ids, vectors, labels)."""
    id_col = arrow.column("id")
    id_type = arrow.schema.field("id").type
    if not pa.types.is_integer(id_type) or id_col.null_count:
        raise StrataError(f"column `id` must hold integers without nulls (type {id_type}, "
                          f"{id_col.null_count} nulls)", where=str(path),
                          fix="store a unique, non-null int64 `id` per row.")
    col = arrow.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise StrataError(f"column {name!r} has {col.null_count} null vectors", where=str(path),
                          fix="drop or fill the rows without a vector.")
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
    else:
        lengths = set(np.asarray(col.value_lengths()).tolist())
        if len(lengths) > 1:
            raise StrataError(f"vectors in {name!r} have different lengths {sorted(lengths)[:5]}",
                              where=str(path), fix="every vector must have the same dimension.")
        dim = lengths.pop() if lengths else 0
    value_type = col.type.value_type
    if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise StrataError(f"vector column {name!r} holds {value_type} values, not numbers", where=str(path),
                          fix="store the vectors as a list<float32> column of numbers.")
    values = col.flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(values, dtype=np.float32).reshape(arrow.num_rows, dim)
    if expected_dim is not None and dim != expected_dim:
        raise StrataError(f"vector column {name!r} is {dim}-wide, expected {expected_dim}", where=str(path),
                          fix="use vectors of the dimension the encoder was trained on.")
    ids = np.asarray(id_col.to_numpy(zero_copy_only=False)).astype(np.int64)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise StrataError(f"{int(bad.sum())} rows hold NaN or infinite values (first id "
                          f"{int(ids[int(np.argmax(bad))])})", where=str(path),
                          fix="clean or drop those rows before running Strata.")
    labels = None
    if "label" in arrow.schema.names:
        lab = arrow.column("label")
        if isinstance(lab, pa.ChunkedArray):
            lab = lab.combine_chunks()
        lab = _integer_labels(lab, path)
        if lab.null_count < len(lab):
            labels = np.asarray(lab.fill_null(-1).to_numpy(zero_copy_only=False)).astype(np.int64)
        elif len(lab):
            labels = np.full(len(lab), -1, dtype=np.int64)
    return VectorTable(ids=ids, vectors=vectors, labels=labels)


def _integer_labels(lab: pa.Array, path: Path) -> pa.Array:
    """The ``label`` column as int64: integers, or floats holding whole numbers (e.g. from pandas with NaN)."""
    fix = "store class labels as integers (int64, null when unknown) in the `label` column."
    if pa.types.is_null(lab.type) or pa.types.is_integer(lab.type):
        return lab.cast(pa.int64())
    if pa.types.is_floating(lab.type):
        values = lab.drop_null().to_numpy(zero_copy_only=False)
        if np.isfinite(values).all() and (values == np.round(values)).all() and (np.abs(values) < 2**62).all():
            return lab.cast(pa.int64(), safe=False)
        raise StrataError("column `label` holds non-integer numbers", where=str(path), fix=fix)
    raise StrataError(f"column `label` holds {lab.type} values, not integer class labels", where=str(path), fix=fix)


def read_table(path: str | os.PathLike[str], column: str | None = None, expected_dim: int | None = None,
               require_labels: bool = False) -> VectorTable:
    """Read and validate a vector table.

    Raises:
        StrataError: missing file, unreadable Parquet, missing ``id``, wrong vector width,
            empty table, NaN or infinite values, duplicate ids, or missing labels when required.
    """
    path = Path(path)
    parquet = _open(path)
    name = _check_schema(parquet.schema_arrow, path, column)
    try:
        arrow = parquet.read()
    except (pa.ArrowInvalid, OSError) as err:
        raise StrataError(f"not a readable Parquet file ({err})", where=str(path),
                          fix="regenerate the file; Strata tables are Parquet written by pyarrow.") from err
    if arrow.num_rows == 0:
        raise StrataError("table is empty", where=str(path), fix="provide at least one row.")
    table = _convert(arrow, path, name, expected_dim)
    if len(np.unique(table.ids)) != len(table.ids):
        raise StrataError("column `id` has duplicates", where=str(path), fix="ids must be unique.")
    if table.labels is not None and (table.labels < 0).all():
        table.labels = None
    if require_labels and (table.labels is None or (table.labels < 0).any()):
        raise StrataError("labels are required here but the `label` column is missing or has nulls",
                          where=str(path), fix="evaluate on a labelled table (e.g. probe_train / probe_test).")
    return table


def table_rows(path: str | os.PathLike[str]) -> int:
    """Number of rows of a Parquet table (from its footer, without reading the data)."""
    return _open(Path(path)).metadata.num_rows


def iter_table(path: str | os.PathLike[str], batch_size: int = 65536, column: str | None = None,
               expected_dim: int | None = None) -> Iterator[VectorTable]:
    """Stream a vector table in validated batches of at most ``batch_size`` rows (bounded memory).

    Same checks as :func:`read_table` per batch, except the global uniqueness of ids.
    """
    path = Path(path)
    # Neither pre-buffering nor decoding threads: with them pyarrow holds data ahead of the reader, and the peak
    # memory grows with the file (benchmarks/pretrain_memory.py).
    parquet = _open(path, pre_buffer=False)
    name = _check_schema(parquet.schema_arrow, path, column)
    if parquet.metadata.num_rows == 0:
        raise StrataError("table is empty", where=str(path), fix="provide at least one row.")
    try:
        for batch in parquet.iter_batches(batch_size=batch_size, use_threads=False):
            yield _convert(batch, path, name, expected_dim)
    except (pa.ArrowInvalid, OSError) as err:
        raise StrataError(f"not a readable Parquet file ({err})", where=str(path),
                          fix="regenerate the file; Strata tables are Parquet written by pyarrow.") from err


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``strata`` JSON metadata stored in a table written by :func:`write_table`."""
    meta = _open(Path(path)).schema_arrow.metadata or {}
    raw = meta.get(b"strata")
    try:
        value = json.loads(raw) if raw else {}
    except ValueError as err:
        raise StrataError(f"the table's `strata` metadata is not valid JSON ({err})", where=str(path),
                          fix="regenerate the file with the stage that writes it.") from err
    if not isinstance(value, dict):
        raise StrataError("the table's `strata` metadata is not a JSON object", where=str(path),
                          fix="regenerate the file with the stage that writes it.")
    return value


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (lineage of stage inputs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
