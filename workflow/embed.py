"""Stage ``embed``: embeddings of one or more tables with a trained encoder, through a Ray actor pool.

Each actor loads the encoder once (eval mode, inference mode; one actor per GPU, or one per CPU core).
The driver streams the input table in record batches (``pyarrow`` ``iter_batches``), the pool maps them in
order (``ActorPool.map`` keeps submission order and submits lazily, so at most one batch per actor is in
flight), and every result is written straight to the output Parquet as a row group: memory stays bounded
whatever the table size, and ids, labels and order are kept.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from workflow.errors import StrataError
from workflow.tables import EMBEDDING_COLUMN, TableWriter, VectorTable, iter_table, table_rows


class EncoderActor:
    """Holds one encoder; ``embed`` maps a float32 batch to embeddings."""

    def __init__(self, encoder_path: str, threads: int, use_gpu: bool) -> None:
        import torch

        from workflow.pretrain.models import load_encoder

        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model, self.spec = load_encoder(encoder_path, self.device)

    def embed(self, vectors: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.as_tensor(vectors, device=self.device))
        return out.float().cpu().numpy()


def embed_table(pool: Any, inp: str, out: str, spec: dict[str, Any], batch_size: int,
                metadata: dict[str, Any]) -> int:
    """Embed one table through ``pool`` (a ``ray.util.ActorPool`` of :class:`EncoderActor`), streaming."""
    total = table_rows(inp)
    pending: collections.deque[VectorTable] = collections.deque()

    def batches() -> Iterator[np.ndarray]:
        for chunk in iter_table(inp, batch_size=batch_size, expected_dim=spec["input_dim"]):
            pending.append(chunk)
            yield chunk.vectors

    done_rows, last_print = 0, time.perf_counter()
    with TableWriter(out, spec["embedding_dim"], column=EMBEDDING_COLUMN, metadata=metadata) as writer:
        for emb in pool.map(lambda actor, v: actor.embed.remote(v), batches()):
            chunk = pending.popleft()
            if not np.isfinite(emb).all():
                raise StrataError("the encoder produced NaN/inf embeddings", where=str(metadata.get("encoder")),
                                  fix="the pretraining diverged; lower ssl.lr and re-run pretrain.")
            writer.write(VectorTable(ids=chunk.ids, vectors=emb, labels=chunk.labels))
            done_rows += len(chunk)
            if time.perf_counter() - last_print > 5 or done_rows == total:
                print(f"embed: {inp}: {done_rows}/{total} rows", flush=True)
                last_print = time.perf_counter()
    return done_rows


def run_embed(encoder_path: str, pairs: list[tuple[str, str]], threads: int, gpus: int = 0, batch_size: int = 1024,
              ray_address: str | None = None) -> dict[str, Any]:
    """Embed each ``(input, output)`` table pair. Returns per-table row counts and throughput."""
    import ray
    from ray.util import ActorPool

    from workflow.distributed import ray_session
    from workflow.pretrain.models import load_encoder

    _, spec = load_encoder(encoder_path)  # fail fast on a bad encoder file, before Ray starts
    for inp, _ in pairs:  # and on a missing or unreadable input
        table_rows(inp)
    stats: dict[str, Any] = {}
    n_actors = gpus if gpus > 0 else max(1, threads)
    with ray_session(num_cpus=max(1, threads), num_gpus=gpus, address=ray_address):
        actor_cls = ray.remote(num_cpus=0 if gpus else 1, num_gpus=1 if gpus else 0)(EncoderActor)
        actors = [actor_cls.remote(encoder_path, max(1, threads // n_actors), gpus > 0) for _ in range(n_actors)]
        pool = ActorPool(actors)
        for inp, out in pairs:
            start = time.perf_counter()
            rows = embed_table(pool, inp, out, spec, batch_size, {"encoder": str(encoder_path), "source": str(inp)})
            seconds = time.perf_counter() - start
            stats[str(inp)] = {"rows": rows, "seconds": seconds, "rows_per_s": rows / max(seconds, 1e-9)}
            print(f"embed: wrote {out} ({rows} rows, {rows / max(seconds, 1e-9):.0f} rows/s)", flush=True)
    return stats
