"""Image data sets: a folder of image files (``image-folder``) and scikit-learn's digits as images
(``digits-images``).

Images are stored in the ordinary vector tables (docs/tables.md): each row's ``vector`` is the image's pixels
in [0, 1], channel-major (C, H, W) flattened to C*H*W float32 values, and the table's ``strata`` metadata holds
``input_kind: image`` and ``image_shape: [C, H, W]``.

An image folder is decoded with Pillow one file at a time and written row group by row group, so memory stays
bounded whatever the number of images. Unreadable files either stop the stage with an error that names the
file (``on_corrupt: fail``, the default: a study should not silently run on less data than it was given) or are
left out and listed in the log and in the stage's ``info.json`` (``on_corrupt: skip``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workflow.data.builtin import (
    POOL_ID_OFFSET,
    PROBE_TEST_ID_OFFSET,
    PROBE_TRAIN_ID_OFFSET,
    DataSplits,
    digits_splits,
)
from workflow.errors import StrataError
from workflow.tables import TableWriter, VectorTable

DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ROWS_PER_GROUP = 1024  # images decoded and held before a row group is written
SPLITS = ("pool", "probe_train", "probe_test")
ID_OFFSETS = {"pool": POOL_ID_OFFSET, "probe_train": PROBE_TRAIN_ID_OFFSET, "probe_test": PROBE_TEST_ID_OFFSET}
MAX_LISTED = 20  # unreadable files named in the log line (all of them are in info.json)


def image_size(cfg: dict[str, Any], default: int) -> tuple[int, int]:
    """(H, W) from the config's ``image_size`` (an integer for square images, or [H, W]; null = ``default``)."""
    size = cfg.get("image_size")
    if size is None:
        return default, default
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def decode_image(path: str | os.PathLike[str], mode: str, size: tuple[int, int], resize: str) -> np.ndarray:
    """Decode one image file with Pillow into a flat float32 (C*H*W,) array in [0, 1], channel-major.

    EXIF orientation is applied, the image is converted to ``mode`` (``RGB`` or ``L``) and brought to
    ``size`` (H, W): ``center_crop`` scales the shorter side and crops the centre (aspect ratio kept),
    ``stretch`` resizes to (H, W) directly. Bicubic resampling (Pillow antialiases when it shrinks).

    Raises:
        Exception: whatever Pillow raises on an unreadable, truncated or malformed file.
    """
    from PIL import Image, ImageOps

    h, w = size
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im = im.convert(mode)
        if resize == "center_crop":
            im = ImageOps.fit(im, (w, h), method=Image.Resampling.BICUBIC)
        else:
            im = im.resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr).reshape(-1)


@dataclass
class FolderScan:
    """The image files of a folder: sorted paths, and their class names when the folder has class subfolders."""

    root: Path
    files: list[Path]
    classes: list[str] | None  # sorted class folder names; None for a flat folder
    class_of: list[str] | None  # class name of each file
    ignored: int = 0  # files without an image extension (and hidden files)


def scan_folder(root: str | os.PathLike[str], extensions: list[str] | tuple[str, ...], field_name: str) -> FolderScan:
    """List an image folder: either one subfolder per class (searched recursively) or images directly inside.

    Hidden files and folders (name starting with ``.``) and files without one of ``extensions`` are ignored.

    Raises:
        StrataError: the folder is missing, holds no image, mixes class subfolders with loose images, or
            has an empty class folder.
    """
    root = Path(root)
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    if not root.is_dir():
        raise StrataError("image folder not found" if not root.exists() else "not a folder",
                          where=f"{field_name}: {root}",
                          fix="point it at a folder of images (one subfolder per class, or the images directly).")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    subdirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in exts]
    ignored = sum(1 for p in entries if p.is_file() and p.suffix.lower() not in exts)
    if subdirs and loose:
        names = ", ".join(p.name for p in loose[:5]) + (" ..." if len(loose) > 5 else "")
        raise StrataError(f"the folder has class subfolders and also {len(loose)} images outside them ({names})",
                          where=f"{field_name}: {root}",
                          fix="move every image into its class folder, or use a flat folder without subfolders.")
    if not subdirs:
        if not loose:
            raise StrataError(f"no image files ({', '.join(sorted(exts))}) in the folder",
                              where=f"{field_name}: {root}",
                              fix="put the images in the folder, or list their extension in `extensions`.")
        return FolderScan(root, loose, None, None, ignored)
    files: list[Path] = []
    class_of: list[str] = []
    classes = [d.name for d in subdirs]
    for d in subdirs:
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            for n in sorted(filenames):
                if n.startswith("."):
                    continue
                if Path(n).suffix.lower() in exts:
                    found.append(Path(dirpath) / n)
                else:
                    ignored += 1
        if not found:
            raise StrataError(f"class folder {d.name!r} holds no image files", where=f"{field_name}: {d}",
                              fix="remove the empty class folder or add its images.")
        files += found
        class_of += [d.name] * len(found)
    return FolderScan(root, files, classes, class_of, ignored)


@dataclass
class _Split:
    """One output table being written: a row-group buffer, its file names and labels."""

    writer: TableWriter
    offset: int
    rows: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    flushed: int = 0

    def add(self, row: np.ndarray, label: int, name: str) -> None:
        self.rows.append(row)
        self.labels.append(label)
        self.files.append(name)
        if len(self.rows) >= ROWS_PER_GROUP:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        n = len(self.rows)
        ids = np.arange(self.flushed, self.flushed + n, dtype=np.int64) + self.offset
        labels = np.asarray(self.labels[self.flushed:self.flushed + n], dtype=np.int64)
        self.writer.write(VectorTable(ids=ids, vectors=np.stack(self.rows), labels=labels))
        self.flushed += n
        self.rows = []


@dataclass
class WrittenImages:
    """What :func:`write_image_folder` wrote: table metadata, sizes, pool labels (-1 = none) and info."""

    meta: dict[str, Any]
    sizes: dict[str, int]
    pool_labels: np.ndarray | None
    info: dict[str, Any]


def _plan(cfg: dict[str, Any], name: str, pool: FolderScan, probes: dict[str, FolderScan] | None,
          classes: list[str]) -> tuple[list[tuple[str | None, Path, int]], dict[str, int] | None]:
    """The files to decode in order, each with its split (``None`` = decided on the fly) and label."""
    index = {c: i for i, c in enumerate(classes)}

    def labels(scan: FolderScan) -> list[int]:
        return [index[c] for c in scan.class_of] if scan.class_of is not None else [-1] * len(scan.files)

    if probes is not None:
        plan: list[tuple[str | None, Path, int]] = []
        for split, scan in (("pool", pool), *probes.items()):
            plan += [(split, f, lab) for f, lab in zip(scan.files, labels(scan), strict=True)]
        return plan, None
    # Probes held out of a labelled pool folder: per class, the first readable files of a seeded permutation
    # go to probe_test, the next ones to probe_train, the rest to the pool.
    pool_labels = np.asarray(labels(pool))
    counts = np.bincount(pool_labels, minlength=len(classes))
    n_te = cfg["probe_test_per_class"] or max(1, int(counts.min()) // 5)
    n_tr = cfg["probe_train_per_class"] or max(1, int(counts.min()) // 5)
    for c, n_c in enumerate(counts):
        if n_c < n_te + n_tr:
            raise StrataError(f"class {classes[c]!r} has {n_c} images, fewer than probe_test_per_class {n_te} + "
                              f"probe_train_per_class {n_tr}", where=f"datasets.{name}.probe_test_per_class",
                              fix="ask for fewer probe images per class, or give probe folders "
                              "(probe_train_path, probe_test_path).")
    order = np.random.default_rng(cfg["seed"]).permutation(len(pool.files))
    return [(None, pool.files[i], int(pool_labels[i])) for i in order], {"probe_test": n_te, "probe_train": n_tr}


def write_image_folder(cfg: dict[str, Any], name: str, outputs: dict[str, str], meta: dict[str, Any],
                       log: Callable[[str], None] = print) -> WrittenImages:
    """Decode an image folder (and its probe folders, or probes held out of it) into the three vector tables.

    ``outputs`` maps ``pool``, ``probe_train`` and ``probe_test`` to Parquet paths. Files are decoded one at a
    time and written every :data:`ROWS_PER_GROUP` rows; on any error every table is discarded (atomic writes).

    Probes: with ``probe_train_path`` and ``probe_test_path`` (labelled folders) the pool folder is used whole;
    without them the pool folder must have class subfolders, and ``probe_test_per_class`` /
    ``probe_train_per_class`` images per class (default: a fifth of the smallest class each) are held out of it
    by a seeded draw, so the probes are balanced and never overlap the pool.
    """
    where = f"datasets.{name}"
    size = image_size(cfg, 32)
    mode = cfg.get("image_mode") or "RGB"
    exts = cfg.get("extensions") or list(DEFAULT_EXTENSIONS)
    if not cfg.get("path"):
        raise StrataError("an image-folder data set needs `path`", where=where, fix="set path: to the image folder.")
    given = [k for k in ("probe_train_path", "probe_test_path") if cfg.get(k)]
    if len(given) == 1:
        missing = ({"probe_train_path", "probe_test_path"} - set(given)).pop()
        raise StrataError(f"{given[0]} is set but {missing} is not", where=f"{where}.{missing}",
                          fix="give both probe folders, or neither (probes are then held out of the pool folder).")
    if given and (cfg.get("probe_train_per_class") or cfg.get("probe_test_per_class")):
        raise StrataError("probe folders and probe sizes per class are both given", where=f"{where}.probe_train_path",
                          fix="give either probe_train_path/probe_test_path or probe_*_per_class, not both.")
    pool = scan_folder(cfg["path"], exts, f"{where}.path")
    probes = None
    if given:
        probes = {s: scan_folder(cfg[f"{s}_path"], exts, f"{where}.{s}_path") for s in ("probe_train", "probe_test")}
        for s, scan in probes.items():
            if scan.classes is None:
                raise StrataError("a probe folder needs one subfolder per class (probes must be labelled)",
                                  where=f"{where}.{s}_path: {scan.root}", fix="sort its images into class folders.")
    elif pool.classes is None:
        raise StrataError("the pool folder has no class subfolders, so no labelled probes can be held out of it",
                          where=f"{where}.path: {pool.root}",
                          fix="give labelled probe folders with probe_train_path and probe_test_path.")
    classes = sorted({c for scan in [pool, *(probes or {}).values()] for c in (scan.classes or [])})
    plan, quotas = _plan(cfg, name, pool, probes, classes)
    channels = 3 if mode == "RGB" else 1
    shape = [channels, size[0], size[1]]
    input_kind = cfg["input_kind"] if cfg["input_kind"] != "auto" else "image"
    meta = {**meta, "input_kind": input_kind, "image_shape": shape, "classes": classes}
    dim = int(np.prod(shape))
    bases = {"pool": pool.root, "probe_train": None, "probe_test": None}
    if probes is not None:
        bases.update({s: scan.root for s, scan in probes.items()})
    skipped: list[dict[str, str]] = []
    taken = {s: np.zeros(len(classes), dtype=np.int64) for s in ("probe_test", "probe_train")}
    writers = {s: TableWriter(outputs[s], dim, metadata=meta) for s in SPLITS}
    ok = False
    try:
        splits = {s: _Split(writers[s], ID_OFFSETS[s]) for s in SPLITS}
        for i, (split, path, label) in enumerate(plan):
            try:
                row = decode_image(path, mode, size, cfg["resize"])
            except Exception as err:  # Pillow raises many types on malformed files
                reason = f"{type(err).__name__}: {err}"
                if cfg["on_corrupt"] == "fail":
                    raise StrataError(f"cannot decode image ({reason})", where=f"{path} (datasets.{name}.path)",
                                      fix=f"delete or replace the file, or set datasets.{name}.on_corrupt: skip to "
                                      "leave unreadable images out (they are then listed in the log and "
                                      "info.json).") from err
                skipped.append({"file": str(path), "reason": reason})
                continue
            if split is None:  # held-out probes: fill probe_test, then probe_train, per class
                assert quotas is not None
                split = "pool"
                for s in ("probe_test", "probe_train"):
                    if taken[s][label] < quotas[s]:
                        taken[s][label] += 1
                        split = s
                        break
            base = bases[split] or pool.root
            splits[split].add(row, label, os.path.relpath(path, base))
            if (i + 1) % 5000 == 0:
                log(f"data: decoded {i + 1}/{len(plan)} images")
        for s in SPLITS:
            splits[s].flush()
        if quotas is not None:
            for s, q in quotas.items():
                short = [classes[c] for c in range(len(classes)) if taken[s][c] < q]
                if short:
                    raise StrataError(f"after leaving out {len(skipped)} unreadable images, classes {short} have "
                                      f"fewer than {q} images for {s}", where=f"datasets.{name}.{s}_per_class",
                                      fix="ask for fewer probe images per class, or replace the unreadable files.")
        for s in SPLITS:
            if splits[s].flushed == 0:
                raise StrataError(f"no readable image left for {s}", where=f"datasets.{name}.path",
                                  fix="check the folder's images (every one of them failed to decode).")
        ok = True
    finally:
        for w in writers.values():
            w.close(ok=ok)
    if skipped:
        listed = ", ".join(f"{d['file']} ({d['reason']})" for d in skipped[:MAX_LISTED])
        more = f" and {len(skipped) - MAX_LISTED} more (see info.json)" if len(skipped) > MAX_LISTED else ""
        log(f"data: WARNING: skipped {len(skipped)} unreadable image(s) (on_corrupt: skip): {listed}{more}")
    pool_labels = np.asarray(splits["pool"].labels, dtype=np.int64) if pool.classes is not None else None
    info = {"source": str(cfg["path"]), "image_shape": shape, "classes": classes, "n_skipped": len(skipped),
            "skipped": skipped, "n_ignored_files": pool.ignored + sum(p.ignored for p in (probes or {}).values()),
            "files": {s: splits[s].files for s in SPLITS}}
    return WrittenImages(meta, {s: splits[s].flushed for s in SPLITS}, pool_labels, info)


def iter_digits_images(size: tuple[int, int]) -> Iterator[np.ndarray]:
    """scikit-learn's 8x8 digits as grayscale images of ``size`` (H, W), each resized with Pillow (bicubic)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    h, w = size
    for img in load_digits().images:  # values 0..16
        im = Image.fromarray(np.round(img * 255.0 / 16.0).astype(np.uint8), mode="L")
        yield np.asarray(im.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32).reshape(-1) / 255.0


def make_digits_images(cfg: dict[str, Any], name: str) -> DataSplits:
    """scikit-learn's digits (1797 8x8 images, 10 classes) upsampled to ``image_size`` (default 16x16), as
    images: the same long-tailed pool with near-duplicates and balanced probes as the ``digits`` data set.

    ``image_mode: RGB`` repeats the gray channel three times. Near-duplicates are clipped to [0, 1]. The tables
    carry a horizontal-flip probability of 0 as the augmentation default (digits are not mirror-symmetric).
    """
    from sklearn.datasets import load_digits

    size = image_size(cfg, 16)
    x = np.stack(list(iter_digits_images(size)))
    mode = cfg.get("image_mode") or "L"
    channels = 3 if mode == "RGB" else 1
    if channels == 3:
        x = np.repeat(x[:, None, :], 3, axis=1).reshape(len(x), -1)
    y = load_digits().target.astype(np.int64)
    splits = digits_splits(x, y, cfg, name, "image")
    splits.pool.vectors = np.clip(splits.pool.vectors, 0.0, 1.0)
    splits.table_meta = {"image_shape": [channels, size[0], size[1]], "augment": {"horizontal_flip": 0.0}}
    return splits
