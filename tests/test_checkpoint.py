"""Pretraining checkpoints: nothing in them runs code, a damaged one is set aside, the job owns its work folder."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from workflow.errors import StrataError
from workflow.pretrain import checkpoint
from workflow.pretrain.train import OWNER_FILE, _checkpoint, work_dir_lock


class _RunsCode:
    """A pickle payload that would create ``marker`` when unpickled by a full (unsafe) loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "code ran"))  # type: ignore[return-value]


def _write(root: Path, step: int, world: int = 1, seed: int = 0) -> Path:
    """A real checkpoint of a small model, optimiser and random states (the functions train.py uses)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    folder = checkpoint.step_dir(root, step)
    folder.mkdir(parents=True)
    for rank in range(world):
        gen = torch.Generator().manual_seed(seed * 10 + rank)
        torch.rand(5, generator=gen)
        order = np.random.default_rng(seed)
        order.permutation(7)
        checkpoint.save_rank_state(folder, rank, gen, order)
    checkpoint.save_model(folder, {"module": model.state_dict(), "optimizer": optimizer.state_dict()})
    checkpoint.save_manifest(folder, step, step // 2, [{"step": float(step), "loss": 1.0}], world)
    return folder


def _refresh_checksum(folder: Path, name: str) -> None:
    """What an attacker who can write the folder does: make the manifest agree with the altered file."""
    manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
    manifest["sha256"][name] = checkpoint._sha256(folder / name)
    (folder / checkpoint.MANIFEST).write_text(json.dumps(manifest))


def test_round_trip_restores_every_random_state(tmp_path: Path) -> None:
    folder = _write(tmp_path, 10, world=2)
    assert checkpoint.verify(folder, 2)["step"] == 10
    for rank in range(2):
        gen_state, order_state = checkpoint.load_rank_state(folder, rank)
        gen = torch.Generator().manual_seed(rank)
        gen.set_state(gen_state)
        expected = torch.Generator().manual_seed(rank)
        torch.rand(5, generator=expected)
        assert torch.equal(torch.rand(8, generator=gen), torch.rand(8, generator=expected))
        order = np.random.default_rng(123)
        order.bit_generator.state = order_state
        reference = np.random.default_rng(0)
        reference.permutation(7)
        assert np.array_equal(order.permutation(50), reference.permutation(50))
    state = checkpoint.load_model(folder, "cpu")
    assert set(state) == {"module", "optimizer"}


@pytest.mark.parametrize("name", ["model.pt", "rng0.json"])
def test_a_pickle_payload_never_runs(tmp_path: Path, name: str) -> None:
    folder = _write(tmp_path, 10)
    marker = tmp_path / "pwned"
    if name == "model.pt":
        torch.save({"module": _RunsCode(marker), "optimizer": {}}, folder / name)
    else:
        (folder / name).write_bytes(pickle.dumps(_RunsCode(marker)))
    _refresh_checksum(folder, name)
    with pytest.raises(checkpoint.CheckpointRejected, match=name):
        checkpoint.verify(folder, 1)
    messages: list[str] = []
    assert checkpoint.latest_good(tmp_path, 1, messages.append) is None
    assert not marker.exists()
    assert (tmp_path / (folder.name + ".rejected")).is_dir() and not folder.exists()
    assert name in messages[0] and "set aside" in messages[0]


@pytest.mark.parametrize("damage", ["truncate", "empty", "delete", "flip"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, damage: str) -> None:
    older, newer = _write(tmp_path, 10), _write(tmp_path, 20, seed=1)
    target = newer / "model.pt"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "delete":
        target.unlink()
    else:
        target.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    messages: list[str] = []
    assert checkpoint.latest_good(tmp_path, 1, messages.append) == older
    assert len(messages) == 1 and str(target) in messages[0]


def test_bad_manifest_world_size_and_random_state_are_rejected(tmp_path: Path) -> None:
    folder = _write(tmp_path, 10, world=2)
    with pytest.raises(checkpoint.CheckpointRejected, match="2 workers, this job has 1"):
        checkpoint.verify(folder, 1)
    (folder / "rng1.json").write_text(json.dumps({"torch_generator": "not base64!", "numpy_bit_generator": {}}))
    _refresh_checksum(folder, "rng1.json")
    with pytest.raises(checkpoint.CheckpointRejected, match=r"rng1\.json is not a valid random state"):
        checkpoint.verify(folder, 2)
    (folder / checkpoint.MANIFEST).write_text("{")
    with pytest.raises(checkpoint.CheckpointRejected, match="not a readable manifest"):
        checkpoint.verify(folder, 2)


def test_incomplete_checkpoints_are_removed_and_old_ones_pruned(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _write(tmp_path, step)
    (tmp_path / "step-000000030.rejected").mkdir()  # set aside earlier: neither counted nor removed
    (tmp_path / "step-000000030.rejected" / checkpoint.MANIFEST).write_text("{}")
    checkpoint.prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000020", "step-000000030",
                                                          "step-000000030.rejected"]
    shutil.rmtree(tmp_path / "step-000000030.rejected")
    partial = checkpoint.step_dir(tmp_path, 40)
    partial.mkdir()
    (partial / "rng0.json").write_text("{}")
    messages: list[str] = []
    assert checkpoint.latest_good(tmp_path, 1, messages.append) == checkpoint.step_dir(tmp_path, 30)
    assert not partial.exists() and "incomplete" in messages[0]


def test_one_job_owns_a_work_folder(tmp_path: Path) -> None:
    work = tmp_path / "pretrain-job"
    with work_dir_lock(work):
        with pytest.raises(StrataError, match=f"pid {os.getpid()}") as err, work_dir_lock(work):
            pass
        assert "pretrain-job.lock" in str(err.value)
    with work_dir_lock(work):  # released: the next job takes it
        pass


def test_an_orphaned_worker_stops_before_writing(tmp_path: Path) -> None:
    (tmp_path / OWNER_FILE).write_text("new-job")
    with pytest.raises(RuntimeError, match="orphaned worker stops"):
        _checkpoint(tmp_path / "checkpoints", 0, 1, None, None, None, np.random.default_rng(0), 1, 1, [], None,
                    owner=(tmp_path / OWNER_FILE, "old-job"))
    assert not (tmp_path / "checkpoints").exists()
