"""A job's compute time: the seconds it spends in its own work (training steps, embedding batches, clustering,
metrics, drawing), as opposed to its fixed cost (interpreter, imports, Ray attach, MLflow logging, teardown).

Each stage adds its work's seconds with :func:`compute` or :func:`add_compute`; every addition prints the running
total to the job's log as ``strata: compute_s=<seconds>``. ``benchmarks/study.py`` reads the last such line of
each job's log, and subtracts it from the job's wall time (Snakemake's benchmark file) to get the fixed cost.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

COMPUTE_PREFIX = "strata: compute_s="
_total = 0.0


def add_compute(seconds: float) -> float:
    """Add ``seconds`` of the job's own work; prints and returns the running total."""
    global _total
    _total += max(0.0, float(seconds))
    print(f"{COMPUTE_PREFIX}{_total:.3f}", flush=True)
    return _total


@contextlib.contextmanager
def compute() -> Iterator[None]:
    """Count the ``with`` block's wall time as the job's own work."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add_compute(time.perf_counter() - start)


def compute_total() -> float:
    """The job's compute seconds so far."""
    return _total


def training_seconds(history: list[dict[str, float]], params: dict[str, object], selection_path: str) -> float:
    """Seconds of a pretrain job's optimisation steps, from its history rows.

    Each row holds the throughput over the steps since the previous row (``samples_per_s``, timed inside the
    training loop), so a window lasted ``steps × global batch / samples_per_s``; the global batch is the
    configured batch size, capped at the number of selected rows.
    """
    import pyarrow.parquet as pq

    batch = min(int(params.get("batch_size") or 0) or 1, pq.ParquetFile(selection_path).metadata.num_rows)
    seconds, last_step = 0.0, 0
    for row in history:
        rate = row.get("samples_per_s") or 0.0
        if rate > 0:
            seconds += (row["step"] - last_step) * batch / rate
        last_step = int(row["step"])
    return seconds
