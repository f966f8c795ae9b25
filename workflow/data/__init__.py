"""Stage ``data``: build a data set's pool and probe tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workflow.config import IMAGE_DATASET_KINDS
from workflow.data.builtin import (
    DataSplits,
    make_blobs,
    make_digits,
    make_mnist1d_lt,
)
from workflow.errors import StrataError
from workflow.tables import VectorTable, read_table, write_table

__all__ = ["IMAGE_KINDS", "DataSplits", "WrittenDataset", "build_dataset", "load_user_pool", "write_dataset"]

#: Data set kinds whose tables hold images (the schema's ``x-image-kinds``).
IMAGE_KINDS = IMAGE_DATASET_KINDS


def load_user_pool(path: str, vector_column: str | None = None, labels_path: str | None = None) -> VectorTable:
    """A user pool from Parquet (``id``, optional ``label``, one vector column) or ``.npy`` (N x D)."""
    p = Path(path)
    if p.suffix == ".npy":
        if not p.exists():
            raise StrataError("file not found", where=str(p), fix="check datasets.<name>.path.")
        x = _load_npy(p, "save an (N, D) array of real numbers with numpy.save.")
        if x.ndim != 2 or 0 in x.shape:
            raise StrataError(f"expected a non-empty 2-D array, got shape {x.shape}", where=str(p),
                              fix="save an (N, D) array of vectors.")
        if x.dtype.kind not in "biuf":  # complex (its imaginary part would be dropped), strings, records ...
            raise StrataError(f"the array holds {x.dtype} values, not real numbers", where=str(p),
                              fix="save an (N, D) array of real numbers (e.g. float32) with numpy.save.")
        vectors = np.asarray(x, dtype=np.float32)
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            raise StrataError(f"{int(bad.sum())} rows hold NaN or infinite values (first row {int(np.argmax(bad))})",
                              where=str(p), fix="clean or drop those rows.")
        labels = None
        if labels_path:
            fix = "save one integer label per pool row with numpy.save."
            raw = np.asarray(_load_npy(Path(labels_path), fix))
            whole = raw.dtype.kind == "f" and bool(np.isfinite(raw).all() and (raw == np.round(raw)).all())
            if raw.dtype.kind not in "iu" and not whole:
                raise StrataError(f"labels must be integers, the array holds {raw.dtype} values"
                                  + (" that are not whole numbers" if raw.dtype.kind == "f" else ""),
                                  where=str(labels_path), fix=fix)
            labels = raw.astype(np.int64)
            if labels.shape != (len(vectors),):
                raise StrataError(f"labels have shape {labels.shape}, expected ({len(vectors)},)",
                                  where=str(labels_path), fix="one integer label per row of the pool.")
        return VectorTable(ids=np.arange(len(vectors), dtype=np.int64), vectors=vectors, labels=labels)
    if p.suffix != ".parquet":
        raise StrataError(f"unsupported file type {p.suffix!r}", where=str(p), fix="use .parquet or .npy.")
    return read_table(p, column=vector_column)


def _load_npy(p: Path, fix: str) -> np.ndarray:
    """A ``.npy`` array (memory-mapped, never unpickled), or a :class:`StrataError` naming the file."""
    if not p.is_file():
        raise StrataError("file not found" if not p.exists() else "not a file", where=str(p), fix=fix)
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # not .npy, truncated, pickled objects, unreadable
        raise StrataError(f"not a readable .npy array ({err})", where=str(p), fix=fix) from err


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


def _check_input_kind(cfg: dict[str, Any], name: str) -> None:
    if cfg["input_kind"] == "image" and cfg["kind"] not in IMAGE_KINDS:
        raise StrataError(f"input_kind image needs images, but kind {cfg['kind']!r} holds plain vectors",
                          where=f"datasets.{name}.input_kind",
                          fix=f"use input_kind auto, signal or vector, or an image data set "
                          f"({', '.join(IMAGE_KINDS)}).")


def build_dataset(cfg: dict[str, Any], name: str) -> DataSplits:
    """Build the pool and probe tables of data set ``name`` from its (validated) config, in memory.

    ``image-folder`` is streamed to disk instead (:func:`write_dataset`).
    """
    from workflow.data.images import make_digits_images

    _check_input_kind(cfg, name)
    builders = {"mnist1d-lt": make_mnist1d_lt, "digits": make_digits, "blobs": make_blobs, "file": _user_splits,
                "digits-images": make_digits_images}
    if cfg["kind"] not in builders:
        raise ValueError(f"kind {cfg['kind']!r} is not built in memory; use write_dataset")
    splits = builders[cfg["kind"]](cfg, name)
    if cfg["input_kind"] != "auto":
        splits.input_kind = cfg["input_kind"]
    return splits


@dataclass
class WrittenDataset:
    """What :func:`write_dataset` wrote: the tables' ``strata`` metadata, their sizes, the pool's labels
    (None when unlabelled) and the builder's information for ``info.json``."""

    meta: dict[str, Any]
    sizes: dict[str, int]
    pool_labels: np.ndarray | None
    info: dict[str, Any]


def write_dataset(cfg: dict[str, Any], name: str, outputs: dict[str, str], meta: dict[str, Any],
                  log: Callable[[str], None] = print) -> WrittenDataset:
    """Build data set ``name`` and write its ``pool``, ``probe_train`` and ``probe_test`` tables (paths in
    ``outputs``) with ``meta`` (plus ``input_kind`` and, for images, ``image_shape``) as their metadata.

    Built-in and ``file`` data sets are built in memory; an ``image-folder`` is decoded and written row group
    by row group (:func:`workflow.data.images.write_image_folder`).
    """
    _check_input_kind(cfg, name)
    if cfg["kind"] == "image-folder":
        from workflow.data.images import write_image_folder

        w = write_image_folder(cfg, name, outputs, meta, log)
        for split in ("pool", "probe_train", "probe_test"):
            log(f"data: wrote {outputs[split]} ({w.sizes[split]} rows, image {w.meta['image_shape']})")
        return WrittenDataset(w.meta, w.sizes, w.pool_labels, w.info)
    splits = build_dataset(cfg, name)
    meta = {**meta, "input_kind": splits.input_kind, **splits.table_meta}
    sizes = {}
    for split in ("pool", "probe_train", "probe_test"):
        table = getattr(splits, split)
        write_table(table, outputs[split], metadata=meta)
        sizes[split] = len(table)
        log(f"data: wrote {outputs[split]} ({len(table)} rows, dim {table.dim})")
    return WrittenDataset(meta, sizes, splits.pool.labels, {**splits.info, **splits.table_meta})
