"""Tuning run of the flagship study's SSL operating point, blind to the comparison it serves.

    python benchmarks/study_tuning.py                         # the grid below on the CPU (slow: hours on 2 cores)
    python benchmarks/study_tuning.py --device cuda           # the same grid on a GPU (minutes)
    python benchmarks/study_tuning.py --steps 2000 --lr 0.005 --temperature 0.2 --batch-size 128   # one setting

The default study (``configs/default.yaml``) trains SimCLR on the whole pool (curation ``none``, whose embeddings
``hkmeans`` curates on) and on curated subsets of ``target_size`` rows. This run chooses the SimCLR settings
that make those encoders good, the way ``benchmarks/ssl_mnist1d.py`` was tuned, under two rules that keep the
study honest:

- it trains only on the whole pool and on uniform random subsets (the baseline), never on an ``hkmeans``
  selection, so no setting is chosen for how curation compares;
- it scores on a validation split of ``probe_train`` (weighted kNN, k = 20, T = 0.07: the first 3000 signals as
  the gallery, the last 1000 as queries), never on ``probe_test``, which the study reports.

Every setting of the grid runs with the training seed 0 and one random subset (seed 0). The result, with each
setting's cost in steps, goes to ``benchmarks/results/study_tuning.json``; the README says which setting the
study uses and why.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import bare_ssl_loop, make_method, print_table, write_results


def validation_knn(method: Any, x_gallery: np.ndarray, y_gallery: np.ndarray, x_query: np.ndarray,
                   y_query: np.ndarray, device: Any) -> float:
    """Weighted kNN accuracy of the encoder's embeddings on the probe_train validation split."""
    import torch

    from workflow.evaluate.probes import weighted_knn_accuracy

    method.module.eval()
    represent = method.representation.eval()
    with torch.no_grad():
        eg = represent(torch.from_numpy(x_gallery).to(device)).float().cpu().numpy()
        eq = represent(torch.from_numpy(x_query).to(device)).float().cpu().numpy()
    return float(weighted_knn_accuracy(eg, y_gallery, eq, y_query))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.002, 0.005])
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from workflow.config import load_study, validate
    from workflow.data import build_dataset
    from workflow.pretrain.augment import build_augment
    from workflow.pretrain.methods import resolved

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    study = load_study(args.configfile)
    (name, data_cfg), = study["datasets"].items()
    splits = build_dataset(validate(dict(data_cfg), "dataset"), name)
    target = next(c["target_size"] for c in study["curations"].values() if c["method"] == "random")
    pool = np.array(splits.pool.vectors)
    subset = pool[np.sort(np.random.default_rng(0).choice(len(pool), size=target, replace=False))]
    xtr, ytr = np.array(splits.probe_train.vectors), splits.probe_train.labels
    gallery, query = (xtr[:3000], ytr[:3000]), (xtr[3000:], ytr[3000:])
    (ssl_name, ssl_cfg), = study["ssl"].items()
    augment = build_augment("signal")

    rows = []
    grid = itertools.product(args.steps, args.lr, args.temperature, args.batch_size)
    for steps, lr, temperature, batch in grid:
        row: dict[str, Any] = {"steps": steps, "lr": lr, "temperature": temperature, "batch_size": batch}
        for label, x in (("pool", pool), ("random_subset", subset)):
            cfg = {**ssl_cfg, "steps": steps, "lr": lr, "temperature": temperature, "batch_size": batch}
            params = resolved(validate(cfg, "ssl"), len(x))
            spec = {"input_kind": "signal", "input_dim": x.shape[1], "embedding_dim": params["embedding_dim"]}
            method, optimizer = make_method(spec, params, seed=0, device=device)
            start = time.perf_counter()
            bare_ssl_loop(method, optimizer, augment, torch.from_numpy(x).to(device), params, seed=0)
            row[f"{label}_train_s"] = round(time.perf_counter() - start, 1)
            row[f"{label}_val_knn"] = round(validation_knn(method, *gallery, *query, device), 4)
        rows.append(row)
        print_table(rows[-1:])
    print_table(rows)
    write_results("study_tuning", {**vars(args), "dataset": data_cfg, "ssl": ssl_name, "target_size": target}, rows)


if __name__ == "__main__":
    main()
