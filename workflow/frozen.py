"""Frozen-feature baselines: an ``ssl`` entry with ``method: none`` evaluates a feature space as it is.

``ssl.<name>: {method: none, features: <space>}`` trains nothing. The evaluate stage scores the probe splits in
``features`` (:mod:`workflow.feature_spaces`):

* ``raw``: the data stage's own probe tables (``id``, vector, ``label``), read by evaluate as they are;
* ``{table: ..., probe_train: ..., probe_test: ...}``: the table's probe features, joined with the data stage's
  labels by id (:func:`write_frozen_probes`, the ``frozen_probes`` rule); a table without probe features cannot
  be evaluated, which :func:`check_frozen` reports before anything runs;
* ``{backbone: ...}``: the probes embedded by the ``embed_backbone`` rule (the same job a curation in that space
  uses).

An ssl entry's name is not allowed: a trained encoder's features are what an ordinary entry evaluates.

The features depend on neither the curation nor (apart from the seeded parts of evaluation: k-means
initialisation, linear probe) the seed, so comparing curations inside a frozen entry would report differences
that are 0 by construction. The workflow therefore evaluates a frozen entry once per data set and seed, under the
reserved curation name :data:`FROZEN_CURATION`, which no comparison names: the summary shows those rows as
references ("frozen features: raw") and the verdict has no comparison for them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from workflow.errors import StrataError
from workflow.feature_spaces import FeatureSpace, check_space_paths, feature_space

#: The curation wildcard of a frozen entry's variants (results/<dataset>/evaluate/frozen/<ssl>/seed<N>/).
FROZEN_CURATION = "frozen"


def is_frozen(ssl_cfg: Mapping[str, Any]) -> bool:
    """Whether an ssl entry is a frozen-feature baseline (``method: none``): evaluated, never trained."""
    return ssl_cfg.get("method") == "none"


def frozen_entries(config: Mapping[str, Any]) -> list[str]:
    """The study's frozen ssl entries, in config order."""
    return [name for name, cfg in config["ssl"].items() if is_frozen(cfg)]


def frozen_space(ssl_cfg: Mapping[str, Any], where: str = "features") -> FeatureSpace:
    """The feature space of a frozen entry (``raw``, a table or a backbone; never an ssl entry).

    Raises:
        StrataError: an ssl entry's name (or any other name but ``raw``), a malformed mapping, or a table
            without ``probe_train`` / ``probe_test`` (nothing to evaluate in its space).
    """
    value = ssl_cfg.get("features", "raw")
    if isinstance(value, str) and value != "raw":
        raise StrataError(f"features {value!r} names an ssl entry; a frozen entry (method: none) evaluates raw "
                          "features, a precomputed table or a pretrained backbone", where=where,
                          fix="use raw, {table: <path>, probe_train: <path>, probe_test: <path>} or "
                              "{backbone: <path>}; a trained encoder is evaluated by its own ssl entry.")
    space = feature_space(value, None, where)
    if space.kind == "table" and not space.has_probe_features:
        raise StrataError("a frozen table needs the probes in its space: evaluation scores probe_train and "
                          "probe_test, not the pool", where=where,
                          fix="add probe_train: <path> and probe_test: <path> (the probe splits embedded like "
                              "the pool, with their ids), or evaluate it as a curation's features instead.")
    return space


def frozen_tables(config: Mapping[str, Any]) -> dict[str, FeatureSpace]:
    """The precomputed tables of the frozen entries by slug (one ``frozen_probes`` job per data set each)."""
    spaces = (frozen_space(config["ssl"][name]) for name in frozen_entries(config))
    return {space.slug: space for space in spaces if space.kind == "table"}


def frozen_label(ssl_cfg: Mapping[str, Any]) -> str:
    """How summaries name a frozen entry's rows: ``frozen features: raw`` (or the table's / backbone's label)."""
    return f"frozen features: {frozen_space(ssl_cfg).label}"


def check_frozen(config: dict[str, Any], source: str, backbones: dict[str, FeatureSpace]) -> None:
    """Check the study's frozen entries; add their backbone spaces to ``backbones`` (slug -> space, one
    ``embed_backbone`` job each, shared with the curations that use the same backbone).

    Raises:
        StrataError: a bad ``features`` (:func:`frozen_space`), a path that does not exist, a curation whose
            features name a frozen entry (there is no encoder to embed the pool with), a curation named
            :data:`FROZEN_CURATION`, or two different backbones (or frozen tables) with one name.
    """
    frozen = frozen_entries(config)
    if not frozen:
        return
    if FROZEN_CURATION in config["curations"]:
        raise StrataError(f"the curation name {FROZEN_CURATION!r} is reserved for the frozen-feature entries "
                          f"({', '.join(frozen)}) of this study", where=f"{source}: curations.{FROZEN_CURATION}",
                          fix="rename that curation.")
    tables: dict[str, FeatureSpace] = {}
    for name in frozen:
        where = f"{source}: ssl.{name}.features"
        space = frozen_space(config["ssl"][name], where)
        if space.kind == "table" and tables.setdefault(space.slug, space) != space:
            raise StrataError(f"two frozen tables are both named {space.slug!r}", where=where,
                              fix="give each table its own `name` (it names its results folder).")
        check_space_paths(config["ssl"][name].get("features"), where)
        if space.kind == "backbone" and backbones.setdefault(space.slug, space) != space:
            raise StrataError(f"two backbone feature spaces are both named {space.slug!r}", where=where,
                              fix="give each backbone (path and pooling) its own name.")
    for cname, cur in config["curations"].items():
        features = cur.get("features")
        if cur.get("method") not in ("none", "random") and isinstance(features, str) and features in frozen:
            raise StrataError(f"features {features!r} is a frozen entry (method: none), which trains no encoder "
                              "to embed the pool with", where=f"{source}: curations.{cname}.features",
                              fix=f"give the space itself (ssl.{features}.features), e.g. raw or "
                                  "{backbone: <path>}.")


def write_frozen_probes(probe: str, features: str, output: str, space: FeatureSpace,
                        cache_dir: str | None = None) -> int:
    """Write a probe split in a precomputed table's space as an evaluate-ready table (``id``, vector, ``label``).

    The table's probe file may be a ``.npy`` (rows in the probe's order) or a Parquet table without labels, so
    its rows are aligned to the data stage's probe table by id, and that table's labels are copied.

    Returns:
        The number of rows written.

    Raises:
        StrataError: ids that do not match the probe's, a width other than ``dim``, NaN values
            (:func:`workflow.curate.features.aligned_features`), or an unreadable probe table.
    """
    import numpy as np

    from workflow.curate.features import aligned_features
    from workflow.tables import VectorTable, read_table, write_table

    table = read_table(probe, require_labels=True)
    x = aligned_features(features, table.ids, cache_dir, column=space.column, dim=space.dim,
                         what=Path(probe).stem)
    write_table(VectorTable(table.ids, np.ascontiguousarray(x, dtype=np.float32), table.labels), output,
                metadata={"feature_space": space.label, "source": str(features)})
    return len(table)


def _cmd_frozen_probes(args: argparse.Namespace) -> None:
    space = feature_space({k: v for k, v in (("table", args.table), ("column", args.column), ("dim", args.dim))
                           if v is not None}, None, "--table")
    if args.label:
        space = replace(space, label=args.label)
    for probe, features, output in zip(args.probe, args.features, args.output, strict=True):
        n = write_frozen_probes(probe, features, output, space, args.cache_dir)
        print(f"frozen-probes: {n} rows of {probe} in the {space.label} space -> {output}", flush=True)


def add_commands(stage: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``strata frozen-probes`` (``stage`` is :func:`workflow.cli.build_parser`'s helper)."""
    p = stage("frozen-probes", _cmd_frozen_probes, "Write probe splits in a precomputed table's space with the "
              "data set's labels, for a frozen-feature entry (ssl method none).", ["output"], params=False)
    p.add_argument("--table", required=True, help="the precomputed table (its name in labels; its layout)")
    p.add_argument("--column", help="the Parquet vector column of the probe feature files")
    p.add_argument("--dim", type=int, help="expected width")
    p.add_argument("--label", help="the space's label (the log and the tables' metadata)")
    p.add_argument("--probe", action="append", required=True, help="the data stage's probe table (repeatable)")
    p.add_argument("--features", action="append", required=True, help="that probe in the table's space")
    p.add_argument("--output", action="append", required=True, help="output: evaluate-ready table")
    p.add_argument("--cache-dir", default=None, help="scratch folder for re-ordered features")
