"""SSL presets (configs/ssl_presets.yaml, workflow.ssl_presets): named settings per method that an ssl entry
takes with ``preset:``; the entry's own keys win, the schema checks the values, and bad names stop with one
message naming the key."""

from __future__ import annotations

import json

import pytest

from workflow.config import REPO_ROOT, check_study, parse_params, validate
from workflow.errors import StrataError
from workflow.ssl_presets import load_presets

PRESETS = load_presets()
CASES = [(name, method) for name, preset in PRESETS.items() for method in preset["methods"]]


@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_every_preset_is_a_valid_entry_and_fills_its_keys(name: str, method: str) -> None:
    keys = PRESETS[name]["methods"][method]
    entry = validate({"method": method, "preset": name}, "ssl", "presets")
    assert {k: entry[k] for k in keys} == keys
    assert entry["preset"] == name
    assert validate(dict(entry), "ssl", "again") == entry  # expanding twice changes nothing


def test_presets_name_their_source_and_the_source_holds_the_choice() -> None:
    for name, preset in PRESETS.items():
        assert preset["description"].strip(), name
        assert all((REPO_ROOT / source).exists() for source in preset["source"]), name
    chosen: dict = {}
    for source in PRESETS["small-data"]["source"]:  # rounds in order: a later round's choice of a method wins
        chosen |= json.loads((REPO_ROOT / source).read_text())["extra"]["chosen"]
    for method, keys in PRESETS["small-data"]["methods"].items():
        # the preset is what the sweep chose, at the sweep's batch of 128 where the candidate names none
        assert {"batch_size": 128, **chosen[method]["keys"]} == keys, method


def test_the_entrys_own_keys_win() -> None:
    name, method = "small-data", "swav"
    preset = PRESETS[name]["methods"][method]
    entry = validate({"method": method, "preset": name, "lr": 0.123, "steps": 7}, "ssl")
    assert (entry["lr"], entry["steps"]) == (0.123, 7)
    assert all(entry[k] == v for k, v in preset.items() if k not in ("lr", "steps"))


def test_a_preset_in_a_study_and_in_stage_parameters() -> None:
    name, method = CASES[0]
    config = {"datasets": {"d": {"kind": "blobs"}}, "curations": {"random": {"method": "random", "target_size": 10}},
              "ssl": {"mine": {"method": method, "preset": name}}, "seeds": [0]}
    check_study(config, "study.yaml")
    stage = parse_params(json.dumps({"method": method, "preset": name}), None, "ssl", "--params")
    assert config["ssl"]["mine"] == stage


@pytest.mark.parametrize(("entry", "words"), [
    ({"method": "simclr", "preset": "big-data"}, ["unknown preset 'big-data'", "small-data", "ssl_presets.yaml"]),
    ({"method": "none", "features": "raw", "preset": "small-data"}, ["no settings for method 'none'"]),
    ({"method": "tldr", "preset": "small-data"}, ["no settings for method 'tldr'", "simclr"]),
], ids=["unknown-name", "method-without-settings", "tldr-not-swept"])
def test_bad_preset_names_the_key_and_the_fix(entry: dict, words: list[str]) -> None:
    config = {"datasets": {"d": {"kind": "blobs"}}, "curations": {"random": {"method": "random", "target_size": 10}},
              "ssl": {"mine": entry}, "seeds": [0]}
    with pytest.raises(StrataError) as info:
        check_study(config, "study.yaml")
    assert info.value.where == "study.yaml: ssl.mine.preset"
    assert info.value.fix
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_a_mistyped_method_gets_the_schemas_message_not_the_presets() -> None:
    with pytest.raises(StrataError) as info:
        validate({"method": "simclrr", "preset": "small-data"}, "ssl", "s.yaml")
    assert "choose one of" in str(info.value) and "preset" not in info.value.where
