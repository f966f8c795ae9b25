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
import sys
import time
from pathlib import Path
from typing import Any

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
    add_ssl_arguments(parser, steps=300, params='{"resnet_widths": [16, 32, 64], "embedding_dim": 64}')
    parser.add_argument("--image-size", type=int, default=16)
    args = parser.parse_args()

    import torch

    from workflow.config import validate
    from workflow.data import build_dataset
    from workflow.pretrain.augment import build_augment
    from workflow.pretrain.train import encoder_spec

    torch.set_num_threads(args.threads)
    # A flat "long tail" (rho = 1) keeps every digit that is not a probe in the pool.
    splits = build_dataset(validate({"kind": "digits-images", "image_size": args.image_size, "imbalance_ratio": 1,
                                     "duplicate_fraction": 0.0, "seed": args.seed}, "dataset"), "digits-images")
    xtr, ytr = np.array(splits.probe_train.vectors), splits.probe_train.labels
    xte, yte = np.array(splits.probe_test.vectors), splits.probe_test.labels
    x_ssl = torch.from_numpy(np.concatenate([splits.pool.vectors, xtr]))
    params = ssl_params(args, len(x_ssl))
    spec, options = encoder_spec({"input_kind": "image", **splits.table_meta}, xtr.shape[1], params, "digits-images")
    method, optimizer = make_method(spec, params, args.seed)
    start = time.perf_counter()

    def progress(step: int, out: Any) -> None:
        if step % 50 == 0:
            print(f"step {step}/{params['steps']} loss {out.scalars()['loss']:.4f} {time.perf_counter() - start:.0f} s",
                  flush=True)

    bare_ssl_loop(method, optimizer, build_augment("image", spec["image_shape"], options), x_ssl, params, args.seed,
                  after_step=progress)
    rows = probe_rows(method, xtr, ytr, xte, yte, "raw pixels", f"{args.method} ResNet", time.perf_counter() - start)
    print(f"{args.method}: {params['steps']} steps, batch {params['batch_size']}, lr {params['lr']}, "
          f"{len(x_ssl)} images {spec['image_shape']}, augment {options}, {args.threads} threads")
    print_table(rows)
    write_results(f"ssl_digits_images_{args.method}", {**vars(args), "resolved": params, "augment": options}, rows)


if __name__ == "__main__":
    main()
