"""k-means: Strata's torch Lloyd loop against faiss and scikit-learn, same data, same k and iterations.

    python benchmarks/kmeans.py                 # small default (20k x 64, k=256, 20 iterations)
    python benchmarks/kmeans.py --threads 2     # every implementation on 2 threads (default: 1)
    python benchmarks/kmeans.py --n 1000000 --dim 128 --k 4096 --no-sklearn   # full size

Prints wall time (best of --repeats) and inertia (sum of squared distances, computed the same way for
every result) per implementation, and ratios to faiss. All three run on the same number of threads
(torch.set_num_threads, faiss.omp_set_num_threads, threadpoolctl for scikit-learn). Strata's time
includes its greedy k-means++ seeding; faiss seeds with k random points (almost free), so Strata's
seeding alone is reported too (``n_iters=0``: seeding + one assignment pass), and Strata with the same
random seeding as faiss (``init_method="random"``) compares the Lloyd loops alone. faiss is told to use
every point (``max_points_per_centroid`` = 1e9; its default would subsample 256 points per centroid).
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads of every implementation")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn (slow at full size)")
    args = parser.parse_args()

    import faiss
    import torch
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    from workflow.curate.kmeans import kmeans

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

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
    rows.append({"impl": "strata (torch, k-means++)", "seconds": t, "inertia": inertia(res.centroids),
                 "iters": res.n_iters_run})
    t_init, res0 = best_time(lambda: kmeans(x, args.k, n_iters=0, seed=0), args.repeats)
    t, res_r = best_time(lambda: kmeans(x, args.k, n_iters=args.iters, seed=0, init_method="random"), args.repeats)
    rows.append({"impl": "strata (torch, random init)", "seconds": t, "inertia": inertia(res_r.centroids),
                 "iters": res_r.n_iters_run})

    def run_faiss() -> np.ndarray:
        km = faiss.Kmeans(args.dim, args.k, niter=args.iters, seed=0, max_points_per_centroid=10**9)
        km.train(x)
        return km.centroids

    t, cents = best_time(run_faiss, args.repeats)
    rows.append({"impl": "faiss.Kmeans (random init)", "seconds": t, "inertia": inertia(cents), "iters": args.iters})
    if not args.no_sklearn:
        def run_sklearn() -> np.ndarray:
            with threadpool_limits(args.threads):
                return KMeans(args.k, n_init=1, max_iter=args.iters, tol=0, random_state=0,
                              algorithm="lloyd").fit(x).cluster_centers_

        t, cents = best_time(run_sklearn, args.repeats)
        rows.append({"impl": "sklearn KMeans (k-means++)", "seconds": t, "inertia": inertia(cents),
                     "iters": args.iters})
    rows.append({"impl": "strata k-means++ seeding only", "seconds": t_init, "inertia": inertia(res0.centroids),
                 "iters": 0})
    ref = rows[2]
    for r in rows:
        r["time_vs_faiss"] = r["seconds"] / ref["seconds"]
        r["inertia_vs_faiss"] = r["inertia"] / ref["inertia"]
    print(f"k-means: n={args.n} dim={args.dim} k={args.k} iters={args.iters} threads={args.threads}")
    print_table(rows)
    suffix = "" if args.threads == 1 else f"_t{args.threads}"
    write_results(f"kmeans{suffix}", vars(args), rows)


if __name__ == "__main__":
    main()
