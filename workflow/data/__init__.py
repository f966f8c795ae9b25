"""Stage ``data``: build a data set's pool and probe tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from workflow.config import IMAGE_DATASET_KINDS
from workflow.data.builtin import (
    DataSplits,
    make_blobs,
    make_digits,
    make_mnist1d_lt,
)
from workflow.data.user import load_user_pool, user_splits
from workflow.errors import StrataError
from workflow.tables import write_table

__all__ = ["IMAGE_KINDS", "DataSplits", "WrittenDataset", "build_dataset", "load_user_pool", "write_dataset"]

#: Data set kinds whose tables hold images (the schema's ``x-image-kinds``).
IMAGE_KINDS = IMAGE_DATASET_KINDS


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
    builders = {"mnist1d-lt": make_mnist1d_lt, "digits": make_digits, "blobs": make_blobs, "file": user_splits,
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
