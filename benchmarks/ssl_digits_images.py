"""SSL quality on digits-images: pretrain the ResNet image backbone on scikit-learn's digits as 16x16 images (all
but the 300 probe_test images), then score a linear probe and the weighted kNN (k = 20, T = 0.07) on probe_test
(30 per class) with probe_train (50 per class) as training set, against the raw pixels.

    python benchmarks/ssl_digits_images.py                     # SimCLR, 300 steps, ResNet [16, 32, 64]
    python benchmarks/ssl_digits_images.py --steps 1000 --params '{"resnet_widths": [32, 64, 128]}'
    python benchmarks/ssl_digits_images.py --sweep             # round 1: the views at 400 steps (about 3 min)
    python benchmarks/ssl_digits_images.py --sweep --round 2   # round 2: the 10 min budget (about 25 min)
    python benchmarks/ssl_digits_images.py --round 2 --seeds 2,3,4   # round 2's choice again, other seeds

A sweep selects without looking at probe_test: every candidate of the round in :data:`SWEEP` (fixed before the
round was run) trains with seed 0 and is scored by kNN on a validation split of probe_train (350 fit / 150 held
out); the best then trains again with seed 1 and is scored once on probe_test, against the raw pixels
(``benchmarks/results/ssl_digits_images_sweep_round{N}.json``). ``--seeds`` trains that choice again with other
training seeds (same data and probes) and scores each on probe_test: how far the one test figure moves
(``…_round{N}_seeds.json``).

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
    RESULTS,
    add_ssl_arguments,
    bare_ssl_loop,
    embed,
    make_method,
    print_table,
    probe_rows,
    ssl_params,
    write_results,
)

#: Candidates per round: ssl keys over the benchmark's defaults, each round fixed before it ran. Digits at 16x16
#: are a few strokes, so the crop keeps at least half the area; a small rotation and shift (the classic digit
#: augmentations, which a crop does not give) vary the strokes without changing the class.
#: Round 1 held every candidate at 400 steps, from a budget estimate of about 9 min each that came from a slower
#: run; they took about 30 s. Round 2 spends the 10 min training budget on round 1's two best views: longer
#: training, a larger batch, a wider ResNet.
CROP = {"crop_scale": [0.5, 1.0]}
DIGIT_VIEWS = {**CROP, "rotation_degrees": 15.0, "translate": 0.1, "blur_probability": 0.5, "blur_sigma": [0.1, 1.0]}
SWEEP: dict[int, list[dict[str, Any]]] = {
    1: [
        {"steps": 400},
        {"steps": 400, "image_augment": CROP},
        {"steps": 400, "image_augment": {**CROP, "rotation_degrees": 15.0, "translate": 0.1}},
        {"steps": 400, "image_augment": DIGIT_VIEWS},
    ],
    2: [
        {"steps": 3000, "image_augment": CROP},
        {"steps": 3000, "image_augment": DIGIT_VIEWS},
        {"steps": 2000, "batch_size": 256, "image_augment": CROP},
        {"steps": 1000, "resnet_widths": [32, 64, 128], "image_augment": CROP},
    ],
}


def _train(args: Any, keys: dict[str, Any], x_ssl: Any, meta: dict[str, Any], dim: int, seed: int) -> tuple:
    """Train with the options' settings plus ``keys``: (method, seconds of training, resolved params, views)."""
    import json

    import torch

    from workflow.pretrain.augment import build_augment
    from workflow.pretrain.train import encoder_spec

    args = argparse.Namespace(**{**vars(args), "params": json.dumps({**json.loads(args.params), **keys})})
    params = ssl_params(args, len(x_ssl))
    spec, options = encoder_spec({"input_kind": "image", **meta}, dim, params, "digits-images")
    method, optimizer = make_method(spec, params, seed)
    start = time.perf_counter()

    def progress(step: int, out: Any) -> None:
        if step % 50 == 0:
            print(f"step {step}/{params['steps']} loss {out.scalars()['loss']:.4f} {time.perf_counter() - start:.0f} s",
                  flush=True)

    bare_ssl_loop(method, optimizer, build_augment("image", spec["image_shape"], options), torch.from_numpy(x_ssl),
                  params, seed, after_step=progress)
    return method, time.perf_counter() - start, params, options


def _repeat(args: Any, x_ssl: Any, meta: dict[str, Any], dim: int, probes: tuple) -> None:
    """Train the chosen candidate of round ``args.round`` with each of ``args.seeds`` and score it on probe_test."""
    import json

    sweep = json.loads((RESULTS / f"ssl_digits_images_sweep_round{args.round}.json").read_text())["extra"]
    keys = sweep["candidates"][sweep["chosen"]]["keys"]
    rows, raw = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        method, train_s, _, _ = _train(args, keys, x_ssl, meta, dim, seed)
        raw, learned = probe_rows(method, *probes, "raw pixels", "learned", train_s)
        rows.append({"seed": seed, "linear": learned["linear"], "knn": learned["knn"], "train_s": round(train_s, 1),
                     "knn_minus_raw": learned["knn"] - raw["knn"]})
        print(f"seed {seed}: test linear {learned['linear']:.3f} kNN {learned['knn']:.3f} (raw pixels "
              f"{raw['linear']:.3f} / {raw['knn']:.3f}), {train_s:.0f} s", flush=True)
    knn = np.array([r["knn"] for r in rows])
    summary = {"knn_mean": float(knn.mean()), "knn_sd": float(knn.std(ddof=1)) if len(knn) > 1 else 0.0,
               "seeds_above_raw_knn": int((knn > raw["knn"]).sum()), "raw": raw}
    print_table(rows)
    print(f"kNN {summary['knn_mean']:.3f} ± {summary['knn_sd']:.3f} over {len(rows)} seeds; above raw pixels "
          f"({raw['knn']:.3f}) in {summary['seeds_above_raw_knn']}")
    write_results(f"ssl_digits_images_sweep_round{args.round}_seeds", {**vars(args), "keys": keys}, rows,
                  extra=summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ssl_arguments(parser, steps=300, params='{"resnet_widths": [16, 32, 64], "embedding_dim": 64}')
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--sweep", action="store_true", help="choose among a round of SWEEP on a validation split")
    parser.add_argument("--round", type=int, default=1, choices=sorted(SWEEP), help="the round (--sweep, --seeds)")
    parser.add_argument("--seeds", help="train the round's choice with these training seeds (comma-separated)")
    args = parser.parse_args()

    import torch

    from workflow.config import validate
    from workflow.data import build_dataset

    torch.set_num_threads(args.threads)
    # A flat "long tail" (rho = 1) keeps every digit that is not a probe in the pool.
    splits = build_dataset(validate({"kind": "digits-images", "image_size": args.image_size, "imbalance_ratio": 1,
                                     "duplicate_fraction": 0.0, "seed": args.seed}, "dataset"), "digits-images")
    xtr, ytr = np.array(splits.probe_train.vectors), splits.probe_train.labels
    xte, yte = np.array(splits.probe_test.vectors), splits.probe_test.labels
    x_ssl = np.concatenate([splits.pool.vectors, xtr])
    meta, dim = splits.table_meta, xtr.shape[1]
    if args.seeds:
        _repeat(args, x_ssl, meta, dim, (xtr, ytr, xte, yte))
        return
    if not args.sweep:
        method, train_s, params, options = _train(args, {}, x_ssl, meta, dim, args.seed)
        rows = probe_rows(method, xtr, ytr, xte, yte, "raw pixels", f"{args.method} ResNet", train_s)
        print(f"{args.method}: {params['steps']} steps, batch {params['batch_size']}, lr {params['lr']}, "
              f"{len(x_ssl)} images, augment {options}, {args.threads} threads")
        print_table(rows)
        write_results(f"ssl_digits_images_{args.method}", {**vars(args), "resolved": params, "augment": options}, rows)
        return

    from workflow.evaluate.probes import weighted_knn_accuracy

    order = np.random.default_rng(0).permutation(len(xtr))
    fit, held = order[:350], order[350:]
    raw_knn = weighted_knn_accuracy(xtr[fit], ytr[fit], xtr[held], ytr[held])
    candidates = []
    for i, keys in enumerate(SWEEP[args.round]):
        method, train_s, _, _ = _train(args, keys, x_ssl, meta, dim, 0)
        emb = embed(method, xtr)
        candidates.append({"candidate": i, "keys": keys, "train_s": round(train_s, 1),
                           "knn": weighted_knn_accuracy(emb[fit], ytr[fit], emb[held], ytr[held]),
                           "raw_knn": raw_knn})
        print(f"#{i} {keys}: validation kNN {candidates[-1]['knn']:.3f} (raw pixels {raw_knn:.3f}), "
              f"{train_s:.0f} s", flush=True)
    best = max(candidates, key=lambda c: c["knn"])
    method, train_s, params, options = _train(args, best["keys"], x_ssl, meta, dim, 1)
    rows = probe_rows(method, xtr, ytr, xte, yte, "raw pixels", f"{args.method} ResNet, candidate "
                      f"{best['candidate']}", train_s)
    print_table(rows)
    write_results(f"ssl_digits_images_sweep_round{args.round}", {**vars(args), "resolved": params,
                                                                  "augment": options}, rows,
                  extra={"selection": "kNN on probe_train 350 fit / 150 held out, seed 0; test: seed 1",
                         "candidates": candidates, "chosen": best["candidate"]})


if __name__ == "__main__":
    main()
