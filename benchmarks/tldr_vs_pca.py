"""TLDR as its paper uses it: dimensionality reduction of given features, against PCA to the same dimension.

Kalantidis et al. 2022, "TLDR: Twin Learning for Dimensionality Reduction" (TMLR; arXiv 2110.09455): a
*linear* encoder R^D -> R^d, trained with the Barlow Twins loss through an MLP projector (one hidden layer) on
pairs of each training row and one of its k nearest neighbours in the input space (k = 5, the paper's code
default). The paper's reference is PCA, with and without whitening, to the same d. Both are fitted on the
4000 MNIST-1D training signals and scored on the 1000 test signals, with the pipeline's own measures:

* ``knn``: weighted kNN accuracy (k = 20, T = 0.07), training set -> test set;
* ``linear``: linear-probe accuracy;
* ``map_at_r`` and ``recall_at_1``: cosine retrieval of every test signal in the training set (Musgrave et al.
  2020), the paper's retrieval protocol on labels.

Two input spaces: the raw signals (D = 40) and the 128-d embeddings of a SimCLR encoder trained here first
(the tuned settings of ``benchmarks/ssl_mnist1d.py``). For each d the table prints TLDR - PCA (the better of
plain and whitened, chosen on the test set, which favours PCA) per measure.

    python benchmarks/tldr_vs_pca.py                                   # d in {8, 16, 32}; about 10 min on 2 cores
    python benchmarks/tldr_vs_pca.py --dims 4 8 16 32 --projector 2048 --encoder-steps 8000   # paper's projector

Writes ``benchmarks/results/tldr_vs_pca.json``.
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

from benchmarks.common import bare_ssl_loop, embed, make_method, print_table, write_results

MEASURES = ("knn", "linear", "map_at_r", "recall_at_1")


def scores(ztr: np.ndarray, ytr: np.ndarray, zte: np.ndarray, yte: np.ndarray) -> dict[str, float]:
    """The four measures of reduced training and test features (the pipeline's implementations)."""
    from workflow.evaluate.probes import linear_probe_accuracy, weighted_knn_accuracy
    from workflow.evaluate.retrieval import retrieval_scores_query_gallery

    ret = retrieval_scores_query_gallery(zte, yte, ztr, ytr, ks=(1,))
    return {"knn": weighted_knn_accuracy(ztr, ytr, zte, yte), "linear": linear_probe_accuracy(ztr, ytr, zte, yte),
            "map_at_r": ret["map_at_r"], "recall_at_1": ret["recall_at_1"]}


def pca(xtr: np.ndarray, xte: np.ndarray, d: int, whiten: bool) -> tuple[np.ndarray, np.ndarray]:
    """PCA fitted on the training rows (scikit-learn, full SVD), applied to both sets."""
    from sklearn.decomposition import PCA

    model = PCA(n_components=d, whiten=whiten, svd_solver="full").fit(xtr)
    return model.transform(xtr).astype(np.float32), model.transform(xte).astype(np.float32)


def tldr(xtr: np.ndarray, xte: np.ndarray, d: int, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """TLDR with a linear encoder D -> d (the pipeline's method, loss and k-NN pairs), applied to both sets."""
    import torch

    from workflow.config import validate
    from workflow.pretrain.methods import Method, resolved
    from workflow.pretrain.pairs import knn_pairs

    params = resolved(validate({"method": "tldr", "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                                "tldr_k": args.k, "projector_hidden_dim": args.projector,
                                "projection_dim": args.projector}, "ssl"), len(xtr))
    torch.manual_seed(args.seed)
    method = Method(torch.nn.Linear(xtr.shape[1], d), params, d)
    pairs = torch.from_numpy(knn_pairs(xtr, k=args.k, seed=args.seed))
    bare_ssl_loop(method, method.make_optimizer(), None, torch.from_numpy(xtr), params, args.seed, pairs=pairs)
    return embed(method, xtr), embed(method, xte)


def simclr_space(xtr: np.ndarray, xte: np.ndarray, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """128-d embeddings of a SimCLR encoder trained on the training signals (ssl_mnist1d.py's tuned settings)."""
    import torch

    from workflow.config import validate
    from workflow.pretrain.augment import build_augment
    from workflow.pretrain.methods import resolved

    params = resolved(validate({"method": "simclr", "steps": args.encoder_steps, "batch_size": 512, "lr": 0.01,
                                "temperature": 0.2}, "ssl"), len(xtr))
    spec = {"input_kind": "signal", "input_dim": xtr.shape[1], "embedding_dim": params["embedding_dim"]}
    method, optimizer = make_method(spec, params, args.seed)
    bare_ssl_loop(method, optimizer, build_augment("signal"), torch.from_numpy(xtr), params, args.seed)
    return embed(method, xtr), embed(method, xte)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32], help="output dimensions d")
    parser.add_argument("--steps", type=int, default=800, help="TLDR steps (800 x 512 = the paper's 100 epochs)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--k", type=int, default=5, help="neighbours a pair is drawn from (the paper's default)")
    parser.add_argument("--projector", type=int, default=1024,
                        help="projector width, hidden and output (the paper's default is 2048)")
    parser.add_argument("--encoder-steps", type=int, default=3000, help="SimCLR steps for the embedding space")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from workflow.config import validate
    from workflow.data import build_dataset

    torch.set_num_threads(args.threads)
    splits = build_dataset(validate({"kind": "mnist1d-lt"}, "dataset"), "mnist1d")
    xtr, ytr = np.array(splits.probe_train.vectors, dtype=np.float32), splits.probe_train.labels
    xte, yte = np.array(splits.probe_test.vectors, dtype=np.float32), splits.probe_test.labels
    start = time.perf_counter()
    spaces = {"raw signals": (xtr, xte)}
    spaces["SimCLR embeddings"] = simclr_space(xtr, xte, args)
    print(f"SimCLR space: {args.encoder_steps} steps in {time.perf_counter() - start:.0f} s", flush=True)

    rows: list[dict[str, Any]] = []
    for space, (ftr, fte) in spaces.items():
        full = scores(ftr, ytr, fte, yte)
        rows.append({"space": space, "method": "none", "d": ftr.shape[1], **full, "fit_s": 0.0})
        for d in [d for d in args.dims if d < ftr.shape[1]]:
            for name, reduce in (("pca", lambda a, b, d=d: pca(a, b, d, False)),
                                 ("pca-whitened", lambda a, b, d=d: pca(a, b, d, True)),
                                 ("tldr", lambda a, b, d=d: tldr(a, b, d, args))):
                t0 = time.perf_counter()
                ztr, zte = reduce(ftr, fte)
                fit_s = time.perf_counter() - t0
                rows.append({"space": space, "method": name, "d": d, **scores(ztr, ytr, zte, yte), "fit_s": fit_s})
                print(f"{space}, d {d}, {name}: knn {rows[-1]['knn']:.3f} in {fit_s:.1f} s", flush=True)

    verdicts = []
    for space in spaces:
        for d in sorted({r["d"] for r in rows if r["space"] == space and r["method"] == "tldr"}):
            by = {r["method"]: r for r in rows if r["space"] == space and r["d"] == d}
            best_pca = {m: max(by["pca"][m], by["pca-whitened"][m]) for m in MEASURES}
            verdicts.append({"space": space, "d": d,
                             **{f"{m}_tldr_minus_pca": by["tldr"][m] - best_pca[m] for m in MEASURES}})
    print()
    print_table(rows)
    print("\nTLDR - best PCA (plain or whitened, chosen on the test set), > 0: TLDR better")
    print_table(verdicts)
    write_results("tldr_vs_pca", {**vars(args)}, rows, extra={"tldr_minus_best_pca": verdicts,
                                                             "argv": json.dumps(sys.argv[1:])})


if __name__ == "__main__":
    main()
