"""Study configuration: loading, validation against ``configs/schema.yaml``, hashing.

The schema is the single source of truth for keys, allowed values and defaults. Validation fills
defaults in place (like ``snakemake.utils.validate``) and turns the first schema violation into a
:class:`StrataError` that names the file, the key path and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from workflow.errors import StrataError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "configs" / "schema.yaml"


@cache
def load_schema() -> dict[str, Any]:
    """The study's JSON schema (YAML-encoded)."""
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _extend_with_defaults(validator_class: type) -> type:
    # The jsonschema FAQ recipe: fill `default` values of absent properties before validating them.
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping[str, Any], instance: Any, schema: Any) -> Any:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_defaults(jsonschema.Draft202012Validator)


def _describe(error: jsonschema.ValidationError) -> tuple[str, str]:
    path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        return path, f"{error.message}. Allowed keys here: {', '.join(allowed)}"
    if error.validator == "enum":
        return path, f"{error.instance!r} is not allowed; choose one of {schema.get('enum')}"
    return path, error.message


def validate(instance: dict[str, Any], schema_ref: str | None = None, source: str = "config") -> dict[str, Any]:
    """Validate ``instance`` in place (defaults filled) against the study schema or one of its ``$defs``.

    Args:
        instance: The config (or one section of it) as loaded from YAML.
        schema_ref: ``None`` for the whole study, or a ``$defs`` name (``"ssl"``, ``"curation"`` ...).
        source: File name (and key prefix) for error messages.

    Raises:
        StrataError: on the first violation, naming ``source`` and the offending key.
    """
    schema = load_schema()
    if schema_ref is not None:
        schema = {"$ref": f"#/$defs/{schema_ref}", "$defs": schema["$defs"]}
    validator = _DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        path, message = _describe(errors[0])
        raise StrataError(message, where=f"{source}: {path}",
                          fix=f"edit that key to match {SCHEMA_PATH.relative_to(REPO_ROOT)}.")
    return instance


def typed_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``snakemake --config key=value`` values with the types a config file would give them.

    Snakemake reads each value with int, float, bool and then YAML's ``BaseLoader``, which keeps every nested
    scalar a string (``seeds='[0,1,2]'`` gives ``['0', '1', '2']``). Each such string is read again as a YAML
    scalar (``'0'`` → 0, ``'0.5'`` → 0.5, ``'true'`` → True, ``'null'`` → None); other strings stay strings.
    """

    def retype(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: retype(v) for k, v in value.items()}
        if isinstance(value, list):
            return [retype(v) for v in value]
        if isinstance(value, str):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return value if isinstance(parsed, dict | list) else parsed
        return value

    return {key: retype(value) for key, value in overrides.items()}


def check_study(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate a whole study config and the cross-references a schema cannot express."""
    validate(config, None, source)
    for name, cur in config["curations"].items():
        where = f"{source}: curations.{name}"
        if cur["method"] not in ("none", "semdedup") and "target_size" not in cur:
            raise StrataError(f"method {cur['method']!r} needs `target_size`", where=where,
                              fix="add target_size: <number of pool items to keep>.")
        if cur["method"] == "none" and name != "none":
            raise StrataError("the whole-pool curation must be named `none`", where=where,
                              fix="rename it to `none` (the pretrain-on-pool job is shared under that name).")
        feats = cur.get("features", "raw")
        if feats != "raw" and feats not in config["ssl"]:
            raise StrataError(f"features {feats!r} is neither `raw` nor an ssl entry ({sorted(config['ssl'])})",
                              where=f"{where}.features", fix="use `raw` or the name of an entry of `ssl`.")
    if "none" in config["curations"] and config["curations"]["none"]["method"] != "none":
        raise StrataError("the curation named `none` must use method none", where=f"{source}: curations.none",
                          fix="set method: none, or rename the entry.")
    baseline = config.get("summary", {}).get("baseline", "random")
    if baseline not in config["curations"]:
        raise StrataError(f"baseline {baseline!r} is not a curation of the study", where=f"{source}: summary.baseline",
                          fix=f"choose one of {sorted(config['curations'])}.")
    from workflow.comparisons import check_summary  # summary.primary and the size sweep's pairing

    check_summary(config, source)
    for name, ds in config["datasets"].items():
        if ds["kind"] == "file" and not ds.get("path"):
            raise StrataError("a `file` dataset needs `path`", where=f"{source}: datasets.{name}",
                              fix="set path: to a Parquet or .npy file.")
        if ds["kind"] == "image-folder" and not ds.get("path"):
            raise StrataError("an `image-folder` dataset needs `path`", where=f"{source}: datasets.{name}",
                              fix="set path: to the folder of images (one subfolder per class, or flat).")
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for missing or malformed files."""
    path = Path(path)
    if not path.exists():
        raise StrataError("config file not found", where=str(path), fix="check the path.")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise StrataError(f"not valid YAML ({err})", where=str(path), fix="fix the YAML syntax.") from err
    if not isinstance(data, dict):
        raise StrataError("expected a mapping at the top level", where=str(path), fix="write key: value pairs.")
    return data


def parse_params(text: str | None, file: str | None, schema_ref: str, source: str) -> dict[str, Any]:
    """Parse a stage's parameters given inline (JSON/YAML) or as a file, validated against a ``$defs`` entry."""
    if file:
        params = load_yaml(file)
        source = file
    elif text:
        try:
            params = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise StrataError(f"--params is not valid JSON/YAML ({err})", where=source,
                              fix="pass a JSON object.") from err
    else:
        params = {}
    if not isinstance(params, dict):
        raise StrataError("parameters must be a mapping", where=source, fix="pass a JSON object.")
    return validate(params, schema_ref, source)


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-serialisable config (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


@cache
def code_version() -> str:
    """Git commit of the code (with ``-dirty`` when the tree has local changes), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "strata-" + version("strata")
        except PackageNotFoundError:
            return "unknown"


# Keys that matter for each method / data set kind (the schema fills defaults for every key; these are
# the ones that change the result, and hence go into run parameters, hashes and rerun triggers).
_RELEVANT = {
    ("curation", "none"): ["method"],
    ("curation", "random"): ["method", "target_size"],
    ("curation", "kmeans"): ["method", "target_size", "features", "n_clusters", "sample_sizes", "n_resamples",
                             "sample_strategy", "leaf_strategy", "n_iters", "tol", "normalize", "init_method",
                             "init_max_points"],
    ("curation", "hkmeans"): ["method", "target_size", "features", "n_clusters", "sample_sizes", "n_resamples",
                              "sample_strategy", "leaf_strategy", "n_iters", "tol", "normalize", "init_method",
                              "init_max_points"],
    ("curation", "semdedup"): ["method", "target_size", "features", "n_clusters", "n_iters", "tol",
                               "semdedup_epsilon", "init_method", "init_max_points"],
    ("dataset", "mnist1d-lt"): ["kind", "seed", "n_max", "imbalance_ratio", "duplicate_fraction", "duplicate_noise",
                                "probe_train_per_class", "probe_test_per_class", "input_kind"],
    ("dataset", "digits"): ["kind", "seed", "n_max", "imbalance_ratio", "duplicate_fraction", "duplicate_noise",
                            "probe_train_per_class", "probe_test_per_class", "input_kind"],
    ("dataset", "blobs"): ["kind", "seed", "n_max", "imbalance_ratio", "duplicate_fraction", "duplicate_noise",
                           "probe_train_per_class", "probe_test_per_class", "input_kind", "n_classes", "dim",
                           "n_subclusters"],
    ("dataset", "file"): ["kind", "path", "vector_column", "labels_path", "probe_train_path", "probe_test_path",
                          "input_kind"],
    ("dataset", "digits-images"): ["kind", "seed", "n_max", "imbalance_ratio", "duplicate_fraction",
                                   "duplicate_noise", "probe_train_per_class", "probe_test_per_class", "input_kind",
                                   "image_size", "image_mode"],
    ("dataset", "image-folder"): ["kind", "seed", "path", "probe_train_path", "probe_test_path",
                                  "probe_train_per_class", "probe_test_per_class", "input_kind", "image_size",
                                  "image_mode", "resize", "on_corrupt", "extensions"],
}


#: SSL keys that only image data sets use (the ResNet backbone and its augmentations).
IMAGE_SSL_KEYS = ("image_augment", "resnet_widths", "resnet_blocks", "dino_local_crop_size")
#: Data set kinds whose tables hold images.
IMAGE_DATASET_KINDS = ("digits-images", "image-folder")
#: SSL methods whose keys (named ``<prefix>...``) are dropped from every other method's entry.
METHOD_SSL_KEY_PREFIXES = {"dino": "dino_"}


def ssl_for_dataset(ssl_cfg: dict[str, Any], dataset_cfg: dict[str, Any]) -> dict[str, Any]:
    """An SSL entry without the image-only keys when the data set holds no images, and without the keys of
    another method (``METHOD_SSL_KEY_PREFIXES``: DINO's ``dino_*`` unless the method is dino).

    Keeps the parameters (a Snakemake rerun trigger), the config hash and the MLflow params of signal and vector
    variants free of settings that cannot affect them.
    """
    is_image = dataset_cfg.get("kind") in IMAGE_DATASET_KINDS or dataset_cfg.get("input_kind") == "image"
    drop = set() if is_image else set(IMAGE_SSL_KEYS)
    drop |= {k for k in ssl_cfg for method, prefix in METHOD_SSL_KEY_PREFIXES.items()
             if ssl_cfg.get("method") != method and k.startswith(prefix)}
    return {k: v for k, v in ssl_cfg.items() if k not in drop}


def relevant(section: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The keys of a validated config entry that apply to its method (curation) or kind (dataset)."""
    keys = _RELEVANT.get((section, cfg.get("method", cfg.get("kind"))))
    return dict(cfg) if keys is None else {k: cfg[k] for k in keys if k in cfg}
