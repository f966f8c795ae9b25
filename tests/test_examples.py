"""Your data, your grid (issue 18, item 5): the shipped example studies, held-out and ``.npy`` probes of ``kind:
file``, where relative data paths point, and the one-line errors of bad user data.

Every ``configs/examples/*.yaml`` runs for real through Snakemake in a temporary ``--directory`` (a new example
is picked up by the glob), as shipped: its relative paths must find the data beside the config.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, assert_config_refused, data_cli, snakemake

from workflow.config import check_study, load_yaml, validate
from workflow.data import build_dataset
from workflow.data.builtin import PROBE_TEST_ID_OFFSET, PROBE_TRAIN_ID_OFFSET
from workflow.data.paths import resolve_data_paths
from workflow.data.user import held_out_counts, hold_out_probes
from workflow.errors import StrataError
from workflow.tables import VectorTable, read_table

EXAMPLES = sorted((REPO / "configs" / "examples").glob("*.yaml"))
SIZES = np.array([100, 23, 7, 9, 12])  # rows per class of the test pool (class c has label 10 * c)
SMALL = np.array([20, 4, 10])  # a pool whose class 10 is too small for probe_fraction 0.3


def _pool(sizes: np.ndarray = SIZES, dim: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vectors whose first coordinate is the row number (so rows can be traced), and shuffled labels."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(10 * np.arange(len(sizes)), sizes))
    x = np.c_[np.arange(len(y)), rng.standard_normal((len(y), dim - 1))].astype(np.float32)
    return x, y


def _npy_dataset(tmp: Path, sizes: np.ndarray = SIZES, **extra: Any) -> dict[str, Any]:
    x, y = _pool(sizes)
    np.save(tmp / "pool.npy", x)
    np.save(tmp / "labels.npy", y)
    return validate({"kind": "file", "path": str(tmp / "pool.npy"), "labels_path": str(tmp / "labels.npy"),
                     **extra}, "dataset")


# --------------------------------------------------------------------------------------------------
# probe_fraction
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.29, 0.5, 0.6])
def test_probe_fraction_holds_out_floor_f_n_per_class_split_train_first(tmp_path: Path, fraction: float) -> None:
    splits = build_dataset(_npy_dataset(tmp_path, probe_fraction=fraction), "mine")
    for c, n in zip(10 * np.arange(len(SIZES)), SIZES, strict=True):
        k = math.floor(Fraction(str(fraction)) * int(n))  # exact arithmetic: 0.29 * 100 is 29, not 28
        assert (splits.probe_train.labels == c).sum() == (k + 1) // 2, (c, k)
        assert (splits.probe_test.labels == c).sum() == k // 2, (c, k)
        assert (splits.pool.labels == c).sum() == n - k
    assert splits.info["probe_fraction"] == fraction


def test_probe_fraction_partitions_the_file_and_keeps_ids_rows_and_labels(tmp_path: Path) -> None:
    x, y = _pool()
    splits = build_dataset(_npy_dataset(tmp_path, probe_fraction=0.5), "mine")
    tables = [splits.pool, splits.probe_train, splits.probe_test]
    ids = np.concatenate([t.ids for t in tables])
    assert len(ids) == len(np.unique(ids)) == len(x)
    np.testing.assert_array_equal(np.sort(ids), np.arange(len(x)))
    for t in tables:
        np.testing.assert_array_equal(t.vectors, x[t.ids])  # row i of the file keeps id i
        np.testing.assert_array_equal(t.labels, y[t.ids])
        assert (np.diff(t.ids) > 0).all()  # in file order


def test_probe_fraction_is_the_documented_seeded_draw(tmp_path: Path) -> None:
    """The schema's rule written out plainly: one generator, classes ascending, a permutation per class."""
    _, y = _pool()
    for seed in (0, 7):
        rng = np.random.default_rng(seed)
        train, test = [], []
        for c in sorted(set(y.tolist())):
            rows = [i for i in range(len(y)) if y[i] == c]
            perm = list(rng.permutation(rows))
            k = math.floor(0.4 * len(rows))
            train += perm[:math.ceil(k / 2)]
            test += perm[math.ceil(k / 2):k]
        splits = build_dataset(_npy_dataset(tmp_path, probe_fraction=0.4, seed=seed), "mine")
        assert splits.probe_train.ids.tolist() == sorted(train)
        assert splits.probe_test.ids.tolist() == sorted(test)


def test_probe_fraction_depends_on_the_seed_only(tmp_path: Path) -> None:
    def ids(seed: int) -> list[list[int]]:
        s = build_dataset(_npy_dataset(tmp_path, probe_fraction=0.3, seed=seed), "mine")
        return [t.ids.tolist() for t in (s.pool, s.probe_train, s.probe_test)]

    assert ids(3) == ids(3)
    assert ids(3) != ids(4)


def test_probe_fraction_keeps_unlabelled_parquet_rows_in_the_pool(tmp_path: Path) -> None:
    x, y = _pool()
    labels = pa.array([None if i % 5 == 0 else int(v) for i, v in enumerate(y)], pa.int64())
    ids = 100 + 3 * np.arange(len(y))
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "label": labels,
                             "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 3)}),
                   tmp_path / "pool.parquet")
    splits = build_dataset(validate({"kind": "file", "path": str(tmp_path / "pool.parquet"), "probe_fraction": 0.5},
                                    "dataset"), "mine")
    unlabelled = set(ids[::5].tolist())
    assert unlabelled <= set(splits.pool.ids.tolist())
    for probe in (splits.probe_train, splits.probe_test):
        assert probe.has_labels and not unlabelled & set(probe.ids.tolist())
        assert set(probe.ids.tolist()) <= set(ids.tolist())


def test_hold_out_probes_names_the_class_that_is_too_small() -> None:
    x, y = _pool(SMALL)
    pool = VectorTable(ids=np.arange(len(y)), vectors=x, labels=y)
    with pytest.raises(StrataError) as info:
        hold_out_probes(pool, 0.3, 0, "datasets.mine", "my/pool.npy")
    err = info.value
    assert "class 10 has 4 rows" in err.message and "holds out 1" in err.message  # floor(0.3 * 4) = 1
    assert err.where == "my/pool.npy (datasets.mine.probe_fraction)"
    assert "0.5" in err.fix  # 2 / 4


@pytest.mark.parametrize("n", [1, 2, 3, 6, 9, 15, 19, 21, 97])
def test_the_suggested_probe_fraction_works_for_the_smallest_class(n: int) -> None:
    """The fix names a fraction that holds out 2 rows of the smallest class (rounded up, not to nearest), or
    says that none below 1 can."""
    y = np.concatenate([np.zeros(1000, np.int64), np.ones(n, np.int64), np.full(n + 1, 2, np.int64)])
    pool = VectorTable(ids=np.arange(len(y)), vectors=np.zeros((len(y), 2), np.float32), labels=y)
    with pytest.raises(StrataError) as info:
        hold_out_probes(pool, 0.01, 0, "datasets.mine", "")
    assert f"class 1 has {n} rows" in info.value.message  # the smallest, not the first small one
    suggested = re.search(r"at least ([0-9.]+),", info.value.fix)
    if n < 3:
        assert suggested is None and "no probe_fraction below 1" in info.value.fix
    else:
        fraction = float(suggested.group(1))
        assert fraction < 1 and sum(held_out_counts(np.array([n]), fraction))[0] >= 2


# --------------------------------------------------------------------------------------------------
# .npy probes
# --------------------------------------------------------------------------------------------------


def test_npy_probes_take_their_labels_from_npy_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    probes = {}
    for split, n in (("probe_train", 12), ("probe_test", 9)):
        probes[split] = (rng.standard_normal((n, 3)).astype(np.float32), rng.integers(0, 4, n))
        np.save(tmp_path / f"{split}.npy", probes[split][0])
        np.save(tmp_path / f"{split}_y.npy", probes[split][1].astype(np.float64))  # whole floats are fine
    cfg = _npy_dataset(tmp_path, **{f"{s}{suffix}": str(tmp_path / f"{s}{end}") for s in probes
                                    for suffix, end in (("_path", ".npy"), ("_labels_path", "_y.npy"))})
    splits = build_dataset(cfg, "mine")
    for split, offset in (("probe_train", PROBE_TRAIN_ID_OFFSET), ("probe_test", PROBE_TEST_ID_OFFSET)):
        table = getattr(splits, split)
        np.testing.assert_array_equal(table.vectors, probes[split][0])
        np.testing.assert_array_equal(table.labels, probes[split][1])
        np.testing.assert_array_equal(table.ids, offset + np.arange(len(table)))
    assert len(splits.pool) == SIZES.sum()


# --------------------------------------------------------------------------------------------------
# bad input: one line naming the file or key and the fix, exit 2, nothing written
# --------------------------------------------------------------------------------------------------


def _probe_files(tmp: Path, n: int = 6, dim: int = 3, labels: int | None = None) -> dict[str, str]:
    np.save(tmp / "pt.npy", np.ones((n, dim)))
    out = {"probe_train_path": str(tmp / "pt.npy"), "probe_test_path": str(tmp / "pt.npy")}
    if labels is not None:
        np.save(tmp / "pt_y.npy", np.zeros(labels, dtype=np.int64))
        out |= {"probe_train_labels_path": str(tmp / "pt_y.npy"), "probe_test_labels_path": str(tmp / "pt_y.npy")}
    return out


def _bad_cases(tmp: Path) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Each case: extra dataset keys (over a labelled .npy pool) and the words its one-line message must hold."""
    np.save(tmp / "short_labels.npy", np.zeros(5, dtype=np.int64))
    return {
        "fraction-and-probe-files": ({"probe_fraction": 0.2, **_probe_files(tmp, labels=6)},
                                     ["datasets.mine.probe_fraction", "probe_train_path", "not both"]),
        "fraction-too-small-for-a-class": ({"probe_fraction": 0.3},
                                           ["pool.npy", "datasets.mine.probe_fraction", "class 10 has 4 rows"]),
        "npy-probe-without-labels": (_probe_files(tmp), ["datasets.mine.probe_train_labels_path", "no labels"]),
        "probe-labels-row-mismatch": (_probe_files(tmp, labels=4),
                                      ["pt_y.npy", "datasets.mine.probe_train_labels_path", "6 rows"]),
        "pool-labels-row-mismatch": ({"probe_fraction": 0.5, "labels_path": str(tmp / "short_labels.npy")},
                                     ["short_labels.npy", "datasets.mine.labels_path", "(5,)"]),
        "probe-labels-with-parquet-probe": ({"probe_train_path": "pt.parquet", "probe_test_path": "pt.parquet",
                                             "probe_train_labels_path": "y.npy"},
                                            ["datasets.mine.probe_train_labels_path", "Parquet"]),
        "no-probes": ({}, ["datasets.mine.probe_train_path", "probe_fraction"]),
        "fraction-without-pool-labels": ({"probe_fraction": 0.5, "labels_path": None},
                                         ["datasets.mine.probe_fraction", "labels_path"]),
    }


BAD_IDS = ["fraction-and-probe-files", "fraction-too-small-for-a-class", "npy-probe-without-labels",
           "probe-labels-row-mismatch", "pool-labels-row-mismatch", "probe-labels-with-parquet-probe", "no-probes",
           "fraction-without-pool-labels"]


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_user_data_gets_one_line_and_exit_2_and_leaves_nothing(case: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    extra, words = _bad_cases(tmp_path)[case]
    x, y = _pool(SMALL)
    np.save(tmp_path / "pool.npy", x)
    np.save(tmp_path / "labels.npy", y)
    params = {"kind": "file", "path": str(tmp_path / "pool.npy"), "labels_path": str(tmp_path / "labels.npy"), **extra}
    capsys.readouterr()
    rc, paths = data_cli(params, tmp_path / "out", "mine")
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("strata data: error: ") and "Fix:" in lines[0], err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not any(p.exists() for p in paths.values())


def test_config_errors_are_caught_before_any_job(tmp_path: Path) -> None:
    """check_study (the Snakefile's validation) refuses the cross-key mistakes, naming the config file."""
    np.save(tmp_path / "pool.npy", np.ones((10, 3)))
    study = {"seeds": [0], "curations": {"random": {"method": "random", "target_size": 3}},
             "ssl": {"simclr": {"method": "simclr"}},
             "datasets": {"mine": {"kind": "file", "path": str(tmp_path / "pool.npy"), **_probe_files(tmp_path)}}}
    with pytest.raises(StrataError) as info:
        check_study(study, "my.yaml")
    assert info.value.where == "my.yaml: datasets.mine.probe_train_labels_path"


@pytest.mark.e2e
def test_snakemake_refuses_probe_fraction_with_probe_files_before_running(tmp_path: Path) -> None:
    _probe_files(tmp_path, labels=6)
    x, y = _pool()
    np.save(tmp_path / "pool.npy", x)
    np.save(tmp_path / "labels.npy", y)
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "seeds": [0], "curations": {"random": {"method": "random", "target_size": 3}},
        "ssl": {"simclr": {"method": "simclr"}},
        "datasets": {"mine": {"kind": "file", "path": "pool.npy", "labels_path": "labels.npy", "probe_fraction": 0.2,
                              "probe_train_path": "pt.npy", "probe_test_path": "pt.npy",
                              "probe_train_labels_path": "pt_y.npy", "probe_test_labels_path": "pt_y.npy"}}}))
    assert_config_refused(config, tmp_path / "work", ["datasets.mine.probe_fraction"])


# --------------------------------------------------------------------------------------------------
# relative paths: the working directory, else beside the config file
# --------------------------------------------------------------------------------------------------


def test_relative_paths_fall_back_to_the_config_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfg" / "data").mkdir(parents=True)
    (tmp_path / "work" / "data").mkdir(parents=True)
    for f in ("cfg/data/pool.npy", "cfg/data/emb.parquet", "work/data/labels.npy"):
        (tmp_path / f).write_bytes(b"")
    text = {"datasets": {"d": {"kind": "file", "path": "data/pool.npy", "labels_path": "data/labels.npy",
                               "probe_train_path": "data/missing.npy"}},
            "curations": {"a": {"features": {"table": "data/emb.parquet"}},
                          "b": {"features": ["raw", {"table": "data/emb.parquet"}]}},
            "ssl": {"frozen_emb": {"method": "none", "features": {"table": "data/emb.parquet",
                                                                  "probe_train": "data/emb.parquet"}}}}
    cfg_file = tmp_path / "cfg" / "study.yaml"
    cfg_file.write_text(yaml.safe_dump(text))
    monkeypatch.chdir(tmp_path / "work")
    config = yaml.safe_load(cfg_file.read_text())
    config["datasets"]["d"]["probe_test_path"] = "data/pool.npy"  # as if from --config: no file sets it
    done = resolve_data_paths(config, [cfg_file])
    assert sorted(done) == ["curations.a.features.table", "curations.b.features.1.table", "datasets.d.path",
                            "ssl.frozen_emb.features.probe_train", "ssl.frozen_emb.features.table"]
    d = config["datasets"]["d"]
    # Relative to the working directory, not absolute: the recorded parameters and hashes do not depend on where
    # the files are checked out.
    assert d["path"] == os.path.join("..", "cfg", "data", "pool.npy") and Path(d["path"]).is_file()
    assert d["labels_path"] == "data/labels.npy"  # found in the working directory: as written
    assert d["probe_train_path"] == "data/missing.npy"  # nowhere: as written, for the not-found message
    assert d["probe_test_path"] == "data/pool.npy"
    assert config["curations"]["b"]["features"][1]["table"] == os.path.join("..", "cfg", "data", "emb.parquet")


# --------------------------------------------------------------------------------------------------
# the shipped examples
# --------------------------------------------------------------------------------------------------


def test_example_data_is_small_and_what_make_data_writes(tmp_path: Path) -> None:
    data = REPO / "configs" / "examples" / "data"
    assert sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) < 1_000_000
    assert {p.stem for p in EXAMPLES} >= {"images", "vectors", "embeddings"}
    kinds = {p.stem: next(iter(load_yaml(p)["datasets"].values()))["kind"] for p in EXAMPLES}
    assert kinds["images"] == "image-folder" and kinds["vectors"] == "file"
    curations = load_yaml(REPO / "configs" / "examples" / "embeddings.yaml")["curations"]
    assert any(isinstance(c.get("features"), dict) and "table" in c["features"] for c in curations.values())
    y = np.load(data / "labels.npy")
    assert len(y) == len(np.load(data / "vectors.npy", mmap_mode="r")) and len(np.unique(y)) == 10
    assert len(read_table(data / "embed" / "pool.parquet")) == pq.read_metadata(data / "embed" /
                                                                                "embeddings.parquet").num_rows


@pytest.mark.e2e
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_study_runs_as_shipped(example: Path, tmp_path: Path) -> None:
    config = load_yaml(example)
    for value in config["datasets"].values():  # relative paths: the run below must find them beside the file
        assert not Path(value.get("path", "x")).is_absolute()
    result = snakemake(tmp_path, configfile=example)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    def outputs(name: str) -> list[Path]:  # wherever the study folder is, but not MLflow's artifact copies
        return [p for p in tmp_path.glob(f"results/**/{name}") if "mlartifacts" not in p.parts]

    summaries, verdicts = outputs("summary.md"), outputs("verdict.json")
    assert len(summaries) == 1 and len(verdicts) == 1, (summaries, verdicts)
    verdict = json.loads(verdicts[0].read_text())
    assert verdict["primary"] == config["summary"]["primary"] and verdict["comparisons"]
    assert all(math.isfinite(c["mean"]) for c in verdict["comparisons"])
    rows = list(csv.DictReader((summaries[0].parent / "summary.csv").open()))
    frozen = {name for name, entry in config["ssl"].items() if entry["method"] == "none"}
    assert {r["curation"] for r in rows if r["ssl"] not in frozen} == set(config["curations"])
    assert {r["curation"] for r in rows if r["ssl"] in frozen} <= {"frozen"}  # once per seed, no curation
    assert {c["ssl"] for c in verdict["comparisons"]}.isdisjoint(frozen)  # references, never compared
    assert all(0 <= float(r["knn_accuracy"]) <= 1 for r in rows)
    infos = [p for p in outputs("info.json") if p.parent.name == "data"]
    assert len(infos) == 1
    sizes = json.loads(infos[0].read_text())["sizes"]
    assert min(sizes.values()) > 0


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_make_finds_each_example_s_results_folder(example: Path, tmp_path: Path) -> None:
    """`python -m workflow.config CONFIG` (what `make run|report|ui CONFIG=…` ask) reads the config as the workflow
    does, data paths beside it included, from any working directory."""
    result = subprocess.run([sys.executable, "-m", "workflow.config", str(example)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"results/{load_yaml(example)['study']}"
