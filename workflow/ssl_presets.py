"""Named SSL settings per method (``configs/ssl_presets.yaml``) that an ``ssl`` entry takes with ``preset: NAME``.

A preset fills the keys an entry leaves out; the entry's own keys win. It is expanded before the schema
validates the entry, so the schema checks its values and fills the remaining defaults, and the expanded keys,
not the preset's name alone, go into run parameters, hashes and MLflow params. Expanding twice changes nothing.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import yaml

from workflow.config import REPO_ROOT, enum, yaml_load
from workflow.errors import StrataError

PRESETS_PATH = REPO_ROOT / "configs" / "ssl_presets.yaml"


@cache
def load_presets() -> dict[str, Any]:
    """Every preset: ``{name: {"description": ..., "source": [files], "methods": {method: {key: value}}}}``."""
    rel = PRESETS_PATH.relative_to(REPO_ROOT)
    try:
        with open(PRESETS_PATH) as f:
            presets = yaml_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise StrataError(f"cannot read the SSL presets ({err})", where=str(rel),
                          fix="restore the file from git (git checkout -- configs/ssl_presets.yaml).") from err
    if not isinstance(presets, dict) or not all(isinstance(p, dict) and isinstance(p.get("methods"), dict)
                                                for p in presets.values()):
        raise StrataError("every preset needs a `methods` mapping", where=str(rel),
                          fix="restore the file from git (git checkout -- configs/ssl_presets.yaml).")
    return presets


def apply_preset(entry: dict[str, Any], where: str) -> dict[str, Any]:
    """Fill the keys ``entry`` leaves out from its ``preset`` for its ``method`` (in place; no preset: as is).

    Raises:
        StrataError: an unknown preset, or one without settings for the entry's method (at ``where``, the key).
    """
    name = entry.get("preset")
    if not isinstance(name, str) or entry.get("method") not in enum("ssl", "method"):
        return entry  # absent or malformed, or an unknown method: the schema says what is wrong
    presets = load_presets()
    rel = PRESETS_PATH.relative_to(REPO_ROOT)
    if name not in presets:
        raise StrataError(f"unknown preset {name!r}", where=where,
                          fix=f"choose one of {sorted(presets)} ({rel}), or remove the key.")
    methods = presets[name]["methods"]
    if entry["method"] not in methods:
        raise StrataError(f"preset {name!r} has no settings for method {entry['method']!r}", where=where,
                          fix=f"its methods are {sorted(methods)} ({rel}); remove the key for this method.")
    for key, value in methods[entry["method"]].items():
        entry.setdefault(key, copy.deepcopy(value))
    return entry
