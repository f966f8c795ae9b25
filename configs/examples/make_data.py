"""Write the small data sets of the example studies in configs/examples/ (committed; run this to regenerate them).

    .venv/bin/python configs/examples/make_data.py

Everything comes from scikit-learn's 8x8 digits (bundled with scikit-learn, no download), drawn with a fixed
seed, so the files are the same on every run. Each folder shows one way to bring your own data:

* ``data/images/<class>/*.png``: an image folder, one subfolder per class, long-tailed class sizes
  (images.yaml);
* ``data/vectors.npy`` + ``data/labels.npy``: an (N, 64) float32 matrix and its integer labels, long-tailed
  (vectors.yaml, which holds the probes out of it with ``probe_fraction``);
* ``data/embed/``: a labelled Parquet pool with probe tables, and precomputed embeddings of the pool (a PCA
  fitted on the pool stands in for your model) in a Parquet table ``id`` + ``embedding`` (embeddings.yaml).

The whole of ``data/`` stays well under 1 MB.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SEED = 0


def long_tail(n_max: int, rho: float, n_classes: int = 10) -> np.ndarray:
    """Per-class sizes n_c = round(n_max * rho^(-c/(C-1))), the long tail a curation should rebalance."""
    return np.round(n_max * rho ** (-np.arange(n_classes) / (n_classes - 1))).astype(int)


def draw(y: np.ndarray, counts: np.ndarray, rng: np.random.Generator, exclude: np.ndarray) -> np.ndarray:
    """``counts[c]`` row indices of each class c, none of them in ``exclude``, in a shuffled order."""
    free = np.setdiff1d(np.arange(len(y)), exclude)
    rows = [rng.choice(free[y[free] == c], size=int(n), replace=False) for c, n in enumerate(counts)]
    return rng.permutation(np.concatenate(rows))


def write_images(images: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
    """A class-per-folder image tree: 16x16 grayscale PNGs (the 8x8 digits upsampled), 8 + 6 probe images per
    class plus a long-tailed pool (30 down to 3); the study holds the probes out of it itself."""
    from PIL import Image

    root = DATA / "images"
    shutil.rmtree(root, ignore_errors=True)
    rows = draw(y, long_tail(30, 10) + 14, rng, np.array([], dtype=int))
    for i, row in enumerate(rows):
        folder = root / CLASS_NAMES[y[row]]
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(np.round(images[row] * 255 / 16).astype(np.uint8), mode="L")
        im.resize((16, 16), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png", optimize=True)


def vector_table(ids: np.ndarray, x: np.ndarray, labels: np.ndarray, column: str) -> pa.Table:
    """The Parquet layout Strata reads: ``id`` (int64), ``label`` (int64) and a fixed-size list of float32."""
    flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    return pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()),
                     column: pa.FixedSizeListArray.from_arrays(flat, x.shape[1])})


def main() -> None:
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    DATA.mkdir(exist_ok=True)
    write_images(digits.images, y, rng)

    # Your own vectors: X (N x D) and y (N,) as two .npy files; the study holds out stratified probes.
    rows = draw(y, long_tail(100, 10) + 10, rng, np.array([], dtype=int))
    np.save(DATA / "vectors.npy", x[rows])
    np.save(DATA / "labels.npy", y[rows])

    # Your own embeddings: a labelled pool and probes as Parquet, and a table of the pool's embeddings by id.
    embed = DATA / "embed"
    embed.mkdir(exist_ok=True)
    test = draw(y, np.full(10, 10), rng, np.array([], dtype=int))
    train = draw(y, np.full(10, 15), rng, test)
    pool = draw(y, long_tail(60, 10), rng, np.concatenate([test, train]))
    pool_ids = 1000 + np.arange(len(pool))  # any unique integers; the embeddings are matched by id
    for name, r, ids in (("pool", pool, pool_ids), ("probe_train", train, np.arange(len(train))),
                         ("probe_test", test, 500 + np.arange(len(test)))):
        pq.write_table(vector_table(ids, x[r], y[r], "vector"), embed / f"{name}.parquet")
    z = PCA(n_components=16, svd_solver="full").fit_transform(x[pool])
    order = rng.permutation(len(pool))  # rows in any order: they are matched to the pool by id
    pq.write_table(pa.table({"id": pa.array(pool_ids[order], pa.int64()),
                             "embedding": pa.FixedSizeListArray.from_arrays(
                                 pa.array(z[order].astype(np.float32).reshape(-1)), z.shape[1])}),
                   embed / "embeddings.parquet")
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    print(f"wrote {DATA} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
