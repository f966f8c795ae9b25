"""Tests of the ``strata`` command line (workflow.cli): stage commands, exit codes, one-line errors, outputs.

Most tests call :func:`workflow.cli.main` in-process (fast); one runs the installed console script in a
subprocess to check the real exit status and stderr.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import data_cli

from workflow.cli import main
from workflow.tables import VectorTable, read_table, write_table

BLOBS = {"kind": "blobs", "n_max": 60, "imbalance_ratio": 5, "dim": 8}
HKMEANS = {"method": "hkmeans", "n_clusters": [10, 3], "target_size": 50}


def _data(folder: Path, params: dict[str, Any], name: str = "blobs") -> dict[str, Path]:
    rc, paths = data_cli(params, folder, name)
    assert rc == 0
    return paths


def _curate(pool: Path, out: Path, params: dict[str, Any], seed: int = 0) -> tuple[int, Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    selection, stats = out / "selection.parquet", out / "stats.json"
    rc = main(["curate", "--pool", str(pool), "--params", json.dumps(params), "--seed", str(seed),
               "--selection", str(selection), "--stats", str(stats)])
    return rc, selection, stats


def _one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"strata {command}: error: ")
    return lines[0]


def _entropy(labels: np.ndarray) -> float:
    p = np.unique(labels, return_counts=True)[1] / len(labels)
    return float(-(p * np.log(p)).sum())


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _data(tmp_path_factory.mktemp("blobs"), BLOBS)


@pytest.fixture(scope="module")
def hkmeans_run(blobs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    rc, selection, stats = _curate(blobs["pool"], tmp_path_factory.mktemp("hk"), HKMEANS, seed=0)
    assert rc == 0
    return selection, stats


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def test_data_writes_tables_and_info(blobs) -> None:
    pool = read_table(blobs["pool"], expected_dim=8)
    info = json.loads(blobs["info"].read_text())
    counts = np.round(60 * 5.0 ** (-np.arange(10) / 9)).astype(int)
    assert len(pool) == counts.sum() + round(0.1 * counts.sum())
    assert info["sizes"] == {"pool": len(pool), "probe_train": 4000, "probe_test": 1000}
    assert info["class_counts"] == counts.tolist()
    assert info["params"]["kind"] == "blobs" and info["params"]["dim"] == 8
    for name in ("probe_train", "probe_test"):
        assert read_table(blobs[name], expected_dim=8, require_labels=True).has_labels
    assert not any(p.name.startswith(".") for p in blobs["pool"].parent.iterdir())  # no temp files left


def test_data_info_leaves_out_a_seed_that_draws_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = {}
    for name, n in (("pool", 30), ("tr", 9), ("te", 6)):
        paths[name] = tmp_path / f"{name}.parquet"
        write_table(VectorTable(ids=np.arange(n), vectors=rng.standard_normal((n, 4)).astype(np.float32),
                                labels=np.arange(n) % 3), paths[name])
    out = tmp_path / "out"
    given = {"kind": "file", "path": str(paths["pool"]), "seed": 7}
    for probes, has_seed in (({"probe_train_path": str(paths["tr"]), "probe_test_path": str(paths["te"])}, False),
                             ({"probe_fraction": 0.4}, True)):
        params = {**given, **probes}
        rc = main(["data", "--name", "mine", "--params", json.dumps(params), "--pool", str(out / "pool.parquet"),
                   "--probe-train", str(out / "tr.parquet"), "--probe-test", str(out / "te.parquet"),
                   "--info", str(out / "info.json")])
        assert rc == 0
        info = json.loads((out / "info.json").read_text())
        assert ("seed" in info["params"]) == has_seed and info["params"]["path"] == str(paths["pool"])
        if has_seed:
            assert info["params"]["seed"] == 7


def test_data_unknown_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = [tmp_path / n for n in ("pool.parquet", "tr.parquet", "te.parquet", "info.json")]
    rc = main(["data", "--name", "x", "--params", '{"kind": "cifar"}', "--pool", str(outputs[0]),
               "--probe-train", str(outputs[1]), "--probe-test", str(outputs[2]), "--info", str(outputs[3])])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, "data")
    assert "datasets.x: kind" in line and "'cifar'" in line and "mnist1d-lt" in line
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# curate
# --------------------------------------------------------------------------------------------------


def test_curate_random_target_larger_than_pool(blobs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A target larger than the pool selects the whole pool, with a warning in the log and in stats.json.
    pool = read_table(blobs["pool"])
    n = len(pool)
    rc, selection, stats = _curate(blobs["pool"], tmp_path, {"method": "random", "target_size": n + 1})
    assert rc == 0
    assert "warning" in capsys.readouterr().out
    ids = pq.read_table(selection).column("id").to_numpy()
    np.testing.assert_array_equal(ids, np.sort(pool.ids))
    record = json.loads(stats.read_text())
    assert record["selected_size"] == n
    (warning,) = record["warnings"]
    assert f"{n + 1}" in warning and f"({n} items)" in warning

    # outputs of an earlier run are removed when a run fails, so a failed job never leaves stale results behind
    selection.write_text("stale")
    stats.write_text("stale")
    rc, _, _ = _curate(blobs["pool"], tmp_path, {"method": "random", "target_size": 0})
    assert rc == 2 and not selection.exists() and not stats.exists()
    _one_error_line(capsys.readouterr().err, "curate")


def test_curate_random(blobs, tmp_path: Path) -> None:
    pool = read_table(blobs["pool"])
    rc, selection, stats = _curate(blobs["pool"], tmp_path / "a", {"method": "random", "target_size": 40}, seed=3)
    assert rc == 0
    ids = pq.read_table(selection).column("id").to_numpy()
    assert len(ids) == 40 == len(np.unique(ids)) and np.all(np.diff(ids) > 0)
    assert set(ids) <= set(pool.ids)
    assert pq.read_schema(selection).names == ["id", "label"]
    assert json.loads(stats.read_text())["selected_size"] == 40
    rc, selection2, _ = _curate(blobs["pool"], tmp_path / "b", {"method": "random", "target_size": 40}, seed=3)
    assert rc == 0 and pq.read_table(selection2).equals(pq.read_table(selection))


def test_curate_hkmeans(blobs, hkmeans_run) -> None:
    selection, stats_path = hkmeans_run
    pool = read_table(blobs["pool"])
    table = pq.read_table(selection)
    assert table.schema.names == ["id", "label", "cluster_level1", "cluster_level2"]
    ids = table.column("id").to_numpy()
    assert len(ids) == 50 == len(np.unique(ids)) and np.all(np.diff(ids) > 0)
    assert set(ids) <= set(pool.ids)
    label_of = dict(zip(pool.ids.tolist(), pool.labels.tolist(), strict=True))
    labels = table.column("label").to_numpy()
    assert labels.tolist() == [label_of[i] for i in ids.tolist()]
    level1, level2 = table.column("cluster_level1").to_numpy(), table.column("cluster_level2").to_numpy()
    assert set(level1) <= set(range(10)) and set(level2) <= set(range(3))
    for c in np.unique(level1):  # level-1 clusters nest inside level-2 clusters
        assert len(np.unique(level2[level1 == c])) == 1

    stats = json.loads(stats_path.read_text())
    assert stats["method"] == "hkmeans" and stats["selected_size"] == 50 and stats["pool_size"] == len(pool)
    assert stats["n_clusters"] == [10, 3] and sum(stats["cluster_sizes"][0]) == len(pool)
    before, after = stats["labels_before"], stats["labels_after"]
    assert {"histogram", "entropy", "normalized_entropy"} <= set(before) & set(after)
    assert after["histogram"] == {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)}
    assert math.isclose(after["entropy"], _entropy(labels))
    assert math.isclose(before["entropy"], _entropy(pool.labels))
    # normalised by the pool's 10 classes, whether or not the subset holds all of them
    assert math.isclose(after["normalized_entropy"], _entropy(labels) / math.log(10))
    assert math.isclose(before["normalized_entropy"], _entropy(pool.labels) / math.log(10))


def test_curate_hkmeans_same_seed_same_selection(blobs, hkmeans_run, tmp_path: Path) -> None:
    selection, stats = hkmeans_run
    rc, again, again_stats = _curate(blobs["pool"], tmp_path, HKMEANS, seed=0)
    assert rc == 0
    assert pq.read_table(again).equals(pq.read_table(selection))
    first, second = json.loads(stats.read_text()), json.loads(again_stats.read_text())
    first.pop("seconds")
    second.pop("seconds")
    assert first == second


def test_curate_hkmeans_flattens_a_long_tail(tmp_path: Path) -> None:
    # imbalance_ratio 30 (not the 5 of BLOBS): with a mild tail the pool is already near-uniform
    # (normalised entropy 0.95) and a 50-item sample cannot be measurably flatter.
    data = _data(tmp_path / "data", {**BLOBS, "imbalance_ratio": 30})
    rc, selection, stats_path = _curate(data["pool"], tmp_path / "hk", HKMEANS, seed=0)
    assert rc == 0
    stats = json.loads(stats_path.read_text())
    pool_labels = read_table(data["pool"]).labels
    selected = pq.read_table(selection).column("label").to_numpy()
    assert stats["labels_after"]["entropy"] > stats["labels_before"]["entropy"] + 0.1
    assert stats["labels_after"]["normalized_entropy"] > stats["labels_before"]["normalized_entropy"]
    # the head class loses share, the tail gains it
    assert np.mean(selected == 0) < np.mean(pool_labels == 0)
    assert np.mean(selected >= 7) > np.mean(pool_labels >= 7)


def test_curate_unknown_method(blobs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, selection, stats = _curate(blobs["pool"], tmp_path, {"method": "dbscan", "target_size": 5})
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, "curate")
    assert "curation: method" in line and "'dbscan' is not allowed" in line
    assert "['none', 'random', 'kmeans', 'hkmeans', 'semdedup']" in line
    assert not selection.exists() and not stats.exists()


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------


def _probe(path: Path, n: int, dim: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    x = np.eye(dim)[labels] * 4 + rng.standard_normal((n, dim))
    write_table(VectorTable(ids=np.arange(n), vectors=x.astype(np.float32), labels=labels), path)
    return path


def _evaluate(train: Path, test: Path, output: Path) -> int:
    return main(["evaluate", "--probe-train", str(train), "--probe-test", str(test), "--output", str(output),
                 "--params", '{"cluster_n_init": 1, "knn_k": 5}'])


def test_evaluate_small_tables(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    rc = _evaluate(_probe(tmp_path / "tr.parquet", 60, 4, 0), _probe(tmp_path / "te.parquet", 30, 4, 1), out)
    assert rc == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert 0.8 <= metrics["knn_accuracy"] <= 1.0 and 0.8 <= metrics["linear_accuracy"] <= 1.0


def test_evaluate_nan_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = _probe(tmp_path / "tr.parquet", 60, 4, 0)
    test = _probe(tmp_path / "te.parquet", 30, 4, 1)
    table = read_table(test)
    vectors = table.vectors.copy()  # read_table's arrays are read-only views of the Arrow buffers
    vectors[7, 2] = np.nan
    write_table(VectorTable(ids=table.ids, vectors=vectors, labels=table.labels), test)
    out = tmp_path / "metrics.json"
    assert _evaluate(train, test, out) == 2
    line = _one_error_line(capsys.readouterr().err, "evaluate")
    assert str(test) in line and "NaN" in line
    assert not out.exists()


def test_evaluate_different_widths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = _probe(tmp_path / "tr.parquet", 60, 4, 0)
    test = _probe(tmp_path / "te.parquet", 30, 6, 1)
    out = tmp_path / "metrics.json"
    assert _evaluate(train, test, out) == 2
    line = _one_error_line(capsys.readouterr().err, "evaluate")
    assert str(test) in line and "6-wide, expected 4" in line
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# the console entry point, in a real subprocess
# --------------------------------------------------------------------------------------------------


def test_console_script_exit_status_and_stderr(blobs, tmp_path: Path) -> None:
    script = shutil.which("strata", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "workflow"]
    selection, stats = tmp_path / "selection.parquet", tmp_path / "stats.json"
    proc = subprocess.run([*command, "curate", "--pool", str(blobs["pool"]), "--params",
                           json.dumps({"method": "random", "target_size": 0}), "--selection", str(selection),
                           "--stats", str(stats)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr, "curate")
    assert "target_size" in line and "minimum" in line and "Traceback" not in proc.stderr
    assert not selection.exists() and not stats.exists()
