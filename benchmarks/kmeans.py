"""k-means: time per Lloyd iteration of Strata (pruned and unpruned) against faiss.Kmeans and scikit-learn KMeans.

    python benchmarks/kmeans.py                        # small default: 20k x 64, k=256, 20 iterations, 2 threads
    python benchmarks/kmeans.py --n 1000000 --dim 128 --k 1000 --iters 20 --repeats 1 --data blobs \
        --sklearn-iters 5                    # issue 3 size (results/kmeans_1000000x128_k1000_blobs.json)
    python benchmarks/kmeans.py --memory                # peak RSS of k-means on a memmapped pool (small default)
    python benchmarks/kmeans.py --memory --memory-n 10000000 --memory-dim 64    # the 10M x 64 pool (2.56 GB file)
    python benchmarks/kmeans.py --kpp                   # k-means++ of low-dimensional data: compiled loop vs torch
    python benchmarks/kmeans.py --kpp --n 15000 --k 1000   # the size of the five-ring example's re-fits

Method. Every implementation gets the same data, the same k initial centroids (k distinct random points, the way
faiss seeds), the same number of iterations and the same number of threads (torch.set_num_threads,
faiss.omp_set_num_threads, threadpoolctl for scikit-learn). The time per iteration is the wall time of the whole
Lloyd run divided by the iterations it ran (scikit-learn and Strata stop early at a fixed point; faiss never does).
Each round runs every implementation once, interleaved, and the best of ``--repeats`` rounds is kept (the machine is
shared: noise only ever adds time). In the same rounds the machine's float32 matmul rate is measured: torch.mm of
the Lloyd GEMM shape (8192 x d @ d x k), intra-op threaded and as independent single-threaded products on a thread
pool (the way Strata runs its chunks). Also measured: the ceiling of an unfused pass, the engine's GEMMs (its shape
and size) on the pool, alone and each followed by the scan of its output that the engine's plain pass runs, the
compiled scan on large passes, else NumPy's argmin and torch's minimum (``unfused_ceiling``). The reference "matmul
rate" is the fastest of the three GEMM rates, best of the rounds: on a shared machine a short burst timed in a slow
moment would otherwise understate the machine and overstate every ratio to it. Because such a machine's speed drifts
within minutes, the plain pass is also measured in ``--paired`` pairs (the three GEMM bursts, then one pass, a
fraction of a second apart; ``paired_share``), whose median share is steadier than a ratio of two bests taken at
different moments (it times the pass alone, the table a whole run's iterations). A Lloyd iteration costs 2 n k d
flops; "GFLOP/s" is that over the time per iteration (for the pruned run an *effective* rate: it skips most of those
flops). Strata pruned and unpruned are checked to give bitwise identical centroids. faiss is told to use every point
(``max_points_per_centroid`` = 1e9; its default would subsample 256 points per centroid).

"strata (pruned)" forces the exact Yinyang pruning (engine ``prune=True``, ``kmeans(prune="always")``),
"strata (unpruned)" turns it off; Strata's default (``prune="auto"``) prunes only passes of at least 2^30
multiply-adds (n k d), so at the small default size it runs the unpruned path. Pruning (Ding et al. 2015) depends
on cluster structure, so two data sets are reported:
``blobs`` (k/4 Gaussian blobs, means N(0, 4²), unit noise: points keep their cluster once the centroids settle,
most distance computations are skipped after a few iterations) and ``uniform`` (uniform noise in the unit cube:
no structure, boundaries everywhere, little is skipped and the pruned run costs about as much as the plain one).
Real embeddings sit in between. The first iteration is always a full pass (it builds the bounds).

Seeding: Strata's greedy k-means++ (2 + ln k candidates drawn by D², the best kept) against scikit-learn's
``kmeans_plusplus`` (the same algorithm) and faiss's whole run (which seeds randomly).

``--kpp`` times greedy k-means++ seeding alone for each of ``--kpp-dims`` on blobs and uniform data: Strata's
compiled loop for low-dimensional data (``workflow/kmeans/seeding_lowdim.py``, run at every dimension here), the torch
path of ``kmeans_plusplus`` and scikit-learn's ``kmeans_plusplus`` (the same algorithm; the reference), with the
potential φ of each seeding against scikit-learn's. Strata uses the compiled loop up to ``LOWDIM_MAX_DIM``
dimensions, where it beats the torch path (``benchmarks/results/kmeans_kpp.json``).

``--memory`` runs k-means (random init, ``--memory-iters`` iterations) on a float32 ``.npy`` memmap in a fresh
subprocess and reports its peak RSS (VmHWM; ``ru_maxrss`` would inherit the parent's peak across fork + exec)
against the input size: the mapped pages the run touched count in RSS, so peak ≈ interpreter + input + working
set (assignments, ‖x‖², bounds, chunk scratch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import print_table, write_results

#: scikit-learn's kmeans_plusplus is skipped above this n·d·k (it makes k full passes: ~30 min at 1M x 128, k=1000).
SKLEARN_SEEDING_MAX = 2**34


def make_data(kind: str, n: int, dim: int, k: int, seed: int = 0) -> np.ndarray:
    """``blobs``: k/4 + 1 Gaussian blobs (means N(0, 4²), noise N(0, 1)); ``uniform``: U[0, 1)^dim."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.random((n, dim), dtype=np.float32)
    centres = rng.normal(0, 4, size=(k // 4 + 1, dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)]
    x += rng.standard_normal((n, dim), dtype=np.float32)
    return x


def calls_per_second(fn: Any, seconds: float) -> float:
    """Calls of ``fn`` per second over about ``seconds``, after one warm-up call."""
    fn()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return reps / (time.perf_counter() - start)


def matmul_rate(dim: int, k: int, threads: int, seconds: float = 0.3) -> dict[str, float]:
    """GFLOP/s of torch.mm on the Lloyd GEMM shape (8192 x dim) @ (dim x k): intra-op threaded, and as
    ``threads`` independent single-threaded products on a thread pool."""
    import torch

    m = 8192
    a = [torch.randn(m, dim) for _ in range(threads)]
    b = torch.randn(dim, k)
    out = [torch.empty(m, k) for _ in range(threads)]
    flops = 2.0 * m * dim * k
    torch.set_num_threads(threads)
    intra = calls_per_second(lambda: torch.mm(a[0], b, out=out[0]), seconds) * flops / 1e9

    def one(i: int) -> None:
        torch.set_num_threads(1)
        torch.mm(a[i], b, out=out[i])

    with ThreadPoolExecutor(threads) as pool:
        pooled = calls_per_second(lambda: list(pool.map(one, range(threads))), seconds) * threads * flops / 1e9
    torch.set_num_threads(threads)
    return {"intra_op": intra, "pool": pooled, "best": max(intra, pooled)}


def unfused_ceiling(dim: int, k: int, threads: int, rows: int, compiled: bool, seconds: float = 0.3,
                    with_scans: bool = True) -> dict[str, float | None]:
    """GFLOP/s of ``threads`` single-threaded GEMMs of the engine's shape (``rows`` rows against the k centroids, on
    a thread pool as the engine runs them): alone, and each followed by the scan of its output that the engine's
    plain pass runs, the compiled scan (``compiled``: ``−2 C·Xᵀ``, then :func:`scan_centroids`) or NumPy's argmin and
    torch's minimum (``X·Cᵀ``). The second figure bounds every pass that reads the distances back after the GEMM:
    only a scan fused into the GEMM's own loops could beat it."""
    import torch

    if compiled:  # numba only where the engine would load it
        from workflow.kmeans.compiled_scan import scan_centroids

    x = [torch.randn(rows, dim) for _ in range(threads)]
    c = torch.randn(k, dim)
    ct, c_sq = c.T.contiguous(), (c * c).sum(1).numpy()
    out = [torch.empty((k, rows) if compiled else (rows, k)) for _ in range(threads)]
    cols = [np.empty(rows, dtype=np.int64) for _ in range(threads)]
    vals = [np.empty(rows) for _ in range(threads)]
    two_e, no_groups = np.zeros(rows), np.empty((0, 0), dtype=np.float32)
    flops = 2.0 * rows * dim * k

    def rate(scan: bool) -> float:
        def one(i: int) -> None:
            torch.set_num_threads(1)
            for _ in range(4):
                if compiled:
                    g = torch.addmm(out[i], ct.T, x[i].T, beta=0, alpha=-2.0, out=out[i])  # the engine's GEMM
                    if scan:
                        scan_centroids(g.numpy(), c_sq, 0, two_e, cols[i], vals[i], no_groups)
                else:
                    d = torch.mm(x[i], ct, out=out[i])
                    if scan:
                        np.argmin(d.numpy(), axis=1, out=cols[i])
                        torch.amin(d, 1)

        with ThreadPoolExecutor(threads) as pool:
            calls = calls_per_second(lambda: list(pool.map(one, range(threads))), seconds)
        return calls * 4 * threads * flops / 1e9

    result = {"gemm": rate(False), "gemm_and_scans": rate(True) if with_scans else None}
    torch.set_num_threads(threads)
    return result


def run_strata(x: np.ndarray, init: np.ndarray, iters: int, prune: bool) -> dict[str, Any]:
    import torch

    from workflow.kmeans import DataSource
    from workflow.kmeans.engine import PassResult, local_engine
    from workflow.kmeans.lloyd import lloyd_iterations

    stamps: list[float] = []
    stats: list[dict[str, int] | None] = []

    def on_pass(part: PassResult) -> None:
        stamps.append(time.perf_counter())
        stats.append(part.stats)

    start = time.perf_counter()
    engine = local_engine(DataSource(x, check=False), prune=prune)  # threaded when torch has several threads
    centroids, n_run = lloyd_iterations(engine, torch.from_numpy(init.copy()), iters, on_pass=on_pass)
    seconds = time.perf_counter() - start
    per_pass = np.diff([start, *stamps]).tolist()
    skipped = [0.0 if s is None else (s["global"] + s["tight"]) / s["rows"] for s in stats]
    return {"seconds": seconds, "centroids": centroids.numpy(), "iters": n_run, "per_pass": per_pass,
            "skipped": skipped}


def paired_share(x: np.ndarray, init: np.ndarray, threads: int, rounds: int, gemm_rows: int, compiled: bool
                 ) -> dict[str, Any]:
    """The plain pass's share of the matmul rate, measured in ``rounds`` pairs: GEMM bursts (:func:`matmul_rate`'s
    intra-op and pool products and the engine's own GEMMs, :func:`unfused_ceiling`; the fastest is the reference, as
    in the main rounds), then one plain pass of the engine over ``x`` against ``init``; each pair gives pass GFLOP/s
    over that rate, a fraction of a second apart. On a shared machine whose speed drifts within minutes, the median
    of the pairs is steadier than the ratio of two bests taken at different moments. It times the pass alone
    (``accumulate``), while the table's share is per Lloyd iteration of a whole run (engine set-up, row norms and
    centroid updates included), so the two differ a little even on a quiet machine."""
    import torch

    from workflow.kmeans import DataSource
    from workflow.kmeans.engine import local_engine

    n, dim = x.shape
    k = init.shape[0]
    flops = 2.0 * n * k * dim
    torch.set_num_threads(threads)  # local_engine picks the thread pool from torch's thread count
    engine = local_engine(DataSource(x, check=False), prune=False)
    centroids = torch.from_numpy(init.copy())
    engine.accumulate(centroids)  # warm-up: row norms, numba, buffers
    shares = []
    for _ in range(rounds):
        rate = max(matmul_rate(dim, k, threads, seconds=0.15)["best"],
                   unfused_ceiling(dim, k, threads, gemm_rows, compiled, seconds=0.15, with_scans=False)["gemm"])
        torch.set_num_threads(threads)
        start = time.perf_counter()
        engine.accumulate(centroids)
        shares.append(100.0 * flops / (time.perf_counter() - start) / 1e9 / rate)
    return {"median": float(np.median(shares)), "q25": float(np.percentile(shares, 25)),
            "q75": float(np.percentile(shares, 75)), "rounds": shares}


def run_faiss(x: np.ndarray, init: np.ndarray, iters: int) -> dict[str, Any]:
    import faiss

    start = time.perf_counter()
    km = faiss.Kmeans(x.shape[1], init.shape[0], niter=iters, seed=0, max_points_per_centroid=10**9)
    km.train(x, init_centroids=init.copy())
    return {"seconds": time.perf_counter() - start, "centroids": km.centroids, "iters": iters}


def run_sklearn(x: np.ndarray, init: np.ndarray, iters: int, threads: int) -> dict[str, Any]:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        start = time.perf_counter()
        km = KMeans(init.shape[0], init=init, n_init=1, max_iter=iters, tol=0, algorithm="lloyd").fit(x)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "centroids": km.cluster_centers_, "iters": int(km.n_iter_)}


def inertia(x: np.ndarray, c: np.ndarray) -> float:
    import faiss

    index = faiss.IndexFlatL2(c.shape[1])
    index.add(np.ascontiguousarray(c, dtype=np.float32))
    d, _ = index.search(x, 1)
    return float(d.astype(np.float64).sum())


def bench_data(kind: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch

    from workflow.kmeans import tuning

    x = make_data(kind, args.n, args.dim, args.k)
    init = x[np.sort(np.random.default_rng(1).choice(args.n, args.k, replace=False))].copy()
    flops = 2.0 * args.n * args.k * args.dim
    impls = ["strata (pruned)", "strata (unpruned)", "faiss.Kmeans"] + ([] if args.no_sklearn else ["sklearn KMeans"])
    best: dict[str, dict[str, Any]] = {}
    mm = {"intra_op": 0.0, "pool": 0.0, "best": 0.0}
    chunk = tuning.default_chunk_size(args.n, args.k)
    compiled = tuning.compiled_scan(args.n, args.k)  # the plain pass scans with the compiled loop
    gemm_rows = min(tuning.scan_gemm_rows(chunk, args.k) if compiled else chunk,
                    tuning.sum_block_rows(args.n, chunk, args.k * args.dim))
    ceiling = {"gemm": 0.0, "gemm_and_scans": 0.0}
    for _ in range(args.repeats):
        rate = matmul_rate(args.dim, args.k, args.threads)
        mm = {key: max(mm[key], v) for key, v in rate.items()}
        rate = unfused_ceiling(args.dim, args.k, args.threads, gemm_rows, compiled)
        ceiling = {key: max(ceiling[key], v) for key, v in rate.items()}
        for impl in impls:
            torch.set_num_threads(args.threads)
            if impl.startswith("strata"):
                res = run_strata(x, init, args.iters, prune=impl == "strata (pruned)")
            elif impl.startswith("faiss"):
                res = run_faiss(x, init, args.iters)
            else:
                res = run_sklearn(x, init, args.sklearn_iters or args.iters, args.threads)
            if impl not in best or res["seconds"] < best[impl]["seconds"]:
                best[impl] = res
    # the reference is the fastest fp32 GEMM of the run: a matmul burst timed in a slow moment must not inflate ratios
    mm["engine_gemms"] = ceiling["gemm"]
    mm["best"] = max(mm["best"], ceiling["gemm"])
    identical = bool(np.array_equal(best["strata (pruned)"]["centroids"], best["strata (unpruned)"]["centroids"]))
    faiss_iter = best["faiss.Kmeans"]["seconds"] / best["faiss.Kmeans"]["iters"]
    ref_inertia = inertia(x, best["faiss.Kmeans"]["centroids"])
    rows = []
    for impl in impls:
        res = best[impl]
        per_iter = res["seconds"] / max(1, res["iters"])
        gflops = flops / per_iter / 1e9
        rows.append({"data": kind, "impl": impl, "s_per_iter": per_iter, "iters": res["iters"],
                     "speedup_vs_faiss": faiss_iter / per_iter, "gflops": gflops,
                     "pct_of_matmul": 100.0 * gflops / mm["best"],
                     "inertia_vs_faiss": inertia(x, res["centroids"]) / ref_inertia})
    pruned = best["strata (pruned)"]
    detail = {"matmul_gflops": mm, "chunk_rows": chunk, "gemm_rows": gemm_rows, "compiled_scan": compiled,
              "paired_pct_of_matmul": (paired_share(x, init, args.threads, args.paired, gemm_rows, compiled)
                                       if args.paired else None),
              "unfused_ceiling_gflops": ceiling,
              "pruned_identical_to_unpruned": identical,
              "pruned_per_pass_s": pruned["per_pass"], "pruned_skipped_fraction": pruned["skipped"],
              "unpruned_per_pass_s": best["strata (unpruned)"]["per_pass"]}
    if not args.no_seeding:
        rows.extend(bench_seeding(x, args, best["faiss.Kmeans"]["seconds"], ref_inertia, kind))
    return rows, detail


def bench_seeding(x: np.ndarray, args: argparse.Namespace, faiss_run: float, ref_inertia: float,
                  kind: str) -> list[dict[str, Any]]:
    """Greedy k-means++ seeding alone: Strata against scikit-learn's kmeans_plusplus (same algorithm)."""
    import torch
    from sklearn.cluster import kmeans_plusplus
    from threadpoolctl import threadpool_limits

    from workflow.kmeans import kmeans_plusplus as strata_kpp

    out: dict[str, tuple[float, np.ndarray]] = {}
    for _ in range(args.repeats):
        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        c = strata_kpp(torch.from_numpy(x), args.k, torch.Generator().manual_seed(0)).numpy()
        t = time.perf_counter() - start
        if "strata" not in out or t < out["strata"][0]:
            out["strata"] = (t, c)
        if args.no_sklearn or x.size * args.k > SKLEARN_SEEDING_MAX:
            continue
        with threadpool_limits(args.threads):
            start = time.perf_counter()
            c, _ = kmeans_plusplus(x, args.k, random_state=0)
            t = time.perf_counter() - start
        if "sklearn" not in out or t < out["sklearn"][0]:
            out["sklearn"] = (t, c)
    names = {"strata": "strata k-means++ seeding", "sklearn": "sklearn kmeans_plusplus"}
    return [{"data": kind, "impl": names[key], "s_per_iter": t, "iters": 0, "speedup_vs_faiss": faiss_run / t,
             "gflops": None, "pct_of_matmul": None, "inertia_vs_faiss": inertia(x, c) / ref_inertia}
            for key, (t, c) in out.items()]


def bench_kpp_lowdim(args: argparse.Namespace) -> list[dict[str, Any]]:
    """k-means++ seeding per dimension: the compiled loop, the torch path and scikit-learn (see module doc)."""
    import math

    import torch
    from sklearn.cluster import kmeans_plusplus
    from threadpoolctl import threadpool_limits

    from workflow.kmeans import kmeans_plusplus as strata_kpp
    from workflow.kmeans import seeding_lowdim, tuning

    trials = 2 + int(math.log(args.k))

    def compiled(x: np.ndarray) -> np.ndarray:
        return x[seeding_lowdim.kmeans_plusplus_lowdim(x, args.k, torch.Generator().manual_seed(0), trials)]

    def torch_path(x: np.ndarray) -> np.ndarray:
        saved, tuning.LOWDIM_MAX_DIM = tuning.LOWDIM_MAX_DIM, 0  # kmeans_plusplus without the compiled loop
        try:
            return strata_kpp(torch.from_numpy(x), args.k, torch.Generator().manual_seed(0)).numpy()
        finally:
            tuning.LOWDIM_MAX_DIM = saved

    def sklearn(x: np.ndarray) -> np.ndarray:
        with threadpool_limits(args.threads):
            return kmeans_plusplus(x, args.k, random_state=0)[0]

    compiled(np.zeros((2, 1), np.float32).repeat(args.k, 0))  # load (or compile) the loop before the clock
    runs = {"compiled": compiled, "torch": torch_path, "sklearn": sklearn}
    rows = []
    for dim in args.kpp_dims:
        for kind in args.data.split(","):
            x = make_data(kind.strip(), args.n, dim, args.k)
            times: dict[str, float] = {}
            centroids: dict[str, np.ndarray] = {}
            for _ in range(args.repeats):
                torch.set_num_threads(args.threads)
                for name, fn in runs.items():
                    start = time.perf_counter()
                    c = fn(x)
                    t = time.perf_counter() - start
                    if t < times.get(name, math.inf):
                        times[name], centroids[name] = t, c
            phi = {name: inertia(x, c) for name, c in centroids.items()}
            rows.append({"dim": dim, "data": kind, "compiled_s": times["compiled"], "torch_s": times["torch"],
                         "sklearn_s": times["sklearn"], "torch_over_compiled": times["torch"] / times["compiled"],
                         "sklearn_over_compiled": times["sklearn"] / times["compiled"],
                         "phi_compiled_vs_sklearn": phi["compiled"] / phi["sklearn"],
                         "phi_torch_vs_sklearn": phi["torch"] / phi["sklearn"],
                         "same_centroids": bool(np.array_equal(centroids["compiled"], centroids["torch"]))})
    return rows


# -------------------------------------------------------------------------------------------------
# peak memory on a memmapped pool


def peak_rss() -> int:
    """Peak resident set size of this process in bytes: VmHWM of /proc/self/status (per address space, so not
    inherited across fork + exec, unlike ``ru_maxrss``), else ``resource.getrusage``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(path: str, k: int, iters: int, prune: bool, threads: int) -> None:
    """Run in a fresh interpreter: k-means on the memmap, print peak RSS figures as JSON."""
    import torch

    from workflow.kmeans import kmeans

    torch.set_num_threads(threads)
    mm = np.load(path, mmap_mode="r")
    base = peak_rss()
    start = time.perf_counter()
    res = kmeans(mm, k, n_iters=iters, seed=0, init_method="random", prune="always" if prune else "never")
    seconds = time.perf_counter() - start
    print(json.dumps({"baseline_rss": base, "peak_rss": peak_rss(), "seconds": seconds, "iters": res.n_iters_run}))


def bench_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    n, dim = args.memory_n, args.memory_dim
    directory = Path(args.memory_dir or tempfile.gettempdir())
    path = directory / f"strata_kmeans_memmap_{n}x{dim}.npy"
    size = n * dim * 4
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    if not path.exists():
        if free < size * 1.2:
            raise SystemExit(f"need {size / 1e9:.2f} GB free in {directory}, have {free / 1e9:.2f} GB")
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
        step = max(1, 2**24 // dim)
        rng = np.random.default_rng(0)
        centres = rng.normal(0, 4, size=(args.memory_k // 4 + 1, dim)).astype(np.float32)
        for s in range(0, n, step):
            e = min(n, s + step)
            arr[s:e] = centres[rng.integers(0, len(centres), e - s)] + rng.standard_normal((e - s, dim),
                                                                                          dtype=np.float32)
        arr.flush()
        del arr
    rows = []
    for prune in (True, False):
        # drop the file's pages from the page cache where possible, so each run starts cold
        with open(path, "rb") as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        cmd = [sys.executable, __file__, "--memory-child", str(path), "--k", str(args.memory_k),
               "--iters", str(args.memory_iters), "--threads", str(args.threads)] + ([] if prune else ["--no-prune"])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rec = json.loads(out)
        work = rec["peak_rss"] - rec["baseline_rss"] - size
        rows.append({"impl": f"strata k-means on memmap ({'pruned' if prune else 'unpruned'})", "n": n, "dim": dim,
                     "k": args.memory_k, "iters": rec["iters"], "seconds": rec["seconds"],
                     "input_gb": size / 1e9, "baseline_rss_gb": rec["baseline_rss"] / 1e9,
                     "peak_rss_gb": rec["peak_rss"] / 1e9, "working_set_gb": work / 1e9,
                     "working_set_vs_input": work / size})
    if not args.keep_memmap:
        path.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--threads", type=int, default=2, help="threads of every implementation")
    parser.add_argument("--paired", type=int, default=10,
                        help="pairs of (GEMM bursts, plain pass) for the paired share of the matmul rate (0: none)")
    parser.add_argument("--data", default="blobs,uniform", help="comma-separated: blobs, uniform")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn (slow at full size)")
    parser.add_argument("--sklearn-iters", type=int, default=None,
                        help="iterations of scikit-learn's run (default --iters; its time is per iteration anyway)")
    parser.add_argument("--no-seeding", action="store_true", help="skip the k-means++ seeding comparison")
    parser.add_argument("--memory", action="store_true", help="only the peak-memory check on a memmapped pool")
    parser.add_argument("--kpp", action="store_true", help="only k-means++ seeding of low-dimensional data")
    parser.add_argument("--kpp-dims", type=int, nargs="+", default=[1, 2, 3, 4, 8], help="dimensions for --kpp")
    parser.add_argument("--memory-n", type=int, default=1_000_000)
    parser.add_argument("--memory-dim", type=int, default=64)
    parser.add_argument("--memory-k", type=int, default=256)
    parser.add_argument("--memory-iters", type=int, default=2)
    parser.add_argument("--memory-dir", default=None, help="where to write the .npy (default: the temp dir)")
    parser.add_argument("--keep-memmap", action="store_true")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-prune", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child:
        memory_child(args.memory_child, args.k, args.iters, not args.no_prune, args.threads)
        return

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if args.memory:
        rows = bench_memory(args)
        print(f"k-means peak memory on a memmapped {args.memory_n} x {args.memory_dim} float32 pool, "
              f"k={args.memory_k}, threads={args.threads}")
        print_table(rows)
        write_results("kmeans_memory", vars(args), rows)
        return

    if args.kpp:
        from workflow.kmeans import tuning

        rows = bench_kpp_lowdim(args)
        print(f"greedy k-means++: n={args.n} k={args.k} threads={args.threads} (best of {args.repeats}); Strata "
              f"uses the compiled loop up to {tuning.LOWDIM_MAX_DIM} dimensions")
        print_table(rows)
        write_results("kmeans_kpp" + ("" if (args.n, args.k) == (20000, 256) else f"_{args.n}_k{args.k}"),
                      vars(args), rows)
        return

    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for kind in args.data.split(","):
        r, detail = bench_data(kind.strip(), args)
        rows.extend(r)
        details[kind] = detail
    print(f"k-means: n={args.n} dim={args.dim} k={args.k} iters={args.iters} threads={args.threads} "
          f"(time per iteration, best of {args.repeats} interleaved rounds)")
    print_table(rows)
    for kind, detail in details.items():
        mm = detail["matmul_gflops"]
        skipped = detail["pruned_skipped_fraction"]
        print(f"{kind}: fp32 matmul {mm['best']:.1f} GFLOP/s (the best of intra-op {mm['intra_op']:.1f}, pool "
              f"{mm['pool']:.1f} and the engine's GEMMs {mm['engine_gemms']:.1f}); "
              f"pruned == unpruned bitwise: {detail['pruned_identical_to_unpruned']}; rows skipped per pass: "
              f"first {skipped[0]:.2f}, mean {np.mean(skipped):.2f}, last {skipped[-1]:.2f}")
        paired = detail["paired_pct_of_matmul"]
        if paired:
            print(f"{kind}: plain pass, paired with GEMM bursts just before it: {paired['median']:.1f}% of the "
                  f"matmul rate (median of {len(paired['rounds'])} pairs; quartiles {paired['q25']:.1f}-"
                  f"{paired['q75']:.1f}%)")
        ceiling = detail["unfused_ceiling_gflops"]
        scan = "the compiled scan" if detail["compiled_scan"] else "NumPy argmin + torch min scans"
        print(f"{kind}: GEMMs of {detail['gemm_rows']} rows on the pool: alone {ceiling['gemm']:.1f} GFLOP/s "
              f"({100 * ceiling['gemm'] / mm['best']:.0f}% of matmul), + {scan} "
              f"{ceiling['gemm_and_scans']:.1f} ({100 * ceiling['gemm_and_scans'] / mm['best']:.0f}%): the ceiling "
              "of a pass that scans the distances after the GEMM")
    default = (args.n, args.dim, args.k, args.data) == (20000, 64, 256, "blobs,uniform")
    name = "kmeans" if default else f"kmeans_{args.n}x{args.dim}_k{args.k}_{args.data.replace(',', '+')}"
    write_results(name, vars(args), rows, extra=details)
    if not all(d["pruned_identical_to_unpruned"] for d in details.values()):
        raise SystemExit("pruned and unpruned Strata runs differ")


if __name__ == "__main__":
    main()
