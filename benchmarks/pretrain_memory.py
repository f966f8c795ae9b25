"""Peak memory of pretraining's input as the pool grows: streamed rows against loading the pool whole.

    python benchmarks/pretrain_memory.py                              # pools of 200k and 1M rows
    python benchmarks/pretrain_memory.py --sizes 1000000 5000000 20000000

For each pool size a pool of ``--dim``-wide float32 rows is written (row groups of 64k rows) with a fixed-size
selection of ``--selected`` ids (a curated subset). Each way of feeding the trainer runs in a fresh process,
whose peak resident memory (``ru_maxrss``) is reported:

- ``streamed``: what ``strata pretrain`` does now (``workflow/pretrain/rows.py``): an id pass over the pool, the
  selected rows streamed into the job's float32 file, then ``--steps`` training batches of ``--batch`` rows
  read from its memory map in a random order;
- ``loaded`` (the reference, measured in the same run): what it did before, the whole pool read into memory
  (``read_table``) and the selected rows taken from it, then the same batches by indexing.

``ratio`` = loaded / streamed peak. The streamed peak should stay flat as the pool grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import print_table, write_results


def make_pool(path: Path, rows: int, dim: int, selected: int, seed: int = 0) -> np.ndarray:
    """Write a pool of ``rows`` random rows in 64k-row groups; return ``selected`` of its ids."""
    from workflow.tables import TableWriter, VectorTable

    rng = np.random.default_rng(seed)
    with TableWriter(path, dim) as writer:
        for start in range(0, rows, 65536):
            n = min(65536, rows - start)
            writer.write(VectorTable(ids=np.arange(start, start + n, dtype=np.int64),
                                     vectors=rng.standard_normal((n, dim), dtype=np.float32)))
    return np.sort(rng.choice(rows, size=min(selected, rows), replace=False)).astype(np.int64)


def feed(mode: str, pool: str, selection: str, work: str, steps: int, batch: int) -> dict[str, float]:
    """One way of feeding the trainer (run in a fresh process); returns its seconds and peak memory."""
    start = time.perf_counter()
    selected = np.load(selection)
    order = np.random.default_rng(0)
    checksum = 0.0
    if mode == "streamed":
        from workflow.pretrain.rows import TrainingRows, scan_pool, write_training_rows

        scan_pool(pool, selected, selection)
        write_training_rows(pool, selected, Path(work) / "train.npy")
        rows = TrainingRows(Path(work) / "train.npy")
        prepared = time.perf_counter()
        for _ in range(steps):
            checksum += float(rows.batch(order.integers(0, len(rows), batch)).sum())
    else:
        from workflow.tables import read_table

        table = read_table(pool)
        vectors = table.vectors[np.flatnonzero(np.isin(table.ids, selected))]
        del table
        prepared = time.perf_counter()
        for _ in range(steps):
            checksum += float(vectors[order.integers(0, len(vectors), batch)].sum())
    end = time.perf_counter()
    return {"prepare_s": prepared - start, "batches_s": end - prepared, "checksum": checksum,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--selected", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--feed", nargs=6, help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    args = parser.parse_args()
    if args.feed:
        mode, pool, selection, work, steps, batch = args.feed
        print(json.dumps(feed(mode, pool, selection, work, int(steps), int(batch))))
        return

    rows_out = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="strata-mem-") as tmp:
            pool, selection = Path(tmp) / "pool.parquet", Path(tmp) / "selection.npy"
            t0 = time.perf_counter()
            np.save(selection, make_pool(pool, size, args.dim, args.selected))
            print(f"pool of {size} rows written in {time.perf_counter() - t0:.1f} s "
                  f"({pool.stat().st_size / 2**20:.0f} MiB)", flush=True)
            result = {}
            for mode in ("streamed", "loaded"):
                out = subprocess.run([sys.executable, __file__, "--feed", mode, str(pool), str(selection), tmp,
                                      str(args.steps), str(args.batch)], check=True, capture_output=True, text=True)
                result[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            assert abs(result["streamed"]["checksum"] - result["loaded"]["checksum"]) < 1e-3 * max(
                1.0, abs(result["loaded"]["checksum"])), "the two feeds must read the same rows"
            rows_out.append({
                "pool_rows": size, "pool_mib": round(pool.stat().st_size / 2**20),
                "streamed_peak_mb": round(result["streamed"]["peak_rss_mb"]),
                "loaded_peak_mb": round(result["loaded"]["peak_rss_mb"]),
                "ratio": round(result["loaded"]["peak_rss_mb"] / result["streamed"]["peak_rss_mb"], 2),
                "streamed_prepare_s": round(result["streamed"]["prepare_s"], 2),
                "loaded_prepare_s": round(result["loaded"]["prepare_s"], 2),
                "streamed_batches_s": round(result["streamed"]["batches_s"], 3),
                "loaded_batches_s": round(result["loaded"]["batches_s"], 3),
            })
            print_table(rows_out[-1:])
    print_table(rows_out)
    write_results("pretrain_memory", vars(args) | {"feed": None}, rows_out)


if __name__ == "__main__":
    main()
