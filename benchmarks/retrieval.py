"""Leave-one-out retrieval: Strata's ``retrieval_scores`` end to end against the bare faiss search.

    python benchmarks/retrieval.py                                  # small default (20k x 128, 100 classes)
    python benchmarks/retrieval.py --n 100000 --dim 128 --classes 100 --repeats 1   # full size

Both sides search the same L2-normalised float32 data with ``faiss.IndexFlatIP``, the same number of
neighbours ``k_search = max(max(ks), largest class - 1) + 1`` and the same query batch size, in the
same process. The bare side is index build + batched search only; ``retrieval_scores`` adds input
validation, normalisation and the metric bookkeeping. Prints seconds and their ratio (goal <= 1.3).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import best_time, print_table, write_results


def clustered_data(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points around ``classes`` random Gaussian centres (unit-variance noise), balanced labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(classes, dim)) * 0.5
    labels = rng.permutation(np.arange(n) % classes)
    x = (centres[labels] + rng.normal(0.0, 1.0, size=(n, dim))).astype(np.float32)
    return x, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10], help="recall cut-offs (ks)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import faiss

    from workflow.evaluate.metrics import retrieval_scores

    x, y = clustered_data(args.n, args.dim, args.classes)
    counts = np.bincount(y)
    k_search = min(args.n, max(max(args.k), int(counts.max()) - 1) + 1)
    xn = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)

    def bare_faiss() -> None:
        index = faiss.IndexFlatIP(xn.shape[1])
        index.add(xn)
        for start in range(0, xn.shape[0], args.batch_size):
            index.search(xn[start:start + args.batch_size], k_search)

    def strata() -> dict[str, float]:
        return retrieval_scores(x, y, ks=args.k, batch_size=args.batch_size)

    # Interleave the two sides so that load changes on the shared machine hit both alike.
    t_faiss, t_strata, scores = float("inf"), float("inf"), {}
    for _ in range(args.repeats):
        t, _ = best_time(bare_faiss, 1)
        t_faiss = min(t_faiss, t)
        t, scores = best_time(strata, 1)
        t_strata = min(t_strata, t)

    rows = [
        {"impl": "faiss IndexFlatIP search only", "seconds": t_faiss, "ratio_vs_faiss": 1.0},
        {"impl": "retrieval_scores (end to end)", "seconds": t_strata, "ratio_vs_faiss": t_strata / t_faiss},
    ]
    print(f"retrieval (leave-one-out): n={args.n} dim={args.dim} classes={args.classes} ks={args.k} "
          f"k_search={k_search} batch_size={args.batch_size} faiss_threads={faiss.omp_get_max_threads()} "
          f"best of {args.repeats}")
    print_table(rows)
    print("scores: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    write_results("retrieval", {**vars(args), "k_search": k_search, "faiss_threads": faiss.omp_get_max_threads()},
                  [{**r, "scores": scores} if r["impl"].startswith("retrieval") else r for r in rows])


if __name__ == "__main__":
    main()
