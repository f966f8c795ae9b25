"""Leakage check and decontamination (issue 18): pool items that copy a probe item, exactly or nearly.

Checked against hand-made copies: exact copies of probe rows, near copies (tiny noise), and far items; the counts
per split and per class; decontamination removes exactly the flagged rows; the built-in mnist1d-lt pool does not
leak into its probes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workflow.cli import main
from workflow.config import validate
from workflow.curate.leakage import ProbeSet, find_leaks, max_similarity, row_hashes
from workflow.curate.stage import Curation, curate
from workflow.tables import VectorTable, write_table

DIM = 16


def curation(cfg: dict[str, Any]) -> Curation:
    return Curation.from_config(validate(dict(cfg), "curation"))


def leaky_data(seed: int = 0) -> tuple[VectorTable, VectorTable, VectorTable]:
    """A pool of 200 random directions in 4 classes; probes of 40 + 20 other random directions. Pool rows 0-4
    are exact copies of probe_train rows, 5-9 near copies (cosine > 0.999) of probe_test rows, 10-12 near copies
    of probe_train rows."""
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(200, DIM)).astype(np.float32)
    train = rng.normal(size=(40, DIM)).astype(np.float32)
    test = rng.normal(size=(20, DIM)).astype(np.float32)
    pool[0:5] = train[0:5]
    pool[5:10] = test[0:5] + rng.normal(0, 1e-3, size=(5, DIM))
    pool[10:13] = train[10:13] * 1.5 + rng.normal(0, 1e-3, size=(3, DIM))
    labels = np.arange(200) % 4
    return (VectorTable(np.arange(200, dtype=np.int64), pool, labels),
            VectorTable(np.arange(40, dtype=np.int64) + 10_000_000, train, np.arange(40) % 4),
            VectorTable(np.arange(20, dtype=np.int64) + 20_000_000, test, np.arange(20) % 4))


def test_row_hashes_see_content_only() -> None:
    x = np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0000001]], dtype=np.float32)
    h = row_hashes(x)
    assert h[0] == h[1] and h[0] != h[2]  # -0.0 is 0.0; one ulp is another item


def test_max_similarity_is_the_brute_force_cosine() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    an, bn = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(max_similarity(a, b), (an @ bn.T).max(1), atol=1e-5)


def test_find_leaks_counts_exact_and_near_copies_per_split_and_class() -> None:
    pool, train, test = leaky_data()
    probes = [ProbeSet("probe_train", train, train.vectors), ProbeSet("probe_test", test, test.vectors)]
    flagged, stats = find_leaks(pool, pool.vectors, probes, 0.98, "raw")
    expected = np.zeros(200, dtype=bool)
    expected[:13] = True
    np.testing.assert_array_equal(flagged, expected)
    assert stats["exact"] == 5 and stats["near"] == 13 and stats["flagged"] == 13
    assert stats["per_split"]["probe_train"] == {"exact": 5, "near": 8, "flagged": 8,
                                                 "max_similarity": pytest.approx(1.0, abs=1e-5)}
    assert stats["per_split"]["probe_test"]["exact"] == 0 and stats["per_split"]["probe_test"]["near"] == 5
    labels = pool.labels[:13]
    for c in range(4):
        assert stats["per_class"][c]["flagged"] == int((labels == c).sum())
        assert stats["per_class"][c]["exact"] == int((pool.labels[:5] == c).sum())
    assert stats["space"] == stats["near_space"] == "raw" and stats["threshold"] == 0.98
    # A higher threshold keeps the exact copies and drops none of the near ones here (cosine > 0.999) ...
    assert find_leaks(pool, pool.vectors, probes, 0.9999999, "raw")[1]["exact"] == 5
    # ... and without probe features in the space, near copies are looked for in the raw space.
    _, stats = find_leaks(pool, pool.vectors * 2, [ProbeSet("probe_train", train, None)], 0.98, "table:x")
    assert stats["near_space"] == "raw" and stats["space"] == "table:x" and stats["near"] == 8


def test_curate_reports_leakage_and_decontaminates() -> None:
    pool, train, test = leaky_data()
    probes = [ProbeSet("probe_train", train, train.vectors), ProbeSet("probe_test", test, test.vectors)]
    params = {"method": "kmeans", "n_clusters": [8], "target_size": 150, "n_iters": 5}
    rows, levels, stats = curate(pool, pool, curation(params), 0, progress=lambda m: None, probes=probes)
    assert stats["leakage"]["flagged"] == 13 and stats["leakage"]["removed"] == 0
    assert not stats["leakage"]["decontaminated"] and stats["feature_space"] == "raw"
    assert np.isin(np.arange(13), rows).any()  # reported, not removed
    rows, levels, stats = curate(pool, pool, curation({**params, "decontaminate": True}), 0,
                                 progress=lambda m: None, probes=probes)
    assert stats["leakage"]["removed"] == 13 and stats["leakage"]["decontaminated"]
    assert not np.isin(np.arange(13), rows).any() and len(rows) == 150
    assert (levels[:13] == -1).all() and (levels[13:] >= 0).all()
    assert stats["pool_size"] == 200 and sum(stats["cluster_sizes"][0]) == 187
    # method none keeps the whole decontaminated pool
    rows, _, _ = curate(pool, pool, curation({"method": "none", "decontaminate": True}), 0,
                        progress=lambda m: None, probes=probes)
    np.testing.assert_array_equal(rows, np.arange(13, 200))


def test_leakage_check_off_or_no_probes() -> None:
    pool, train, _ = leaky_data()
    probes = [ProbeSet("probe_train", train, train.vectors)]
    _, _, stats = curate(pool, pool, curation({"method": "none", "leakage_check": False}), 0,
                         progress=lambda m: None, probes=probes)
    assert "leakage" not in stats
    _, _, stats = curate(pool, pool, curation({"method": "none"}), 0, progress=lambda m: None)
    assert "leakage" not in stats


def _tables(folder: Path) -> dict[str, Path]:
    pool, train, test = leaky_data()
    paths = {name: folder / f"{name}.parquet" for name in ("pool", "probe_train", "probe_test")}
    for name, table in zip(paths, (pool, train, test), strict=True):
        write_table(table, paths[name])
    return paths


def test_cli_writes_leakage_to_stats_and_diagnostics(tmp_path: Path) -> None:
    t = _tables(tmp_path)
    out = tmp_path / "out"
    rc = main(["curate", "--pool", str(t["pool"]), "--params", json.dumps({"method": "random", "target_size": 50,
                                                                          "decontaminate": True}),
               "--probe-train", str(t["probe_train"]), "--probe-test", str(t["probe_test"]),
               "--selection", str(out / "sel.parquet"), "--stats", str(out / "stats.json"),
               "--diagnostics", str(out / "diag")])
    assert rc == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["leakage"]["exact"] == 5 and stats["leakage"]["flagged"] == 13 and stats["leakage"]["removed"] == 13
    assert stats["leakage"]["per_class"]["0"]["flagged"] == 4  # rows 0, 4, 8, 12
    assert "leakage.png" in stats["diagnostics"] and (out / "diag" / "leakage.png").is_file()


def test_cli_decontaminate_without_probes_is_one_clear_error(tmp_path: Path, capsys) -> None:
    t = _tables(tmp_path)
    out = tmp_path / "out"
    rc = main(["curate", "--pool", str(t["pool"]), "--params", json.dumps({"method": "none", "decontaminate": True}),
               "--selection", str(out / "sel.parquet"), "--stats", str(out / "stats.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "decontaminate" in err[0] and "--probe-train" in err[0]
    assert not (out / "sel.parquet").exists() and not (out / "stats.json").exists()


def test_builtin_mnist1d_lt_pool_does_not_leak_into_its_probes() -> None:
    """The pool is a separate draw of the generator (seed 10000 + seed), the probes the standard split (seed
    42): no exact copies, and no pool signal within cosine 0.98 of a probe signal (measured: at most 0.975 to
    probe_train and 0.957 to probe_test, where the closest probe_test / probe_train pair, two draws of the same
    split, is at 0.952: the generator's own spread)."""
    from workflow.data.builtin import make_mnist1d_lt

    splits = make_mnist1d_lt(validate({"kind": "mnist1d-lt"}, "dataset"), "m")
    probes = [ProbeSet(name, table, table.vectors)
              for name, table in (("probe_train", splits.probe_train), ("probe_test", splits.probe_test))]
    flagged, stats = find_leaks(splits.pool, splits.pool.vectors, probes, 0.98, "raw")
    assert stats["exact"] == 0 and stats["near"] == 0 and not flagged.any()
    assert stats["max_similarity"] < 0.98
