"""A curation's feature space: what its ``features`` key names, and where those features come from.

``curations.<name>.features`` is one of

* ``raw``: the pool's own vectors;
* the name of an ``ssl`` entry: pool embeddings of that encoder, pretrained on the whole pool;
* ``{table: <path>}``: a precomputed embedding table (Parquet with ``id`` and one vector column, or a ``.npy``
  matrix with ``ids: <path of an .npy of int ids>`` or rows in pool order), whose ids are exactly the pool's;
  optional ``column`` (Parquet vector column), ``dim`` (expected width), ``probe_train`` / ``probe_test``
  (the probes in the same space, for the leakage check) and ``name``;
* ``{backbone: <path>}``: a pretrained backbone read from local files (a Hugging Face ``transformers`` model
  folder saved with ``save_pretrained``, or a TorchScript file), run over the pool and probes by the embed
  stage (:mod:`workflow.backbones`); optional ``pooling`` (``auto``, ``pooler``, ``cls``, ``mean``) and
  ``name``.

:func:`feature_space` turns the value into a :class:`FeatureSpace` with a short ``label`` (run names, MLflow
params, ``stats.json``, figure titles) and, for a backbone, a file-system-safe ``slug`` (its output folder
``results/<study>/<dataset>/features/<slug>/``). :func:`check_features` checks every curation of a study, and first
expands a **list** of spaces (the space as a factor of the grid): ``hkmeans: {features: [raw, simclr]}`` becomes
the curations ``hkmeans.raw`` and ``hkmeans.simclr``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow.config import enum
from workflow.errors import StrataError

#: Keys of a ``{table: ...}`` feature space, and of a ``{backbone: ...}`` one.
TABLE_KEYS = ("table", "ids", "column", "dim", "probe_train", "probe_test", "name")
BACKBONE_KEYS = ("backbone", "pooling", "name")
#: How a transformers backbone's token outputs become one vector (see workflow/backbones.py).
POOLINGS: tuple[str, ...] = enum("feature_space", "pooling")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class FeatureSpace:
    """A parsed ``features`` value. ``kind`` is ``raw``, ``ssl``, ``table`` or ``backbone``."""

    kind: str
    label: str
    slug: str
    path: str | None = None  # table or backbone path
    ssl: str | None = None  # the ssl entry (kind ssl)
    ids: str | None = None  # .npy ids of a .npy table
    column: str | None = None
    dim: int | None = None
    probe_train: str | None = None
    probe_test: str | None = None
    pooling: str = "auto"

    @property
    def has_probe_features(self) -> bool:
        """Whether the probes exist in this space (so near copies are found in it, not in the raw space)."""
        return self.kind in ("ssl", "backbone") or (self.probe_train is not None and self.probe_test is not None)


def _slug(text: str) -> str:
    return _SAFE.sub("-", text).strip("-.") or "space"


def feature_space(value: Any, ssl_names: Any = None, where: str = "features") -> FeatureSpace:
    """Parse a ``features`` value (see the module docstring).

    Args:
        value: ``raw``, an ssl entry's name, or a ``{table: ...}`` / ``{backbone: ...}`` mapping.
        ssl_names: The study's ssl entries; None skips the check that a name is one of them (a stage run alone).
        where: The config key, for messages.

    Raises:
        StrataError: an unknown name, a mapping with neither or both of ``table`` and ``backbone``, a key that
            does not belong to its kind, or a value of the wrong type.
    """
    if value is None or value == "raw":
        return FeatureSpace("raw", "raw", "raw")
    if isinstance(value, str):
        if ssl_names is not None and value not in ssl_names:
            raise StrataError(f"features {value!r} is neither `raw` nor an ssl entry ({sorted(ssl_names)})",
                              where=where, fix="use `raw`, the name of an entry of `ssl`, {table: <path>} or "
                                               "{backbone: <path>}.")
        return FeatureSpace("ssl", value, _slug(value), ssl=value)
    if not isinstance(value, Mapping):
        raise StrataError(f"features must be a name or a mapping, got {type(value).__name__}", where=where,
                          fix="use `raw`, an ssl entry's name, {table: <path>} or {backbone: <path>}.")
    kinds = [k for k in ("table", "backbone") if k in value]
    if len(kinds) != 1:
        raise StrataError("a features mapping needs exactly one of `table` and `backbone`", where=where,
                          fix="write {table: <embeddings.parquet or .npy>} or {backbone: <model folder or "
                              "TorchScript file>}.")
    kind = kinds[0]
    allowed = TABLE_KEYS if kind == "table" else BACKBONE_KEYS
    for key in value:
        if key not in allowed:
            raise StrataError(f"key `{key}` does not go with `{kind}`", where=f"{where}.{key}",
                              fix=f"a {kind} feature space takes {', '.join(allowed)}.")
    for key in ("table", "ids", "column", "probe_train", "probe_test", "backbone", "name"):
        if value.get(key) is not None and (not isinstance(value[key], str) or not value[key]):
            raise StrataError(f"`{key}` must be a non-empty string", where=f"{where}.{key}", fix="give a path or name.")
    name = value.get("name")
    if name is not None and _slug(name) != name:
        raise StrataError(f"name {name!r} may hold only letters, digits, `_`, `-` and `.`", where=f"{where}.name",
                          fix="rename it (it becomes part of result paths and run names).")
    path = str(value[kind])
    if kind == "table":
        dim = value.get("dim")
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise StrataError(f"dim must be a positive integer, got {dim!r}", where=f"{where}.dim",
                              fix="give the embedding width, or leave dim out.")
        if (value.get("probe_train") is None) != (value.get("probe_test") is None):
            raise StrataError("give both probe_train and probe_test, or neither", where=where,
                              fix="add the missing probe table (the probes embedded like the pool).")
        if value.get("ids") is not None and not path.endswith(".npy"):
            raise StrataError("`ids` goes with a .npy table only (a Parquet table has its `id` column)",
                              where=f"{where}.ids", fix="remove ids, or give the embeddings as .npy.")
        label = name or f"table:{Path(path).stem}"
        return FeatureSpace("table", label, _slug(label), path=path, ids=value.get("ids"),
                            column=value.get("column"), dim=dim, probe_train=value.get("probe_train"),
                            probe_test=value.get("probe_test"))
    pooling = value.get("pooling", "auto")
    if pooling not in POOLINGS:
        raise StrataError(f"pooling {pooling!r} is not allowed; choose one of {list(POOLINGS)}",
                          where=f"{where}.pooling", fix="auto = the model's pooled output, else its first token.")
    base = Path(path.rstrip("/")).name or "backbone"
    label = name or f"backbone:{base}" + ("" if pooling == "auto" else f":{pooling}")
    digest = hashlib.sha256(f"{path}|{pooling}".encode()).hexdigest()[:8]
    slug = name or f"{_slug(Path(base).stem)}-{digest}"
    return FeatureSpace("backbone", label, slug, path=path, pooling=pooling)


def curation_space(cfg: Mapping[str, Any], where: str = "features") -> FeatureSpace:
    """The feature space of a curation entry: ``raw`` for ``none`` and ``random`` (which curate on nothing)."""
    if cfg.get("method") in ("none", "random"):
        return FeatureSpace("raw", "raw", "raw")
    return feature_space(cfg.get("features", "raw"), None, where)


def expand_feature_grid(config: dict[str, Any], source: str = "config") -> None:
    """Replace, in place and in order, each curation whose ``features`` is a list by one curation per space,
    named ``<name>.<space slug>`` (``features_seed`` kept where the space is an ssl entry)."""
    curations = config["curations"]
    if not any(isinstance(cur.get("features"), list) for cur in curations.values()):
        return
    expanded: dict[str, Any] = {}
    for name, cur in curations.items():
        values = cur.get("features")
        if not isinstance(values, list):
            expanded[name] = cur
            continue
        where = f"{source}: curations.{name}.features"
        if cur.get("method") not in ("kmeans", "hkmeans", "semdedup"):
            raise StrataError(f"a list of feature spaces needs a method that curates in one, not {cur.get('method')!r}",
                              where=where, fix="use kmeans, hkmeans or semdedup, or give one space.")
        for i, value in enumerate(values):
            space = feature_space(value, config["ssl"], f"{where}.{i}")
            new = f"{name}.{space.slug}"
            if new in curations or new in expanded:
                raise StrataError(f"the curation {new!r} of this list already exists", where=f"{where}.{i}",
                                  fix="rename one of them, or give the space another `name`.")
            entry = {**cur, "features": value}
            if space.kind != "ssl":
                entry["features_seed"] = None
            expanded[new] = entry
    curations.clear()
    curations.update(expanded)


def check_space_paths(value: Any, where: str) -> None:
    """Every file or folder a feature space's mapping names (``table``, ``ids``, probe files, ``backbone``) exists:
    else one message naming ``<where>.<key>``. For curations and frozen-feature ssl entries alike."""
    for key in ("table", "ids", "probe_train", "probe_test", "backbone"):
        path = value.get(key) if isinstance(value, Mapping) else None
        if path is not None and not Path(path).exists():
            raise StrataError(f"{path!r} does not exist (a relative path is looked up in the working directory, "
                              "then beside the config file; nothing is downloaded)", where=f"{where}.{key}",
                              fix="give the path of a local file or folder" + (
                                  ": a transformers model saved with save_pretrained, or a TorchScript file."
                                  if key == "backbone" else "."))


def check_features(config: dict[str, Any], source: str = "config") -> dict[str, FeatureSpace]:
    """Expand lists of spaces (:func:`expand_feature_grid`), then check every curation's ``features`` (and
    ``features_seed``) against the study, and the frozen-feature ssl entries (:mod:`workflow.frozen`); returns the
    backbone spaces by slug (one embed job each). Two different backbones may not share a ``name``."""
    expand_feature_grid(config, source)
    backbones: dict[str, FeatureSpace] = {}
    for name, cur in config["curations"].items():
        where = f"{source}: curations.{name}.features"
        space = feature_space(cur.get("features", "raw"), config["ssl"], where)
        if cur.get("features_seed") is not None and space.kind != "ssl":
            raise StrataError("features_seed applies only when features names an ssl entry",
                              where=f"{source}: curations.{name}.features_seed",
                              fix="remove features_seed (a table or backbone is one fixed space already).")
        check_space_paths(cur.get("features"), where)
        if space.kind == "backbone" and cur.get("method") not in ("none", "random"):
            other = backbones.setdefault(space.slug, space)
            if other != space:
                raise StrataError(f"two backbone feature spaces are both named {space.slug!r}", where=where,
                                  fix="give each backbone (path and pooling) its own name.")
    from workflow.frozen import check_frozen  # ssl entries with method none: their spaces and backbones

    check_frozen(config, source, backbones)
    return backbones
