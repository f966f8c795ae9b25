"""Stage ``pretrain``: SimCLR on Ray Train (``TorchTrainer``, DDP; gloo on CPU, nccl on GPU).

Training length is a number of optimisation steps, identical for every curation, so that variants are
compared at equal compute (the curated subsets differ in size). Each rank draws its slice of the same
global batch; the NT-Xent loss gathers the projections of all ranks (global negatives, exact gradients).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from workflow.errors import StrataError
from workflow.tables import atomic_path, read_metadata, read_table, write_table


def lr_at(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up to ``peak`` then cosine decay to 0 (Loshchilov & Hutter 2017; Goyal et al. 2017)."""
    warmup = round(warmup_fraction * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_worker(cfg: dict[str, Any]) -> None:
    """The per-worker training loop (runs inside Ray Train)."""
    import ray.train
    import ray.train.torch
    import torch

    from workflow.pretrain.augment import build_augment
    from workflow.pretrain.losses import NTXentLoss
    from workflow.pretrain.models import EncoderWithProjector, ProjectionHead, build_encoder, save_encoder

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg["threads_per_worker"])
    device = ray.train.torch.get_device()
    params, spec, seed = cfg["params"], cfg["spec"], cfg["seed"]

    x_all = torch.from_numpy(np.array(read_table(cfg["input"]).vectors)).to(device)
    n = x_all.shape[0]
    global_batch = cfg["global_batch"]
    local_batch = global_batch // world
    steps_per_epoch = n // global_batch

    torch.manual_seed(seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    encoder = build_encoder(spec)
    projector = ProjectionHead(spec["embedding_dim"], 256, params["projection_dim"])
    model = ray.train.torch.prepare_model(EncoderWithProjector(encoder, projector))
    module = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    criterion = NTXentLoss(temperature=params["temperature"], gather_distributed=True)
    augment = build_augment(spec["input_kind"])
    gen = torch.Generator(device=device).manual_seed(seed * 7919 + rank)
    order_rng = np.random.default_rng(seed)  # identical on every rank: they slice the same global batch
    use_amp = device.type == "cuda"

    total = params["steps"]
    log_every = max(1, total // 60)
    # ray.train.report synchronises all workers with the controller (about a second each on a small
    # machine), so it runs a few times per run; the full history goes to a file written by rank 0.
    report_every = max(log_every, total // 5)
    history: list[dict[str, float]] = []
    step, epoch, window_loss, window_n, t0 = 0, 0, 0.0, 0, time.perf_counter()
    model.train()
    while step < total:
        perm = torch.from_numpy(order_rng.permutation(n)).to(device)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[b * global_batch + rank * local_batch: b * global_batch + (rank + 1) * local_batch]
            batch = x_all[idx]
            lr = lr_at(step, total, params["lr"], params["warmup_fraction"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                v0, v1 = augment(batch, gen), augment(batch, gen)
                z = model(torch.cat([v0, v1]))
                loss = criterion(z[:local_batch].float(), z[local_batch:].float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            window_loss += float(loss.detach())
            window_n += 1
            if step % log_every == 0 or step == total:
                elapsed = time.perf_counter() - t0
                row = {"step": step, "epoch": epoch + (b + 1) / steps_per_epoch, "loss": window_loss / window_n,
                       "lr": lr, "samples_per_s": window_n * global_batch / max(elapsed, 1e-9)}
                history.append(row)
                if step % report_every == 0 or step == total:
                    ray.train.report(row)
                if rank == 0:
                    print(f"pretrain: step {step}/{total} epoch {row['epoch']:.1f} loss {row['loss']:.4f} "
                          f"lr {lr:.2e} {row['samples_per_s']:.0f} samples/s", flush=True)
                window_loss, window_n, t0 = 0.0, 0, time.perf_counter()
        epoch += 1
    if rank == 0:
        work = Path(cfg["work_dir"])
        save_encoder(module.encoder, spec, str(work / "encoder.safetensors"))
        (work / "history.json").write_text(json.dumps(history))


def run_pretrain(pool_path: str, selection_path: str, encoder_path: str, history_path: str, params: dict[str, Any],
                 seed: int, threads: int, gpus: int = 0, ray_address: str | None = None,
                 work_root: str = "results/.work") -> list[dict[str, float]]:
    """Train an encoder on the selected rows of the pool and write its weights and training history.

    The Ray Train run directory lives under ``work_root`` (not a declared Snakemake output, which
    Snakemake would delete when a job fails). Returns the history rows.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from workflow.distributed import ray_session

    if params["method"] != "simclr":
        raise StrataError(f"unknown ssl method {params['method']!r}", where="ssl.method", fix="use simclr.")
    from workflow.curate.stage import read_selection

    pool = read_table(pool_path)
    selected = read_selection(selection_path)
    rows = np.flatnonzero(np.isin(pool.ids, selected))
    if len(rows) != len(selected):
        raise StrataError(f"{len(selected) - len(rows)} selected ids are not in the pool", where=str(selection_path),
                          fix="re-run the curate stage on this pool.")
    table = pool.take(rows)
    meta = read_metadata(pool_path)
    input_kind = meta.get("input_kind", "vector")
    workers = params.get("num_workers") or max(1, threads)
    global_batch = min(params["batch_size"], len(table))
    global_batch -= global_batch % workers
    if global_batch < 2 * workers:
        raise StrataError(f"the training table has {len(table)} rows, too few for {workers} workers",
                          where=str(selection_path), fix="curate a larger subset (target_size) or use fewer workers.")
    spec = {"input_kind": input_kind, "input_dim": table.dim, "embedding_dim": params["embedding_dim"]}
    work_dir = Path(work_root).resolve() / f"pretrain-{Path(encoder_path).parent.as_posix().replace('/', '_')}"
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    write_table(table, work_dir / "train.parquet")
    print(f"pretrain: {params['method']} on {len(table)} rows ({input_kind}, dim {table.dim}), {workers} worker(s), "
          f"global batch {global_batch}, {params['steps']} steps, seed {seed}", flush=True)
    loop_config = {"params": params, "spec": spec, "seed": seed, "input": str(work_dir / "train.parquet"),
                   "global_batch": global_batch, "work_dir": str(work_dir),
                   "threads_per_worker": max(1, threads // workers)}
    with ray_session(num_cpus=max(threads, workers), num_gpus=gpus, address=ray_address):
        trainer = TorchTrainer(
            train_worker, train_loop_config=loop_config,
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0),
            run_config=ray.train.RunConfig(name="run", storage_path=str(work_dir / "ray")),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
    history = json.loads((work_dir / "history.json").read_text())
    _write_history(history, history_path)
    Path(encoder_path).parent.mkdir(parents=True, exist_ok=True)
    os.replace(work_dir / "encoder.safetensors", encoder_path)
    shutil.rmtree(work_dir, ignore_errors=True)
    return history


def _write_history(rows: list[dict[str, float]], path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
