"""Shared helpers of the benchmarks: timing, a table printer and the JSON writer."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def best_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Best wall time over ``repeats`` calls (the usual way to damp noise on a shared machine)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_results(name: str, config: dict[str, Any], rows: list[dict[str, Any]],
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``results/<name>.json`` (config, machine, commit, rows and optional ``extra`` details). The machine
    names the CPU model and cores (:mod:`workflow.machine`): figures differ between machines. The commit is marked
    ``-dirty`` when tracked files other than earlier results differ from it."""
    import torch

    from workflow.config import code_version
    from workflow.machine import machine as cpu

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    machine = {**cpu(), "python": platform.python_version(), "machine": platform.machine(),
               "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    record = {"benchmark": name, "config": config, "machine": machine,
              "commit": code_version(ignore=("benchmarks/results",)), "rows": rows}
    if extra is not None:
        record["extra"] = extra
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def bare_ssl_loop(method: Any, optimizer: Any, augment: Any, x: Any, params: dict[str, Any], seed: int,
                  pairs: Any = None, gen_seed: int | None = None, use_amp: bool = False,
                  after_step: Callable[[int, Any], None] | None = None) -> None:
    """The SSL training loop as one would write it by hand: one process, no Ray, no DDP, no checkpoints.

    Same batch order (a NumPy permutation per epoch from ``seed``), augmentations (a torch generator seeded
    with ``gen_seed``, default ``seed``), schedule and optimisation step (``Method.train_step``) as the
    stage's Ray Train loop. ``pairs`` (TLDR) replaces the two augmentations by each row and its neighbour.
    ``after_step(step, out)`` is called after every step with the number of steps done and its loss terms.
    """
    import numpy as np
    import torch

    from workflow.pretrain.train import lr_at

    gen = torch.Generator(device=x.device).manual_seed(seed if gen_seed is None else gen_seed)
    order_rng = np.random.default_rng(seed)
    n, total = len(x), params["steps"]
    batch = min(params["batch_size"], n)
    step = 0
    method.module.train()
    while step < total:
        perm = torch.from_numpy(order_rng.permutation(n)).to(x.device)
        for b in range(n // batch):
            if step >= total:
                break
            idx = perm[b * batch:(b + 1) * batch]
            if method.uses_augmentation:
                v0, v1, *local_views = method.views(x[idx], augment, gen)  # two, or DINO's multi-crop
            else:
                v0, v1, local_views = x[idx], x[pairs[idx]], []
            out = method.train_step(method.module, optimizer, v0, v1, step, total,
                                    lr_at(step, total, params["lr"], params["warmup_fraction"]), use_amp, local_views)
            step += 1
            if after_step is not None:
                after_step(step, out)


def add_ssl_arguments(parser: Any, steps: int, params: str = "{}") -> None:
    """The SSL benchmarks' shared options (method, budget, optimiser, threads, seed, extra config keys)."""
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--temperature", type=float, default=0.2, help="NT-Xent / SwAV temperature")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default=params, help="more ssl config keys as JSON")


def ssl_params(args: Any, n_train: int) -> dict[str, Any]:
    """The validated ``ssl`` config of :func:`add_ssl_arguments`' options, method defaults filled in."""
    from workflow.config import validate
    from workflow.pretrain.methods import resolved

    cfg = {"method": args.method, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           **json.loads(args.params)}
    if args.method in ("simclr", "swav"):
        cfg.setdefault("temperature", args.temperature)
    return resolved(validate(cfg, "ssl"), n_train)


def make_method(spec: dict[str, Any], params: dict[str, Any], seed: int, device: Any = "cpu") -> tuple[Any, Any]:
    """The method (backbone and heads, seeded as in the stage) on ``device`` and its optimiser."""
    import torch

    from workflow.pretrain.methods import Method
    from workflow.pretrain.models import build_encoder

    torch.manual_seed(seed)
    method = Method(build_encoder(spec), params, spec["embedding_dim"]).to(torch.device(device))
    return method, method.make_optimizer()


def embed(method: Any, x: Any) -> Any:
    """The method's representation (:attr:`Method.representation`: DINO's teacher backbone, else the trained
    encoder) of the rows ``x`` (a NumPy array), in eval mode, as a NumPy array."""
    import torch

    method.module.eval()
    with torch.no_grad():
        return method.representation.eval()(torch.from_numpy(x)).numpy()


def probe_rows(method: Any, xtr: Any, ytr: Any, xte: Any, yte: Any, raw: str, learned: str,
               train_s: float) -> list[dict[str, Any]]:
    """Linear-probe and weighted-kNN accuracy on ``probe_test`` of the raw inputs and of the trained encoder."""

    from workflow.evaluate.probes import linear_probe_accuracy, weighted_knn_accuracy

    etr, ete = embed(method, xtr), embed(method, xte)
    return [
        {"features": raw, "linear": linear_probe_accuracy(xtr, ytr, xte, yte),
         "knn": weighted_knn_accuracy(xtr, ytr, xte, yte), "train_s": 0.0},
        {"features": learned, "linear": linear_probe_accuracy(etr, ytr, ete, yte),
         "knn": weighted_knn_accuracy(etr, ytr, ete, yte), "train_s": train_s},
    ]
