"""k-means: Strata's torch Lloyd loop against faiss and scikit-learn, same data, same k and iterations.

    python benchmarks/kmeans.py                 # small default (20k x 64, k=256)
    python benchmarks/kmeans.py --n 1000000 --dim 128 --k 4096   # full size

Prints wall time and inertia (sum of squared distances) per implementation, and ratios to faiss.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import best_time, print_table, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn (slow at full size)")
    args = parser.parse_args()

    import faiss
    from sklearn.cluster import KMeans

    from workflow.curate.kmeans import kmeans

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, size=(args.k // 4 + 1, args.dim))
    x = (centres[rng.integers(0, len(centres), args.n)] + rng.normal(0, 1, (args.n, args.dim))).astype(np.float32)

    def inertia(c: np.ndarray) -> float:
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(np.ascontiguousarray(c, dtype=np.float32))
        d, _ = index.search(x, 1)
        return float(d.sum())

    rows = []
    t, res = best_time(lambda: kmeans(x, args.k, n_iters=args.iters, seed=0), args.repeats)
    rows.append({"impl": "strata (torch, k-means++)", "seconds": t, "inertia": inertia(res.centroids)})

    def run_faiss() -> np.ndarray:
        km = faiss.Kmeans(args.dim, args.k, niter=args.iters, seed=0, max_points_per_centroid=10**9)
        km.train(x)
        return km.centroids

    t, cents = best_time(run_faiss, args.repeats)
    rows.append({"impl": "faiss.Kmeans (random init)", "seconds": t, "inertia": inertia(cents)})
    if not args.no_sklearn:
        def run_sklearn() -> np.ndarray:
            return KMeans(args.k, n_init=1, max_iter=args.iters, tol=0, random_state=0, algorithm="lloyd").fit(
                x).cluster_centers_

        t, cents = best_time(run_sklearn, args.repeats)
        rows.append({"impl": "sklearn KMeans (k-means++)", "seconds": t, "inertia": inertia(cents)})
    ref = rows[1]
    for r in rows:
        r["time_vs_faiss"] = r["seconds"] / ref["seconds"]
        r["inertia_vs_faiss"] = r["inertia"] / ref["inertia"]
    print(f"k-means: n={args.n} dim={args.dim} k={args.k} iters={args.iters}")
    print_table(rows)
    write_results("kmeans", vars(args), rows)


if __name__ == "__main__":
    main()
