"""Hostile input: every bad file, config, path, permission or unreachable service gets one message, exit 2.

Each case feeds a real bad input (Parquet written by pyarrow, ``.npy`` written by numpy, a truncated safetensors
file, real pickles, an MLflow URI that nothing answers) to a real ``strata`` command and checks the promise of
the README's "Bad input" section:

* the exit status is 2 and no traceback reaches the user;
* stderr is one line that names the file, flag or config key concerned (and says how to fix it);
* nothing is left behind: the case's folder holds exactly what it held before, folders included.

The cases run in process through :func:`workflow.cli.main` (an escaping exception fails the test), a subset
again through the installed ``strata`` console script, and a few study-level cases through ``snakemake``.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_config_refused, data_cli, snakemake

from workflow.cli import main
from workflow.errors import StrataError
from workflow.pretrain.models import build_encoder, save_encoder
from workflow.pretrain.train import work_dir_for, work_dir_lock
from workflow.tables import VectorTable, write_json, write_table

DIM = 8
BLOBS = {"kind": "blobs", "n_max": 30, "imbalance_ratio": 3, "dim": DIM, "probe_train_per_class": 10,
         "probe_test_per_class": 10}
ENCODER_SPEC = {"input_kind": "vector", "input_dim": DIM, "embedding_dim": 4}
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


@dataclass
class Fixtures:
    """Good inputs shared by all cases (built once per session, never written by a case)."""

    pool: Path
    probe_train: Path
    probe_test: Path
    encoder: Path
    selection: Path


@pytest.fixture(scope="session")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    root = tmp_path_factory.mktemp("hostile-inputs")
    rc, paths = data_cli(BLOBS, root / "data", "blobs")
    assert rc == 0
    encoder = root / "encoder.safetensors"
    torch.manual_seed(0)
    save_encoder(build_encoder(ENCODER_SPEC), ENCODER_SPEC, str(encoder))
    selection = root / "selection.parquet"
    assert main(["curate", "--pool", str(paths["pool"]), "--params", '{"method": "random", "target_size": 40}',
                 "--selection", str(selection), "--stats", str(root / "stats.json")]) == 0
    return Fixtures(paths["pool"], paths["probe_train"], paths["probe_test"], encoder, selection)


# --------------------------------------------------------------------------------------------------
# Bad files, written for real
# --------------------------------------------------------------------------------------------------


def _vectors(n: int = 20, dim: int = DIM) -> pa.FixedSizeListArray:
    values = np.random.default_rng(0).random(n * dim).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values), dim)


def _parquet(path: Path, **columns: Any) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _pickle(path: Path, obj: Any = None) -> Path:
    path.write_bytes(pickle.dumps(obj if obj is not None else {"weights": [1.0, 2.0]}))
    return path


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array, allow_pickle=array.dtype == object)
    return path


def _spec(uri: str) -> str:
    return json.dumps({"uri": uri, "experiment": "hostile", "parent_kind": "dataset", "parent_key": "k",
                       "parent_name": "n", "parent_params": {}, "job": "stage/hostile"})


def _blocker(tmp: Path) -> Path:
    """A regular file: no folder can be created under it."""
    path = tmp / "blocker"
    path.write_text("a file, not a folder\n")
    return path


def _data(tmp: Path, params: dict[str, Any], out: Path | None = None) -> list[str]:
    out = out or tmp / "out"
    return ["data", "--name", "u", "--params", json.dumps(params), "--pool", str(out / "pool.parquet"),
            "--probe-train", str(out / "probe_train.parquet"), "--probe-test", str(out / "probe_test.parquet"),
            "--info", str(out / "info.json")]


def _file(fx: Fixtures, path: Path, **extra: Any) -> dict[str, Any]:
    return {"kind": "file", "path": str(path), "probe_train_path": str(fx.probe_train),
            "probe_test_path": str(fx.probe_test), **extra}


def _curate(tmp: Path, fx: Fixtures, *extra: str, pool: Path | None = None,
            params: str = '{"method": "random", "target_size": 10}') -> list[str]:
    return ["curate", "--pool", str(pool or fx.pool), "--params", params, "--selection",
            str(tmp / "out" / "selection.parquet"), "--stats", str(tmp / "out" / "stats.json"),
            "--diagnostics", str(tmp / "out" / "diagnostics"), "--cache-dir", str(tmp / "scratch"), *extra]


def _pretrain(tmp: Path, fx: Fixtures, *extra: str, pool: Path | None = None, selection: Path | None = None,
              encoder: Path | None = None) -> list[str]:
    return ["pretrain", "--pool", str(pool or fx.pool), "--selection", str(selection or fx.selection),
            "--params", '{"method": "simclr", "steps": 2, "batch_size": 8}',
            "--encoder", str(encoder or tmp / "out" / "encoder.safetensors"),
            "--history", str(tmp / "out" / "history.parquet"), "--work-root", str(tmp / "out" / "work"), *extra]


def _embed(tmp: Path, fx: Fixtures, *extra: str, encoder: Path | None = None, inp: Path | None = None,
           out: Path | None = None) -> list[str]:
    return ["embed", "--encoder", str(encoder or fx.encoder), "--input", str(inp or fx.probe_test),
            "--output", str(out or tmp / "out" / "embeddings.parquet"), *extra]


def _evaluate(tmp: Path, fx: Fixtures, *extra: str, train: Path | None = None, out: Path | None = None) -> list[str]:
    return ["evaluate", "--probe-train", str(train or fx.probe_train), "--probe-test", str(fx.probe_test),
            "--output", str(out or tmp / "out" / "metrics.json"), *extra]


def _summarize(tmp: Path, metrics: Path, out: Path | None = None) -> list[str]:
    out = out or tmp / "out"
    return ["summarize", "--metrics", str(metrics), "--csv", str(out / "summary.csv"), "--md", str(out / "summary.md"),
            "--stats", str(out / "summary_stats.csv"), "--png", str(out / "summary.png")]


def _encoder_with_wrong_spec(path: Path) -> Path:
    """A well-formed safetensors file whose spec (embedding_dim 16) does not match its weights (4)."""
    save_encoder(build_encoder(ENCODER_SPEC), {**ENCODER_SPEC, "embedding_dim": 16}, str(path))
    return path


def _image_folder(tmp: Path) -> Path:
    from PIL import Image

    root = tmp / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), color=40 * i).save(root / c / f"{i}.png")
    (root / "a" / "broken.png").write_text("not an image\n")
    return root


# --------------------------------------------------------------------------------------------------
# The cases: (id, build) where build(tmp, fx) -> (argv, words the one error line must hold)
# --------------------------------------------------------------------------------------------------

Build = Callable[[Path, Fixtures], tuple[list[str], list[str]]]


def _cases() -> dict[str, Build]:
    c: dict[str, Build] = {}
    # --- data ---
    c["data-npy-strings"] = lambda t, fx: (_data(t, _file(fx, _npy(t / "s.npy", np.array([["a", "b"]] * 4)))),
                                           ["s.npy", "<U1", "real numbers"])
    c["data-npy-complex"] = lambda t, fx: (
        _data(t, _file(fx, _npy(t / "c.npy", np.ones((20, DIM)) + 1j))), ["c.npy", "complex128"])
    c["data-npy-object-pickle"] = lambda t, fx: (
        _data(t, _file(fx, _npy(t / "o.npy", np.array([{"a": 1}, None], dtype=object)))), ["o.npy", "not a readable"])
    c["data-npy-truncated"] = lambda t, fx: (
        _data(t, _file(fx, _truncated(_npy(t / "full.npy", np.ones((500, DIM), np.float32)), t / "cut.npy"))),
        ["cut.npy", "not a readable"])
    c["data-npy-pickle-under-npy-name"] = lambda t, fx: (
        _data(t, _file(fx, _pickle(t / "p.npy", np.ones((3, 3))))), ["p.npy", "not a readable"])
    c["data-labels-strings"] = lambda t, fx: (
        _data(t, _file(fx, _npy(t / "x.npy", np.ones((20, DIM), np.float32)),
                       labels_path=str(_npy(t / "lab.npy", np.array(["cat"] * 20))))), ["lab.npy", "integers"])
    c["data-labels-fractional"] = lambda t, fx: (
        _data(t, _file(fx, _npy(t / "x.npy", np.ones((20, DIM), np.float32)),
                       labels_path=str(_npy(t / "lab.npy", np.arange(20) + 0.5)))), ["lab.npy", "whole numbers"])
    c["data-parquet-string-labels"] = lambda t, fx: (
        _data(t, _file(fx, _parquet(t / "p.parquet", id=pa.array(np.arange(20)), label=pa.array(["x"] * 20),
                                    vector=_vectors()))), ["p.parquet", "`label`", "string"])
    c["data-parquet-string-vectors"] = lambda t, fx: (
        _data(t, _file(fx, _parquet(t / "p.parquet", id=pa.array(np.arange(3)),
                                    vector=pa.array([["1.0", "2.0"]] * 3)))), ["p.parquet", "'vector'", "string"])
    c["data-parquet-truncated"] = lambda t, fx: (_data(t, _file(fx, _truncated(fx.pool, t / "cut.parquet"))),
                                                 ["cut.parquet", "not a readable Parquet"])
    c["data-probe-string-labels"] = lambda t, fx: (
        _data(t, {**_file(fx, fx.pool), "probe_train_path": str(_parquet(
            t / "probe.parquet", id=pa.array(np.arange(20)), label=pa.array(["x"] * 20), vector=_vectors()))}),
        ["probe.parquet", "`label`"])
    c["data-pool-missing"] = lambda t, fx: (_data(t, _file(fx, t / "absent.parquet")), ["absent.parquet", "not found"])
    c["data-params-file-missing"] = lambda t, fx: (
        ["data", "--name", "u", "--params-file", str(t / "absent.yaml"), *_data(t, {})[5:]], ["absent.yaml"])
    c["data-params-wrong-type"] = lambda t, fx: (_data(t, {**BLOBS, "n_max": "many"}), ["datasets.u", "n_max"])
    c["data-output-folder-under-a-file"] = lambda t, fx: (_data(t, BLOBS, out=_blocker(t) / "out"),
                                                          ["blocker/out", "cannot create"])
    c["data-image-folder-corrupt-image"] = lambda t, fx: (
        _data(t, {"kind": "image-folder", "path": str(_image_folder(t)), "image_size": 8,
                  "probe_train_per_class": 1, "probe_test_per_class": 1}), ["broken.png", "on_corrupt"])
    # --- curate ---
    c["curate-seed-negative"] = lambda t, fx: (_curate(t, fx, "--seed", "-1"), ["--seed", "-1"])
    c["curate-seed-not-a-number"] = lambda t, fx: (_curate(t, fx, "--seed", "one"), ["--seed", "'one'"])
    c["curate-threads-zero"] = lambda t, fx: (_curate(t, fx, "--threads", "0"), ["--threads", "at least 1"])
    c["curate-pool-pickle"] = lambda t, fx: (_curate(t, fx, pool=_pickle(t / "pool.parquet")),
                                             ["pool.parquet", "not a readable Parquet"])
    c["curate-features-other-table"] = lambda t, fx: (_curate(t, fx, "--features", str(fx.probe_test),
                                                              params='{"method": "kmeans", "n_clusters": [4], '
                                                              '"target_size": 10}'), ["--features", "ids"])
    c["curate-unknown-method"] = lambda t, fx: (_curate(t, fx, params='{"method": "best"}'), ["method", "'best'"])
    c["curate-diagnostics-is-a-file"] = lambda t, fx: (
        [*_curate(t, fx)[:-4], "--diagnostics", str(_blocker(t))], ["blocker", "folder"])
    c["curate-tracking-unreachable"] = lambda t, fx: (_curate(t, fx, "--tracking", _spec(UNREACHABLE)),
                                                      [UNREACHABLE, "does not answer"])
    c["curate-tracking-spec-not-json"] = lambda t, fx: (_curate(t, fx, "--tracking", "{uri:"), ["--tracking"])
    c["curate-tracking-sqlite-not-a-database"] = lambda t, fx: (
        _curate(t, fx, "--tracking", _spec(f"sqlite:///{_pickle(t / 'mlflow.db')}")), ["mlflow.db", "not an SQLite"])
    c["curate-tracking-sqlite-folder-impossible"] = lambda t, fx: (
        _curate(t, fx, "--tracking", _spec(f"sqlite:///{_blocker(t)}/mlflow.db")), ["blocker/mlflow.db"])
    # passes the check before the work (an SQLite header) but fails when the job logs: all its outputs go
    c["curate-tracking-fails-after-work"] = lambda t, fx: (
        _curate(t, fx, "--tracking", _spec(f"sqlite:///{_fake_sqlite(t / 'store' / 'mlflow.db')}")),
        ["mlflow.db", "logging to the MLflow tracking store failed"])
    # --- pretrain ---
    c["pretrain-selection-pickle"] = lambda t, fx: (_pretrain(t, fx, selection=_pickle(t / "sel.parquet")),
                                                    ["sel.parquet", "not a readable Parquet"])
    c["pretrain-selection-without-id"] = lambda t, fx: (
        _pretrain(t, fx, selection=_parquet(t / "sel.parquet", row=pa.array([1, 2]))), ["sel.parquet", "`id`"])
    c["pretrain-selection-string-ids"] = lambda t, fx: (
        _pretrain(t, fx, selection=_parquet(t / "sel.parquet", id=pa.array(["a", "b"]))), ["sel.parquet", "string"])
    c["pretrain-selection-foreign-ids"] = lambda t, fx: (
        _pretrain(t, fx, selection=_parquet(t / "sel.parquet", id=pa.array([10**9, 10**9 + 1]))),
        ["sel.parquet", "not in the pool"])
    c["pretrain-threads-zero"] = lambda t, fx: (_pretrain(t, fx, "--threads", "0"), ["--threads"])
    c["pretrain-gpus-negative"] = lambda t, fx: (_pretrain(t, fx, "--gpus", "-1"), ["--gpus"])
    c["pretrain-encoder-folder-under-a-file"] = lambda t, fx: (
        _pretrain(t, fx, encoder=_blocker(t) / "enc" / "encoder.safetensors"), ["blocker/enc"])
    # --- embed ---
    c["embed-encoder-truncated"] = lambda t, fx: (_embed(t, fx, encoder=_truncated(fx.encoder, t / "e.safetensors")),
                                                  ["e.safetensors", "not a readable safetensors"])
    c["embed-encoder-empty"] = lambda t, fx: (_embed(t, fx, encoder=_touch(t / "e.safetensors")),
                                              ["e.safetensors", "not a readable safetensors"])
    c["embed-encoder-is-a-torch-pickle"] = lambda t, fx: (
        _embed(t, fx, encoder=_torch_pickle(t / "e.safetensors")), ["e.safetensors", "not a readable safetensors"])
    c["embed-encoder-is-a-pickle"] = lambda t, fx: (_embed(t, fx, encoder=_pickle(t / "e.safetensors")),
                                                    ["e.safetensors", "not a readable safetensors"])
    c["embed-encoder-spec-does-not-fit"] = lambda t, fx: (
        _embed(t, fx, encoder=_encoder_with_wrong_spec(t / "e.safetensors")), ["e.safetensors", "do not fit"])
    c["embed-encoder-missing"] = lambda t, fx: (_embed(t, fx, encoder=t / "absent.safetensors"),
                                                ["absent.safetensors", "not found"])
    c["embed-input-pickle"] = lambda t, fx: (_embed(t, fx, inp=_pickle(t / "probe.parquet")),
                                             ["probe.parquet", "not a readable Parquet"])
    c["embed-output-is-a-folder"] = lambda t, fx: (_embed(t, fx, out=_folder(t / "outdir")), ["outdir", "folder"])
    c["embed-batch-size-zero"] = lambda t, fx: (_embed(t, fx, "--batch-size", "0"), ["--batch-size"])
    # --- evaluate ---
    c["evaluate-curation-stats-not-json"] = lambda t, fx: (
        _evaluate(t, fx, "--curation-stats", str(_write(t / "stats.json", "{not json"))), ["stats.json", "JSON"])
    c["evaluate-curation-stats-missing"] = lambda t, fx: (
        _evaluate(t, fx, "--curation-stats", str(t / "absent.json")), ["absent.json"])
    c["evaluate-variant-not-json"] = lambda t, fx: (_evaluate(t, fx, "--variant", "[1,"), ["--variant", "JSON"])
    c["evaluate-probe-string-labels"] = lambda t, fx: (
        _evaluate(t, fx, train=_parquet(t / "probe.parquet", id=pa.array(np.arange(20)), label=pa.array(["x"] * 20),
                                        vector=_vectors())), ["probe.parquet", "`label`"])
    c["evaluate-output-folder-under-a-file"] = lambda t, fx: (
        _evaluate(t, fx, out=_blocker(t) / "m" / "metrics.json"), ["blocker/m", "cannot create"])
    # --- summarize ---
    c["summarize-metrics-not-json"] = lambda t, fx: (_summarize(t, _write(t / "metrics.json", "{")), ["metrics.json"])
    c["summarize-metrics-missing"] = lambda t, fx: (_summarize(t, t / "absent.json"), ["absent.json"])
    c["summarize-output-folder-under-a-file"] = lambda t, fx: (
        _summarize(t, _write(t / "metrics.json", "{}"), out=_blocker(t) / "s"), ["blocker/s", "cannot create"])
    # --- plot-training, plot-embeddings ---
    c["plot-training-history-pickle"] = lambda t, fx: (
        ["plot-training", "--history", str(_pickle(t / "history.parquet")), "--output", str(t / "out" / "t.png")],
        ["history.parquet"])
    c["plot-training-history-without-steps"] = lambda t, fx: (
        ["plot-training", "--history", str(fx.pool), "--output", str(t / "out" / "t.png")], [fx.pool.name, "step"])
    c["plot-embeddings-truncated"] = lambda t, fx: (
        ["plot-embeddings", "--embeddings", str(_truncated(fx.probe_test, t / "e.parquet")), "--output",
         str(t / "out" / "m.png")], ["e.parquet", "not a readable Parquet"])
    c["plot-embeddings-max-points-zero"] = lambda t, fx: (
        ["plot-embeddings", "--embeddings", str(fx.probe_test), "--output", str(t / "out" / "m.png"),
         "--max-points", "0"], ["--max-points"])
    # --- compare-embeddings: it draws the maps plot-embeddings saved ---
    c["compare-embeddings-map-pickle"] = lambda t, fx: (
        ["compare-embeddings", "--output", str(t / "out" / "c.png"), "--panel", "hkmeans", "raw",
         str(_pickle(t / "map.parquet")), "-"], ["map.parquet", "cannot read the t-SNE map", "plot_embeddings"])
    c["compare-embeddings-table-not-a-map"] = lambda t, fx: (
        ["compare-embeddings", "--output", str(t / "out" / "c.png"), "--panel", "hkmeans", "raw",
         str(fx.probe_test), "-"], [fx.probe_test.name, "cannot read the t-SNE map"])
    return c


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _torch_pickle(path: Path) -> Path:
    torch.save(build_encoder(ENCODER_SPEC).state_dict(), path)  # what a `torch.save` of the weights gives
    return path


def _table(path: Path, dim: int) -> Path:
    x = np.random.default_rng(0).random((10, dim)).astype(np.float32)
    write_table(VectorTable(ids=np.arange(10), vectors=x, labels=np.arange(10) % 2), path)
    return path


def _fake_sqlite(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 4)
    return path


CASES = _cases()
#: Cases run again through the installed console script (real exit status and stderr of a process).
SUBPROCESS = ["data-npy-complex", "data-output-folder-under-a-file", "curate-seed-negative", "curate-threads-zero",
              "curate-tracking-unreachable", "embed-encoder-truncated", "data-parquet-string-labels",
              "summarize-metrics-not-json"]


def _tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` (folders too) with its size, except scratch space that is no output: the lock
    file beside a tracking store and curate's feature cache (``--cache-dir``, reused by the next run)."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")
            if not p.name.endswith(".lock") and p.relative_to(root).parts[0] != "scratch"}


def _check(rc: int, err: str, command: str, words: list[str], before: dict[str, int], tmp: Path) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"strata {command}: error: "), err
    assert "Fix:" in lines[0], err
    for word in words:
        assert word in lines[0], (word, err)
    assert _tree(tmp) == before, "the failed command left or changed files"


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_in_process(case: str, fx: Fixtures, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # relative defaults (results/.work, caches) land in the checked folder
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv, words = CASES[case](tmp_path, fx)
    before = _tree(tmp_path)
    capsys.readouterr()
    start = time.perf_counter()
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse
        rc = exit_.code
    err = capsys.readouterr().err
    _check(rc, err, argv[0], words, before, tmp_path)
    if "tracking-unreachable" in case:
        assert time.perf_counter() - start < 20


@pytest.mark.parametrize("case", SUBPROCESS)
def test_hostile_input_console_script(case: str, fx: Fixtures, tmp_path: Path) -> None:
    argv, words = CASES[case](tmp_path, fx)
    before = _tree(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.run([str(Path(sys.executable).parent / "strata"), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    _check(proc.returncode, proc.stderr, argv[0], words, before, tmp_path)


def test_a_failed_rerun_removes_its_outputs_and_only_the_pictures_it_wrote(fx: Fixtures, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A failed re-run removes the output files (no stale results next to a failed job), new and old, and from
    the diagnostics folder the pictures it wrote; a store that breaks while logging counts as a failure."""
    argv = _curate(tmp_path, fx, params='{"method": "kmeans", "n_clusters": [4], "target_size": 10}')
    assert main(argv) == 0
    out = tmp_path / "out"
    assert {"selection.parquet", "stats.json", "diagnostics/map.png"} <= set(_tree(out))
    (out / "diagnostics" / "notes.txt").write_text("the user's own file\n")
    assert main([*argv, "--tracking", _spec(f"sqlite:///{_fake_sqlite(tmp_path / 'store' / 'mlflow.db')}")]) == 2
    assert "logging to the MLflow tracking store failed" in capsys.readouterr().err
    assert _tree(out) == {"diagnostics": -1, "diagnostics/notes.txt": 20}


def test_at_least_forty_cases_over_every_stage() -> None:
    assert len(CASES) >= 40
    stages = {case.split("-")[0] for case in CASES} | {"plot-training", "plot-embeddings"}
    assert {"data", "curate", "pretrain", "embed", "evaluate", "summarize", "plot"} <= stages


# --------------------------------------------------------------------------------------------------
# Loaders and checks on their own
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty", "pickle", "torch-pickle", "zeros"])
def test_load_encoder_reports_every_unreadable_file_by_name(damage: str, fx: Fixtures, tmp_path: Path) -> None:
    from workflow.pretrain.models import load_encoder

    path = tmp_path / "encoder.safetensors"
    {"truncated": lambda: _truncated(fx.encoder, path), "empty": lambda: _touch(path),
     "pickle": lambda: _pickle(path), "torch-pickle": lambda: _torch_pickle(path),
     "zeros": lambda: path.write_bytes(bytes(4096))}[damage]()
    with pytest.raises(StrataError) as info:
        load_encoder(str(path))
    assert info.value.where == str(path) and "safetensors" in info.value.message and info.value.fix


def test_tracking_check_gives_up_on_a_silent_server() -> None:
    """A server that accepts the connection but never answers: the check stops after its timeout."""
    from workflow.tracking import check_tracking_uri

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        start = time.perf_counter()
        with pytest.raises(StrataError, match="does not answer within 1 s") as info:
            check_tracking_uri(uri, timeout=1.0)
        assert time.perf_counter() - start < 10
        assert info.value.where == f"tracking store {uri}"


def test_tracking_check_accepts_a_fresh_sqlite_store_without_creating_it(tmp_path: Path) -> None:
    from workflow.tracking import check_tracking_uri

    check_tracking_uri(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027])
def test_outputs_follow_the_umask(umask: int, tmp_path: Path) -> None:
    """Tables, JSON and encoders get 0666 less the umask (not mkstemp's 0600): the group can read results."""
    old = os.umask(umask)
    try:
        _table(tmp_path / "t.parquet", DIM)
        write_json({"a": 1}, tmp_path / "s.json")
        save_encoder(build_encoder(ENCODER_SPEC), ENCODER_SPEC, str(tmp_path / "e.safetensors"))
    finally:
        os.umask(old)
    for name in ("t.parquet", "s.json", "e.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


# --------------------------------------------------------------------------------------------------
# snakemake: a bad study stops with one message, creates nothing, and never creates results/mlflow.db
# --------------------------------------------------------------------------------------------------

STUDY = """\
seeds: [0]
datasets:
  u: {dataset}
curations:
  none: {{method: none}}
  random: {{method: random, target_size: 20}}
ssl:
  simclr: {{method: simclr, steps: 2, batch_size: 8}}
{extra}"""


def _study(tmp: Path, dataset: str, extra: str = "") -> Path:
    path = tmp / "study.yaml"
    path.write_text(STUDY.format(dataset=dataset, extra=extra))
    return path


BLOBS_YAML = "{kind: blobs, n_max: 30, dim: 8, probe_train_per_class: 10, probe_test_per_class: 10}"


@pytest.mark.parametrize(("case", "dataset", "extra", "words"), [
    ("unknown-key", "{kind: blobs, n_max: 30, n_mx: 3}", "", ["datasets.u", "n_mx"]),
    ("negative-seed", BLOBS_YAML, "", ["seeds.0", "-1"]),
    ("unknown-preset", BLOBS_YAML, "", ["ssl.simclr.preset", "big-data", "small-data"]),
], ids=["unknown-key", "negative-seed", "unknown-preset"])
def test_snakemake_bad_config(case: str, dataset: str, extra: str, words: list[str], tmp_path: Path) -> None:
    config = _study(tmp_path, dataset, extra)
    if case == "negative-seed":
        config.write_text(config.read_text().replace("seeds: [0]", "seeds: [-1]"))
    if case == "unknown-preset":
        config.write_text(config.read_text().replace("batch_size: 8}", "batch_size: 8, preset: big-data}"))
    assert_config_refused(config, tmp_path / "work", words)


@pytest.mark.parametrize(("case", "words"), [
    ("complex-npy", ["pool.npy", "complex"]),
    ("unreachable-tracking", [UNREACHABLE, "does not answer"]),
], ids=["complex-npy", "unreachable-tracking"])
def test_snakemake_failing_job(case: str, words: list[str], tmp_path: Path) -> None:
    """A job that fails on bad input or an unreachable store: its message in the output, no outputs, no store."""
    if case == "complex-npy":
        pool = _npy(tmp_path / "pool.npy", np.ones((30, DIM)) + 1j)
        probe = _table(tmp_path / "probe.parquet", DIM)
        config = _study(tmp_path, f"{{kind: file, path: {pool}, probe_train_path: {probe}, "
                                  f"probe_test_path: {probe}}}")
    else:
        config = _study(tmp_path, BLOBS_YAML, f"tracking: {{uri: '{UNREACHABLE}'}}\n")
    work = tmp_path / "work"
    work.mkdir()
    start = time.perf_counter()
    result = snakemake(work, "--until", "data", configfile=config)
    assert time.perf_counter() - start < 120
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out[-3000:]
    message = sorted({line for line in out.splitlines() if line.startswith("strata data: error: ")})
    assert len(message) == 1, out[-3000:]
    for word in words:
        assert word in message[0], (word, message[0])
    data = work / "results" / "strata" / "u" / "data"
    assert not data.exists() or not any(data.iterdir())
    assert not (work / "results" / "mlflow.db").exists()


# --- checkpoints and Ray workers (pretrain resume) ---


def test_pretrain_refuses_a_work_folder_that_another_job_trains_in(fx: Fixtures, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = _pretrain(tmp_path, fx)
    work = work_dir_for(argv[argv.index("--encoder") + 1], argv[argv.index("--work-root") + 1])
    with work_dir_lock(work):  # the other job, alive
        before = _tree(tmp_path)
        capsys.readouterr()
        rc = main(argv)
        _check(rc, capsys.readouterr().err, "pretrain", [f"pid {os.getpid()}", f"{work.name}.lock"], before, tmp_path)
