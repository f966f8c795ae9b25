"""SSL quality on digits-images: pretrain the ResNet image backbone on scikit-learn's digits as 16x16 images (all
but the 300 probe_test images), then score a linear probe and the weighted kNN (k = 20, T = 0.07) on probe_test
(30 per class) with probe_train (50 per class) as training set, against the raw pixels.

    python benchmarks/ssl_digits_images.py                     # SimCLR, 300 steps, ResNet [16, 32, 64]
    python benchmarks/ssl_digits_images.py --steps 1000 --params '{"resnet_widths": [32, 64, 128]}'

Uses the pipeline's own parts (data set, ResNet, kornia augmentations, method, optimiser, schedule, metrics) in
one process; the Snakemake stage runs the same loop on Ray Train.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import bare_ssl_loop, print_table, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--temperature", type=float, default=0.2, help="NT-Xent / SwAV temperature")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default='{"resnet_widths": [16, 32, 64], "embedding_dim": 64}',
                        help="more ssl config keys as JSON")
    args = parser.parse_args()

    import torch

    from workflow.config import validate
    from workflow.data import build_dataset
    from workflow.evaluate.metrics import linear_probe_accuracy, weighted_knn_accuracy
    from workflow.pretrain.augment import build_augment
    from workflow.pretrain.methods import Method, resolved
    from workflow.pretrain.models import build_encoder
    from workflow.pretrain.optim import build_optimizer
    from workflow.pretrain.train import _image_augment_options

    torch.set_num_threads(args.threads)
    # A flat "long tail" (rho = 1) keeps every digit that is not a probe in the pool.
    splits = build_dataset(validate({"kind": "digits-images", "image_size": args.image_size, "imbalance_ratio": 1,
                                     "duplicate_fraction": 0.0, "seed": args.seed}, "dataset"), "digits-images")
    xtr, ytr = np.array(splits.probe_train.vectors), splits.probe_train.labels
    xte, yte = np.array(splits.probe_test.vectors), splits.probe_test.labels
    x_ssl = torch.from_numpy(np.concatenate([splits.pool.vectors, xtr]))
    cfg = {"method": args.method, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           **json.loads(args.params)}
    if args.method in ("simclr", "swav"):
        cfg.setdefault("temperature", args.temperature)
    params = resolved(validate(cfg, "ssl"), len(x_ssl))
    shape = splits.table_meta["image_shape"]
    spec = {"input_kind": "image", "input_dim": xtr.shape[1], "embedding_dim": params["embedding_dim"],
            "image_shape": shape, "widths": params["resnet_widths"], "blocks": params["resnet_blocks"]}
    options = _image_augment_options(params, splits.table_meta)
    torch.manual_seed(args.seed)
    method = Method(build_encoder(spec), params, spec["embedding_dim"])
    optimizer = build_optimizer(params["optimizer"], method.module.parameters(), params["lr"],
                                params["weight_decay"], params["momentum"])
    augment = build_augment("image", shape, options)
    start = time.perf_counter()

    def progress(step: int, out: Any) -> None:
        if step % 50 == 0:
            print(f"step {step}/{params['steps']} loss {out.scalars()['loss']:.4f} {time.perf_counter() - start:.0f} s",
                  flush=True)

    bare_ssl_loop(method, optimizer, augment, x_ssl, params, args.seed, after_step=progress)
    train_s = time.perf_counter() - start
    method.module.eval()
    with torch.no_grad():
        etr = method.module.encoder(torch.from_numpy(xtr)).numpy()
        ete = method.module.encoder(torch.from_numpy(xte)).numpy()
    rows = [
        {"features": "raw pixels", "linear": linear_probe_accuracy(xtr, ytr, xte, yte),
         "knn": weighted_knn_accuracy(xtr, ytr, xte, yte), "train_s": 0.0},
        {"features": f"{args.method} ResNet", "linear": linear_probe_accuracy(etr, ytr, ete, yte),
         "knn": weighted_knn_accuracy(etr, ytr, ete, yte), "train_s": train_s},
    ]
    print(f"{args.method}: {params['steps']} steps, batch {params['batch_size']}, lr {params['lr']}, "
          f"{len(x_ssl)} images {shape}, augment {options}, {args.threads} threads")
    print_table(rows)
    write_results(f"ssl_digits_images_{args.method}", {**vars(args), "resolved": params, "augment": options}, rows)


if __name__ == "__main__":
    main()
