"""Stage ``embed``: embeddings of one or more tables with a trained encoder, through a Ray actor pool.

Each actor loads the encoder once (eval mode, no gradients); the driver streams the input table in
record batches, the pool maps them in order (``ActorPool.map`` keeps submission order), and every
result batch is written straight to the output Parquet as a row group, so memory stays bounded and
ids and order are kept.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from workflow.errors import StrataError
from workflow.tables import EMBEDDING_COLUMN, TableWriter, VectorTable, read_table


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
            out = self.model(torch.from_numpy(vectors).to(self.device))
        return out.float().cpu().numpy()


def _batches(table: VectorTable, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + batch_size, len(table))) for s in range(0, len(table), batch_size)]


def run_embed(encoder_path: str, pairs: list[tuple[str, str]], threads: int, gpus: int = 0, batch_size: int = 1024,
              ray_address: str | None = None) -> dict[str, Any]:
    """Embed each ``(input, output)`` table pair. Returns per-table row counts and throughput."""
    import ray
    from ray.util import ActorPool

    from workflow.distributed import ray_session
    from workflow.pretrain.models import load_encoder

    _, spec = load_encoder(encoder_path)  # fail fast on a bad encoder file, before Ray starts
    tables = []
    for inp, _ in pairs:
        table = read_table(inp, expected_dim=spec["input_dim"])
        tables.append(table)
    stats: dict[str, Any] = {}
    n_actors = max(1, gpus) if gpus > 0 else max(1, threads)
    with ray_session(num_cpus=max(1, threads), num_gpus=gpus, address=ray_address):
        actor_cls = ray.remote(num_cpus=1 if gpus == 0 else 0, num_gpus=1 if gpus > 0 else 0)(EncoderActor)
        actors = [actor_cls.remote(encoder_path, max(1, threads // n_actors), gpus > 0) for _ in range(n_actors)]
        pool = ActorPool(actors)
        for (inp, out), table in zip(pairs, tables, strict=True):
            start = time.perf_counter()
            chunks = _batches(table, batch_size)
            with TableWriter(out, spec["embedding_dim"], column=EMBEDDING_COLUMN,
                             metadata={"encoder": str(encoder_path), "source": str(inp)}) as writer:
                vectors = table.vectors
                results = pool.map(lambda actor, se, v=vectors: actor.embed.remote(v[se[0]:se[1]]), chunks)
                for done, ((s, e), emb) in enumerate(zip(chunks, results, strict=True), start=1):
                    if not np.isfinite(emb).all():
                        raise StrataError("the encoder produced NaN/inf embeddings", where=str(encoder_path),
                                          fix="the pretraining diverged; lower ssl.lr and re-run pretrain.")
                    labels = None if table.labels is None else table.labels[s:e]
                    writer.write(VectorTable(ids=table.ids[s:e], vectors=emb, labels=labels))
                    if done % 20 == 0 or done == len(chunks):
                        print(f"embed: {inp}: batch {done}/{len(chunks)}", flush=True)
            seconds = time.perf_counter() - start
            stats[str(inp)] = {"rows": len(table), "seconds": seconds, "rows_per_s": len(table) / max(seconds, 1e-9)}
            print(f"embed: wrote {out} ({len(table)} rows, {len(table) / max(seconds, 1e-9):.0f} rows/s)", flush=True)
    return stats
