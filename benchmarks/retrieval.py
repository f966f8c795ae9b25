"""Leave-one-out retrieval: Strata's ``retrieval_scores`` end to end against the bare faiss search.

    python benchmarks/retrieval.py                                  # small default (20k x 128, 100 classes)
    python benchmarks/retrieval.py --n 100000 --dim 128 --classes 100 --repeats 1   # full size

Both sides search the same L2-normalised float32 data with ``faiss.IndexFlatIP``, the same number of
neighbours ``k_search = max(max(ks), largest class - 1) + 1`` and the same query batch size, in the
same process, interleaved (best of ``--repeats``). The bare side is index build + batched search only;
``retrieval_scores`` adds input validation, normalisation and the metric bookkeeping. Prints wall seconds
and their ratio (goal <= 1.3), and process CPU seconds (all threads), which other load disturbs less.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

    from workflow.evaluate.retrieval import retrieval_scores

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

    def with_cpu(fn: Callable[[], Any], cpu: list[float]) -> Callable[[], Any]:
        """``fn`` that also appends its process CPU time (all threads) to ``cpu``."""

        def timed() -> Any:
            start = time.process_time()
            out = fn()
            cpu.append(time.process_time() - start)
            return out

        return timed

    # Interleave the two sides so that load changes on the shared machine hit both alike. Wall time is
    # the headline; process CPU time (summed over faiss's threads) is less sensitive to other load.
    wall = {"faiss": float("inf"), "strata": float("inf")}
    cpu: dict[str, list[float]] = {"faiss": [], "strata": []}
    scores: dict[str, float] = {}
    for _ in range(args.repeats):
        t, _ = best_time(with_cpu(bare_faiss, cpu["faiss"]), 1)
        wall["faiss"] = min(wall["faiss"], t)
        t, scores = best_time(with_cpu(strata, cpu["strata"]), 1)
        wall["strata"] = min(wall["strata"], t)

    rows = []
    for key, impl in (("faiss", "faiss IndexFlatIP search only"), ("strata", "retrieval_scores (end to end)")):
        rows.append({"impl": impl, "seconds": wall[key], "ratio_vs_faiss": wall[key] / wall["faiss"],
                     "cpu_seconds": min(cpu[key]), "cpu_ratio_vs_faiss": min(cpu[key]) / min(cpu["faiss"])})
    print(f"retrieval (leave-one-out): n={args.n} dim={args.dim} classes={args.classes} ks={args.k} "
          f"k_search={k_search} batch_size={args.batch_size} faiss_threads={faiss.omp_get_max_threads()} "
          f"best of {args.repeats}")
    print_table(rows)
    print("scores: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    write_results("retrieval", {**vars(args), "k_search": k_search, "faiss_threads": faiss.omp_get_max_threads()},
                  [{**r, "scores": scores} if r["impl"].startswith("retrieval") else r for r in rows])


if __name__ == "__main__":
    main()
