"""SSL quality on MNIST-1D: pretrain on the package's standard 4000 training signals, then score a linear probe
and the weighted kNN (k = 20, T = 0.07) on the standard 1000 test signals, against the raw signals.

    python benchmarks/ssl_mnist1d.py                          # SimCLR, 8000 steps (about 2-3 min on 2 CPU cores)
    python benchmarks/ssl_mnist1d.py --method byol --steps 8000

Uses the pipeline's own parts (methods, augmentations, optimiser, schedule, metrics) in one process; the
Snakemake stage runs the same loop on Ray Train.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    add_ssl_arguments,
    bare_ssl_loop,
    make_method,
    print_table,
    probe_rows,
    ssl_params,
    write_results,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ssl_arguments(parser, steps=8000)
    args = parser.parse_args()

    import torch

    from workflow.config import validate
    from workflow.data import build_dataset
    from workflow.pretrain.augment import build_augment
    from workflow.pretrain.pairs import knn_pairs

    torch.set_num_threads(args.threads)
    splits = build_dataset(validate({"kind": "mnist1d-lt"}, "dataset"), "mnist1d")
    xtr, ytr = np.array(splits.probe_train.vectors), splits.probe_train.labels
    xte, yte = np.array(splits.probe_test.vectors), splits.probe_test.labels
    params = ssl_params(args, len(xtr))
    spec = {"input_kind": "signal", "input_dim": xtr.shape[1], "embedding_dim": params["embedding_dim"]}
    method, optimizer = make_method(spec, params, args.seed)
    pairs = torch.from_numpy(knn_pairs(xtr, k=params["tldr_k"], seed=args.seed)) if args.method == "tldr" else None
    start = time.perf_counter()
    bare_ssl_loop(method, optimizer, build_augment("signal"), torch.from_numpy(xtr), params, args.seed, pairs=pairs)
    rows = probe_rows(method, xtr, ytr, xte, yte, "raw signals", f"{args.method} encoder", time.perf_counter() - start)
    print(f"{args.method}: {params['steps']} steps, batch {params['batch_size']}, lr {params['lr']}, "
          f"{args.threads} threads")
    print_table(rows)
    write_results(f"ssl_mnist1d_{args.method}", {**vars(args), "resolved": params}, rows)


if __name__ == "__main__":
    main()
