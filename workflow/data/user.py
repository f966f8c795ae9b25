"""User vectors (data set kind ``file``): a pool from Parquet or ``.npy``, and its labelled probes.

The probes come either from files (``probe_train_path`` / ``probe_test_path``: labelled Parquet tables, or
``.npy`` matrices whose labels are ``.npy`` files named by ``probe_train_labels_path`` / ``probe_test_labels_path``,
mirroring ``labels_path`` of a ``.npy`` pool), or are held out of a labelled pool with ``probe_fraction``:

    For each class c of the pool (ascending label), with n_c labelled rows, k_c = floor(probe_fraction * n_c)
    rows are held out: the class's rows in a permutation drawn by ``numpy.random.default_rng(seed)`` (one draw
    per class, in label order, from the same generator), the first ceil(k_c / 2) to probe_train, the next
    floor(k_c / 2) to probe_test. The rest, and every unlabelled row, stay in the pool. Every class needs
    k_c >= 2 (one probe item of each split). Held-out rows keep their ids, so the three tables partition the file.

A user who has only ``X`` and ``y`` can thus evaluate without writing probe files: every class is probed, in
proportion to its size, and no probe item is also in the pool (so the curation cannot select it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from workflow.data.builtin import PROBE_TEST_ID_OFFSET, PROBE_TRAIN_ID_OFFSET, DataSplits
from workflow.errors import StrataError
from workflow.tables import VectorTable, read_table

PROBES = ("probe_train", "probe_test")
ID_OFFSETS = {"probe_train": PROBE_TRAIN_ID_OFFSET, "probe_test": PROBE_TEST_ID_OFFSET}


def _load_npy(p: Path, fix: str, where: str | None = None) -> np.ndarray:
    """A ``.npy`` array (memory-mapped, never unpickled), or a :class:`StrataError` naming the file."""
    where = where or str(p)
    if not p.is_file():
        raise StrataError("file not found" if not p.exists() else "not a file", where=where, fix=fix)
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # not .npy, truncated, pickled objects, unreadable
        raise StrataError(f"not a readable .npy array ({err})", where=where, fix=fix) from err


def _npy_labels(path: str, n: int, key: str) -> np.ndarray:
    """One integer label per row of an ``n``-row matrix, from the ``.npy`` at ``path`` (config key ``key``)."""
    where = f"{path} ({key})"
    fix = f"save one integer label per row with numpy.save and name the file with {key.rsplit('.', 1)[-1]}."
    raw = np.asarray(_load_npy(Path(path), fix, where))
    whole = raw.dtype.kind == "f" and bool(np.isfinite(raw).all() and (raw == np.round(raw)).all())
    if raw.dtype.kind not in "iu" and not whole:
        raise StrataError(f"labels must be integers, the array holds {raw.dtype} values"
                          + (" that are not whole numbers" if raw.dtype.kind == "f" else ""), where=where, fix=fix)
    if raw.shape != (n,):
        raise StrataError(f"labels have shape {raw.shape}, but the vectors have {n} rows, so ({n},) is expected",
                          where=where, fix="give exactly one integer label per row, in the rows' order.")
    return raw.astype(np.int64)


def _npy_vectors(p: Path, key: str) -> np.ndarray:
    """An (N, D) matrix of finite real numbers from a ``.npy`` file, as float32."""
    where = str(p) if key.endswith(".path") else f"{p} ({key})"
    fix = "save an (N, D) array of real numbers with numpy.save."
    x = _load_npy(p, f"check {key}." if not p.exists() else fix, where)
    if x.ndim != 2 or 0 in x.shape:
        raise StrataError(f"expected a non-empty 2-D array, got shape {x.shape}", where=where,
                          fix="save an (N, D) array of vectors.")
    if x.dtype.kind not in "biuf":  # complex (its imaginary part would be dropped), strings, records ...
        raise StrataError(f"the array holds {x.dtype} values, not real numbers", where=where,
                          fix="save an (N, D) array of real numbers (e.g. float32) with numpy.save.")
    vectors = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise StrataError(f"{int(bad.sum())} rows hold NaN or infinite values (first row {int(np.argmax(bad))})",
                          where=where, fix="clean or drop those rows.")
    return vectors


def load_user_pool(path: str, vector_column: str | None = None, labels_path: str | None = None,
                   key: str = "datasets.<name>") -> VectorTable:
    """A user pool from Parquet (``id``, optional ``label``, one vector column) or ``.npy`` (N x D; ids are the
    row numbers, labels from the optional ``labels_path`` ``.npy``). ``key`` is the data set's config key."""
    p = Path(path)
    if p.suffix == ".npy":
        if not p.exists():
            raise StrataError("file not found", where=str(p), fix=f"check {key}.path.")
        vectors = _npy_vectors(p, f"{key}.path")
        labels = _npy_labels(labels_path, len(vectors), f"{key}.labels_path") if labels_path else None
        return VectorTable(ids=np.arange(len(vectors), dtype=np.int64), vectors=vectors, labels=labels)
    if p.suffix != ".parquet":
        raise StrataError(f"unsupported file type {p.suffix!r}", where=str(p), fix="use .parquet or .npy.")
    return read_table(p, column=vector_column)


def check_file_dataset(cfg: dict[str, Any], where: str) -> None:
    """The cross-key rules of a ``file`` data set that the schema cannot state, checked before any job runs.

    ``where`` names the entry (e.g. ``"study.yaml: datasets.mine"``). Raises :class:`StrataError` when the
    probes are given twice (files and ``probe_fraction``) or not at all, a ``.npy`` probe has no labels file, a
    labels file goes with a Parquet table (which has its ``label`` column), or ``probe_fraction`` has no labels
    to stratify by.
    """
    fraction = cfg.get("probe_fraction")
    paths = [k for k in ("probe_train_path", "probe_test_path") if cfg.get(k)]
    if fraction is not None and paths:
        raise StrataError(f"probe_fraction and {' and '.join(paths)} are both set", where=f"{where}.probe_fraction",
                          fix="either hold the probes out of the pool (probe_fraction) or give probe files "
                              "(probe_train_path and probe_test_path), not both.")
    if fraction is None:
        for key in ("probe_train_path", "probe_test_path"):
            if not cfg.get(key):
                raise StrataError("evaluation needs a labelled probe table", where=f"{where}.{key}",
                                  fix="name a labelled Parquet file (id, label, vector column) or a .npy with "
                                      f"{key.replace('_path', '_labels_path')}, or hold probes out of a labelled "
                                      "pool with probe_fraction.")
    npy_pool = str(cfg.get("path", "")).endswith(".npy")
    if cfg.get("labels_path") and not npy_pool:
        raise StrataError("labels_path goes with a .npy pool only", where=f"{where}.labels_path",
                          fix="remove labels_path: a Parquet pool carries its labels in its `label` column.")
    if fraction is not None and npy_pool and not cfg.get("labels_path"):
        raise StrataError("probe_fraction holds out a fraction of each class, but the .npy pool has no labels",
                          where=f"{where}.probe_fraction",
                          fix="name the pool's integer labels (.npy) with labels_path, or give probe files.")
    for split in PROBES:
        path, labels = cfg.get(f"{split}_path"), cfg.get(f"{split}_labels_path")
        if path and str(path).endswith(".npy") and not labels:
            raise StrataError(f"the .npy {split} has no labels", where=f"{where}.{split}_labels_path",
                              fix=f"save its integer labels with numpy.save and name the file with "
                                  f"{split}_labels_path (a Parquet probe has a `label` column instead).")
        if labels and not (path and str(path).endswith(".npy")):
            raise StrataError(f"{split}_labels_path goes with a .npy {split}_path only",
                              where=f"{where}.{split}_labels_path",
                              fix=f"remove it (a Parquet {split} carries its labels in its `label` column), or "
                                  f"give {split}_path as a .npy.")


def _read_probe(cfg: dict[str, Any], split: str, dim: int, key: str) -> VectorTable:
    """A labelled probe table from Parquet, or from a ``.npy`` matrix and its ``.npy`` labels."""
    path = cfg[f"{split}_path"]
    if not str(path).endswith(".npy"):
        return read_table(path, column=cfg.get("vector_column"), expected_dim=dim, require_labels=True)
    vectors = _npy_vectors(Path(path), f"{key}.{split}_path")
    if vectors.shape[1] != dim:
        raise StrataError(f"the vectors are {vectors.shape[1]}-wide, expected {dim} (the pool's width)",
                          where=f"{path} ({key}.{split}_path)", fix="embed the probes like the pool.")
    labels = _npy_labels(cfg[f"{split}_labels_path"], len(vectors), f"{key}.{split}_labels_path")
    if (labels < 0).any():
        raise StrataError("probe labels must be non-negative (a probe item needs its class)",
                          where=f"{cfg[f'{split}_labels_path']} ({key}.{split}_labels_path)",
                          fix="give every probe item its class label (0, 1, ...).")
    ids = np.arange(len(vectors), dtype=np.int64) + ID_OFFSETS[split]
    return VectorTable(ids=ids, vectors=vectors, labels=labels)


def held_out_counts(n_per_class: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each class that go to probe_train and to probe_test: k = floor(fraction * n) held out,
    ceil(k / 2) to probe_train and floor(k / 2) to probe_test (a tolerance of 1e-9 keeps 0.29 * 100 at 29)."""
    n = np.asarray(n_per_class, dtype=np.int64)
    k = np.minimum(np.floor(fraction * n + 1e-9).astype(np.int64), n)
    return k - k // 2, k // 2


def hold_out_probes(pool: VectorTable, fraction: float, seed: int, where: str,
                    source: str = "") -> tuple[VectorTable, VectorTable, VectorTable]:
    """Split a labelled pool into (pool, probe_train, probe_test) by ``probe_fraction`` (the module docstring's
    rule). Rows keep their ids and their order in the file.

    Raises:
        StrataError: the pool has no labels, or a class is too small for one probe item of each split.
    """
    labels = pool.labels
    if labels is None or not (labels >= 0).any():
        raise StrataError("probe_fraction needs a labelled pool, but the pool has no labels",
                          where=f"{source} ({where}.probe_fraction)" if source else f"{where}.probe_fraction",
                          fix="give the pool labels (a `label` column, or labels_path for a .npy), or give "
                              "probe files (probe_train_path, probe_test_path).")
    classes, counts = np.unique(labels[labels >= 0], return_counts=True)
    n_train, n_test = held_out_counts(counts, fraction)
    small = np.flatnonzero(n_test < 1)
    if small.size:
        c = int(small[np.argmin(counts[small])])  # the smallest class: what a fraction must work for
        n = int(counts[c])
        need = math.ceil(2 / fraction)
        others = f" ({small.size - 1} more classes too)" if small.size > 1 else ""
        # Rounded up to 3 decimals, so that floor(f * n) >= 2 holds for the suggested f itself.
        raise_to = (f"raise probe_fraction to at least {math.ceil(2000 / n) / 1000:g}, " if n >= 3 else
                    f"no probe_fraction below 1 holds out 2 of its {n} rows: ")
        raise StrataError(f"class {int(classes[c])} has {n} rows, so probe_fraction {fraction} holds out "
                          f"{int(n_train[c] + n_test[c])}, fewer than the 2 needed (one probe_train and one "
                          f"probe_test item){others}",
                          where=f"{source} ({where}.probe_fraction)" if source else f"{where}.probe_fraction",
                          fix=f"{raise_to}give every class at least {need} rows (or drop the small classes), or "
                              "give probe files.")
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {"probe_train": [], "probe_test": []}
    for c, a, b in zip(classes, n_train, n_test, strict=True):
        perm = rng.permutation(np.flatnonzero(labels == c))
        chosen["probe_train"].append(perm[:a])
        chosen["probe_test"].append(perm[a:a + b])
    rows = {s: np.sort(np.concatenate(v)) for s, v in chosen.items()}
    keep = np.setdiff1d(np.arange(len(pool)), np.concatenate(list(rows.values())))
    return pool.take(keep), pool.take(rows["probe_train"]), pool.take(rows["probe_test"])


def user_splits(cfg: dict[str, Any], name: str) -> DataSplits:
    """The pool and probe tables of a ``file`` data set (see the module docstring)."""
    key = f"datasets.{name}"
    check_file_dataset(cfg, key)
    pool = load_user_pool(cfg["path"], cfg.get("vector_column"), cfg.get("labels_path"), key)
    info: dict[str, Any] = {"source": str(cfg["path"])}
    if cfg.get("probe_fraction") is not None:
        pool, probe_train, probe_test = hold_out_probes(pool, float(cfg["probe_fraction"]), int(cfg.get("seed", 0)),
                                                        key, str(cfg["path"]))
        info["probe_fraction"] = cfg["probe_fraction"]
    else:
        probe_train, probe_test = (_read_probe(cfg, s, pool.dim, key) for s in PROBES)
    kind = "vector" if cfg["input_kind"] in ("auto", "vector") else "signal"
    return DataSplits(pool, probe_train, probe_test, kind, info)
