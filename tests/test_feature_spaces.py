"""`features:` names any embedding space (issue 18): parsing and checking the value, precomputed embedding tables
(Parquet in any row order, the VectorTable layout, `.npy` with or without ids), and their bad inputs: one line,
exit status 2, the file or key named, no output left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow.cli import main
from workflow.config import check_study
from workflow.errors import StrataError
from workflow.feature_spaces import check_features, curation_space, feature_space
from workflow.tables import VectorTable, write_table

N, RAW_DIM, EMB_DIM = 120, 6, 5
KMEANS = {"method": "kmeans", "n_clusters": [6], "target_size": 40, "n_iters": 10}


# --------------------------------------------------------------------------------------------------
# the value


def test_feature_space_forms_and_labels() -> None:
    assert feature_space("raw").kind == "raw" and feature_space(None).label == "raw"
    ssl = feature_space("simclr", ["simclr"])
    assert (ssl.kind, ssl.label, ssl.ssl) == ("ssl", "simclr", "simclr")
    table = feature_space({"table": "emb/dino.parquet"})
    assert (table.kind, table.label, table.path) == ("table", "table:dino", "emb/dino.parquet")
    assert not table.has_probe_features
    assert feature_space({"table": "e.npy", "probe_train": "a.npy", "probe_test": "b.npy"}).has_probe_features
    bb = feature_space({"backbone": "/models/dinov2-small/"})
    assert (bb.kind, bb.label, bb.pooling) == ("backbone", "backbone:dinov2-small", "auto")
    assert bb.slug.startswith("dinov2-small-") and bb.has_probe_features
    assert feature_space({"backbone": "/m/dino", "pooling": "cls"}).slug != bb.slug
    named = feature_space({"backbone": "/m/dino", "name": "dino"})
    assert named.label == named.slug == "dino"
    # none and random curate on nothing: raw, whatever `features` says
    assert curation_space({"method": "random", "features": {"table": "x.parquet"}}).kind == "raw"


@pytest.mark.parametrize(("value", "key", "words"), [
    ("byol", "features", "neither `raw` nor an ssl entry"),
    ({"table": "a.parquet", "backbone": "m"}, "features", "exactly one of"),
    ({"name": "x"}, "features", "exactly one of"),
    ({"backbone": "m", "ids": "i.npy"}, "features.ids", "does not go with `backbone`"),
    ({"table": "a.parquet", "ids": "i.npy"}, "features.ids", ".npy table only"),
    ({"table": "a.npy", "probe_train": "p.npy"}, "features", "both probe_train and probe_test"),
    ({"backbone": "m", "pooling": "max"}, "features.pooling", "pooling 'max'"),
    ({"table": "a.npy", "dim": 0}, "features.dim", "positive integer"),
    ({"table": "a.npy", "name": "a b"}, "features.name", "letters, digits"),
])
def test_bad_feature_values_name_the_key(value: Any, key: str, words: str) -> None:
    config = {"curations": {"hk": {"method": "hkmeans", "features": value}}, "ssl": {"simclr": {}}}
    with pytest.raises(StrataError) as err:
        check_features(config, "study.yaml")
    assert err.value.where == f"study.yaml: curations.hk.{key}" and words in err.value.message


def test_study_checks_features_and_features_seed(tmp_path: Path) -> None:
    def study(cur: dict[str, Any]) -> dict[str, Any]:
        return {"datasets": {"d": {"kind": "blobs"}}, "curations": {"random": {"method": "random", "target_size": 5},
                                                                    "hk": {"method": "hkmeans", "target_size": 5,
                                                                           **cur}},
                "ssl": {"simclr": {"method": "simclr"}}, "seeds": [0]}

    with pytest.raises(StrataError, match="'no/such/model' does not exist") as err:
        check_study(study({"features": {"backbone": "no/such/model"}}))
    assert err.value.where == "config: curations.hk.features.backbone"
    check_study(study({"features": {"backbone": str(tmp_path)}}))
    with pytest.raises(StrataError, match="features_seed applies only"):
        check_study(study({"features": {"table": str(tmp_path)}, "features_seed": 0}))
    with pytest.raises(StrataError, match="Allowed keys here"):  # the schema lists the keys of a mapping
        check_study(study({"features": {"tabel": "e.npy"}}))
    (tmp_path / "a").mkdir()
    config = study({"features": {"backbone": str(tmp_path), "name": "bb"}})
    config["curations"]["hk2"] = {"method": "kmeans", "target_size": 5,
                                  "features": {"backbone": str(tmp_path / "a"), "name": "bb"}}
    with pytest.raises(StrataError, match="both named 'bb'"):
        check_study(config)


def test_a_list_of_spaces_is_a_factor_of_the_grid(tmp_path: Path) -> None:
    config = {"datasets": {"d": {"kind": "blobs"}}, "seeds": [0], "ssl": {"simclr": {"method": "simclr"}},
              "curations": {"random": {"method": "random", "target_size": 5},
                            "hk": {"method": "hkmeans", "target_size": 5, "features_seed": 0,
                                   "features": ["raw", "simclr", {"table": str(tmp_path), "name": "mine"}]},
                            "km": {"method": "kmeans", "target_size": 5}}}
    check_study(config)
    assert list(config["curations"]) == ["random", "hk.raw", "hk.simclr", "hk.mine", "km"]
    assert [c["features"] for c in config["curations"].values()][1:3] == ["raw", "simclr"]
    assert [c["features_seed"] for c in config["curations"].values()][1:4] == [None, 0, None]
    bad = {**config, "curations": {"random": {"method": "random", "target_size": 5, "features": ["raw"]}}}
    with pytest.raises(StrataError, match="needs a method that curates in one"):
        check_study(bad)


# --------------------------------------------------------------------------------------------------
# precomputed tables


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(0)
    ids = np.arange(N, dtype=np.int64) * 7 + 3
    labels = np.arange(N) % 3
    emb = rng.normal(size=(N, EMB_DIM)).astype(np.float32) + 4 * np.eye(3, EMB_DIM)[labels]
    pool = folder / "pool.parquet"
    write_table(VectorTable(ids, rng.normal(size=(N, RAW_DIM)).astype(np.float32), labels), pool)
    return {"folder": folder, "pool": pool, "ids": ids, "emb": emb}


def _curate(pool: Path, out: Path, params: dict[str, Any], *extra: str) -> tuple[int, Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    selection, stats = out / "selection.parquet", out / "stats.json"
    rc = main(["curate", "--pool", str(pool), "--params", json.dumps(params), "--selection", str(selection),
               "--stats", str(stats), "--cache-dir", str(out / "cache"), *extra])
    return rc, selection, stats


def _reference(data: dict[str, Any], tmp: Path) -> np.ndarray:
    """The selection on the embeddings as a table in pool order with the pool's ids (the ssl layout)."""
    path = tmp / "ref.parquet"
    write_table(VectorTable(data["ids"], data["emb"]), path, column="embedding")
    rc, selection, _ = _curate(data["pool"], tmp / "ref", KMEANS, "--features", str(path))
    assert rc == 0
    return pq.read_table(selection).column("id").to_numpy()


def test_tables_in_any_layout_select_what_the_pool_order_table_selects(data, tmp_path: Path) -> None:
    reference = _reference(data, tmp_path)
    perm = np.random.default_rng(1).permutation(N)
    # Parquet: `id` and one list<double> column named as the user likes, rows shuffled
    shuffled = tmp_path / "shuffled.parquet"
    pq.write_table(pa.table({"id": data["ids"][perm], "clip": pa.array(data["emb"][perm].astype(np.float64).tolist())}),
                   shuffled)
    # .npy with its ids (shuffled), and .npy in pool order without ids
    npy, ids = tmp_path / "emb.npy", tmp_path / "ids.npy"
    np.save(npy, data["emb"][perm].astype(np.float64))
    np.save(ids, data["ids"][perm])
    ordered = tmp_path / "ordered.npy"
    np.save(ordered, data["emb"])
    for i, (table, features) in enumerate([
            (shuffled, {"table": str(shuffled), "dim": EMB_DIM}),
            (npy, {"table": str(npy), "ids": str(ids)}),
            (ordered, {"table": str(ordered), "name": "mine"})]):
        rc, selection, stats = _curate(data["pool"], tmp_path / f"run{i}", {**KMEANS, "features": features},
                                       "--features", str(table))
        assert rc == 0
        np.testing.assert_array_equal(pq.read_table(selection).column("id").to_numpy(), reference)
        label = json.loads(stats.read_text())["feature_space"]
        assert label == ("mine" if i == 2 else f"table:{table.stem}")


def _bad(data: dict[str, Any], tmp: Path, name: str, emb: np.ndarray, ids: np.ndarray | None,
         **features: Any) -> list[Any]:
    """Write a bad table (Parquet with ids, or .npy without); return the CLI arguments that curate on it."""
    if ids is None:
        path = tmp / f"{name}.npy"
        np.save(path, emb)
    else:
        path = tmp / f"{name}.parquet"
        pq.write_table(pa.table({"id": ids, "vector": pa.array(emb.tolist(), pa.list_(pa.float32()))}), path)
    return [path, {**KMEANS, "features": {"table": str(path), **features}}]


@pytest.mark.parametrize(("case", "words"), [
    ("missing", "of the 120 pool ids have no row (first: 10)"),
    ("extra", "1 ids are not in the pool (first: 99999)"),
    ("duplicate", "1 ids occur more than once (first: 3)"),
    ("width", "5-wide, expected 8"),
    ("nan", "NaN or infinite"),
    ("inf-npy", "NaN or infinite"),
    ("rows-npy", "the table has 119 rows but the pool has 120"),
])
def test_bad_tables_are_one_clear_error_and_no_output(data, tmp_path: Path, capsys, case: str, words: str) -> None:
    emb, ids = data["emb"].copy(), data["ids"].copy()
    if case == "missing":
        path, params = _bad(data, tmp_path, case, emb[np.r_[0, 2:N]], ids[np.r_[0, 2:N]])
    elif case == "extra":
        path, params = _bad(data, tmp_path, case, np.r_[emb, emb[:1]], np.r_[ids, 99999])
    elif case == "duplicate":
        path, params = _bad(data, tmp_path, case, np.r_[emb, emb[:1]], np.r_[ids, ids[:1]])
    elif case == "width":
        path, params = _bad(data, tmp_path, case, emb, ids, dim=8)
    elif case == "nan":
        emb[7, 2] = np.nan
        path, params = _bad(data, tmp_path, case, emb, ids)
    elif case == "inf-npy":
        emb[7, 2] = np.inf
        path, params = _bad(data, tmp_path, case, emb, None)
    else:
        path, params = _bad(data, tmp_path, case, emb[1:], None)
    out = tmp_path / "out"
    rc, selection, stats = _curate(data["pool"], out, params, "--features", str(path))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("strata curate: error: "), err
    assert str(path) in err[0] and words in err[0], err[0]
    assert "Traceback" not in err[0] and not selection.exists() and not stats.exists()


def test_probe_tables_of_a_precomputed_space_are_checked_too(data, tmp_path: Path, capsys) -> None:
    """Probes in the table's space must hold the probe's ids; the leakage check then runs in that space."""
    rng = np.random.default_rng(2)
    probe = tmp_path / "probe.parquet"
    pids = np.arange(30, dtype=np.int64) + 10_000_000
    write_table(VectorTable(pids, rng.normal(size=(30, RAW_DIM)).astype(np.float32), np.arange(30) % 3), probe)
    pool_emb = tmp_path / "pool_emb.npy"
    np.save(pool_emb, data["emb"])
    good, bad = tmp_path / "probe_emb.npy", tmp_path / "probe_bad.npy"
    probe_emb = rng.normal(size=(30, EMB_DIM)).astype(np.float32)
    probe_emb[0] = data["emb"][5] * 3  # a near copy (same direction) of pool item 5 in this space only
    np.save(good, probe_emb)
    np.save(bad, probe_emb[:29])
    for probe_features, rc_expected in ((good, 0), (bad, 2)):
        features = {"table": str(pool_emb), "probe_train": str(probe_features), "probe_test": str(probe_features)}
        rc, _, _ = _curate(data["pool"], tmp_path / probe_features.stem, {**KMEANS, "features": features},
                               "--features", str(pool_emb), "--probe-train", str(probe), "--probe-test", str(probe),
                               "--probe-train-features", str(probe_features),
                               "--probe-test-features", str(probe_features))
        assert rc == rc_expected
    leak = json.loads((tmp_path / "probe_emb" / "stats.json").read_text())["leakage"]
    unit = data["emb"] / np.linalg.norm(data["emb"], axis=1, keepdims=True)
    cos = unit @ (probe_emb / np.linalg.norm(probe_emb, axis=1, keepdims=True)).T
    assert cos[5, 0] > 0.999 and leak["near"] == int((cos.max(1) >= 0.98).sum()) >= 1
    assert leak["near_space"] == "table:pool_emb" and leak["exact"] == 0
    err = capsys.readouterr().err
    assert "probe_bad.npy" in err and "29 rows but the probe_train has 30" in err
