"""Where a relative data path in a study config points: the working directory, else the config file's folder.

Snakemake runs every job in its working directory (``--directory``, by default where it was started), so a relative
path has always meant "relative to the working directory", and still does when the file is there. A path that does
not exist there but does exist next to the config file that sets it is rewritten to reach that file through the
config's folder, relative to the working directory (``configs/examples/data/vectors.npy`` from the repository root):
not absolute, so the parameters and hashes that record it do not change with where the repository is checked out
when the study runs from inside it. So a study config can ship beside its data (``configs/examples/``: ``path:
data/vectors.npy``) and run from the repository root, from any ``--directory``, or from a copy of the folder
elsewhere, while every existing config keeps its meaning. A path found in neither place is left as written, for the
usual "not found" message. Values given with ``--config`` come from no file and are never rewritten.

The paths concerned are those of the user's data: a data set's ``path``, ``labels_path``, ``probe_train_path``,
``probe_test_path``, ``probe_train_labels_path`` and ``probe_test_labels_path``, and the ``table``, ``ids``,
``probe_train``, ``probe_test`` and ``backbone`` of a feature space: a curation's (also inside a list of spaces)
or a frozen-feature ssl entry's (``method: none``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from workflow.config import yaml_load

DATASET_PATH_KEYS = ("path", "labels_path", "probe_train_path", "probe_test_path", "probe_train_labels_path",
                     "probe_test_labels_path")
FEATURE_PATH_KEYS = ("table", "ids", "probe_train", "probe_test", "backbone")


def _get(tree: Any, keys: tuple[Any, ...]) -> Any:
    """The value at a key path of nested mappings and lists, or None."""
    for key in keys:
        if isinstance(tree, Mapping) and key in tree:
            tree = tree[key]
        elif isinstance(tree, list) and isinstance(key, int) and 0 <= key < len(tree):
            tree = tree[key]
        else:
            return None
    return tree


def _path_slots(config: Mapping[str, Any]) -> Iterable[tuple[Any, ...]]:
    """The key paths of every data path the config holds (only where the structure is the expected one)."""
    datasets = config.get("datasets")
    if isinstance(datasets, Mapping):
        for name, cfg in datasets.items():
            if isinstance(cfg, Mapping):
                yield from (("datasets", name, k) for k in DATASET_PATH_KEYS if isinstance(cfg.get(k), str))
    for section in ("curations", "ssl"):  # a curation's feature space(s); a frozen-feature ssl entry's space
        entries = config.get(section)
        if not isinstance(entries, Mapping):
            continue
        for name, cfg in entries.items():
            features = cfg.get("features") if isinstance(cfg, Mapping) else None
            spaces = list(enumerate(features)) if isinstance(features, list) else [(None, features)]
            for i, space in spaces:
                if isinstance(space, Mapping):
                    base = (section, name, "features") + (() if i is None else (i,))
                    yield from ((*base, k) for k in FEATURE_PATH_KEYS if isinstance(space.get(k), str))


def _from_working_directory(path: Path) -> str:
    """``path`` relative to the working directory (links are kept, not followed); absolute where no relative path
    reaches it (another drive on Windows)."""
    absolute = os.path.abspath(path)
    try:
        return os.path.relpath(absolute)
    except ValueError:
        return absolute


def resolve_data_paths(config: dict[str, Any], configfiles: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Rewrite, in place, each relative data path of ``config`` that is missing from the working directory but
    present beside the config file that sets it (the last of ``configfiles`` that holds that value there) to
    that path, relative to the working directory (absolute only where no relative path reaches it). Returns the
    key paths rewritten (``datasets.mine.path`` ...), for logs and tests."""
    files = []
    for f in configfiles:
        try:
            with open(f) as fh:
                files.append((Path(f).absolute().parent, yaml_load(fh)))
        except (OSError, yaml.YAMLError):  # unreadable: Snakemake itself reports it
            continue
    rewritten = []
    for slot in list(_path_slots(config)):
        parent = _get(config, slot[:-1])
        value = parent[slot[-1]]
        if not value or Path(value).is_absolute() or Path(value).exists():
            continue
        for folder, tree in reversed(files):
            if _get(tree, slot) == value:
                candidate = folder / value
                if candidate.exists():
                    parent[slot[-1]] = _from_working_directory(candidate)
                    rewritten.append(".".join(map(str, slot)))
                break
    return rewritten
