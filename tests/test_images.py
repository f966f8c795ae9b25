"""Image inputs: folder ingest (Pillow), the digits-images built-in, the ResNet backbone, kornia augmentations,
pretraining and embedding on image tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import data_cli
from PIL import Image

from workflow.cli import main
from workflow.config import validate
from workflow.curate.stage import write_selection
from workflow.data import build_dataset, write_dataset
from workflow.data.builtin import PROBE_TEST_ID_OFFSET, PROBE_TRAIN_ID_OFFSET
from workflow.errors import StrataError
from workflow.pretrain.augment import ImageAugment, build_augment
from workflow.pretrain.methods import METHODS, Method, resolved
from workflow.pretrain.models import ResNetEncoder, build_encoder, load_encoder, save_encoder
from workflow.pretrain.optim import build_optimizer
from workflow.pretrain.train import run_pretrain
from workflow.tables import read_metadata, read_table, write_table

COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "eel": (0, 0, 255)}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return validate(dict(kwargs), "dataset", source="test")


def _make_folder(root: Path, per_class: int = 10, classes: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """One subfolder per class; each image is the class colour (so labels can be read back from pixels),
    of varying size and format, one in a nested folder."""
    for i, (name, colour) in enumerate((classes or COLOURS).items()):
        (root / name / "nested").mkdir(parents=True)
        for j in range(per_class):
            img = Image.new("RGB", (20 + j, 14 + 2 * i), colour)
            sub = root / name / "nested" if j == 0 else root / name
            img.save(sub / f"{name}{j:02d}.{'jpg' if j % 3 == 1 else 'png'}")
    (root / "cat" / "README.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"ignored: hidden")
    return root


def _outputs(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return {s: str(folder / f"{s}.parquet") for s in ("pool", "probe_train", "probe_test")}


# --------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------


def test_folder_with_class_subfolders_holds_out_balanced_probes(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs")
    rc, paths = data_cli({"kind": "image-folder", "path": str(root), "image_size": [6, 8],
                          "probe_test_per_class": 2, "probe_train_per_class": 3, "seed": 1}, tmp_path / "out", "imgs")
    assert rc == 0
    info = json.loads(paths["info"].read_text())
    assert info["classes"] == ["cat", "dog", "eel"] and info["image_shape"] == [3, 6, 8]
    assert info["sizes"] == {"pool": 15, "probe_train": 9, "probe_test": 6}
    assert info["n_skipped"] == 0 and info["n_ignored_files"] == 1  # README.txt (hidden files are not counted)
    files = info["files"]
    assert len(set(files["pool"]) | set(files["probe_train"]) | set(files["probe_test"])) == 30  # disjoint
    assert "cat/nested/cat00.png" in files["pool"] + files["probe_train"] + files["probe_test"]
    for split, per_class, offset in (("probe_train", 3, PROBE_TRAIN_ID_OFFSET),
                                     ("probe_test", 2, PROBE_TEST_ID_OFFSET)):
        table = read_table(paths[split], expected_dim=3 * 6 * 8, require_labels=True)
        np.testing.assert_array_equal(np.bincount(table.labels), [per_class] * 3)
        np.testing.assert_array_equal(table.ids, offset + np.arange(len(table)))
    pool = read_table(paths["pool"])
    meta = read_metadata(paths["pool"])
    assert meta["input_kind"] == "image" and meta["image_shape"] == [3, 6, 8]
    assert meta["classes"] == ["cat", "dog", "eel"]
    # Channel-major pixels in [0, 1]: an image of class c is its colour in every pixel (JPEG: nearly).
    images = pool.vectors.reshape(-1, 3, 6, 8)
    for row, label in enumerate(pool.labels):
        expected = np.array(COLOURS[["cat", "dog", "eel"][label]]) / 255.0
        np.testing.assert_allclose(images[row].mean(axis=(1, 2)), expected, atol=0.03)
        assert files["pool"][row].startswith(["cat", "dog", "eel"][label] + "/")
    # The same folder and seed give the same tables.
    rc, again = data_cli({"kind": "image-folder", "path": str(root), "image_size": [6, 8],
                          "probe_test_per_class": 2, "probe_train_per_class": 3, "seed": 1}, tmp_path / "again", "imgs")
    assert rc == 0 and Path(again["pool"]).read_bytes() == Path(paths["pool"]).read_bytes()


def test_flat_pool_with_probe_folders_and_grayscale(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for j in range(7):
        Image.new("RGB", (40, 20), (j * 30, 100, 50)).save(flat / f"img{j}.png")
    train = _make_folder(tmp_path / "train", per_class=4)
    test = _make_folder(tmp_path / "test", per_class=2, classes={"cat": COLOURS["cat"], "dog": COLOURS["dog"]})
    cfg = _cfg(kind="image-folder", path=str(flat), probe_train_path=str(train), probe_test_path=str(test),
               image_size=5, image_mode="L", resize="stretch")
    written = write_dataset(cfg, "flat", _outputs(tmp_path / "out"), {"dataset": "flat"}, log=lambda m: None)
    assert written.sizes == {"pool": 7, "probe_train": 12, "probe_test": 4}
    assert written.pool_labels is None and written.meta["image_shape"] == [1, 5, 5]
    pool = read_table(tmp_path / "out" / "pool.parquet", expected_dim=25)
    assert pool.labels is None
    gray = pool.vectors.reshape(7, 5, 5)
    expected = np.array([(j * 30 * 299 + 100 * 587 + 50 * 114) / 1000 / 255 for j in range(7)])
    np.testing.assert_allclose(gray.mean(axis=(1, 2)), expected, atol=0.01)  # Pillow's L = ITU-R 601-2 luma
    test_table = read_table(tmp_path / "out" / "probe_test.parquet", require_labels=True)
    assert sorted(np.unique(test_table.labels)) == [0, 1]  # cat, dog in the classes of all folders
    assert written.info["classes"] == ["cat", "dog", "eel"]


@pytest.mark.parametrize(("extra", "field"), [
    ({}, "path"),  # a flat pool and no probe folders: no labelled probes
    ({"probe_train_path": "PROBE"}, "probe_test_path"),
])
def test_folder_config_errors(tmp_path: Path, extra: dict[str, str], field: str) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (4, 4)).save(flat / "a.png")
    extra = {k: str(_make_folder(tmp_path / "probe", 2)) if v == "PROBE" else v for k, v in extra.items()}
    with pytest.raises(StrataError, match=rf"datasets\.flat\.{field}") as err:
        write_dataset(_cfg(kind="image-folder", path=str(flat), **extra), "flat", _outputs(tmp_path / "out"), {})
    assert err.value.fix
    assert not list((tmp_path / "out").iterdir())


def test_folder_mixing_classes_and_loose_images_is_an_error(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", per_class=2)
    Image.new("L", (4, 4)).save(root / "stray.png")
    with pytest.raises(StrataError, match=r"stray\.png") as err:
        write_dataset(_cfg(kind="image-folder", path=str(root)), "x", _outputs(tmp_path / "out"), {})
    assert "class folder" in str(err.value.fix)


def test_corrupt_image_skip_mode_names_and_skips_it(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "imgs", per_class=6)
    (root / "dog" / "x.png").write_bytes(b"\x89PNG garbage, not an image")
    messages: list[str] = []
    cfg = _cfg(kind="image-folder", path=str(root), image_size=4, on_corrupt="skip", probe_test_per_class=1,
               probe_train_per_class=1)
    written = write_dataset(cfg, "x", _outputs(tmp_path / "out"), {}, log=messages.append)
    assert written.info["n_skipped"] == 1
    assert written.info["skipped"][0]["file"] == str(root / "dog" / "x.png")
    assert "cannot identify image file" in written.info["skipped"][0]["reason"]
    warning = [m for m in messages if "WARNING" in m]
    assert len(warning) == 1 and "skipped 1 unreadable image" in warning[0] and "dog/x.png" in warning[0]
    assert sum(written.sizes.values()) == 18  # the 18 readable images, none twice
    assert not any("x.png" in f for files in written.info["files"].values() for f in files)


def test_corrupt_image_fail_mode_cli_exit_2_and_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _make_folder(tmp_path / "imgs", per_class=6)
    (root / "eel" / "x.png").write_bytes(b"garbage bytes")
    truncated = (root / "cat" / "cat03.png").read_bytes()
    (root / "cat" / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(StrataError, match=r"cut\.png|x\.png"):  # default: fail
        write_dataset(_cfg(kind="image-folder", path=str(root)), "x", _outputs(tmp_path / "lib"), {})
    rc, _ = data_cli({"kind": "image-folder", "path": str(root), "image_size": 4}, tmp_path / "out", name="pets")
    assert rc == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("strata data: error: ")
    assert ("x.png" in lines[0] or "cut.png" in lines[0]) and "datasets.pets" in lines[0]
    assert "on_corrupt: skip" in lines[0] and "Traceback" not in lines[0]
    assert list((tmp_path / "out").iterdir()) == []  # no table, no temporary file, no info


# --------------------------------------------------------------------------------------------------
# digits-images
# --------------------------------------------------------------------------------------------------


def test_digits_images_match_digits_splits() -> None:
    images = build_dataset(_cfg(kind="digits-images", image_size=12, seed=3), "d")
    vectors = build_dataset(_cfg(kind="digits", seed=3), "d")
    assert images.input_kind == "image" and images.table_meta["image_shape"] == [1, 12, 12]
    assert images.table_meta["augment"] == {"horizontal_flip": 0.0}
    for split in ("pool", "probe_train", "probe_test"):
        a, b = getattr(images, split), getattr(vectors, split)
        np.testing.assert_array_equal(np.bincount(a.labels), np.bincount(b.labels))  # the same long tail
        if split != "pool":  # the same balanced probes (the pool's noise, and so its order, depends on the width)
            np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.ids, b.ids)
        assert a.vectors.shape == (len(b), 144) and a.vectors.min() >= 0.0 and a.vectors.max() <= 1.0
    assert images.info["class_counts"] == vectors.info["class_counts"]
    # Each probe image is its 8x8 digit upsampled: downsampling it back matches the digit.
    small = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(images.probe_test.vectors).view(-1, 1, 12, 12),
                                                    8).view(-1, 64).numpy()
    corr = [np.corrcoef(s, v)[0, 1] for s, v in zip(small[:20], vectors.probe_test.vectors[:20], strict=True)]
    assert min(corr) > 0.9
    rgb = build_dataset(_cfg(kind="digits-images", image_mode="RGB", image_size=8), "d")
    assert rgb.table_meta["image_shape"] == [3, 8, 8]
    channels = rgb.probe_train.vectors.reshape(-1, 3, 64)
    assert np.array_equal(channels[:, 0], channels[:, 2])


def test_input_kind_image_needs_images() -> None:
    with pytest.raises(StrataError, match=r"datasets\.b\.input_kind"):
        build_dataset(_cfg(kind="blobs", n_max=20, input_kind="image"), "b")


def test_schema_rejects_unknown_image_keys() -> None:
    with pytest.raises(StrataError, match="flip"):
        validate({"method": "simclr", "image_augment": {"flip": 0.5}}, "ssl")
    with pytest.raises(StrataError, match="image_mode"):
        _cfg(kind="image-folder", path="x", image_mode="CMYK")


# --------------------------------------------------------------------------------------------------
# the ResNet backbone
# --------------------------------------------------------------------------------------------------


def test_resnet_forward_shapes_and_safetensors_round_trip(tmp_path: Path) -> None:
    spec = {"input_kind": "image", "input_dim": 3 * 10 * 12, "embedding_dim": 24, "image_shape": [3, 10, 12],
            "widths": [8, 16, 16], "blocks": [1, 2, 1]}
    torch.manual_seed(0)
    model = build_encoder(spec)
    assert isinstance(model, ResNetEncoder)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) >= 8
    x = torch.rand(5, 3 * 10 * 12)
    assert model(x).shape == (5, 24)
    model(torch.rand(16, 3 * 10 * 12)).sum().backward()  # train mode updates BN statistics
    model.eval()
    with torch.no_grad():
        flat, chw = model(x), model(x.view(5, 3, 10, 12))
    torch.testing.assert_close(flat, chw)
    path = tmp_path / "encoder.safetensors"
    save_encoder(model, spec, str(path))
    assert b"pickle" not in path.read_bytes()[:200]
    loaded, loaded_spec = load_encoder(str(path))
    assert loaded_spec == spec
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), flat, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not hold"):
        build_encoder({**spec, "input_dim": 100})


# --------------------------------------------------------------------------------------------------
# kornia augmentations
# --------------------------------------------------------------------------------------------------


def test_image_augment_shape_dtype_range_and_seeding() -> None:
    aug = build_augment("image", [3, 16, 16], {"blur_probability": 0.5, "horizontal_flip": 0.5})
    assert isinstance(aug, ImageAugment) and aug.blur_kernel == 3
    x = torch.rand(32, 3 * 16 * 16, generator=torch.Generator().manual_seed(0))
    a = aug(x, torch.Generator().manual_seed(7))
    assert a.shape == x.shape and a.dtype == x.dtype and not torch.equal(a, x)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and torch.isfinite(a).all()
    torch.testing.assert_close(aug(x, torch.Generator().manual_seed(7)), a, rtol=0, atol=0)
    assert not torch.equal(aug(x, torch.Generator().manual_seed(8)), a)
    gen = torch.Generator().manual_seed(7)
    assert not torch.equal(aug(x, gen), aug(x, gen))  # two views of a batch differ
    four_d = aug(x.view(32, 3, 16, 16), torch.Generator().manual_seed(7))
    assert four_d.shape == (32, 3, 16, 16)
    torch.testing.assert_close(four_d.reshape(32, -1), a, rtol=0, atol=0)
    gray = build_augment("image", [1, 8, 8])(torch.rand(4, 64), torch.Generator().manual_seed(0))
    assert gray.shape == (4, 64)


def _only(**on: Any) -> dict[str, Any]:
    off = {"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "horizontal_flip": 0.0,
           "color_jitter_probability": 0.0, "grayscale_probability": 0.0, "blur_probability": 0.0}
    return {**off, **on}


def test_image_augment_operations_on_hand_cases() -> None:
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(build_augment("image", [3, 8, 8], _only())(x, gen), x)  # everything off: identity
    flipped = build_augment("image", [3, 8, 8], _only(horizontal_flip=1.0))(x, gen)
    assert torch.equal(flipped, torch.flip(x, dims=[-1]))
    gray = build_augment("image", [3, 8, 8], _only(grayscale_probability=1.0))(x, gen)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(gray[:, c], luma, rtol=0, atol=1e-3)
    ramp = torch.linspace(0, 1, 16).repeat(16, 1).view(1, 1, 16, 16).repeat(8, 1, 1, 1)
    crops = build_augment("image", [1, 16, 16], _only(crop_scale=[0.25, 0.25]))(ramp, gen)
    # A quarter-area crop of a horizontal ramp, resized back: still a ramp, steeper by about 2 (ratio in [3/4, 4/3]).
    slopes = (crops[:, 0, :, -1] - crops[:, 0, :, 0]).mean(dim=1)
    assert ((slopes > 0.35) & (slopes < 0.65)).all()
    blurred = build_augment("image", [1, 16, 16], _only(blur_probability=1.0, blur_sigma=[2.0, 2.0]))
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float().view(1, 1, 16, 16)
    assert float(blurred(checker, gen).std()) < 0.2 * float(checker.std())
    jitter = build_augment("image", [3, 8, 8], _only(color_jitter_probability=1.0, color_jitter_strength=0.5))
    jittered = jitter(x, gen)
    assert not torch.equal(jittered, x) and float(jittered.min()) >= 0 and float(jittered.max()) <= 1


def _affine_draws(b: int, seed: int) -> torch.Tensor:
    """The affine view's draws (angle, x shift, y shift in [-1, 1)) for a seed: after the crop's (10 tries of area
    and of ratio, then the position, drawn even when every crop is the whole image)."""
    gen = torch.Generator().manual_seed(seed)
    torch.rand(b, 10, generator=gen), torch.rand(b, 10, generator=gen), torch.rand(b, 2, generator=gen)
    return (2 * torch.rand(b, 3, generator=gen) - 1).double()


def test_image_augment_rotation_and_shift_move_a_blob_where_the_draws_say() -> None:
    """The affine view against an independent computation: the centroid of a Gaussian blob moves as a rotation by
    the drawn angle (counter-clockwise as displayed) about the centre, then the drawn shift in whole pixels."""
    side, c = 32, 15.5
    yy, xx = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                            indexing="ij")
    x0, y0 = 21.0, 12.0  # off centre, so that a rotation moves it
    blob = torch.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5**2)).float().view(1, 1, side, side)
    blob = blob.repeat(16, 1, 1, 1)
    aug = build_augment("image", [1, side, side], _only(rotation_degrees=30.0, translate=0.1))
    out = aug(blob, torch.Generator().manual_seed(3))[:, 0].double()
    u = _affine_draws(16, 3)
    theta = torch.deg2rad(u[:, 0] * 30.0)
    shift = torch.round(u[:, 1:] * 0.1 * side)
    want_x = c + torch.cos(theta) * (x0 - c) + torch.sin(theta) * (y0 - c) + shift[:, 0]
    want_y = c - torch.sin(theta) * (x0 - c) + torch.cos(theta) * (y0 - c) + shift[:, 1]
    mass = out.sum(dim=(1, 2))
    got_x, got_y = (out * xx).sum(dim=(1, 2)) / mass, (out * yy).sum(dim=(1, 2)) / mass
    assert float(u[:, 0].abs().max()) > 0.5 and float(shift.abs().max()) >= 2  # the case moves the blob far
    torch.testing.assert_close(got_x, want_x, rtol=0, atol=0.05)
    torch.testing.assert_close(got_y, want_y, rtol=0, atol=0.05)
    # A shift alone in whole pixels moves the image exactly (zeros come in at the edge).
    shifted = build_augment("image", [1, side, side], _only(translate=0.1))(blob[:1], torch.Generator().manual_seed(5))
    d = torch.round(_affine_draws(1, 5)[0, 1:] * 0.1 * side)
    want = torch.roll(blob[0, 0], shifts=(int(d[1]), int(d[0])), dims=(0, 1))
    torch.testing.assert_close(shifted[0, 0], want, rtol=0, atol=1e-5)
    # Off (the default): no draw of its own, so configs without it keep their views.
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    off = build_augment("image", [1, side, side], _only())
    assert off._affine(blob, gen) is blob and torch.equal(gen.get_state(), state)


# --------------------------------------------------------------------------------------------------
# pretraining and embedding on images
# --------------------------------------------------------------------------------------------------


def test_simclr_trains_on_digits_images_in_process() -> None:
    splits = build_dataset(_cfg(kind="digits-images", image_size=12), "d")
    params = resolved(validate({"method": "simclr", "steps": 4, "projector_hidden_dim": 32, "embedding_dim": 16,
                                "resnet_widths": [8, 16], "resnet_blocks": [1, 1]}, "ssl"), len(splits.pool))
    spec = {"input_kind": "image", "input_dim": 144, "embedding_dim": 16, "image_shape": [1, 12, 12],
            "widths": [8, 16], "blocks": [1, 1]}
    torch.manual_seed(0)
    method = Method(build_encoder(spec), params, 16)
    opt = build_optimizer(params["optimizer"], method.module.parameters(), 1e-3, 0.0)
    augment = build_augment("image", spec["image_shape"], {"horizontal_flip": 0.0})
    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(splits.pool.vectors[:64])
    losses = []
    for step in range(4):
        out = method.train_step(method.module, opt, augment(x, gen), augment(x, gen), step, 4, 1e-3)
        losses.append(out.scalars()["loss"])
    assert all(np.isfinite(losses)) and losses[0] > 0


@pytest.mark.parametrize("name", METHODS)
def test_every_method_takes_a_step_on_images(name: str) -> None:
    params = resolved(validate({"method": name, "steps": 2, "projector_hidden_dim": 16, "embedding_dim": 8}, "ssl"),
                      100)
    spec = {"input_kind": "image", "input_dim": 3 * 8 * 8, "embedding_dim": 8, "image_shape": [3, 8, 8],
            "widths": [4, 8], "blocks": [1, 1]}
    torch.manual_seed(0)
    method = Method(build_encoder(spec), params, 8)
    opt = build_optimizer(params["optimizer"], method.module.parameters(), 1e-3, 0.0)
    augment = build_augment("image", spec["image_shape"])
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3 * 8 * 8, generator=gen)
    for step in range(2):
        v0, v1 = (augment(x, gen), augment(x, gen)) if method.uses_augmentation else (x, x.roll(1, 0))
        out = method.train_step(method.module, opt, v0, v1, step, 2, 1e-3)
        assert all(np.isfinite(v) for v in out.scalars().values())


def test_pretrain_and_embed_cli_on_digits_images(tmp_path: Path) -> None:
    splits = build_dataset(_cfg(kind="digits-images", image_size=8, n_max=40, imbalance_ratio=4), "d")
    meta = {"input_kind": "image", **splits.table_meta}
    pool, probe = tmp_path / "pool.parquet", tmp_path / "probe_test.parquet"
    write_table(splits.pool, pool, metadata=meta)
    write_table(splits.probe_test, probe, metadata=meta)
    selection = tmp_path / "selection.parquet"
    write_selection(splits.pool, np.arange(len(splits.pool)), None, str(selection))
    params = validate({"method": "simclr", "steps": 3, "batch_size": 32, "embedding_dim": 12,
                       "projector_hidden_dim": 16, "resnet_widths": [4, 8], "resnet_blocks": [1, 1]}, "ssl")
    encoder = tmp_path / "enc" / "encoder.safetensors"
    history = run_pretrain(str(pool), str(selection), str(encoder), str(tmp_path / "enc" / "history.parquet"),
                           params, seed=0, threads=1, work_root=str(tmp_path / "work"))
    assert history[-1]["step"] == 3 and np.isfinite(history[-1]["loss"])
    _, spec = load_encoder(str(encoder))
    assert spec["image_shape"] == [1, 8, 8] and spec["widths"] == [4, 8]
    out = tmp_path / "emb" / "probe_test.parquet"
    rc = main(["embed", "--encoder", str(encoder), "--input", str(probe), "--output", str(out),
               "--batch-size", "64", "--threads", "1"])
    assert rc == 0
    emb = read_table(out, expected_dim=12, require_labels=True)
    np.testing.assert_array_equal(emb.ids, splits.probe_test.ids)
    np.testing.assert_array_equal(emb.labels, splits.probe_test.labels)
    assert np.isfinite(emb.vectors).all()
    # Another image shape with the same number of values is refused, naming the table.
    other = tmp_path / "other.parquet"
    write_table(splits.probe_test, other, metadata={"input_kind": "image", "image_shape": [4, 4, 4]})
    rc = main(["embed", "--encoder", str(encoder), "--input", str(other), "--output", str(tmp_path / "o.parquet")])
    assert rc == 2 and not (tmp_path / "o.parquet").exists()
