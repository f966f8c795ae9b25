"""Embedding throughput: Strata's Ray actor pool (streaming Parquet in and out) against a bare PyTorch loop
of the same encoder over the same rows in the same run.

    python benchmarks/embed.py                    # 200k MNIST-1D-sized signals, 1-D CNN
    python benchmarks/embed.py --rows 2000000 --kind vector --dim 128

The Ray figure is steady-state throughput (Ray started and actors loaded, as in a long job); the start-up
cost is reported on its own. The reference is a bare loop in one process with all threads that reads the
Parquet table, embeds and writes a Parquet table (what a user's script does); pure in-memory inference is
shown too. ``ratio`` is throughput relative to the reference (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import print_table, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--kind", choices=["signal", "vector"], default="signal")
    parser.add_argument("--dim", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import ray
    import torch

    from workflow.distributed import ray_session
    from workflow.embed import embed_table, start_actors
    from workflow.pretrain.models import build_encoder, load_encoder, save_encoder
    from workflow.tables import VectorTable, read_table, write_table

    rng = np.random.default_rng(0)
    spec = {"input_kind": args.kind, "input_dim": args.dim, "embedding_dim": 128}
    with tempfile.TemporaryDirectory() as tmp:
        enc_path, inp, out = f"{tmp}/encoder.safetensors", f"{tmp}/in.parquet", f"{tmp}/out.parquet"
        torch.manual_seed(0)
        save_encoder(build_encoder(spec), spec, enc_path)
        x = rng.normal(size=(args.rows, args.dim)).astype(np.float32)
        write_table(VectorTable(ids=np.arange(args.rows), vectors=x, labels=None), inp)

        # References: a bare loop of the same model over the same rows, all threads, in one process;
        # once as a user's script would run it (read the Parquet table, embed, write a Parquet table) and
        # once as pure inference on an in-memory array (no I/O at all).
        torch.set_num_threads(args.threads)
        model, _ = load_encoder(enc_path)
        start = time.perf_counter()
        table = read_table(inp)
        with torch.inference_mode():
            ref = np.concatenate([model(torch.from_numpy(np.array(table.vectors[s:s + args.batch_size]))).numpy()
                                  for s in range(0, args.rows, args.batch_size)])
        write_table(VectorTable(ids=table.ids, vectors=ref, labels=None), f"{tmp}/bare.parquet")
        bare = time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, args.rows, args.batch_size):
                model(torch.from_numpy(x[s:s + args.batch_size]))
        inference_only = time.perf_counter() - start

        start = time.perf_counter()
        with ray_session(num_cpus=args.threads):
            actors = start_actors(enc_path, args.threads, 0)
            ray.get([a.embed.remote(x[:2]) for a in actors])  # actors loaded
            startup = time.perf_counter() - start
            start = time.perf_counter()
            embed_table(actors, inp, out, spec, args.batch_size, {})
            steady = time.perf_counter() - start
        got = read_table(out)
        assert np.array_equal(got.ids, np.arange(args.rows)), "order or ids not kept"
        max_err = float(np.abs(got.vectors - ref).max())

    rows = [
        {"impl": "bare loop: read Parquet, embed, write Parquet (1 process)", "seconds": bare,
         "rows_per_s": args.rows / bare, "ratio": 1.0},
        {"impl": "bare loop: inference only, in memory", "seconds": inference_only,
         "rows_per_s": args.rows / inference_only, "ratio": bare / inference_only},
        {"impl": f"strata embed (Ray, {len(actors)} actor(s), Parquet in/out)", "seconds": steady,
         "rows_per_s": args.rows / steady, "ratio": bare / steady},
    ]
    print(f"embed: {args.rows} rows, {args.kind} dim {args.dim}, batch {args.batch_size}; Ray start-up "
          f"{startup:.1f}s (not included); max |diff| vs bare loop {max_err:.2e}")
    print_table(rows)
    write_results("embed", {**vars(args), "ray_startup_s": startup, "max_abs_diff": max_err}, rows)


if __name__ == "__main__":
    main()
