"""Pretrained backbones from local files (issue 18): tiny transformers models with random weights saved with
``save_pretrained`` and a TorchScript file, loaded by path with nothing downloaded; their embeddings through the
embed stage and a curation in their space; and the bad inputs (weights that do not fit, an unknown model, a
hub name, vectors for an image model): one line, exit status 2, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from workflow.backbones import load_backbone
from workflow.cli import main
from workflow.errors import StrataError
from workflow.tables import VectorTable, read_table, write_table

transformers = pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parent.parent
IMAGE = [1, 8, 8]  # digits-images at image_size 8: one channel


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DINOv2 (with an image processor config), a tiny ViT without its pooler, a TorchScript MLP."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    dino = transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=16, patch_size=8))
    dino.save_pretrained(folder / "dino")
    (folder / "dino" / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "do_center_crop": True, "crop_size": {"height": 16, "width": 16}, "size": {"shortest_edge": 18}}))
    vit = transformers.ViTModel(transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=32, image_size=8, patch_size=4),
                                add_pooling_layer=False)
    vit.save_pretrained(folder / "vit")

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(64, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x.flatten(1))

    torch.jit.script(Flat()).save(str(folder / "flat.pt"))
    torch.save(Flat().state_dict(), folder / "state_dict.pt")
    return {"dino": folder / "dino", "vit": folder / "vit", "flat": folder / "flat.pt",
            "state_dict": folder / "state_dict.pt", "root": folder}


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, int(np.prod(IMAGE)))).astype(np.float32)


def test_transformers_backbones_embed_images_by_path(models) -> None:
    x = _images()
    dino = load_backbone(models["dino"])
    assert dino.kind == "transformers" and dino.image_size == (16, 16) and dino.channels == 3
    auto = dino.embed(x, IMAGE)
    assert auto.shape == (6, 16) and auto.dtype == np.float32 and np.isfinite(auto).all()
    # auto = DINOv2's pooled output, its layer-normed CLS token; the hand computation agrees
    model = transformers.AutoModel.from_pretrained(str(models["dino"]), local_files_only=True).eval()
    pixels = torch.nn.functional.interpolate(torch.as_tensor(x).reshape(6, *IMAGE).expand(-1, 3, -1, -1),
                                             size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        out = model(pixel_values=(pixels - mean) / std)
    np.testing.assert_allclose(auto, out.pooler_output.numpy(), atol=1e-5)
    np.testing.assert_allclose(load_backbone(models["dino"], pooling="mean").embed(x, IMAGE),
                               out.last_hidden_state[:, 1:].mean(1).numpy(), atol=1e-5)
    # a ViT saved without its pooler: auto falls back to the CLS token; asking for the pooler is an error
    vit = load_backbone(models["vit"])
    assert not vit.has_pooler and vit.embed(x, IMAGE).shape == (6, 16)
    with pytest.raises(StrataError, match=r"pooler\.dense\.weight"):
        load_backbone(models["vit"], pooling="pooler")


def test_torchscript_backbone_gets_rows_as_they_are(models) -> None:
    x = _images()
    flat = load_backbone(models["flat"])
    assert flat.kind == "torchscript"
    expected = torch.jit.load(str(models["flat"]))(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(flat.embed(x, IMAGE), expected, atol=1e-6)
    np.testing.assert_allclose(flat.embed(x), expected, atol=1e-6)


def _broken_models(models: dict[str, Path]) -> dict[str, Path]:
    root = models["root"]
    bad = root / "mismatch"
    if not bad.exists():
        shutil.copytree(models["dino"], bad)
        config = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, "mlp_ratio": 4}))
        unknown = root / "unknown"
        shutil.copytree(models["dino"], unknown)
        (unknown / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model"}))
        empty = root / "no_weights"
        empty.mkdir()
        shutil.copy(models["dino"] / "config.json", empty / "config.json")
    return {"mismatch": bad, "unknown": root / "unknown", "no_weights": root / "no_weights"}


@pytest.mark.parametrize(("case", "words"), [
    ("mismatch", "parameter 'encoder.layer.0.mlp.fc1.weight' is [32, 16] in the weights file but [64, 16]"),
    ("unknown", "unknown model type 'no-such-model'"),
    ("no_weights", "cannot load the model weights"),
    ("hub_name", "no such backbone"),
    ("state_dict", "not a TorchScript file"),
])
def test_bad_backbones_are_one_clear_error(models, case: str, words: str) -> None:
    broken = _broken_models(models)
    path = {"hub_name": Path("facebook/dinov2-small"), "state_dict": models["state_dict"]}.get(case) or broken[case]
    with pytest.raises(StrataError) as err:
        load_backbone(path)
    assert err.value.where is not None and str(path) in err.value.where and words in err.value.message


def _image_tables(folder: Path) -> dict[str, Path]:
    """A small labelled image pool (with two pool items copying probe_test images) and its probes."""
    rng = np.random.default_rng(3)
    meta = {"image_shape": IMAGE, "input_kind": "image"}
    pool = rng.random((60, 64)).astype(np.float32)
    probe_train, probe_test = rng.random((20, 64)).astype(np.float32), rng.random((10, 64)).astype(np.float32)
    pool[:2] = probe_test[:2]
    paths = {}
    for name, x, offset in (("pool", pool, 0), ("probe_train", probe_train, 10_000_000),
                            ("probe_test", probe_test, 20_000_000)):
        paths[name] = folder / f"{name}.parquet"
        write_table(VectorTable(np.arange(len(x), dtype=np.int64) + offset, x, np.arange(len(x)) % 3), paths[name],
                    metadata=meta)
    return paths


def _embed(encoder: Path, tables: dict[str, Path], out: Path, *extra: str) -> tuple[int, dict[str, Path]]:
    outputs = {name: out / f"{name}.parquet" for name in tables}
    args = ["embed", "--encoder", str(encoder), "--threads", "2", "--batch-size", "16", *extra]
    for name in tables:
        args += ["--input", str(tables[name]), "--output", str(outputs[name])]
    return main(args), outputs


def test_embed_stage_runs_a_backbone_over_the_pool_and_curation_uses_its_space(models, tmp_path: Path) -> None:
    """`strata embed --encoder <model folder>` (Ray actors) writes the same vectors as the backbone in process;
    `strata curate` with `features: {backbone: ...}` curates on them and checks leakage in that space."""
    tables = _image_tables(tmp_path)
    rc, out = _embed(models["dino"], tables, tmp_path / "features", "--pooling", "cls")
    assert rc == 0
    emb = read_table(out["pool"])
    assert emb.dim == 16 and len(emb) == 60
    np.testing.assert_array_equal(emb.ids, read_table(tables["pool"]).ids)
    expected = load_backbone(models["dino"], pooling="cls").embed(read_table(tables["pool"]).vectors, IMAGE)
    np.testing.assert_allclose(emb.vectors, expected, atol=1e-5)
    features = {"backbone": str(models["dino"]), "pooling": "cls"}
    params = {"method": "kmeans", "n_clusters": [4], "target_size": 20, "n_iters": 5, "features": features}
    stats = tmp_path / "curate" / "stats.json"
    rc = main(["curate", "--pool", str(tables["pool"]), "--features", str(out["pool"]), "--params", json.dumps(params),
               "--probe-train", str(tables["probe_train"]), "--probe-test", str(tables["probe_test"]),
               "--probe-train-features", str(out["probe_train"]), "--probe-test-features", str(out["probe_test"]),
               "--selection", str(tmp_path / "curate" / "selection.parquet"), "--stats", str(stats),
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    result = json.loads(stats.read_text())
    assert result["feature_space"] == "backbone:dino:cls"
    leak = result["leakage"]
    assert leak["near_space"] == "backbone:dino:cls" and leak["exact"] == 2 and leak["near"] >= 2
    assert leak["per_split"]["probe_test"]["exact"] == 2


@pytest.mark.parametrize("case", ["mismatch", "unknown", "vectors"])
def test_embed_stage_bad_backbone_exits_2_before_writing(models, tmp_path: Path, capsys, case: str) -> None:
    tables = _image_tables(tmp_path)
    if case == "vectors":  # an image model on a table of vectors
        write_table(VectorTable(np.arange(5, dtype=np.int64), _images(5)), tables["pool"])
        encoder = models["dino"]
    else:
        encoder = _broken_models(models)[case]
    rc, out = _embed(encoder, {"pool": tables["pool"]}, tmp_path / "features")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("strata embed: error: "), err
    assert str(encoder) in err[0] and "Traceback" not in err[0]
    assert not out["pool"].exists()


def test_workflow_plans_one_embed_job_per_backbone_space(models, tmp_path: Path) -> None:
    """A study curating in a backbone space: embed_backbone embeds the pool and probes once, curate reads them;
    `features: [raw, {backbone: ...}]` makes one curation per space."""
    config: dict[str, Any] = {
        "study": "bb", "seeds": [0, 1],
        "datasets": {"img": {"kind": "digits-images", "n_max": 20, "image_size": 8}},
        "curations": {"random": {"method": "random", "target_size": 30},
                      "hk": {"method": "hkmeans", "target_size": 30, "n_clusters": [6, 2],  # two spaces: a grid
                             "features": ["raw", {"backbone": str(models["dino"]), "name": "dino"}]},
                      "km_dino": {"method": "kmeans", "target_size": 30, "n_clusters": [6],
                                  "features": {"backbone": str(models["dino"]), "name": "dino"}}},
        "ssl": {"simclr": {"method": "simclr", "steps": 5, "batch_size": 16}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                             "--directory", str(tmp_path), "--configfile", str(path), "-n", "-p", "--cores", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert text.count("embed_backbone: the pool and probes of img in the dino space") == 1
    assert f"embed --encoder {models['dino']} --pooling auto" in text
    assert "--features results/bb/img/features/dino/pool.parquet" in text
    assert "--probe-test-features results/bb/img/features/dino/probe_test.parquet" in text
    for curation in ("hk.raw", "hk.dino", "km_dino"):
        assert f"curate: {curation} subset of img, seed 1" in text
