"""Tests of study-config loading and validation (workflow.config, configs/schema.yaml)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from workflow.config import (
    IMAGE_DATASET_KINDS,
    REPO_ROOT,
    check_study,
    config_hash,
    enum,
    exponent_floats,
    load_schema,
    load_yaml,
    parse_params,
    relevant,
    ssl_for_dataset,
    typed_overrides,
    validate,
    yaml_load,
)
from workflow.errors import StrataError

SOURCE = "my-study.yaml"


def _minimal() -> dict[str, Any]:
    return {
        "datasets": {"d1": {"kind": "blobs"}},
        "curations": {"random": {"method": "random", "target_size": 10}},
        "ssl": {"simclr": {"method": "simclr"}},
        "seeds": [0],
    }


def _error(config: dict[str, Any]) -> StrataError:
    with pytest.raises(StrataError) as info:
        check_study(config, SOURCE)
    assert SOURCE in str(info.value) and info.value.where.startswith(f"{SOURCE}: ")
    return info.value


# --------------------------------------------------------------------------------------------------
# defaults
# --------------------------------------------------------------------------------------------------


def test_minimal_config_gets_defaults() -> None:
    config = _minimal()
    out = check_study(config, SOURCE)
    assert out is config  # filled in place
    schema = load_schema()
    ssl_props = schema["$defs"]["ssl"]["properties"]
    assert config["ssl"]["simclr"]["steps"] == ssl_props["steps"]["default"] == 1500
    assert config["ssl"]["simclr"]["batch_size"] == 256
    assert config["evaluation"]["knn_k"] == schema["$defs"]["evaluation"]["properties"]["knn_k"]["default"] == 20
    assert config["evaluation"]["recall_ks"] == [1, 5, 10]
    assert config["embed"] == {"batch_size": 1024}
    assert config["summary"] == {"baseline": "random", "primary": "knn_accuracy", "rope": 0.01, "curve": None,
                                 "bootstrap_resamples": 2000, "bootstrap_seed": 0}
    assert config["study"] == "strata"
    assert config["tracking"] == {"uri": None} and config["ray"] == {"address": None}
    assert config["datasets"]["d1"]["seed"] == 0 and config["datasets"]["d1"]["imbalance_ratio"] == 100
    assert config["curations"]["random"]["features"] == "raw"
    assert config["curations"]["random"]["n_clusters"] == [100, 20]


def test_given_values_are_kept_and_defaults_are_copies() -> None:
    a = _minimal()
    a["ssl"]["simclr"]["steps"] = 7
    a["evaluation"] = {"knn_k": 3}
    check_study(a, SOURCE)
    assert a["ssl"]["simclr"]["steps"] == 7 and a["evaluation"]["knn_k"] == 3
    assert a["evaluation"]["knn_temperature"] == 0.07  # the rest of the section still filled
    a["curations"]["random"]["n_clusters"].append(5)  # mutating one config's default ...
    b = check_study(_minimal(), SOURCE)
    assert b["curations"]["random"]["n_clusters"] == [100, 20]  # ... does not leak into the next
    assert load_schema()["$defs"]["curation"]["properties"]["n_clusters"]["default"] == [100, 20]


@pytest.mark.parametrize("name", ["default.yaml", "test.yaml", "confirm.yaml", "curve.yaml", "methods.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    path = REPO_ROOT / "configs" / name
    config = check_study(load_yaml(path), str(path))
    assert config["datasets"] and config["seeds"]
    assert config["summary"]["baseline"] in config["curations"]
    for cur in config["curations"].values():
        assert cur["features"] == "raw" or cur["features"] in config["ssl"]


def test_confirmatory_study_repeats_the_default_design_on_fresh_seeds() -> None:
    # configs/confirm.yaml's pre-registration: the default study's design, only seeds / name / figures differ,
    # and none of the pilot's seeds is reused (they only sized it).
    default = check_study(load_yaml(REPO_ROOT / "configs" / "default.yaml"), "default.yaml")
    confirm = check_study(load_yaml(REPO_ROOT / "configs" / "confirm.yaml"), "confirm.yaml")
    for key in ("datasets", "curations", "ssl", "summary"):
        assert confirm[key] == default[key], key
    assert confirm["seeds"] == list(range(4, 19)) and not set(confirm["seeds"]) & set(default["seeds"])
    assert confirm["study"] != default["study"]


def test_methods_study_shares_the_default_studys_subsets() -> None:
    # configs/methods.yaml's pre-registration: the default study's data, curations and feature encoder, so every
    # method of a seed trains on the default study's subset; all seven methods, presets where the sweep chose.
    default = check_study(load_yaml(REPO_ROOT / "configs" / "default.yaml"), "default.yaml")
    methods = check_study(load_yaml(REPO_ROOT / "configs" / "methods.yaml"), "methods.yaml")
    for key in ("datasets", "curations", "summary", "seeds"):
        assert methods[key] == default[key], key
    assert methods["ssl"]["simclr"] == default["ssl"]["simclr"]
    assert {c["method"] for c in methods["ssl"].values()} == {"simclr", "byol", "barlowtwins", "vicreg", "swav",
                                                               "dino", "tldr"}
    assert all(c.get("preset") == "small-data" for n, c in methods["ssl"].items() if n not in ("simclr", "tldr"))


# --------------------------------------------------------------------------------------------------
# schema violations: StrataError naming the source file and the key path
# --------------------------------------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    config = _minimal()
    config["sed"] = [1]
    err = _error(config)
    assert err.where == f"{SOURCE}: (top level)"
    assert "'sed' was unexpected" in err.message and "seeds" in err.message


def test_unknown_key_in_ssl_entry() -> None:
    config = _minimal()
    config["ssl"]["simclr"]["temprature"] = 0.1
    err = _error(config)
    assert err.where == f"{SOURCE}: ssl.simclr"
    assert "'temprature' was unexpected" in err.message
    allowed = sorted(load_schema()["$defs"]["ssl"]["properties"])
    assert f"Allowed keys here: {', '.join(allowed)}" in err.message
    assert "temperature" in allowed


def test_unknown_ssl_method() -> None:
    config = _minimal()
    config["ssl"]["simclr"]["method"] = "mocov3"
    err = _error(config)
    assert err.where == f"{SOURCE}: ssl.simclr.method"
    assert "'mocov3' is not allowed" in err.message
    assert "['simclr', 'byol', 'barlowtwins', 'vicreg', 'swav', 'tldr', 'dino', 'none']" in err.message


def test_unknown_curation_method_lists_allowed_values() -> None:
    config = _minimal()
    config["curations"]["random"]["method"] = "dbscan"
    err = _error(config)
    assert err.where == f"{SOURCE}: curations.random.method"
    assert "['none', 'random', 'kmeans', 'hkmeans', 'semdedup']" in err.message


def test_random_curation_without_target_size() -> None:
    config = _minimal()
    del config["curations"]["random"]["target_size"]
    err = _error(config)
    assert err.where == f"{SOURCE}: curations.random" and "target_size" in err.message


def test_curation_features_naming_missing_ssl_entry() -> None:
    config = _minimal()
    config["curations"]["hk"] = {"method": "hkmeans", "target_size": 5, "features": "byol"}
    err = _error(config)
    assert err.where == f"{SOURCE}: curations.hk.features"
    assert "'byol'" in err.message and "simclr" in err.message
    config["curations"]["hk"]["features"] = "simclr"
    check_study(config, SOURCE)


def test_baseline_not_a_curation() -> None:
    config = _minimal()
    config["summary"] = {"baseline": "hkmeans"}
    err = _error(config)
    assert err.where == f"{SOURCE}: summary.baseline" and "'hkmeans'" in err.message
    config2 = _minimal()  # the default baseline (random) must exist too
    config2["curations"] = {"none": {"method": "none"}}
    assert _error(config2).where == f"{SOURCE}: summary.baseline"


def test_dataset_name_with_slash() -> None:
    config = _minimal()
    config["datasets"]["mnist/lt"] = {"kind": "blobs"}
    err = _error(config)
    assert err.where == f"{SOURCE}: datasets" and "'mnist/lt'" in err.message


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda c: c.update(seeds=[0, -1]), "seeds.1"),
    (lambda c: c["datasets"]["d1"].update(seed=-3), "datasets.d1.seed"),
])
def test_negative_seed(mutate, where: str) -> None:
    config = _minimal()
    mutate(config)
    err = _error(config)
    assert err.where == f"{SOURCE}: {where}" and "minimum of 0" in err.message


def test_other_cross_checks() -> None:
    config = _minimal()
    config["curations"]["all"] = {"method": "none"}
    assert _error(config).where == f"{SOURCE}: curations.all"
    config = _minimal()
    config["curations"]["none"] = {"method": "random", "target_size": 3}
    assert _error(config).where == f"{SOURCE}: curations.none"
    config = _minimal()
    config["datasets"]["mine"] = {"kind": "file"}
    err = _error(config)
    assert err.where == f"{SOURCE}: datasets.mine" and "path" in err.message


def test_missing_required_section_and_wrong_type() -> None:
    config = _minimal()
    del config["ssl"]
    assert "'ssl' is a required property" in _error(config).message
    config = _minimal()
    config["curations"]["random"]["target_size"] = "10"
    assert _error(config).where == f"{SOURCE}: curations.random.target_size"


# --------------------------------------------------------------------------------------------------
# YAML loading, stage params, hashing
# --------------------------------------------------------------------------------------------------


def test_load_yaml_errors(tmp_path: Path) -> None:
    malformed = tmp_path / "broken.yaml"
    malformed.write_text("datasets:\n  a: [1, 2\n  b: {\n")
    with pytest.raises(StrataError, match="not valid YAML") as info:
        load_yaml(malformed)
    assert info.value.where == str(malformed)

    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(StrataError, match="mapping") as info:
        load_yaml(listing)
    assert info.value.where == str(listing)

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(StrataError, match="mapping") as info:
        load_yaml(empty)
    assert str(empty) in str(info.value)

    with pytest.raises(StrataError, match="not found") as info:
        load_yaml(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in str(info.value)


def test_parse_params(tmp_path: Path) -> None:
    params = parse_params('{"method": "random", "target_size": 4}', None, "curation", "curation")
    assert params["target_size"] == 4 and params["features"] == "raw"
    file = tmp_path / "p.yaml"
    file.write_text("method: simclr\nsteps: 3\n")
    assert parse_params(None, str(file), "ssl", "ssl")["steps"] == 3
    assert parse_params(None, None, "evaluation", "evaluation")["knn_k"] == 20
    with pytest.raises(StrataError, match="mapping"):
        parse_params("[1, 2]", None, "curation", "curation")
    with pytest.raises(StrataError, match="not valid JSON/YAML"):
        parse_params('{"method": ', None, "curation", "curation")
    file.write_text("method: simclr\nstep: 3\n")
    with pytest.raises(StrataError, match="'step' was unexpected") as info:
        parse_params(None, str(file), "ssl", "ssl")
    assert str(file) in str(info.value)


def test_validate_a_section() -> None:
    cfg = validate({"kind": "digits"}, "dataset", source="datasets.x")
    assert cfg["n_max"] is None and cfg["duplicate_fraction"] == 0.1
    with pytest.raises(StrataError) as info:
        validate({"kind": "digits", "duplicate_fraction": 1.5}, "dataset", source="datasets.x")
    assert info.value.where == "datasets.x: duplicate_fraction"


def test_config_hash() -> None:
    a = {"x": 1, "y": {"b": [1, 2], "a": "s"}}
    b = {"y": {"a": "s", "b": [1, 2]}, "x": 1}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 12 and all(ch in "0123456789abcdef" for ch in config_hash(a))
    changed = copy.deepcopy(a)
    changed["y"]["b"] = [1, 3]
    assert config_hash(changed) != config_hash(a)
    assert config_hash({**a, "x": 2}) != config_hash(a)
    assert config_hash({**a, "z": None}) != config_hash(a)
    assert config_hash(check_study(_minimal(), SOURCE)) == config_hash(check_study(_minimal(), SOURCE))


def test_config_overrides_get_the_types_of_a_config_file() -> None:
    # What Snakemake hands over for --config seeds='[0,1,2]' summary='{rope: 0.02, curve: null}' name=x
    raw = {"seeds": ["0", "1", "2"], "summary": {"rope": "0.02", "curve": "null"}, "name": "x", "report": True}
    assert typed_overrides(raw) == {"seeds": [0, 1, 2], "summary": {"rope": 0.02, "curve": None}, "name": "x",
                                    "report": True}
    assert typed_overrides({"a": ["[1, 2]", "b: c", "'quoted'"]}) == {"a": ["[1, 2]", "b: c", "quoted"]}


def test_floats_with_an_exponent_are_numbers() -> None:
    """`1e-6` is a float as JSON and YAML 1.2 read it, not the string of PyYAML's YAML 1.1 rules."""
    assert yaml_load("a: 1e-6\nb: 1.0e6\nc: -2E+3\nd: .5e1\ne: 12\nf: 1.5\ng: '1e-6'\nh: e5\ni: 1e\n") == {
        "a": 1e-6, "b": 1e6, "c": -2000.0, "d": 5.0, "e": 12, "f": 1.5, "g": "1e-6", "h": "e5", "i": "1e"}
    # What Snakemake's loader hands over for the same file, once read again.
    assert exponent_floats({"a": "1e-6", "b": ["2E+3", "x"], "c": {"d": "1e", "e": 3}}) == {
        "a": 1e-6, "b": [2000.0, "x"], "c": {"d": "1e", "e": 3}}


def test_a_small_float_reaches_the_job_as_a_number(tmp_path: Path) -> None:
    """`weight_decay: 1e-6` in a study: Snakemake accepts it, the job's params file holds it as json.dumps writes
    it (1e-06), and the pretrain job reads it back as the number and trains."""
    from conftest import snakemake

    study = (REPO_ROOT / "configs" / "test.yaml").read_text()
    study = study.replace("ssl:\n", "ssl:\n  small_wd: {method: byol, steps: 2, weight_decay: 1e-6, lr: 5e-4}\n", 1)
    assert "small_wd" in study
    path = tmp_path / "study.yaml"
    path.write_text(study)
    target = "results/strata-test/tiny/pretrain/random/small_wd/seed0/encoder.safetensors"
    ok = snakemake(tmp_path, "--rerun-incomplete", target, configfile=path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / target).is_file()
    params_file = tmp_path / "results/strata-test/.work/jobs/pretrain/tiny/random/small_wd/seed0/params.json"
    assert "1e-06" in params_file.read_text()
    params = parse_params(None, str(params_file), "ssl", "ssl")
    assert params["weight_decay"] == 1e-6 and params["lr"] == 5e-4


def test_snakemake_config_override_of_the_seeds(tmp_path: Path) -> None:
    from conftest import snakemake

    ok = snakemake(tmp_path, "-n", "--config", "seeds=[0,1,2,3,4]")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "seed4" in ok.stdout + ok.stderr
    bad = snakemake(tmp_path, "-n", "--config", 'seeds=[0,"x"]')
    assert bad.returncode == 2 and "with --config seeds: seeds.1: 'x'" in bad.stderr, bad.stderr[-2000:]


def test_make_ui_follows_the_study_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workflow.ui import _study_store, main

    study = load_yaml(REPO_ROOT / "configs" / "test.yaml")
    study.update({"study": "my-study", "tracking": {"uri": "sqlite:////tmp/elsewhere/mlflow.db"}})
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(study))
    assert _study_store(str(path)) == ("sqlite:////tmp/elsewhere/mlflow.db", "my-study")
    path.write_text("seeds: [0]\n")  # not a study: one message naming the file, status 2, said at once
    assert main(["--config", str(path), "--port", "9"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("strata ui: starting the MLflow UI")
    assert err.startswith("strata ui: error: ") and str(path) in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# applicability and allowed values come from the schema
# --------------------------------------------------------------------------------------------------

# The hand-kept table that `relevant` replaced (issue 21): the schema's annotations must give the same keys.
_DATA_GENERATOR = ["kind", "seed", "n_max", "imbalance_ratio", "duplicate_fraction", "duplicate_noise",
                   "probe_train_per_class", "probe_test_per_class", "input_kind"]
_KMEANS = ["method", "target_size", "features", "features_seed", "n_clusters", "sample_sizes", "n_resamples",
           "sample_strategy", "leaf_strategy", "n_iters", "tol", "normalize", "init_method", "init_max_points"]
_LEAKAGE = ["leakage_check", "leakage_threshold", "decontaminate"]  # issue 18: every method
FORMER_RELEVANT = {
    ("curation", "none"): ["method", *_LEAKAGE],
    ("curation", "random"): ["method", "target_size", *_LEAKAGE],
    ("curation", "kmeans"): [*_KMEANS, *_LEAKAGE],
    ("curation", "hkmeans"): [*_KMEANS, *_LEAKAGE],
    ("curation", "semdedup"): ["method", "target_size", "features", "features_seed", "n_clusters", "n_iters", "tol",
                               "semdedup_epsilon", "init_method", "init_max_points", *_LEAKAGE],
    ("dataset", "mnist1d-lt"): _DATA_GENERATOR,
    ("dataset", "digits"): _DATA_GENERATOR,
    ("dataset", "blobs"): [*_DATA_GENERATOR, "n_classes", "dim", "n_subclusters"],
    ("dataset", "file"): ["kind", "path", "vector_column", "labels_path", "probe_train_path", "probe_test_path",
                          "input_kind", "seed", "probe_fraction", "probe_train_labels_path",
                          "probe_test_labels_path"],  # issue 18 item 5: held-out and .npy probes
    ("dataset", "digits-images"): [*_DATA_GENERATOR, "image_size", "image_mode"],
    ("dataset", "image-folder"): ["kind", "seed", "path", "probe_train_path", "probe_test_path",
                                  "probe_train_per_class", "probe_test_per_class", "input_kind", "image_size",
                                  "image_mode", "resize", "on_corrupt", "extensions"],
}


@pytest.mark.parametrize(("section", "value"), sorted(FORMER_RELEVANT))
def test_relevant_keys_come_from_the_schema(section: str, value: str) -> None:
    key = "method" if section == "curation" else "kind"
    cfg = validate({key: value, "target_size": 5} if section == "curation" else {key: value, "path": "p"}, section)
    assert sorted(relevant(section, cfg)) == sorted(FORMER_RELEVANT[(section, value)])


@pytest.mark.parametrize("kind", ["file", "image-folder"])
def test_seed_is_a_parameter_only_where_probes_are_drawn(kind: str) -> None:
    """A data set with both probe files draws nothing: its seed changes no result, so no hash and no rerun."""
    given = validate({"kind": kind, "path": "p", "probe_train_path": "a", "probe_test_path": "b"}, "dataset")
    assert "seed" not in relevant("dataset", given)
    assert relevant("dataset", {**given, "seed": 7}) == relevant("dataset", given)
    drawn = ({"kind": kind, "path": "p", "probe_fraction": 0.2} if kind == "file"
             else {"kind": kind, "path": "p"})  # image-folder: probes held out of the pool folder
    assert relevant("dataset", validate(drawn, "dataset"))["seed"] == 0


def test_ssl_keys_follow_the_method_and_the_data() -> None:
    ssl_keys = set(load_schema()["$defs"]["ssl"]["properties"])
    image_only = {"image_augment", "resnet_widths", "resnet_blocks", "dino_local_crop_size"}
    # The keys that only some methods read (workflow/pretrain/methods.py): a SimCLR run shows no SwAV key.
    own = {"dino": {k for k in ssl_keys if k.startswith("dino_")},
           "byol": {k for k in ssl_keys if k.startswith("byol_")},
           "swav": {k for k in ssl_keys if k.startswith("swav_")} | {"temperature"}, "simclr": {"temperature"},
           "vicreg": {k for k in ssl_keys if k.startswith("vicreg_")}, "barlowtwins": {"lambda_param"},
           "tldr": {"lambda_param", "tldr_k"}}
    method_only = set().union(*own.values())
    for method in enum("ssl", "method"):
        if method == "none":  # a frozen-feature entry: tests/test_frozen_baseline.py
            continue
        cfg = validate({"method": method}, "ssl")
        for dataset, image in (({"kind": "blobs", "input_kind": "auto"}, False), ({"kind": "digits-images"}, True),
                               ({"kind": "file", "input_kind": "image"}, True), ({"kind": "mnist1d-lt"}, False)):
            dropped = set(cfg) - set(ssl_for_dataset(cfg, dataset))
            expected = (set() if image else image_only) | (method_only - own[method])
            assert dropped == expected, (method, dataset)


def test_annotations_name_allowed_values_only() -> None:
    defs = load_schema()["$defs"]
    discriminators = {"method": None, "kind": None, "input": ("image",)}
    for section in ("dataset", "curation", "ssl"):
        for key, spec in defs[section]["properties"].items():
            for name, allowed in spec.get("x-applies-to", {}).items():
                values = discriminators[name] or enum(section, name)
                assert allowed and set(allowed) <= set(values), (section, key, name, allowed)
            assert spec.get("x-parameter", True) in (True, False)
    assert set(IMAGE_DATASET_KINDS) <= set(enum("dataset", "kind"))


def test_code_enums_are_the_schemas() -> None:
    from workflow.curate.hierarchical import SAMPLE_STRATEGIES
    from workflow.curate.sampling import LEAF_STRATEGIES
    from workflow.curate.stage import METHODS
    from workflow.kmeans import INIT_METHODS, PRUNE_MODES

    assert enum("ssl", "method") == ("simclr", "byol", "barlowtwins", "vicreg", "swav", "tldr", "dino", "none")
    assert METHODS == enum("curation", "method") == ("none", "random", "kmeans", "hkmeans", "semdedup")
    assert INIT_METHODS == enum("curation", "init_method") and SAMPLE_STRATEGIES == enum("curation", "sample_strategy")
    assert LEAF_STRATEGIES == enum("curation", "leaf_strategy")
    assert PRUNE_MODES == enum("curation", "prune") == ("auto", "never", "always")


def test_keys_a_method_or_kind_needs() -> None:
    config = _minimal()
    config["datasets"]["mine"] = {"kind": "file"}
    err = _error(config)
    assert (err.message, err.fix) == ("a `file` dataset needs `path`", "set path: to a Parquet or .npy file.")
    config["datasets"]["mine"] = {"kind": "image-folder", "path": ""}
    assert _error(config).where == f"{SOURCE}: datasets.mine.path"
    config["datasets"]["mine"] = {"kind": "image-folder"}
    assert _error(config).message == "an `image-folder` dataset needs `path`"
    # the CLI's boundary (a stage's --params) gives the study's message
    for method in ("random", "kmeans", "hkmeans"):
        with pytest.raises(StrataError) as info:
            parse_params(f'{{"method": "{method}"}}', None, "curation", "curation")
        assert info.value.message == f"method {method!r} needs `target_size`"
        assert info.value.fix == "add target_size: <number of pool items to keep>."
    for method in ("none", "semdedup"):
        assert "target_size" not in parse_params(f'{{"method": "{method}"}}', None, "curation", "curation")


def test_prune_is_a_mode() -> None:
    assert validate({"method": "hkmeans", "target_size": 3}, "curation")["prune"] == "auto"
    with pytest.raises(StrataError) as info:
        validate({"method": "hkmeans", "target_size": 3, "prune": True}, "curation", "curations.hk")
    assert info.value.where == "curations.hk: prune" and "['auto', 'never', 'always']" in info.value.message
