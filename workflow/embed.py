"""Stage ``embed``: embeddings of one or more tables with a trained encoder, through a Ray actor pool.

A one-thread CPU job with no cluster named (the default study's jobs) runs the encoder in its own process
instead: there is nothing to distribute, and an actor's process start would cost more than the embedding.

Each actor loads the encoder once (eval mode, inference mode; one actor per GPU, or one per CPU core).
The driver streams the input table in record batches (``pyarrow`` ``iter_batches``), hands them to the actors
round-robin with a bounded number in flight, and writes every result, in submission order, straight to the
output Parquet as a row group: memory stays bounded whatever the table size, and ids, labels and order are kept.

Image tables need no special handling: their rows are flat (C*H*W) and the image encoder reshapes them with the
image shape saved in its spec (checked against the table's ``image_shape`` metadata).

``--encoder`` may also name a pretrained backbone from local files instead of a Strata encoder: a Hugging Face
``transformers`` model folder or a TorchScript file (:mod:`workflow.backbones`; ``pooling`` picks its vector).
The driver loads it once before Ray starts (bad weights, an unknown model or a missing file fail there, before
anything is written) and embeds two rows of each table to learn the embedding width.
"""

from __future__ import annotations

import collections
import contextlib
import time
import warnings
from typing import Any

import numpy as np

from workflow.errors import StrataError
from workflow.tables import EMBEDDING_COLUMN, TableWriter, VectorTable, iter_table, read_metadata, table_rows


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

        with torch.inference_mode(), warnings.catch_warnings():
            # Arrays from Ray's object store are read-only views; inference does not write to them.
            warnings.simplefilter("ignore", UserWarning)
            out = self.model(torch.as_tensor(vectors, device=self.device))
        return out.float().cpu().numpy()


class BackboneActor:
    """Holds one pretrained backbone (:class:`workflow.backbones.Backbone`); ``embed`` as :class:`EncoderActor`."""

    def __init__(self, path: str, pooling: str, threads: int, use_gpu: bool) -> None:
        import torch

        from workflow.backbones import load_backbone

        torch.set_num_threads(max(1, threads))
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.backbone = load_backbone(path, device, pooling)

    def embed(self, vectors: np.ndarray, image_shape: list[int] | None = None) -> np.ndarray:
        return self.backbone.embed(vectors, image_shape)


class InProcess:
    """An encoder or backbone actor's object in the job's own process, called like a Ray actor handle
    (``handle.embed.remote(...)`` returns the embeddings at once): the path of a one-thread CPU job."""

    def __init__(self, actor: EncoderActor | BackboneActor) -> None:
        self.embed = _Call(actor.embed)


class _Call:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


def _backbone_specs(path: str, pooling: str, inputs: list[str]) -> dict[str, dict[str, Any]]:
    """Load the backbone once in the driver (its errors before Ray starts) and learn, from two rows of each
    input table, the embedding width; returns each table's spec (``input_dim``, ``embedding_dim``,
    ``image_shape``)."""
    from workflow.backbones import load_backbone

    backbone = load_backbone(path, "cpu", pooling)
    specs: dict[str, dict[str, Any]] = {}
    for inp in inputs:
        shape = read_metadata(inp).get("image_shape")
        first = next(iter_table(inp, batch_size=2))
        emb = backbone.embed(first.vectors, list(shape) if shape is not None else None)
        if emb.ndim != 2 or emb.shape[0] != len(first):
            raise StrataError(f"the backbone gave embeddings of shape {list(emb.shape)} for {len(first)} rows",
                              where=str(path), fix="use a backbone whose output is one vector per input.")
        specs[inp] = {"backbone": True, "input_dim": first.dim, "embedding_dim": int(emb.shape[1]),
                      "image_shape": list(shape) if shape is not None else None}
    del backbone
    return specs


def embed_table(actors: list[Any], inp: str, out: str, spec: dict[str, Any], batch_size: int,
                metadata: dict[str, Any], in_flight_per_actor: int = 2) -> int:
    """Embed one table on ``actors`` (Ray handles of :class:`EncoderActor`, or :class:`InProcess`), streaming,
    order kept.

    Batches go to the actors round-robin with up to ``in_flight_per_actor`` batches queued on each, so
    reading and writing Parquet on the driver overlaps with inference; results are written in order.
    """
    total = table_rows(inp)
    in_flight: collections.deque[tuple[VectorTable, Any]] = collections.deque()
    done_rows, last_print = 0, time.perf_counter()

    def write_oldest(writer: TableWriter) -> None:
        nonlocal done_rows, last_print
        chunk, ref = in_flight.popleft()
        if not isinstance(ref, np.ndarray):  # an actor's result (InProcess returns the array itself)
            import ray

            ref = ray.get(ref)
        emb = ref
        if not np.isfinite(emb).all():
            raise StrataError("the encoder produced NaN/inf embeddings", where=str(metadata.get("encoder")),
                              fix="the pretraining diverged; lower ssl.lr and re-run pretrain."
                              if "pooling" not in metadata else "check the backbone's weights and inputs.")
        writer.write(VectorTable(ids=chunk.ids, vectors=emb, labels=chunk.labels))
        done_rows += len(chunk)
        if time.perf_counter() - last_print > 5 or done_rows == total:
            print(f"embed: {inp}: {done_rows}/{total} rows", flush=True)
            last_print = time.perf_counter()

    with TableWriter(out, spec["embedding_dim"], column=EMBEDDING_COLUMN, metadata=metadata) as writer:
        for i, chunk in enumerate(iter_table(inp, batch_size=batch_size, expected_dim=spec["input_dim"])):
            extra = (spec["image_shape"],) if spec.get("backbone") else ()  # a backbone reshapes images itself
            in_flight.append((chunk, actors[i % len(actors)].embed.remote(chunk.vectors, *extra)))
            if len(in_flight) >= in_flight_per_actor * len(actors):
                write_oldest(writer)
        while in_flight:
            write_oldest(writer)
    return done_rows


def start_actors(encoder_path: str, threads: int, gpus: int, pooling: str | None = None) -> list[Any]:
    """One encoder actor per GPU; on CPU, actors on all cores but one, which the driver keeps for Parquet I/O.

    (Measured with benchmarks/embed.py on 2 cores: the driver's reading and writing costs as much as the
    inference of a small encoder, so it needs a core of its own.)
    """
    import ray

    if gpus > 0:
        n_actors, per_actor = gpus, max(1, threads // gpus)
    else:
        n_actors = max(1, threads - 1)
        per_actor = max(1, (threads - 1) // n_actors)
    options = {"num_cpus": 0 if gpus else 1, "num_gpus": 1 if gpus else 0}
    if pooling is None:
        actor_cls = ray.remote(**options)(EncoderActor)
        actors = [actor_cls.remote(encoder_path, per_actor, gpus > 0) for _ in range(n_actors)]
    else:  # a pretrained backbone (workflow.backbones)
        backbone_cls = ray.remote(**options)(BackboneActor)
        actors = [backbone_cls.remote(encoder_path, pooling, per_actor, gpus > 0) for _ in range(n_actors)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    return actors


def run_embed(encoder_path: str, pairs: list[tuple[str, str]], threads: int, gpus: int = 0, batch_size: int = 1024,
              ray_address: str | None = None, pooling: str = "auto") -> dict[str, Any]:
    """Embed each ``(input, output)`` table pair with a Strata encoder (``.safetensors``) or a pretrained backbone
    (a transformers model folder or a TorchScript file; ``pooling``). Returns per-table row counts and throughput.
    """
    from workflow.backbones import is_strata_encoder
    from workflow.distributed import ray_session, resolve_address

    for inp, _ in pairs:  # a missing or unreadable input fails before anything loads
        table_rows(inp)
    meta: dict[str, Any] = {"encoder": str(encoder_path)}
    if is_strata_encoder(encoder_path):
        from workflow.pretrain.models import load_encoder

        _, spec = load_encoder(encoder_path)  # fail fast on a bad encoder file, before Ray starts
        for inp, _ in pairs:  # and on images of another shape
            shape = read_metadata(inp).get("image_shape")
            if spec["input_kind"] == "image" and shape is not None and list(shape) != list(spec["image_shape"]):
                raise StrataError(f"the table holds {shape} images but the encoder was trained on "
                                  f"{spec['image_shape']}", where=str(inp),
                                  fix="embed tables of the data set the encoder was trained on.")
        specs = {inp: spec for inp, _ in pairs}
        backbone_pooling = None
    else:
        specs = _backbone_specs(str(encoder_path), pooling, [inp for inp, _ in pairs])
        backbone_pooling = pooling
        meta["pooling"] = pooling
    stats: dict[str, Any] = {}
    # One thread, no GPU and no cluster named: nothing to distribute, so the encoder runs in this process (a Ray
    # actor's process start and its second torch import were most of a small embed job's fixed cost).
    local = gpus == 0 and threads <= 1 and resolve_address(ray_address) is None
    print("embed: in this process (one CPU thread, no cluster named)" if local else
          "embed: on a Ray actor pool", flush=True)
    with contextlib.nullcontext() if local else ray_session(num_cpus=max(1, threads), num_gpus=gpus,
                                                             address=ray_address):
        if local:
            actors: list[Any] = [InProcess(EncoderActor(str(encoder_path), 1, False) if backbone_pooling is None
                                           else BackboneActor(str(encoder_path), backbone_pooling, 1, False))]
        else:
            actors = start_actors(str(encoder_path), threads, gpus, backbone_pooling)
        for inp, out in pairs:
            start = time.perf_counter()
            rows = embed_table(actors, inp, out, specs[inp], batch_size, {**meta, "source": str(inp)})
            seconds = time.perf_counter() - start
            stats[str(inp)] = {"rows": rows, "seconds": seconds, "rows_per_s": rows / max(seconds, 1e-9)}
            print(f"embed: wrote {out} ({rows} rows, {rows / max(seconds, 1e-9):.0f} rows/s)", flush=True)
    return stats
