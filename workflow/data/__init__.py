"""Stage ``data``: build a data set's pool and probe tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workflow.data.builtin import (
    DataSplits,
    make_blobs,
    make_digits,
    make_mnist1d_lt,
)
from workflow.errors import StrataError
from workflow.tables import VectorTable, read_table

__all__ = ["DataSplits", "build_dataset", "load_user_pool"]


def load_user_pool(path: str, vector_column: str | None = None, labels_path: str | None = None) -> VectorTable:
    """A user pool from Parquet (``id``, optional ``label``, one vector column) or ``.npy`` (N x D)."""
    p = Path(path)
    if p.suffix == ".npy":
        if not p.exists():
            raise StrataError("file not found", where=str(p), fix="check datasets.<name>.path.")
        try:
            x = np.load(p, mmap_mode="r")
        except ValueError as err:
            raise StrataError(f"not a readable .npy array ({err})", where=str(p), fix="save with numpy.save.") from err
        if x.ndim != 2 or len(x) == 0:
            raise StrataError(f"expected a non-empty 2-D array, got shape {x.shape}", where=str(p),
                              fix="save an (N, D) array of vectors.")
        vectors = np.asarray(x, dtype=np.float32)
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            raise StrataError(f"{int(bad.sum())} rows hold NaN or infinite values (first row {int(np.argmax(bad))})",
                              where=str(p), fix="clean or drop those rows.")
        labels = None
        if labels_path:
            try:
                labels = np.load(labels_path).astype(np.int64)
            except (OSError, ValueError) as err:
                raise StrataError(f"cannot read labels ({err})", where=str(labels_path),
                                  fix="save one integer label per pool row with numpy.save.") from err
            if labels.shape != (len(vectors),):
                raise StrataError(f"labels have shape {labels.shape}, expected ({len(vectors)},)",
                                  where=str(labels_path), fix="one integer label per row of the pool.")
        return VectorTable(ids=np.arange(len(vectors), dtype=np.int64), vectors=vectors, labels=labels)
    if p.suffix != ".parquet":
        raise StrataError(f"unsupported file type {p.suffix!r}", where=str(p), fix="use .parquet or .npy.")
    return read_table(p, column=vector_column)


def _user_splits(cfg: dict[str, Any], name: str) -> DataSplits:
    pool = load_user_pool(cfg["path"], cfg.get("vector_column"), cfg.get("labels_path"))
    probes = []
    for key in ("probe_train_path", "probe_test_path"):
        if not cfg.get(key):
            raise StrataError("evaluation needs a labelled probe table", where=f"datasets.{name}.{key}",
                              fix="name a labelled Parquet file (id, label, vector column).")
        table = read_table(cfg[key], column=cfg.get("vector_column"), expected_dim=pool.dim, require_labels=True)
        probes.append(table)
    kind = "vector" if cfg["input_kind"] in ("auto", "vector") else "signal"
    return DataSplits(pool, probes[0], probes[1], kind, {"source": str(cfg["path"])})


def build_dataset(cfg: dict[str, Any], name: str) -> DataSplits:
    """Build the pool and probe tables of data set ``name`` from its (validated) config."""
    builders = {"mnist1d-lt": make_mnist1d_lt, "digits": make_digits, "blobs": make_blobs, "file": _user_splits}
    splits = builders[cfg["kind"]](cfg, name)
    if cfg["input_kind"] != "auto":
        splits.input_kind = cfg["input_kind"]
    return splits
