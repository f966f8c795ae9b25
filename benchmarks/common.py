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
    """Write ``results/<name>.json`` (config, machine, rows and optional ``extra`` details)."""
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    machine = {"python": platform.python_version(), "machine": platform.machine(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads()}
    record = {"benchmark": name, "config": config, "machine": machine, "rows": rows}
    if extra is not None:
        record["extra"] = extra
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path
