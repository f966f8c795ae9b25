"""SSL quality on MNIST-1D: pretrain on the package's standard 4000 training signals, then score a linear probe
and the weighted kNN (k = 20, T = 0.07) on the standard 1000 test signals, against the raw signals.

    python benchmarks/ssl_mnist1d.py                          # SimCLR, 8000 steps (about 2-3 min on 2 CPU cores)
    python benchmarks/ssl_mnist1d.py --method byol --steps 8000

Uses the pipeline's own parts (methods, augmentations, optimiser, schedule, metrics) in one process; the
Snakemake stage runs the same loop on Ray Train.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import bare_ssl_loop, print_table, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--temperature", type=float, default=0.2, help="NT-Xent / SwAV temperature")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default="{}", help="more ssl config keys as JSON")
    args = parser.parse_args()

    import torch

    from workflow.config import validate
    from workflow.data import build_dataset
    from workflow.evaluate.metrics import linear_probe_accuracy, weighted_knn_accuracy
    from workflow.pretrain.augment import build_augment
    from workflow.pretrain.losses import knn_pairs
    from workflow.pretrain.methods import Method, resolved
    from workflow.pretrain.models import build_encoder
    from workflow.pretrain.optim import build_optimizer

    torch.set_num_threads(args.threads)
    splits = build_dataset(validate({"kind": "mnist1d-lt"}, "dataset"), "mnist1d")
    xtr, ytr = np.array(splits.probe_train.vectors), splits.probe_train.labels
    xte, yte = np.array(splits.probe_test.vectors), splits.probe_test.labels
    cfg = {"method": args.method, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           **json.loads(args.params)}
    if args.method in ("simclr", "swav"):
        cfg.setdefault("temperature", args.temperature)
    params = resolved(validate(cfg, "ssl"), len(xtr))
    spec = {"input_kind": "signal", "input_dim": xtr.shape[1], "embedding_dim": params["embedding_dim"]}
    torch.manual_seed(args.seed)
    method = Method(build_encoder(spec), params, spec["embedding_dim"])
    optimizer = build_optimizer(params["optimizer"], method.module.parameters(), params["lr"],
                                params["weight_decay"], params["momentum"])
    augment = build_augment("signal")
    x = torch.from_numpy(xtr)
    pairs = torch.from_numpy(knn_pairs(xtr, k=params["tldr_k"], seed=args.seed)) if args.method == "tldr" else None
    start = time.perf_counter()
    bare_ssl_loop(method, optimizer, augment, x, params, args.seed, pairs=pairs)
    train_s = time.perf_counter() - start
    method.module.eval()
    with torch.no_grad():
        etr, ete = method.module.encoder(x).numpy(), method.module.encoder(torch.from_numpy(xte)).numpy()
    rows = [
        {"features": "raw signals", "linear": linear_probe_accuracy(xtr, ytr, xte, yte),
         "knn": weighted_knn_accuracy(xtr, ytr, xte, yte), "train_s": 0.0},
        {"features": f"{args.method} encoder", "linear": linear_probe_accuracy(etr, ytr, ete, yte),
         "knn": weighted_knn_accuracy(etr, ytr, ete, yte), "train_s": train_s},
    ]
    print(f"{args.method}: {params['steps']} steps, batch {params['batch_size']}, lr {params['lr']}, "
          f"{args.threads} threads")
    print_table(rows)
    write_results(f"ssl_mnist1d_{args.method}", {**vars(args), "resolved": params}, rows)


if __name__ == "__main__":
    main()
