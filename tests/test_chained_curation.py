"""Chained curations (issue 18, item 2): a curation whose pool is another curation's selection (``pool``).

The restriction is checked against curating the restricted table directly, the stats chain against counts of the
selection files, the config errors through ``check_study`` and through Snakemake (one line, exit 2, nothing
created), and one real Snakemake run of ``semdedup`` → ``hkmeans``.
"""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import assert_config_refused, data_cli, snakemake

from workflow.chains import chain_metrics, chain_of, chain_stats, check_chains, pool_note, selection_rows, upstream
from workflow.cli import main
from workflow.config import check_study, config_hash, relevant, study_results, validate
from workflow.curate.stage import Curation, curate
from workflow.errors import StrataError
from workflow.tables import VectorTable, read_table

SOURCE = "chain.yaml"


def _curation(cfg: dict[str, Any]) -> Curation:
    return Curation.from_config(validate(dict(cfg), "curation"))


def _blobs(n: int = 120, dim: int = 6, seed: int = 0) -> VectorTable:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    x = 10.0 * np.eye(4, dim)[labels] + rng.normal(0, 1, (n, dim))
    return VectorTable(ids=np.arange(n, dtype=np.int64) * 5 + 3, vectors=x.astype(np.float32), labels=labels)


# --------------------------------------------------------------------------------------------------
# the restriction: curating a subset of the pool == curating the subset's own table
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    {"method": "random", "target_size": 20},
    {"method": "hkmeans", "target_size": 25, "n_clusters": [6, 2], "n_resamples": 2, "n_iters": 10},
    {"method": "semdedup", "n_clusters": [4], "n_iters": 10, "semdedup_epsilon": 0.3},
], ids=["random", "hkmeans", "semdedup"])
def test_a_subset_curates_like_the_subset_table(cfg: dict[str, Any]) -> None:
    pool = _blobs()
    subset = np.sort(np.random.default_rng(1).choice(len(pool), 70, replace=False))
    rows, levels, stats = curate(pool, pool, _curation(cfg), 0, progress=lambda _: None, subset=subset)
    alone = pool.take(subset)
    ref_rows, ref_levels, ref_stats = curate(alone, alone, _curation(cfg), 0, progress=lambda _: None)
    np.testing.assert_array_equal(pool.ids[rows], alone.ids[ref_rows])  # same items, as pool rows
    assert set(rows) <= set(subset) and np.all(np.diff(rows) > 0)
    if levels is not None:
        np.testing.assert_array_equal(levels[rows], ref_levels[ref_rows])
        outside = np.setdiff1d(np.arange(len(pool)), subset)
        assert (levels[outside] == -1).all()
    # target_size applies to the subset; pool_size and labels_before stay the data set pool's
    assert stats["input_size"] == 70 and stats["pool_size"] == len(pool) == 120
    assert stats["selected_size"] == ref_stats["selected_size"]
    assert sum(stats["labels_before"]["histogram"].values()) == len(pool)


def test_a_subset_with_decontamination_maps_back_through_both() -> None:
    """Leakage check on the subset, decontamination inside it: rows still come back as pool rows."""
    from workflow.curate.leakage import ProbeSet

    pool = _blobs()
    subset = np.arange(0, len(pool), 2)
    probe = VectorTable(ids=np.array([9001, 9002]), vectors=pool.vectors[[subset[3], subset[10]]],
                        labels=np.array([0, 0]))
    cfg = {"method": "random", "target_size": 200, "decontaminate": True}
    rows, _, stats = curate(pool, pool, _curation(cfg), 0, progress=lambda _: None, subset=subset,
                            probes=[ProbeSet("probe_test", probe, None)])
    assert stats["leakage"]["removed"] >= 2
    assert subset[3] not in rows and subset[10] not in rows and set(rows) <= set(subset)
    assert len(rows) == len(subset) - stats["leakage"]["removed"]


# --------------------------------------------------------------------------------------------------
# selection_rows and the stats chain
# --------------------------------------------------------------------------------------------------


def _selection(path: Path, ids: list[int], column: str = "id") -> str:
    pq.write_table(pa.table({column: pa.array(ids, pa.int64())}), path)
    return str(path)


def test_selection_rows_are_the_pool_rows_of_its_ids(tmp_path: Path) -> None:
    pool_ids = np.array([30, 10, 50, 20, 40], dtype=np.int64)
    rows = selection_rows(pool_ids, _selection(tmp_path / "s.parquet", [50, 10, 40]))
    assert rows.tolist() == [1, 2, 4] and sorted(pool_ids[rows]) == [10, 40, 50]
    cases = {"foreign": ([10, 99], "1 of the 2 ids"), "empty": ([], "empty")}
    for name, (ids, words) in cases.items():
        with pytest.raises(StrataError) as info:
            selection_rows(pool_ids, _selection(tmp_path / f"{name}.parquet", ids))
        assert words in info.value.message and info.value.where.startswith("--pool-selection") and info.value.fix
    with pytest.raises(StrataError, match="no `id` column"):
        selection_rows(pool_ids, _selection(tmp_path / "other.parquet", [10], column="row"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(StrataError, match="cannot read"):
        selection_rows(pool_ids, str(tmp_path / "bad.parquet"))


def test_chain_stats_against_hand_counts() -> None:
    first = chain_stats(None, "sd", "semdedup", 90, 100)
    assert first == [{"curation": "sd", "method": "semdedup", "kept": 90, "fraction_kept": 0.9,
                      "fraction_of_pool": 0.9}]
    second = chain_stats({"pool_size": 100, "chain": first}, "hk", "hkmeans", 45, 100, prior_kept=90)
    assert second[0] == first[0]
    assert second[1] == {"curation": "hk", "method": "hkmeans", "kept": 45, "fraction_kept": 0.5,
                         "fraction_of_pool": 0.45}
    third = chain_stats({"pool_size": 100, "chain": second}, "r", "random", 9, 100, prior_kept=45)
    assert [s["kept"] for s in third] == [90, 45, 9] and third[2]["fraction_kept"] == pytest.approx(0.2)
    assert third[2]["fraction_of_pool"] == pytest.approx(0.09)
    assert chain_metrics(first) == {}
    assert chain_metrics(second) == {"chain1_kept": 90.0, "chain1_fraction_kept": 0.9, "chain1_fraction_of_pool": 0.9,
                                     "chain2_kept": 45.0, "chain2_fraction_kept": 0.5, "chain2_fraction_of_pool": 0.45}
    assert pool_note([]) == ""
    assert pool_note(first) == "pool: the selection of sd, 90% of the data set's pool"
    assert pool_note(second) == "pool: the selection of sd (kept 90%) → hk (kept 50%), 45% of the data set's pool"
    # a stats.json written before chains: its curation is the first step
    old = chain_stats({"pool_size": 100, "method": "semdedup", "selected_size": 90}, "hk", "hkmeans", 45, 100, 90)
    assert [s["kept"] for s in old] == [90, 45] and old[0]["method"] == "semdedup"
    for prior, kept, words in (({"pool_size": 80, "chain": first}, 90, "pool of 80"),
                               ({"pool_size": 100, "chain": first}, 70, "holds 70")):
        with pytest.raises(StrataError, match=words):
            chain_stats(prior, "hk", "hkmeans", 45, 100, prior_kept=kept)


def test_curate_cli_chains_two_selections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`strata curate` twice: semdedup on the pool, then hkmeans on its selection, features from another file."""
    rc, data = data_cli({"kind": "blobs", "n_max": 60, "dim": 8, "duplicate_fraction": 0.3,
                         "probe_train_per_class": 10, "probe_test_per_class": 10}, tmp_path / "data", "blobs")
    assert rc == 0
    features = tmp_path / "features.parquet"  # a feature table (read through the memmap), not the pool itself
    features.write_bytes(data["pool"].read_bytes())
    pool = read_table(data["pool"])

    def run(name: str, params: dict[str, Any], *extra: str) -> tuple[int, Path, Path]:
        out = tmp_path / name
        out.mkdir(exist_ok=True)
        argv = ["curate", "--params", json.dumps(params), "--pool", str(data["pool"]), "--features", str(features),
                "--selection", str(out / "selection.parquet"), "--stats", str(out / "stats.json"),
                "--diagnostics", str(out / "diagnostics"), "--cache-dir", str(tmp_path / "cache"), "--name", name,
                "--probe-train", str(data["probe_train"]), "--probe-test", str(data["probe_test"]), *extra]
        return main(argv), out / "selection.parquet", out / "stats.json"

    rc, sd_sel, sd_stats = run("sd", {"method": "semdedup", "n_clusters": [6], "n_iters": 10,
                                      "semdedup_epsilon": 0.02})
    assert rc == 0
    sd_ids = pq.read_table(sd_sel).column("id").to_numpy()
    assert 0 < len(sd_ids) < len(pool)  # the duplicates went
    hk = {"method": "hkmeans", "target_size": 30, "n_clusters": [6, 2], "n_resamples": 2, "n_iters": 10,
          "pool": "sd"}
    rc, hk_sel, hk_stats = run("hk", hk, "--pool-selection", str(sd_sel), "--pool-stats", str(sd_stats))
    assert rc == 0, capsys.readouterr().err
    hk_ids = pq.read_table(hk_sel).column("id").to_numpy()
    assert len(hk_ids) == 30 and set(hk_ids) <= set(sd_ids)
    stats = json.loads(hk_stats.read_text())
    n = len(pool)
    assert stats["input_size"] == len(sd_ids) and stats["pool_size"] == n
    assert stats["chain"] == [
        {"curation": "sd", "method": "semdedup", "kept": len(sd_ids), "fraction_kept": len(sd_ids) / n,
         "fraction_of_pool": len(sd_ids) / n},
        {"curation": "hk", "method": "hkmeans", "kept": 30, "fraction_kept": 30 / len(sd_ids),
         "fraction_of_pool": 30 / n}]
    assert sum(stats["cluster_sizes"][0]) == len(sd_ids)  # the k-means saw the prior selection only

    # One flag without the other, or the selection of another pool: one error line, nothing written.
    for extra, words in ((["--pool-selection", str(sd_sel)], "go together"),
                         (["--pool-selection", _selection(tmp_path / "foreign.parquet", [10**9]), "--pool-stats",
                           str(sd_stats)], "not in the pool")):
        capsys.readouterr()
        rc, sel, st = run("bad", hk, *extra)
        err = capsys.readouterr().err
        assert rc == 2 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not sel.exists() and not st.exists()


# --------------------------------------------------------------------------------------------------
# the config check and the variant hash
# --------------------------------------------------------------------------------------------------


def _study() -> dict[str, Any]:
    return {"datasets": {"d": {"kind": "blobs"}}, "seeds": [0], "ssl": {"simclr": {"method": "simclr"}},
            "curations": {"random": {"method": "random", "target_size": 10},
                          "sd": {"method": "semdedup"},
                          "hk": {"method": "hkmeans", "target_size": 5, "pool": "sd"}}}


@pytest.mark.parametrize(("mutate", "key", "words"), [
    (lambda c: c["hk"].update(pool="sdd"), "hk", ["'sdd' is not a curation", "random, sd, hk"]),
    (lambda c: c["hk"].update(pool="hk"), "hk", ["names itself"]),
    (lambda c: c["sd"].update(pool="hk"), "sd", ["loop", "sd → hk → sd"]),
    (lambda c: c.update(none={"method": "none", "pool": "sd"}), "none", ["method none"]),
    (lambda c: c["sd"].update(features=["raw", "simclr"]), "hk",
     ["'sd' has a list of feature spaces", "sd.raw, sd.simclr", "none named 'sd'"]),
], ids=["unknown", "self", "loop", "on-none", "grid-expanded"])
def test_bad_chains_name_the_key_and_the_fix(mutate, key: str, words: list[str]) -> None:
    config = _study()
    check_study(copy.deepcopy(config), SOURCE)
    mutate(config["curations"])
    with pytest.raises(StrataError) as info:
        check_study(config, SOURCE)
    assert info.value.where == f"{SOURCE}: curations.{key}.pool" and "pool" in info.value.fix
    for word in words:
        assert word in info.value.message, (word, info.value.message)


def test_a_longer_loop_and_the_chain_order() -> None:
    curations = {"a": {"method": "random", "pool": "c"}, "b": {"method": "random", "pool": "a"},
                 "c": {"method": "random", "pool": "b"}, "d": {"method": "random"}}
    with pytest.raises(StrataError, match="a → c → b → a"):
        check_chains(curations, SOURCE)
    curations["a"]["pool"] = "d"
    check_chains(curations, SOURCE)
    assert chain_of(curations, "c") == ["d", "a", "b", "c"] and chain_of(curations, "d") == ["d"]


def test_upstream_configs_change_the_variant_hash() -> None:
    config = check_study(_study(), SOURCE)
    curations = config["curations"]

    def variant(cur: dict[str, Any]) -> str:  # as rules/common.smk: variant_parent builds the curation's params
        cfg = lambda n: relevant("curation", curations[n])  # noqa: E731
        return config_hash({"name": "hk", **cfg("hk"), **upstream(curations, "hk", cfg)})

    assert upstream(curations, "sd", lambda n: {}) == {}  # an unchained curation: its hash is unchanged
    assert list(upstream(curations, "hk", lambda n: {"n": n})["upstream"]) == ["sd"]
    before = variant(curations)
    curations["sd"]["semdedup_epsilon"] = 0.2
    assert variant(curations) != before
    assert relevant("curation", curations["hk"])["pool"] == "sd"  # a parameter of the chained curation itself


def test_the_report_caption_names_the_prior_curation() -> None:
    """report/curation.rst rendered as Snakemake renders captions (Jinja, then docutils to HTML)."""
    from types import SimpleNamespace

    import jinja2
    from docutils.core import publish_parts

    template = (Path(__file__).resolve().parent.parent / "report" / "curation.rst").read_text()
    config = {"curations": _study()["curations"]}
    for curation, chained in (("hk", True), ("sd", False), ("none", False)):  # none: implicit, not in the config
        snakemake = SimpleNamespace(config=config, wildcards=SimpleNamespace(curation=curation, seed="0"))
        html = publish_parts(jinja2.Environment().from_string(template).render(snakemake=snakemake),
                             writer="html")["body"]
        assert ("This curation is chained: its pool is the selection of <strong>sd</strong>" in html) is chained
        assert "Curation diagnostics of " + curation in html


# --------------------------------------------------------------------------------------------------
# Snakemake: a bad chain stops at parse time; a real chain runs
# --------------------------------------------------------------------------------------------------

STUDY = {
    "study": "chain-test", "seeds": [0],
    "datasets": {"blobs": {"kind": "blobs", "n_max": 60, "dim": 8, "duplicate_fraction": 0.3,
                           "probe_train_per_class": 10, "probe_test_per_class": 10}},
    "curations": {"semdedup": {"method": "semdedup", "n_clusters": [6], "n_iters": 10, "semdedup_epsilon": 0.02},
                  "hkmeans": {"method": "hkmeans", "target_size": 30, "n_clusters": [6, 2], "n_resamples": 2,
                              "n_iters": 10, "pool": "semdedup"}},
    "ssl": {"simclr": {"method": "simclr", "steps": 2, "batch_size": 16}},
    "evaluation": {"cluster_n_init": 1, "linear_probe": False},
    "report": {"figures": False},
    "summary": {"baseline": "semdedup"},
}


@pytest.mark.parametrize(("curation", "pool", "words"), [
    ("hkmeans", "dedup", ["curations.hkmeans.pool", "'dedup' is not a curation"]),
    ("hkmeans", "hkmeans", ["curations.hkmeans.pool", "names itself"]),
    ("semdedup", "hkmeans", ["curations.semdedup.pool", "semdedup → hkmeans → semdedup"]),
], ids=["unknown", "self", "loop"])
def test_snakemake_stops_on_a_bad_chain(curation: str, pool: str, words: list[str], tmp_path: Path) -> None:
    config = copy.deepcopy(STUDY)
    config["curations"][curation]["pool"] = pool
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert_config_refused(path, tmp_path / "work", words)


@pytest.mark.e2e
def test_snakemake_runs_semdedup_then_hkmeans(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    # The chained curation's stats as the target (`--until curate` would stop at the first curate job of the chain).
    target = f"{study_results(check_study(copy.deepcopy(STUDY)))}/blobs/curate/hkmeans/seed0/stats.json"
    result = snakemake(tmp_path, "-p", target, configfile=path)  # (a flag first: --configfile takes several)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    log = result.stdout + result.stderr
    assert "curate: semdedup subset" in log and "curate: hkmeans subset" in log  # the DAG ran both
    (stats_path,) = tmp_path.glob("results/**/curate/hkmeans/seed0/stats.json")
    (prior_dir,) = tmp_path.glob("results/**/curate/semdedup/seed0")
    (pool_path,) = tmp_path.glob("results/**/blobs/data/pool.parquet")
    n = pq.read_metadata(pool_path).num_rows
    prior = set(pq.read_table(prior_dir / "selection.parquet").column("id").to_pylist())
    chained = set(pq.read_table(stats_path.with_name("selection.parquet")).column("id").to_pylist())
    assert len(chained) == 30 and chained <= prior < set(pq.read_table(pool_path).column("id").to_pylist())
    stats = json.loads(stats_path.read_text())
    assert [(s["curation"], s["method"], s["kept"]) for s in stats["chain"]] == [
        ("semdedup", "semdedup", len(prior)), ("hkmeans", "hkmeans", 30)]
    assert stats["chain"][0]["fraction_of_pool"] == pytest.approx(len(prior) / n)
    assert stats["chain"][1]["fraction_kept"] == pytest.approx(30 / len(prior))
    assert stats["chain"][1]["fraction_of_pool"] == pytest.approx(30 / n)
    assert json.loads((prior_dir / "stats.json").read_text())["chain"] == stats["chain"][:1]
    # The per-step fractions reach the curate run in MLflow.
    (db,) = tmp_path.glob("results/mlflow.db")
    with sqlite3.connect(db) as con:
        rows = dict(con.execute("SELECT key, value FROM latest_metrics WHERE key LIKE 'chain%'").fetchall())
        # The variant run of the chained curation holds its upstream curation's settings (and their hash).
        upstream_params = dict(con.execute("SELECT key, value FROM params WHERE key LIKE 'curation.upstream.%'"))
    assert rows["chain2_fraction_kept"] == pytest.approx(30 / len(prior))
    assert rows["chain1_fraction_of_pool"] == pytest.approx(len(prior) / n)
    assert upstream_params["curation.upstream.semdedup.method"] == "semdedup"
    assert upstream_params["curation.upstream.semdedup.semdedup_epsilon"] == "0.02"
