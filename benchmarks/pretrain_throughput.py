"""Pretraining throughput: the pipeline's Ray Train loop against a bare PyTorch loop, same model, batch and data.

    python benchmarks/pretrain_throughput.py                            # SimCLR, MNIST-1D, 400 steps, 1 worker
    python benchmarks/pretrain_throughput.py --workers 1 2              # also 2 DDP workers (gloo) of 1 thread
    python benchmarks/pretrain_throughput.py --dataset digits-images    # ResNet + kornia augmentations
    python benchmarks/pretrain_throughput.py --gpus 1                   # CUDA, nccl, bf16 autocast

The bare loop is what a researcher would write by hand: one process, the same encoder, method, optimiser,
schedule, augmentations and batch order, no Ray, no DDP, no checkpoints. The Ray Train loop is
``workflow.pretrain.train.run_pretrain``, exactly as the ``pretrain`` stage runs it (Ray Train ``TorchTrainer``,
checkpoints and collapse monitors about ten times per run, history and weights written at the end).

Figures per loop (both timed in windows of the same number of steps, the Ray loop's logging interval; the
first window is warm-up and left out):

* ``samples_per_s``: the median window, robust to the bursts of other work on a shared machine; goal for the
  Ray loop at least 90% of the bare loop (``vs_bare``);
* ``whole_loop``: all windows together, checkpoints and collapse monitors included;
* ``wall_s``: the whole call, for the Ray loop with Ray start-up, worker start, data loading and shutdown:
  the fixed cost of a pretrain job, which shrinks in relative terms as the number of steps grows.

The loops alternate ``--repeats`` times and each keeps its best run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import bare_ssl_loop, make_method, print_table, write_results

DATASETS = {
    "mnist1d": {"kind": "mnist1d-lt"},
    "digits-images": {"kind": "digits-images", "image_size": 16, "imbalance_ratio": 1, "duplicate_fraction": 0.0},
}
IMAGE_PARAMS = {"resnet_widths": [16, 32, 64], "embedding_dim": 64}


def bare_loop(pool_path: str, params: dict[str, Any], seed: int, threads: int, device_name: str,
              window: int) -> dict[str, float]:
    """The hand-written loop: samples/s after its first ``window`` steps, the median over windows of ``window``
    steps (as the Ray loop logs them), and its whole wall time."""
    import torch

    from workflow.pretrain.augment import build_augment
    from workflow.pretrain.methods import resolved
    from workflow.pretrain.pairs import knn_pairs
    from workflow.pretrain.train import encoder_spec
    from workflow.tables import read_metadata, read_table

    start = time.perf_counter()
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    table = read_table(pool_path)
    params = resolved(params, len(table))
    spec, augment_options = encoder_spec(read_metadata(pool_path), table.dim, params, pool_path)
    x_all = torch.from_numpy(np.array(table.vectors)).to(device)
    pairs = None
    if params["method"] == "tldr":
        pairs = torch.from_numpy(knn_pairs(table.vectors, k=params["tldr_k"], seed=seed)).to(device)
    method, optimizer = make_method(spec, params, seed, device)
    augment = build_augment(spec["input_kind"], spec.get("image_shape"), augment_options)
    batch = min(params["batch_size"], len(table))
    marks: list[tuple[int, float]] = []

    def mark(step: int, out: Any) -> None:
        out.scalars()  # the Ray loop reads the loss terms every step too (a device sync on GPU)
        if step % window == 0 or step == params["steps"]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks.append((step, time.perf_counter()))

    # rank 0's augmentation stream of the Ray loop (seed * 7919 + rank)
    bare_ssl_loop(method, optimizer, augment, x_all, params, seed, pairs=pairs, gen_seed=seed * 7919,
                  use_amp=device.type == "cuda", after_step=mark)
    rates = [(s1 - s0) * batch / (t1 - t0) for (s0, t0), (s1, t1) in itertools.pairwise(marks)]
    (s0, t0), (s1, t1) = marks[0], marks[-1]
    return {"samples_per_s": (s1 - s0) * batch / (t1 - t0), "median_window": float(np.median(rates)),
            "wall_s": t1 - start}


def ray_loop(pool_path: str, selection_path: str, work: Path, params: dict[str, Any], seed: int, threads: int,
             gpus: int, workers: int) -> dict[str, float]:
    """``run_pretrain`` as the stage calls it: loop samples/s from its history (first window left out) and wall."""
    from workflow.pretrain.train import run_pretrain

    start = time.perf_counter()
    history = run_pretrain(pool_path, selection_path, str(work / "encoder.safetensors"),
                           str(work / "history.parquet"), {**params, "num_workers": workers}, seed, threads, gpus,
                           work_root=str(work / ".work"))
    wall = time.perf_counter() - start
    batch = min(params["batch_size"], _rows(pool_path))
    batch -= batch % workers
    samples = seconds = 0.0
    for prev, row in itertools.pairwise(history):
        window = (row["step"] - prev["step"]) * batch
        samples += window
        seconds += window / row["samples_per_s"]
    return {"samples_per_s": samples / seconds, "median_window": float(np.median([r["samples_per_s"]
                                                                                  for r in history[1:]])),
            "wall_s": wall, "window": history[0]["step"]}


def _best(old: dict[str, float] | None, new: dict[str, float]) -> dict[str, float]:
    return new if old is None or new["median_window"] > old["median_window"] else old


def _rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist1d")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the job (split over Ray workers)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="Ray Train worker counts to measure")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs of the job (the bare loop uses cuda:0)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default="{}", help="more ssl config keys as JSON")
    args = parser.parse_args()

    from workflow.config import validate
    from workflow.curate.stage import write_selection
    from workflow.data import write_dataset
    from workflow.tables import read_table

    extra_params = {**(IMAGE_PARAMS if args.dataset == "digits-images" else {}), **json.loads(args.params)}
    params = validate({"method": args.method, "steps": args.steps, "batch_size": args.batch_size, **extra_params},
                      "ssl")
    with tempfile.TemporaryDirectory(prefix="strata-bench-") as tmp:
        root = Path(tmp)
        outputs = {split: str(root / f"{split}.parquet") for split in ("pool", "probe_train", "probe_test")}
        write_dataset(validate({**DATASETS[args.dataset], "seed": args.seed}, "dataset"), args.dataset, outputs, {},
                      log=lambda _: None)
        pool_path = outputs["pool"]
        pool = read_table(pool_path)
        write_selection(pool, np.arange(len(pool)), None, str(root / "selection.parquet"))
        device = "cuda" if args.gpus else "cpu"
        print(f"{args.method} on {args.dataset} ({len(pool)} rows, dim {pool.dim}), batch {args.batch_size}, "
              f"{args.steps} steps, {args.threads} threads, {args.gpus} GPU(s)", flush=True)
        bare: dict[str, float] | None = None
        ray_runs: dict[int, dict[str, float]] = {}
        for repeat in range(args.repeats):
            for workers in args.workers:
                run = ray_loop(pool_path, str(root / "selection.parquet"), root / f"ray{workers}-{repeat}", params,
                               args.seed, args.threads, args.gpus, workers)
                ray_runs[workers] = _best(ray_runs.get(workers), run)
                window = int(run["window"])
                print(f"repeat {repeat + 1}/{args.repeats}: Ray Train, {workers} worker(s): "
                      f"{run['median_window']:.0f} samples/s (median window)", flush=True)
            run = bare_loop(pool_path, params, args.seed, args.threads, device, window)
            bare = _best(bare, run)
            print(f"repeat {repeat + 1}/{args.repeats}: bare loop: {run['median_window']:.0f} samples/s "
                  "(median window)", flush=True)
    assert bare is not None
    rows = [{"loop": "bare PyTorch", "workers": 1, "samples_per_s": bare["median_window"], "vs_bare": 1.0,
             "whole_loop": bare["samples_per_s"], "wall_s": bare["wall_s"]}]
    for workers, run in ray_runs.items():
        rows.append({"loop": "Ray Train (stage)", "workers": workers, "samples_per_s": run["median_window"],
                     "vs_bare": run["median_window"] / bare["median_window"], "whole_loop": run["samples_per_s"],
                     "wall_s": run["wall_s"]})
    print_table(rows)
    name = "pretrain_throughput" + ("" if args.dataset == "mnist1d" else f"_{args.dataset}") + \
        ("_gpu" if args.gpus else "")
    write_results(name, vars(args), rows)


if __name__ == "__main__":
    main()
