"""`strata embed`: a one-thread CPU job embeds in its own process, a larger job on a Ray actor pool, same vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workflow.cli import main
from workflow.pretrain.models import build_encoder, save_encoder
from workflow.tables import read_table


@pytest.fixture(scope="module")
def encoder(tiny_pool: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP encoder with random weights for the tiny pool's 8-wide vectors."""
    torch.manual_seed(0)
    spec = {"input_kind": "vector", "input_dim": 8, "embedding_dim": 4}
    path = tmp_path_factory.mktemp("encoder") / "encoder.safetensors"
    save_encoder(build_encoder(spec), spec, str(path))
    return path


@pytest.mark.parametrize("threads", [1, 2])
def test_embed_in_process_and_on_ray_write_the_encoder_s_vectors(
        tiny_pool: tuple[Path, Path], encoder: Path, tmp_path: Path, threads: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    pool, _ = tiny_pool
    out = tmp_path / "pool_emb.parquet"
    rc = main(["embed", "--encoder", str(encoder), "--input", str(pool), "--output", str(out),
               "--threads", str(threads), "--batch-size", "64"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert ("embed: in this process" in printed) == (threads == 1)
    assert ("embed: on a Ray actor pool" in printed) == (threads > 1)
    emb, src = read_table(out), read_table(pool)
    np.testing.assert_array_equal(emb.ids, src.ids)  # order and labels kept, batch by batch
    np.testing.assert_array_equal(emb.labels, src.labels)
    # Independent computation: the saved weights applied to the whole table at once.
    from workflow.pretrain.models import load_encoder

    model, _ = load_encoder(str(encoder))
    with torch.inference_mode():
        expected = model(torch.as_tensor(src.vectors)).numpy()
    np.testing.assert_allclose(emb.vectors, expected, rtol=1e-5, atol=1e-6)
