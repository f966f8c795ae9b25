"""Pretraining checkpoints that are safe to resume from: plain data, a manifest of checksums, nothing unpickled.

A checkpoint is a folder ``<work>/checkpoints/step-<N>/`` holding

- ``model.pt``: the state dicts of the model, optimiser and EMA target (tensors in plain dicts and lists), read
  back only with ``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler that builds tensors and
  primitive containers and refuses everything else, so a tampered file cannot run code;
- ``rng<rank>.json``: every rank's random state as JSON (the torch generator's bytes in base64 and numpy's
  bit-generator state as integers);
- ``manifest.json``, written last by rank 0: step, epoch, history, world size and the SHA-256 of every file.

A folder without a manifest is incomplete (a job killed while writing it) and is removed. Before resuming, the
driver checks the newest complete checkpoint: every file present, every checksum right, the model readable with
``weights_only=True``, every random state well formed. One that fails is reported by name and set aside as
``step-<N>.rejected`` (kept for a post-mortem until the job succeeds and its work folder goes); the next older
one is tried, and with none left the job starts afresh. The two newest complete checkpoints are kept, so one
damaged file costs one checkpoint interval, not the run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
MODEL = "model.pt"
KEEP = 2  # complete checkpoints kept: the newest, and one to fall back to


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:09d}"


def rng_file(rank: int) -> str:
    return f"rng{rank}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_rank_state(folder: Path, rank: int, generator: Any, order_rng: np.random.Generator) -> None:
    """Write one rank's random state (torch generator and numpy bit generator) as JSON."""
    state = {"torch_generator": base64.b64encode(generator.get_state().numpy().tobytes()).decode("ascii"),
             "numpy_bit_generator": order_rng.bit_generator.state}
    _replace_atomically(folder / rng_file(rank), lambda p: p.write_text(json.dumps(state)))


def save_model(folder: Path, state: dict[str, Any]) -> None:
    import torch

    _replace_atomically(folder / MODEL, lambda p: torch.save(state, p))


def save_manifest(folder: Path, step: int, epoch: int, history: list[dict[str, float]], world: int) -> None:
    """Mark a checkpoint complete: checksums of every file, written last (after every rank has written)."""
    files = [MODEL, *(rng_file(r) for r in range(world))]
    manifest = {"step": step, "epoch": epoch, "world_size": world, "history": history,
                "sha256": {name: _sha256(folder / name) for name in files}}
    _replace_atomically(folder / MANIFEST, lambda p: p.write_text(json.dumps(manifest)))


def prune(root: Path, keep: int = KEEP) -> None:
    """Remove all but the ``keep`` newest complete checkpoints (and any incomplete older ones)."""
    complete = [d for d in sorted(root.glob("step-*")) if d.is_dir() and d.suffix == "" and (d / MANIFEST).exists()]
    if len(complete) <= keep:
        return
    oldest_kept = complete[-keep].name
    for folder in sorted(root.glob("step-*")):  # rejected ones (step-N.rejected) stay for a post-mortem
        if folder.is_dir() and folder.suffix == "" and folder.name < oldest_kept:
            shutil.rmtree(folder, ignore_errors=True)


class CheckpointRejected(Exception):
    """A checkpoint file is missing, altered or unreadable (the message names the file)."""


def verify(folder: Path, world: int) -> dict[str, Any]:
    """Check one complete checkpoint and return its manifest; raise :class:`CheckpointRejected` otherwise."""
    import torch

    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        sums, step = dict(manifest["sha256"]), int(manifest["step"])
        int(manifest["epoch"]), list(manifest["history"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointRejected(f"{folder / MANIFEST} is not a readable manifest ({err})") from None
    if manifest.get("world_size") != world:
        raise CheckpointRejected(f"{folder / MANIFEST} was written by {manifest.get('world_size')} workers, "
                                 f"this job has {world}")
    for name in [MODEL, *(rng_file(r) for r in range(world))]:
        path = folder / name
        if not path.is_file():
            raise CheckpointRejected(f"{path} is missing")
        if sums.get(name) != _sha256(path):
            raise CheckpointRejected(f"{path} does not match its checksum in {MANIFEST} (altered or truncated)")
    try:
        state = torch.load(folder / MODEL, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "module" not in state or "optimizer" not in state:
            raise ValueError("it holds no model and optimizer state")
    except Exception as err:  # the unpickler raises many types: each means refuse
        raise CheckpointRejected(f"{folder / MODEL} was refused by the weights-only loader "
                                 f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    for rank in range(world):
        try:
            load_rank_state(folder, rank)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointRejected(f"{folder / rng_file(rank)} is not a valid random state ({err})") from None
    manifest["step"] = step
    return manifest


def latest_good(root: Path, world: int, log: Callable[[str], None]) -> Path | None:
    """The newest checkpoint under ``root`` that passes :func:`verify`; rejected ones are set aside and reported."""
    if not root.is_dir():
        return None
    for folder in sorted((d for d in root.glob("step-*") if d.is_dir() and d.suffix == ""), reverse=True):
        if not (folder / MANIFEST).exists():
            log(f"pretrain: removing the incomplete checkpoint {folder} (the job stopped while writing it)")
            shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            verify(folder, world)
            return folder
        except CheckpointRejected as err:
            aside = folder.with_name(folder.name + ".rejected")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(folder, aside)
            log(f"pretrain: warning: checkpoint rejected: {err}; set aside as {aside}, trying an older one")
    return None


def load_rank_state(folder: Path, rank: int) -> tuple[Any, dict[str, Any]]:
    """One rank's random state: (torch ByteTensor for ``Generator.set_state``, numpy bit-generator state)."""
    import torch

    state = json.loads((folder / rng_file(rank)).read_text())
    raw = base64.b64decode(state["torch_generator"], validate=True)
    order = state["numpy_bit_generator"]
    if not isinstance(order, dict) or not isinstance(order.get("bit_generator"), str):
        raise ValueError("numpy_bit_generator is not a bit-generator state")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone(), order


def load_model(folder: Path, device: Any) -> dict[str, Any]:
    """The model/optimiser/target state dicts (weights-only loader: tensors and plain containers only)."""
    import torch

    return torch.load(folder / MODEL, map_location=device, weights_only=True)
