"""Stage ``pretrain``: self-supervised pretraining on Ray Train (``TorchTrainer``, DDP; gloo on CPU, nccl on GPU).

Training length is a number of optimisation steps, identical for every curation, so that variants are
compared at equal compute (the curated subsets differ in size). Each rank takes its slice of the same global
batch; losses that need batch statistics gather them over all ranks with exact gradients.

Checkpoints go to ``<work-root>/pretrain-<job>/checkpoints/`` every ``checkpoint_every`` epochs: model,
optimiser, EMA target, step, history, and every rank's random state, with a manifest of checksums
(``workflow/pretrain/checkpoint.py``: nothing in them is unpickled, a damaged one is set aside). That folder is not
a Snakemake output (Snakemake deletes a failed job's outputs), so a re-run of a killed job resumes from its last
good checkpoint and, on CPU with the same seed, ends with the same weights as an uninterrupted run. The job
that trains holds a lock on its work folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from workflow.errors import StrataError
from workflow.measures import alignment, embedding_std, rankme, uniformity
from workflow.pretrain import checkpoint
from workflow.pretrain.progress import Progress
from workflow.tables import atomic_path, read_metadata

FAIL_AT_STEP_ENV = "STRATA_TEST_FAIL_AT_STEP"  # tests only: raise after the checkpoint at this step
OWNER_FILE = "owner"  # the token of the job that owns a work folder
TRAIN_ROWS = "train.npy"  # the selected rows, float32, streamed out of the pool (workflow/pretrain/rows.py)


def _file_identity(path: str) -> list[int]:
    """Size and modification time: a rewritten pool is other data, even with the same ids."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def work_dir_for(encoder_path: str, work_root: str) -> Path:
    """The work folder (checkpoints, Ray Train's files) of the job that writes ``encoder_path``."""
    job = Path(encoder_path).resolve().parent.as_posix().replace("/", "_").strip("_")
    return Path(work_root).resolve() / f"pretrain-{job}"


@contextlib.contextmanager
def work_dir_lock(work_dir: Path) -> Iterator[None]:
    """Own ``work_dir`` for the block: an exclusive ``flock`` on ``<work_dir>.lock`` (released if the job dies).

    Two trainers never write into one work folder: a second job for the same output fails at once, naming the
    holder, instead of interleaving checkpoints.
    """
    lock_path = work_dir.with_name(work_dir.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StrataError(f"another pretrain job ({holder}) is training in {work_dir}", where=str(lock_path),
                              fix="wait for it to finish or stop it; two jobs for one output cannot share a work "
                                  "folder.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    import torch.distributed as dist

    from workflow.distributed import quiet_ray_logs
    from workflow.pretrain.augment import build_augment
    from workflow.pretrain.methods import Method
    from workflow.pretrain.models import build_encoder, save_encoder
    from workflow.pretrain.rows import TrainingRows

    quiet_ray_logs()  # (in a Ray Train worker: its own process, whose logging Ray Train set up at INFO)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg["threads_per_worker"])
    device = ray.train.torch.get_device()
    params, spec, seed = cfg["params"], cfg["spec"], cfg["seed"]
    work = Path(cfg["work_dir"])

    rows = TrainingRows(cfg["input"])  # a memory map: each step copies out its batch only

    def batch_of(index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rows.batch(index)).to(device, non_blocking=True)

    pairs = np.load(cfg["pairs"]) if cfg.get("pairs") else None
    n = len(rows)
    global_batch = cfg["global_batch"]
    local_batch = global_batch // world
    steps_per_epoch = n // global_batch

    torch.manual_seed(seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    method = Method(build_encoder(spec), params, spec["embedding_dim"]).to(device)
    model = ray.train.torch.prepare_model(method.module)
    optimizer = method.make_optimizer()
    augment = build_augment(spec["input_kind"], spec.get("image_shape"), cfg.get("augment"))
    gen = torch.Generator(device=device).manual_seed(seed * 7919 + rank)
    order_rng = np.random.default_rng(seed)  # identical on every rank: they slice the same global batch
    monitor = batch_of(np.arange(min(n, 512)))  # a fixed batch of training rows for the collapse monitors
    use_amp = device.type == "cuda"

    total = params["steps"]
    step, epoch, history = 0, 0, []
    checkpoints = work / "checkpoints"
    if cfg.get("resume_from"):  # verified by the driver (checkpoint.latest_good): checksums and loaders
        resume = Path(cfg["resume_from"])
        state = checkpoint.load_model(resume, device)
        method.module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        if method.target is not None:
            method.target.load_state_dict(state["target"])
        gen_state, order_state = checkpoint.load_rank_state(resume, rank)
        gen.set_state(gen_state)
        order_rng.bit_generator.state = order_state
        meta = json.loads((resume / checkpoint.MANIFEST).read_text())
        step, epoch, history = meta["step"], meta["epoch"], meta["history"]
        if rank == 0:
            print(f"pretrain: resuming from the checkpoint at step {step} (epoch {epoch})", flush=True)

    # Rank 0 prints a progress line at each checkpoint and every ~10 s in between (workflow/pretrain/progress.py);
    # the history keeps a row every log_every steps (MLflow's loss curves).
    progress = Progress(total, start_step=step)
    log_every = max(1, min(steps_per_epoch, total // 50))
    total_epochs = math.ceil(total / steps_per_epoch)
    # Checkpoints and monitors cost a save and a few forward passes: about ten per run unless configured.
    checkpoint_every = params["checkpoint_every"] or max(1, round(total_epochs / 10))
    window: dict[str, float] = {}
    window_n, t0 = 0, time.perf_counter()
    model.train()
    while step < total:
        perm = order_rng.permutation(n)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[b * global_batch + rank * local_batch: b * global_batch + (rank + 1) * local_batch]
            lr = lr_at(step, total, params["lr"], params["warmup_fraction"])
            if method.uses_augmentation:
                batch = batch_of(idx)
                v0, v1, *local_views = method.views(batch, augment, gen)  # two, or DINO's multi-crop
            else:  # TLDR: an item and one of its nearest neighbours in the input space
                assert pairs is not None
                v0, v1, local_views = batch_of(idx), batch_of(pairs[idx]), []
            out = method.train_step(model, optimizer, v0, v1, step, total, lr, use_amp, local_views)
            step += 1
            scalars = out.scalars()
            for k, v in scalars.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            progress.add(scalars["loss"])
            if step % log_every == 0 or step == total:
                elapsed = time.perf_counter() - t0
                row = {"step": step, "epoch": epoch + (b + 1) / steps_per_epoch, "lr": lr,
                       "samples_per_s": window_n * global_batch / max(elapsed, 1e-9),
                       **{k: v / window_n for k, v in window.items()}}
                history.append(row)
                window, window_n, t0 = {}, 0, time.perf_counter()
            if rank == 0 and step < total and progress.due():
                progress.emit(step)
        epoch += 1
        if epoch % checkpoint_every and step < total:
            continue
        # Collapse monitors on a fixed batch (workflow/measures.py, the copy evaluation uses): std of the
        # L2-normalised embeddings (1/sqrt(d) when healthy, 0 when collapsed; Chen & He 2021) and RankMe;
        # alignment and uniformity (Wang & Isola 2020, alpha = 2, t = 2) on two augmentations of the same batch.
        # They watch the representation the job saves (DINO's teacher backbone, else the trained encoder).
        model.eval()
        represent = method.representation.eval()
        with torch.no_grad():
            emb = represent(monitor).float().cpu().numpy()
            monitors = {"embedding_std": embedding_std(emb), "rankme": rankme(emb)}
            if method.uses_augmentation:
                mon_gen = torch.Generator(device=device).manual_seed(seed)  # same views at every epoch
                e0 = represent(augment(monitor, mon_gen)).float().cpu().numpy()
                e1 = represent(augment(monitor, mon_gen)).float().cpu().numpy()
                monitors["alignment"] = alignment(e0, e1, alpha=2.0)
                monitors["uniformity"] = uniformity(e0, t=2.0)
        represent.train()  # DINO's teacher normalises with batch statistics in training, as the student does
        model.train()
        if history:
            history[-1].update(monitors)
        _checkpoint(checkpoints, rank, world, method, optimizer, gen, order_rng, step, epoch, history, dist,
                    owner=(work / OWNER_FILE, cfg["owner"]))
        if os.environ.get(FAIL_AT_STEP_ENV) and step >= int(os.environ[FAIL_AT_STEP_ENV]) and step < total:
            raise RuntimeError(f"{FAIL_AT_STEP_ENV}: simulated crash after the checkpoint at step {step}")
        if rank == 0:
            progress.emit(step, "checkpoint" if step < total else "done")
        # ray.train.report synchronises every worker with the controller, so only at checkpoints.
        ray.train.report({"step": step, "loss": history[-1]["loss"] if history else float("nan")})
    if rank == 0:
        save_encoder(method.representation, spec, str(work / "encoder.safetensors"))
        (work / "history.json").write_text(json.dumps(history))


def _checkpoint(root: Path, rank: int, world: int, method: Any, optimizer: Any, gen: Any,
                order_rng: np.random.Generator, step: int, epoch: int, history: list[dict[str, float]], dist: Any,
                owner: tuple[Path, str]) -> None:
    """All ranks save their random state; rank 0 saves the model, then the manifest with checksums, last.

    A worker whose driver has died and been replaced (the work folder's owner token changed) stops here
    instead of writing into the new job's checkpoints.
    """
    owner_file, token = owner
    if not owner_file.is_file() or owner_file.read_text() != token:
        raise RuntimeError(f"{owner_file.parent} now belongs to another pretrain job: this orphaned worker stops")
    folder = checkpoint.step_dir(root, step)
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.barrier()
    folder.mkdir(parents=True, exist_ok=True)  # (a no-op except on a node that does not share rank 0's disk)
    checkpoint.save_rank_state(folder, rank, gen, order_rng)
    if rank == 0:
        state = {"module": method.module.state_dict(), "optimizer": optimizer.state_dict()}
        if method.target is not None:
            state["target"] = method.target.state_dict()
        checkpoint.save_model(folder, state)
    if distributed:
        dist.barrier()
    if rank == 0:
        checkpoint.save_manifest(folder, step, epoch, history, world)
        checkpoint.prune(root)


def run_pretrain(pool_path: str, selection_path: str, encoder_path: str, history_path: str, params: dict[str, Any],
                 seed: int, threads: int, gpus: int = 0, ray_address: str | None = None,
                 work_root: str = "results/.work") -> list[dict[str, float]]:
    """Train an encoder on the selected rows of the pool and write its weights and training history.

    The Ray Train run and the checkpoints live under ``work_root`` (not a declared Snakemake output).
    A checkpoint of the same job, data and parameters is resumed. Returns the history rows.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from workflow.distributed import job_resources, quiet_ray_logs, ray_session, resolve_address
    from workflow.pretrain.methods import METHODS, resolved
    from workflow.pretrain.pairs import knn_pairs
    from workflow.pretrain.rows import TrainingRows, read_selection, scan_pool, write_training_rows

    if params["method"] not in METHODS:
        raise StrataError(f"unknown ssl method {params['method']!r}", where="ssl.method", fix=f"use one of {METHODS}.")
    # The pool is streamed, never loaded: an id pass checks the selection now, the rows are copied out below.
    selected = np.unique(read_selection(selection_path))
    dim, n_rows = scan_pool(pool_path, selected, selection_path), len(selected)
    params = resolved(params, n_rows)
    table_meta = read_metadata(pool_path)
    # One DDP worker per GPU when the job has GPUs (each asks Ray for one). On CPU one worker with all the
    # job's threads: two gloo workers of one thread each reach 73% of its throughput on 2 cores
    # (benchmarks/pretrain_throughput.py); num_workers still asks for DDP on CPU (e.g. over a Ray cluster).
    workers = params.get("num_workers") or (gpus if gpus > 0 else 1)
    global_batch = min(params["batch_size"], n_rows)
    global_batch -= global_batch % workers
    if global_batch < 2 * workers:
        raise StrataError(f"the training table has {n_rows} rows, too few for {workers} workers",
                          where=str(selection_path), fix="curate a larger subset (target_size) or use fewer workers.")
    spec, augment = encoder_spec(table_meta, dim, params, pool_path)
    fingerprint = hashlib.sha256(json.dumps(
        {"params": params, "seed": seed, "workers": workers, "batch": global_batch, "spec": spec, "augment": augment,
         "ids": hashlib.sha256(selected.tobytes()).hexdigest(), "pool": _file_identity(pool_path)},
        sort_keys=True).encode()).hexdigest()[:16]
    work_dir = work_dir_for(encoder_path, work_root)
    with work_dir_lock(work_dir):
        if (work_dir / "fingerprint").exists() and (work_dir / "fingerprint").read_text() != fingerprint:
            shutil.rmtree(work_dir)  # a checkpoint of other data or parameters: start afresh
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "fingerprint").write_text(fingerprint)
        shutil.rmtree(work_dir / "checkpoint", ignore_errors=True)  # older releases' pickled format: never read
        # Workers check this token before each checkpoint: an orphan of a dead driver stops instead of writing here.
        owner = secrets.token_hex(8)
        (work_dir / OWNER_FILE).write_text(owner)
        resume_from = checkpoint.latest_good(work_dir / "checkpoints", workers, log=lambda m: print(m, flush=True))
        if not (work_dir / TRAIN_ROWS).exists():  # (kept across a resume: the same rows, by the fingerprint)
            print(f"pretrain: copying the {n_rows} selected rows out of the pool ...", flush=True)
            write_training_rows(pool_path, selected, work_dir / TRAIN_ROWS)
        pairs_path = None
        if params["method"] == "tldr":
            pairs_path = work_dir / "pairs.npy"
            print(f"pretrain: TLDR pairs: the {params['tldr_k']} nearest neighbours of {n_rows} rows ...", flush=True)
            vectors = TrainingRows(work_dir / TRAIN_ROWS).all()
            np.save(pairs_path, knn_pairs(vectors, k=params["tldr_k"], seed=seed))
            del vectors
        print(f"pretrain: {params['method']} on {n_rows} rows ({spec['input_kind']}, dim {dim}), "
              f"{workers} worker(s), global batch {global_batch}, {params['steps']} steps, seed {seed}", flush=True)
        loop_config = {"params": params, "spec": spec, "seed": seed, "input": str(work_dir / TRAIN_ROWS),
                       "pairs": str(pairs_path) if pairs_path else None, "global_batch": global_batch,
                       "augment": augment,
                       "work_dir": str(work_dir), "threads_per_worker": max(1, threads // workers),
                       "owner": owner, "resume_from": str(resume_from) if resume_from else None}
        shutil.rmtree(work_dir / "ray", ignore_errors=True)  # Strata keeps its own checkpoints, not Ray's
        ray_logging = quiet_ray_logs()  # Ray Train's INFO lines stay out of the job's log
        # One CPU worker and no cluster named: Ray Train's local mode (num_workers=0) runs the loop in this process,
        # which saves starting a Train controller and a worker process (each imports torch and Ray Train: most of
        # a short job's fixed cost, docs/cluster.md). GPUs, several workers or a named cluster: Ray Train workers.
        local = gpus == 0 and workers == 1 and not params.get("num_workers") and resolve_address(ray_address) is None
        print("pretrain: Ray Train local mode (the loop runs in this process)" if local else
              f"pretrain: Ray Train with {workers} worker process(es)", flush=True)
        with contextlib.nullcontext() if local else ray_session(num_cpus=max(threads, workers), num_gpus=gpus,
                                                                 address=ray_address):
            trainer = TorchTrainer(
                train_worker, train_loop_config=loop_config,
                # Each worker asks for its share of the job's threads and GPUs (the whole job's on one worker), so
                # on the run's shared Ray cluster the job takes exactly what Snakemake gave it.
                scaling_config=ray.train.ScalingConfig(num_workers=0 if local else workers, use_gpu=gpus > 0,
                                                       resources_per_worker=job_resources(threads, gpus, workers)),
                run_config=ray.train.RunConfig(name="run", storage_path=str(work_dir / "ray"),
                                               **({"logging_config": ray_logging} if ray_logging else {})),
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


def encoder_spec(meta: dict[str, Any], dim: int, params: dict[str, Any],
                 pool_path: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The backbone spec of a table with metadata ``meta`` and ``dim``-wide rows (``build_encoder``'s input) and,
    for images, the augmentation options (None otherwise)."""
    input_kind = meta.get("input_kind", "vector")
    spec = {"input_kind": input_kind, "input_dim": dim, "embedding_dim": params["embedding_dim"]}
    if input_kind != "image":
        return spec, None
    spec.update(_image_spec(meta, dim, params, pool_path))
    return spec, _image_augment_options(params, meta)


def _image_spec(meta: dict[str, Any], dim: int, params: dict[str, Any], pool_path: str) -> dict[str, Any]:
    """The ResNet part of an image backbone's spec: the pool's image shape and the configured widths/blocks."""
    shape = meta.get("image_shape")
    if not shape or len(shape) != 3 or int(np.prod(shape)) != dim:
        raise StrataError(f"the table is marked input_kind image but its image_shape {shape!r} does not describe its "
                          f"{dim}-wide rows", where=str(pool_path),
                          fix="re-run the data stage (image tables carry image_shape [C, H, W] in their metadata).")
    if len(params["resnet_widths"]) != len(params["resnet_blocks"]):
        raise StrataError(f"resnet_widths has {len(params['resnet_widths'])} stages but resnet_blocks "
                          f"{len(params['resnet_blocks'])}", where="ssl.resnet_blocks",
                          fix="give one number of blocks per entry of resnet_widths.")
    return {"image_shape": [int(v) for v in shape], "widths": list(params["resnet_widths"]),
            "blocks": list(params["resnet_blocks"])}


def _image_augment_options(params: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """``ssl.image_augment`` with the data set's choices (table metadata ``augment``) where the config says null."""
    options = dict(params.get("image_augment") or {})
    for key, value in (meta.get("augment") or {}).items():
        if options.get(key) is None:
            options[key] = value
    if options.get("horizontal_flip") is None:
        options["horizontal_flip"] = 0.5
    for key in ("crop_scale", "crop_ratio", "blur_sigma"):
        if key in options and options[key][0] > options[key][1]:
            raise StrataError(f"{key} {options[key]} is not a range [low, high]", where=f"ssl.image_augment.{key}",
                              fix="give the smaller value first.")
    return options


def _write_history(rows: list[dict[str, float]], path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for row in rows for k in row))  # monitors exist only at epoch ends
    table = pa.Table.from_pylist([{k: row.get(k, float("nan")) for k in keys} for row in rows])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
