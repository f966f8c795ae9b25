"""The training rows of a pretrain job: streamed out of the pool once, then read batch by batch.

The driver streams the pool table row group by row group (:func:`workflow.tables.iter_table`, every batch
validated), keeps the selected rows and appends them to a float32 ``.npy`` file in the job's work folder. Each
training worker opens that file as a read-only memory map (:class:`TrainingRows`) and copies out only the rows of
its current batch, so neither process holds the pool or the selection in memory: the driver holds one pool
batch plus the selected ids, a worker one training batch (``benchmarks/pretrain_memory.py`` measures both from
1M to 20M pool rows). The epoch order is still an exact uniform permutation of the training rows.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workflow.errors import StrataError
from workflow.tables import iter_table

STREAM_ROWS = 65536  # pool rows per streamed batch


def read_selection(path: str | Path) -> np.ndarray:
    """The selected pool ids of a curation's ``selection.parquet`` (docs/tables.md), checked."""
    if not Path(path).exists():
        raise StrataError("selection file not found", where=str(path), fix="run the curate stage first.")
    fix = "re-run the curate stage that writes it."
    try:
        parquet = pq.ParquetFile(path)
        if "id" not in parquet.schema_arrow.names:
            raise StrataError("the selection has no `id` column", where=str(path), fix=fix)
        table = parquet.read(columns=["id"])
    except (pa.ArrowException, OSError) as err:
        raise StrataError(f"not a readable Parquet file ({err})", where=str(path), fix=fix) from err
    if table.num_rows == 0:
        raise StrataError("the selection is empty", where=str(path), fix="curate with a positive target_size.")
    ids = table.column("id")
    if not pa.types.is_integer(ids.type) or ids.null_count:
        raise StrataError(f"column `id` must hold integers without nulls (type {ids.type}, {ids.null_count} nulls)",
                          where=str(path), fix=fix)
    return ids.to_numpy()


def scan_pool(pool_path: str, wanted: np.ndarray, selection_path: str) -> int:
    """Check, before any work, that each id of ``wanted`` (unique) is in the pool exactly once, streaming only the
    ``id`` column; return the width of the pool's vectors.

    Raises:
        StrataError: a selected id is missing from the pool, or the pool repeats one.
    """
    dim = next(iter_table(pool_path, batch_size=1)).dim  # also checks the schema
    found = 0
    try:
        for batch in pq.ParquetFile(pool_path, pre_buffer=False).iter_batches(
                columns=["id"], batch_size=STREAM_ROWS, use_threads=False):
            found += int(np.isin(batch.column(0).to_numpy(zero_copy_only=False), wanted).sum())
    except (pa.ArrowException, OSError) as err:
        raise StrataError(f"not a readable Parquet file ({err})", where=str(pool_path),
                          fix="regenerate the file; Strata tables are Parquet written by pyarrow.") from err
    if found < len(wanted):
        raise StrataError(f"{len(wanted) - found} selected ids are not in the pool {pool_path}",
                          where=str(selection_path), fix="re-run the curate stage on this pool.")
    if found > len(wanted):
        raise StrataError("the pool repeats ids of the selection", where=str(pool_path),
                          fix="ids must be unique; rebuild the pool with the data stage.")
    return dim


def write_training_rows(pool_path: str, selected_ids: np.ndarray, out_path: Path,
                        batch_rows: int = STREAM_ROWS) -> tuple[np.ndarray, str]:
    """Stream the rows of ``pool_path`` whose id is in ``selected_ids`` into ``out_path`` (float32 ``.npy``, pool
    order). Returns their ids (pool order) and the SHA-256 of those ids.

    Raises:
        StrataError: a selected id is missing from the pool, or the pool repeats an id.
    """
    wanted = np.unique(np.asarray(selected_ids, dtype=np.int64))
    tmp = out_path.with_name(out_path.name + ".tmp")
    rows: np.ndarray | None = None
    ids: list[np.ndarray] = []
    filled = 0
    try:
        for batch in iter_table(pool_path, batch_size=batch_rows):
            keep = np.isin(batch.ids, wanted, assume_unique=False)
            if not keep.any():
                continue
            if rows is None:
                rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(wanted), batch.dim))
            take = int(keep.sum())
            if filled + take > len(wanted):
                raise StrataError("the pool repeats ids of the selection", where=str(pool_path),
                                  fix="ids must be unique; rebuild the pool with the data stage.")
            rows[filled:filled + take] = batch.vectors[keep]
            ids.append(batch.ids[keep])
            filled += take
        if filled != len(wanted):
            raise StrataError(f"{len(wanted) - filled} selected ids are not in the pool", where=str(pool_path),
                              fix="re-run the curate stage on this pool.")
        assert rows is not None
        rows.flush()
        del rows
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    found = np.concatenate(ids)
    return found, hashlib.sha256(found.tobytes()).hexdigest()


class TrainingRows:
    """Read-only access to a job's training rows (``write_training_rows``'s file) by row index."""

    def __init__(self, path: str | Path) -> None:
        self._rows = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    @property
    def dim(self) -> int:
        return int(self._rows.shape[1])

    def batch(self, index: np.ndarray) -> np.ndarray:
        """The rows at ``index`` (in that order) as a new float32 array; read in file order for locality."""
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        out = np.empty((len(index), self.dim), dtype=np.float32)
        out[order] = self._rows[index[order]]
        return out

    def all(self) -> np.ndarray:
        """Every row in memory (for the methods that need the whole set, e.g. TLDR's neighbour search)."""
        return np.array(self._rows)
