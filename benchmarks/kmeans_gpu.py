"""k-means on a GPU: time per Lloyd iteration of Strata (pruned and plain) against a bare PyTorch Lloyd loop on
the same GPU, faiss-cpu on all of the machine's cores, and the GPU's fp32 matmul rate, all in the same run.

    python benchmarks/kmeans_gpu.py                       # 1M x 128, k = 1000, 20 iterations, blobs and uniform
    python benchmarks/kmeans_gpu.py --n 10000000 --dim 64 # larger

Needs a CUDA device (CI has none; the CPU benchmark is benchmarks/kmeans.py). Same method as kmeans.py: every
implementation starts from the same k distinct random points and runs the same number of iterations; each
round runs them all once, interleaved, and the best of ``--repeats`` rounds is kept; the GPU is synchronised
before every clock reading. References:

* **bare PyTorch loop**: the Lloyd loop as one writes it by hand on a GPU: chunked ``addmm`` distances,
  ``argmin``, float32 ``index_add_`` sums (atomics, not reproducible bit for bit), same chunk size as Strata.
  Strata does more per pass: the exact assignment (float64 re-check of near ties), float64 sums in a fixed
  order (deterministic), the inertia and the count of changed assignments.
* **fp32 matmul rate**: ``torch.mm`` of the Lloyd GEMM shape (chunk x d @ d x k), TF32 off (Strata's GEMM is
  full fp32: its exactness bound assumes it), timed with CUDA events. A Lloyd iteration costs 2 n k d flops.
* **faiss-cpu** (when installed) on ``--faiss-threads`` cores (default: all), to show what the GPU buys.

Also reported: Strata's k-means++ seeding on the GPU, and whether the GPU run equals itself on a second run
(deterministic sums) and Strata's CPU result from the same start (``--cpu-check``, slow at full size).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import kmeans as kmeans_cpu
from benchmarks.common import print_table, write_results
from benchmarks.kmeans import make_data


def sync() -> None:
    import torch

    torch.cuda.synchronize()


def matmul_rate(rows: int, dim: int, k: int, seconds: float = 0.5) -> float:
    """GFLOP/s of an fp32 torch.mm (rows x dim) @ (dim x k) on the GPU, TF32 off."""
    import torch

    a = torch.randn(rows, dim, device="cuda")
    b = torch.randn(dim, k, device="cuda")
    out = torch.empty(rows, k, device="cuda")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for _ in range(3):
            torch.mm(a, b, out=out)
        sync()
        reps, start = 0, time.perf_counter()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        while time.perf_counter() - start < seconds:
            for _ in range(10):
                torch.mm(a, b, out=out)
            reps += 10
        end.record()
        sync()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2.0 * rows * dim * k * reps / (begin.elapsed_time(end) / 1e3) / 1e9


def run_strata(x: Any, init: Any, iters: int, prune: bool) -> dict[str, Any]:
    import torch

    from workflow.kmeans import DataSource
    from workflow.kmeans.engine import local_engine
    from workflow.kmeans.lloyd import lloyd_iterations

    sync()
    start = time.perf_counter()
    engine = local_engine(DataSource(x, x.device, check=False), prune=prune)
    centroids, n_run = lloyd_iterations(engine, init.clone(), iters)
    sync()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "iters": n_run, "centroids": centroids.cpu().numpy(),
            "assignment": engine.assignment.cpu().numpy(), "device": str(torch.device(x.device))}


def run_bare(x: Any, init: Any, iters: int, chunk: int) -> dict[str, Any]:
    """Lloyd by hand on the GPU (see the module doc)."""
    import torch

    sync()
    start = time.perf_counter()
    c = init.clone()
    k = c.shape[0]
    for _ in range(iters):
        c_sq = (c * c).sum(1)
        sums = torch.zeros_like(c)
        counts = torch.zeros(k, dtype=torch.float32, device=x.device)
        for s in range(0, x.shape[0], chunk):
            xb = x[s:s + chunk]
            idx = torch.addmm(c_sq.unsqueeze(0), xb, c.T, alpha=-2.0).argmin(1)
            sums.index_add_(0, idx, xb)
            counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        nonempty = counts > 0
        c = torch.where(nonempty.unsqueeze(1), sums / counts.clamp(min=1).unsqueeze(1), c)
    sync()
    return {"seconds": time.perf_counter() - start, "iters": iters, "centroids": c.cpu().numpy()}


def run_faiss(x: np.ndarray, init: np.ndarray, iters: int, threads: int) -> dict[str, Any] | None:
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(threads)
    return kmeans_cpu.run_faiss(x, init, iters)  # every point, the given start, no early stop


def inertia(x: Any, c: np.ndarray) -> float:
    """Σ min_j ‖x_i − c_j‖² in float64 on the GPU (exact nearest centroid by Strata's assign)."""
    import torch

    from workflow.kmeans import assign

    _, dist = assign(x, torch.from_numpy(np.ascontiguousarray(c)).to(x.device))
    return float(dist.double().sum().item())


def bench_data(kind: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch

    from workflow.kmeans import kmeans_plusplus
    from workflow.kmeans.tuning import default_chunk_size

    x_np = make_data(kind, args.n, args.dim, args.k)
    init_np = x_np[np.sort(np.random.default_rng(1).choice(args.n, args.k, replace=False))].copy()
    x = torch.from_numpy(x_np).cuda()
    init = torch.from_numpy(init_np).cuda()
    chunk = default_chunk_size(args.n, args.k, "cuda")
    flops = 2.0 * args.n * args.k * args.dim
    impls = ["strata (pruned)", "strata (plain)", "bare PyTorch loop"]
    best: dict[str, dict[str, Any]] = {}
    peak = 0.0
    for _ in range(args.repeats):
        peak = max(peak, matmul_rate(chunk, args.dim, args.k))
        for impl in impls:
            if impl.startswith("strata"):
                res = run_strata(x, init, args.iters, prune=impl == "strata (pruned)")
            else:
                res = run_bare(x, init, args.iters, chunk)
            print(f"  {kind} {impl}: {res['seconds'] / max(1, res['iters']):.4f} s/iteration", flush=True)
            if impl not in best or res["seconds"] < best[impl]["seconds"]:
                best[impl] = res
        faiss_res = None if args.no_faiss else run_faiss(x_np, init_np, args.iters, args.faiss_threads)
        if faiss_res is not None:
            print(f"  {kind} faiss-cpu: {faiss_res['seconds'] / args.iters:.4f} s/iteration", flush=True)
        if faiss_res is not None and ("faiss" not in best or faiss_res["seconds"] < best["faiss"]["seconds"]):
            best["faiss"] = faiss_res
    if "faiss" in best:
        impls.append("faiss")
    ref = best["bare PyTorch loop"]["seconds"] / best["bare PyTorch loop"]["iters"]
    ref_inertia = inertia(x, best["bare PyTorch loop"]["centroids"])
    rows = []
    for impl in impls:
        res = best[impl]
        per_iter = res["seconds"] / max(1, res["iters"])
        gflops = flops / per_iter / 1e9
        name = f"faiss-cpu ({args.faiss_threads} threads)" if impl == "faiss" else f"{impl} (GPU)"
        rows.append({"data": kind, "impl": name, "s_per_iter": per_iter, "iters": res["iters"],
                     "speedup_vs_bare": ref / per_iter, "gflops": gflops, "pct_of_matmul": 100.0 * gflops / peak,
                     "inertia_vs_bare": inertia(x, res["centroids"]) / ref_inertia})

    # seeding, and reproducibility: the same run again, and (optionally) the CPU from the same start
    sync()
    start = time.perf_counter()
    kmeans_plusplus(x, args.k, torch.Generator().manual_seed(0))
    sync()
    seeding = time.perf_counter() - start
    rows.append({"data": kind, "impl": "strata k-means++ seeding (GPU)", "s_per_iter": seeding, "iters": 0,
                 "speedup_vs_bare": None, "gflops": None, "pct_of_matmul": None, "inertia_vs_bare": None})
    plain, again = best["strata (plain)"], run_strata(x, init, args.iters, prune=False)
    detail: dict[str, Any] = {
        "matmul_gflops_fp32": peak, "chunk_rows": chunk,
        "pruned_identical_to_plain": bool(np.array_equal(best["strata (pruned)"]["centroids"], plain["centroids"])),
        "second_run_identical": bool(np.array_equal(again["centroids"], plain["centroids"])),
    }
    if args.cpu_check:
        torch.set_num_threads(os.cpu_count() or 1)
        cpu = run_strata(torch.from_numpy(x_np), torch.from_numpy(init_np), args.iters, prune=False)
        detail["cpu_seconds_per_iter"] = cpu["seconds"] / max(1, cpu["iters"])
        detail["cpu_assignment_equal"] = bool(np.array_equal(cpu["assignment"], plain["assignment"]))
        detail["cpu_centroids_max_abs_diff"] = float(np.abs(cpu["centroids"] - plain["centroids"]).max())
    return rows, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--data", default="blobs,uniform", help="comma-separated: blobs, uniform")
    parser.add_argument("--faiss-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--cpu-check", action="store_true",
                        help="also run Strata on the CPU from the same start and compare the results")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("kmeans_gpu.py needs a CUDA device; on CPU run benchmarks/kmeans.py")
    rows, details = [], {}
    for kind in args.data.split(","):
        r, detail = bench_data(kind, args)
        rows += r
        details[kind] = detail
    print(f"k-means on {torch.cuda.get_device_name(0)}: n={args.n} d={args.dim} k={args.k}, {args.iters} iterations")
    print_table(rows)
    for kind, detail in details.items():
        print(f"{kind}: {detail}")
    write_results("kmeans_gpu", vars(args), rows, details)


if __name__ == "__main__":
    main()
