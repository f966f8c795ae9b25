"""Feature matrices for curation, memory-mapped from disk.

A Parquet feature table (the ``vector`` or ``embedding`` column of :mod:`workflow.tables`) is converted
once into a float32 ``.npy`` file in a cache folder, streaming one record batch at a time
(``pyarrow.parquet.ParquetFile.iter_batches``; the whole table is never held in memory), and then opened
with ``numpy.load(..., mmap_mode="r")``. The k-means of :mod:`workflow.kmeans` reads such a
memmap chunk by chunk, and Ray actors open the same file for their own row range.

The cache file name holds a key of the source's absolute path, size, modification time, vector
column and normalisation, so a changed input is converted again; the file is written to a temporary
name and renamed, so an interrupted conversion never leaves a truncated cache behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workflow.errors import StrataError

#: Rows per record batch read from Parquet during the conversion.
BATCH_ROWS = 65536


def _cache_key(path: Path, column: str | None, normalize: bool) -> str:
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{column}|{int(normalize)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _vector_column(schema: pa.Schema, path: Path, column: str | None) -> str:
    from workflow.tables import _vector_column as find

    return find(schema, path, column)


def _normalise_rows(block: np.ndarray, where: str, first_row: int) -> np.ndarray:
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise StrataError(f"row {first_row + int(zero[0])} of the features is all zeros and cannot be "
                          "L2-normalised", where=where, fix="set normalize: false or drop those rows.")
    return block / norms


def _check_finite(block: np.ndarray, where: str, first_row: int) -> None:
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        raise StrataError(f"{int(bad.sum())} feature rows hold NaN or infinite values (first row "
                          f"{first_row + int(np.argmax(bad))})", where=where,
                          fix="clean or drop those rows before curating.")


def _batch_matrix(batch: pa.RecordBatch, name: str, dim: int | None, where: str) -> np.ndarray:
    col = batch.column(0)
    if col.null_count:
        raise StrataError(f"column {name!r} has {col.null_count} null vectors", where=where,
                          fix="drop or fill the rows without a vector.")
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
    else:
        lengths = np.unique(np.asarray(col.value_lengths()))
        if len(lengths) > 1 or (dim is not None and len(lengths) == 1 and int(lengths[0]) != dim):
            raise StrataError(f"vectors in {name!r} have different lengths", where=where,
                              fix="every vector must have the same dimension.")
        width = int(lengths[0]) if len(lengths) else (dim or 0)
    values = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return values.reshape(len(col), width)


def load_features_memmap(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None, *,
                         column: str | None = None, normalize: bool = False) -> np.ndarray:
    """Open a feature matrix as a read-only float32 memmap, converting it once if needed.

    Args:
        path: Parquet vector table, or a ``(n, d)`` ``.npy`` file.
        cache_dir: Folder of the converted ``.npy`` files (created if missing). Default: a
            ``.strata-cache`` folder next to ``path``.
        column: Vector column of a Parquet table (default: its only list-typed column).
        normalize: L2-normalise every row during the conversion (cosine geometry); an all-zero
            row is an error.

    Returns:
        ``(n, d)`` float32 ``numpy.memmap`` opened with ``mmap_mode="r"``. A float32 ``.npy`` input
        that needs no normalisation is mapped directly, without a copy.

    Raises:
        StrataError: missing/unreadable file, no or ambiguous vector column, ragged or null vectors,
            NaN/inf values, all-zero rows with ``normalize``.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise StrataError("feature file not found", where=where, fix="check the path, or run the stage that makes it.")
    cache = Path(cache_dir) if cache_dir is not None else path.parent / ".strata-cache"
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise StrataError(f"not a readable .npy file ({err})", where=where,
                              fix="save the matrix with numpy.save.") from err
        if arr.ndim != 2 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.number):
            raise StrataError(f"expected a non-empty numeric (n, d) matrix, got {arr.dtype} {arr.shape}",
                              where=where, fix="save the features as an (n_points, dim) float array.")
        if arr.dtype == np.float32 and not normalize:
            return arr
        n, dim = arr.shape
        batches = ((start, np.asarray(arr[start:start + BATCH_ROWS], dtype=np.float32))
                   for start in range(0, n, BATCH_ROWS))
    else:
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise StrataError(f"not a readable Parquet file ({err})", where=where,
                              fix="regenerate the file; Strata tables are Parquet written by pyarrow.") from err
        name = _vector_column(pf.schema_arrow, path, column)
        n = pf.metadata.num_rows
        if n == 0:
            raise StrataError("table is empty", where=where, fix="provide at least one row.")
        ftype = pf.schema_arrow.field(name).type
        dim = ftype.list_size if pa.types.is_fixed_size_list(ftype) else None
        if dim is None:  # variable-length lists: the width of the first vector
            first = next(pf.iter_batches(batch_size=1, columns=[name]))
            dim = _batch_matrix(first, name, None, where).shape[1]

        def parquet_batches():
            start = 0
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[name]):
                block = _batch_matrix(batch, name, dim, where)
                yield start, block
                start += block.shape[0]

        batches = parquet_batches()
    target = cache / f"{path.stem}.{_cache_key(path, column, normalize)}.f32{'-l2' if normalize else ''}.npy"

    def fill(out: np.ndarray) -> None:
        for start, block in batches:
            if block.shape[1] != dim:
                raise StrataError(f"vectors have width {block.shape[1]}, expected {dim}", where=where,
                                  fix="every vector must have the same dimension.")
            _check_finite(block, where, start)
            if normalize:
                block = _normalise_rows(block, where, start)
            out[start:start + block.shape[0]] = block

    return _cached_matrix(target, (n, dim), fill)


def _cached_matrix(target: Path, shape: tuple[int, int], fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """``target`` (a float32 .npy) memory-mapped, written first by ``fill`` into a temporary file that replaces it
    atomically, so a failed or concurrent job never leaves a partial cache file."""
    if target.exists():
        return np.load(target, mmap_mode="r")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        fill(out)
        out.flush()
        del out
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return np.load(target, mmap_mode="r")


def read_feature_ids(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The ``id`` column of a Parquet feature table (int64), or None for a ``.npy`` matrix (row order)."""
    path = Path(path)
    if path.suffix == ".npy":
        return None
    try:
        table = pq.read_table(path, columns=["id"])
    except (pa.ArrowInvalid, OSError, KeyError) as err:
        raise StrataError(f"cannot read column `id` ({err})", where=str(path),
                          fix="feature tables need the unique int64 `id` column of the pool.") from err
    return table.column("id").to_numpy().astype(np.int64)


def _table_ids(path: Path, ids_path: str | os.PathLike[str] | None) -> np.ndarray | None:
    """The ids of a feature table's rows: its ``id`` column, the ``ids`` .npy of a .npy matrix, or None (rows in
    the order of the table they embed)."""
    if ids_path is None:
        return read_feature_ids(path)
    ids_file = Path(ids_path)
    if not ids_file.is_file():
        raise StrataError("ids file not found", where=str(ids_file), fix="check the path of `ids`.")
    try:
        ids = np.load(ids_file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise StrataError(f"not a readable .npy file ({err})", where=str(ids_file),
                          fix="save the ids with numpy.save, one integer per row of the table.") from err
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise StrataError(f"expected a 1-D array of integer ids, got {ids.dtype} {ids.shape}", where=str(ids_file),
                          fix="save one integer id per row of the table.")
    return ids.astype(np.int64)


def _check_ids(table_ids: np.ndarray, want: np.ndarray, where: str, what: str) -> np.ndarray | None:
    """Rows of the table in the order of ``want`` (None when they are in that order already), or an error
    naming the first duplicate, missing or extra id."""
    fix = f"give the table exactly one row per {what} item, with the {what}'s ids."
    values, counts = np.unique(table_ids, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1]
        raise StrataError(f"{len(dup)} ids occur more than once (first: {int(dup[0])})", where=where, fix=fix)
    missing = np.setdiff1d(want, table_ids)
    if missing.size:
        raise StrataError(f"{missing.size} of the {len(want)} {what} ids have no row (first: {int(missing[0])})",
                          where=where, fix=fix)
    extra = np.setdiff1d(table_ids, want)
    if extra.size:
        raise StrataError(f"{extra.size} ids are not in the {what} (first: {int(extra[0])})", where=where, fix=fix)
    if np.array_equal(table_ids, want):
        return None
    sorter = np.argsort(table_ids, kind="stable")
    return sorter[np.searchsorted(table_ids, want, sorter=sorter)]


def aligned_features(path: str | os.PathLike[str], ids: np.ndarray, cache_dir: str | os.PathLike[str] | None = None,
                     *, normalize: bool = False, column: str | None = None,
                     ids_path: str | os.PathLike[str] | None = None, dim: int | None = None,
                     what: str = "pool", where: str | None = None) -> np.ndarray:
    """A feature table's rows in the order of ``ids`` (the pool's, or a probe table's), as a float32 matrix.

    The table (:func:`load_features_memmap`: Parquet with ``id`` and a vector column, or ``.npy``) must hold
    exactly those ids, in any order (a ``.npy`` takes them from ``ids_path``, else its rows are in ``ids``'s
    order); rows in another order are rearranged into a cached copy.

    ``where`` names the table in messages (default: its path).

    Raises:
        StrataError: duplicate, missing or extra ids; another row count; a width other than ``dim``; NaN or
            infinite values (and what :func:`load_features_memmap` raises).
    """
    path = Path(path)
    where = where or str(path)
    table_ids = _table_ids(path, ids_path)
    x = load_features_memmap(path, cache_dir, column=column, normalize=normalize)
    if dim is not None and x.shape[1] != dim:
        raise StrataError(f"the vectors are {x.shape[1]}-wide, expected {dim}", where=where,
                          fix="check `dim` and the table (the same model for every row).")
    if table_ids is None:
        if x.shape[0] != len(ids):
            raise StrataError(f"the table has {x.shape[0]} rows but the {what} has {len(ids)} (a .npy without "
                              "`ids` must hold one row per item, in order)", where=where,
                              fix=f"give one row per {what} item, or name the rows' ids with `ids`.")
    elif len(table_ids) != x.shape[0]:
        raise StrataError(f"{len(table_ids)} ids for {x.shape[0]} rows", where=str(ids_path or path),
                          fix="give one id per row.")
    order = None if table_ids is None else _check_ids(table_ids, np.asarray(ids, dtype=np.int64), where, what)
    if x.dtype == np.float32 and not normalize and path.suffix == ".npy":  # mapped as is: not checked yet
        for start in range(0, x.shape[0], BATCH_ROWS):
            _check_finite(np.asarray(x[start:start + BATCH_ROWS]), where, start)
    if order is None:
        return x
    cache = Path(cache_dir) if cache_dir is not None else path.parent / ".strata-cache"
    key = hashlib.sha256(order.tobytes()).hexdigest()[:12]
    target = cache / f"{path.stem}.{_cache_key(path, column, normalize)}.{key}.aligned.npy"

    def fill(out: np.ndarray) -> None:
        for start in range(0, len(order), BATCH_ROWS):
            out[start:start + BATCH_ROWS] = x[np.sort(order[start:start + BATCH_ROWS])][
                np.argsort(np.argsort(order[start:start + BATCH_ROWS]))]

    return _cached_matrix(target, (len(order), x.shape[1]), fill)
