"""Study configuration: loading, validation against ``configs/schema.yaml``, hashing.

The schema is the single source of truth for keys, allowed values, defaults and which keys apply to which
method or data set kind (its ``x-applies-to`` and ``x-parameter`` annotations). Validation fills defaults in
place (like ``snakemake.utils.validate``) and turns the first schema violation into a :class:`StrataError` that
names the file, the key path and what is allowed. It runs once at each boundary: the Snakefile
(:func:`check_study`) and each ``strata`` command (:func:`parse_params`); the stages trust what they receive.
Code that needs an allowed set of values reads it with :func:`enum`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from workflow.errors import StrataError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "configs" / "schema.yaml"

# A float with an exponent and no dot or no exponent sign (1e-6, 1.0e6), as JSON and YAML 1.2 write it. PyYAML
# follows YAML 1.1, which reads it as a string: `weight_decay: 1e-6` would fail validation, and so would the
# params.json of any job whose settings hold a float below 1e-4 (json.dumps(1e-6) == "1e-06").
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class YAMLLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (the C one where built) that also reads ``1e-6`` and ``1.0e6`` as floats."""


YAMLLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789."))


def yaml_load(stream: Any) -> Any:
    """Parse YAML (or JSON) text or an open file safely, with floats read as JSON and YAML 1.2 read them."""
    return yaml.load(stream, Loader=YAMLLoader)


def exponent_floats(value: Any) -> Any:
    """``value`` with every string that is a float with an exponent (``'1e-6'``) turned into that float.

    For a config that Snakemake read (with YAML 1.1 rules, like PyYAML's own loaders): what
    :func:`yaml_load` would have given for those scalars. A quoted ``'1e-6'`` is read as the number too.
    """
    if isinstance(value, dict):
        return {k: exponent_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exponent_floats(v) for v in value]
    if isinstance(value, str) and EXPONENT_FLOAT.match(value):
        return float(value.replace("_", ""))
    return value


@cache
def load_schema() -> dict[str, Any]:
    """The study's JSON schema (YAML-encoded)."""
    with open(SCHEMA_PATH) as f:
        return yaml_load(f)


def _properties(section: str) -> dict[str, Any]:
    return load_schema()["$defs"][section]["properties"]


def enum(section: str, key: str) -> tuple[Any, ...]:
    """The allowed values of ``$defs.<section>.<key>`` in the schema's order, e.g. ``enum("ssl", "method")``."""
    return tuple(_properties(section)[key]["enum"])


#: Data set kinds whose tables hold images (the schema's ``x-image-kinds``).
IMAGE_DATASET_KINDS: tuple[str, ...] = tuple(_properties("dataset")["kind"]["x-image-kinds"])


@cache
def _validator_class() -> type:
    # The jsonschema FAQ recipe: fill `default` values of absent properties before validating them.
    import jsonschema

    validate_properties = jsonschema.Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping[str, Any], instance: Any, schema: Any) -> Any:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(jsonschema.Draft202012Validator, {"properties": set_defaults})


def _describe(error: Any) -> tuple[str, str, str | None]:
    """``(key path, message, fix or None)`` of a ``jsonschema.ValidationError``."""
    path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        return path, f"{error.message}. Allowed keys here: {', '.join(allowed)}", None
    if error.validator == "enum":
        return path, f"{error.instance!r} is not allowed; choose one of {schema.get('enum')}", None
    if "x-message" in schema:  # a `then` clause: a key that a method or kind needs
        return path, schema["x-message"].format(**error.instance), schema.get("x-fix")
    return path, error.message, None


def validate(instance: dict[str, Any], schema_ref: str | None = None, source: str = "config") -> dict[str, Any]:
    """Validate ``instance`` in place (defaults filled) against the study schema or one of its ``$defs``.

    Args:
        instance: The config (or one section of it) as loaded from YAML.
        schema_ref: ``None`` for the whole study, or a ``$defs`` name (``"ssl"``, ``"curation"`` ...).
        source: File name (and key prefix) for error messages.

    Raises:
        StrataError: on the first violation, naming ``source`` and the offending key.
    """
    _expand_presets(instance, schema_ref, source)
    schema = load_schema()
    if schema_ref is not None:
        schema = {"$ref": f"#/$defs/{schema_ref}", "$defs": schema["$defs"]}
    validator = _validator_class()(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        path, message, fix = _describe(errors[0])
        raise StrataError(message, where=f"{source}: {path}",
                          fix=fix or f"edit that key to match {SCHEMA_PATH.relative_to(REPO_ROOT)}.")
    return instance


def _expand_presets(instance: Any, schema_ref: str | None, source: str) -> None:
    """Fill ``ssl`` entries from their ``preset`` before validation (see :mod:`workflow.ssl_presets`)."""
    from workflow.ssl_presets import apply_preset

    if schema_ref == "ssl" and isinstance(instance, dict):
        apply_preset(instance, f"{source}: preset")
    elif schema_ref is None and isinstance(instance, dict) and isinstance(instance.get("ssl"), dict):
        for name, entry in instance["ssl"].items():
            if isinstance(entry, dict):
                apply_preset(entry, f"{source}: ssl.{name}.preset")


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
                parsed = yaml_load(value)
            except yaml.YAMLError:
                return value
            return value if isinstance(parsed, dict | list) else parsed
        return value

    return {key: retype(value) for key, value in overrides.items()}


#: Where studies write: each under ``results/<study>/``, beside the one MLflow store ``results/mlflow.db``.
RESULTS_ROOT = Path("results")


def study_results(config: Mapping[str, Any]) -> str:
    """The folder of a validated study's outputs, ``results/<study>/`` (relative to the working directory)."""
    return f"{RESULTS_ROOT.as_posix()}/{config['study']}"


def check_study(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate a whole study config and the cross-references a schema cannot express."""
    validate(config, None, source)
    from workflow.data.user import check_file_dataset  # probe files or probe_fraction, labels of .npy probes

    for name, data in config["datasets"].items():
        if data["kind"] == "file":
            check_file_dataset(data, f"{source}: datasets.{name}")
    for name, cur in config["curations"].items():
        where = f"{source}: curations.{name}"
        if cur["method"] == "none" and name != "none":
            raise StrataError("the whole-pool curation must be named `none`", where=where,
                              fix="rename it to `none` (the pretrain-on-pool job is shared under that name).")
    from workflow.feature_spaces import check_features  # features: raw, an ssl entry, a table or a backbone

    check_features(config, source)
    if "none" in config["curations"] and config["curations"]["none"]["method"] != "none":
        raise StrataError("the curation named `none` must use method none", where=f"{source}: curations.none",
                          fix="set method: none, or rename the entry.")
    from workflow.chains import check_chains  # chained curations: `pool` names another curation, no loop

    check_chains(config["curations"], source)
    baseline = config.get("summary", {}).get("baseline", "random")
    if baseline not in config["curations"]:
        raise StrataError(f"baseline {baseline!r} is not a curation of the study", where=f"{source}: summary.baseline",
                          fix=f"choose one of {sorted(config['curations'])}.")
    from workflow.comparisons import check_summary  # summary.primary and the size sweep's pairing

    check_summary(config, source)
    return config


def load_study(path: str | Path) -> dict[str, Any]:
    """A study config file as the workflow reads it: relative data paths found beside the file when they are not
    in the working directory (:mod:`workflow.data.paths`), then :func:`check_study`."""
    from workflow.data.paths import resolve_data_paths

    config = load_yaml(path)
    resolve_data_paths(config, [path])
    return check_study(config, str(path))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for missing or malformed files."""
    path = Path(path)
    if not path.exists():
        raise StrataError("config file not found", where=str(path), fix="check the path.")
    try:
        with open(path) as f:
            data = yaml_load(f)
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
            params = yaml_load(text)
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
def code_version(ignore: tuple[str, ...] = ()) -> str:
    """Git commit of the code (with ``-dirty`` when tracked files outside the ``ignore`` paths have local changes),
    or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        paths = ["--", ".", *(f":(exclude){path}" for path in ignore)] if ignore else []
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", *paths], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "strata-" + version("strata")
        except PackageNotFoundError:
            return "unknown"


def applies(section: str, key: str, context: Mapping[str, Any]) -> bool:
    """Whether ``key`` of ``$defs.<section>`` applies where the discriminators are ``context`` (``method``,
    ``kind``, ``input``): every list of its ``x-applies-to`` that ``context`` names holds the context's value."""
    rule = _properties(section).get(key, {}).get("x-applies-to", {})
    return all(context[name] in allowed for name, allowed in rule.items() if name in context)


def is_image_data(dataset_cfg: Mapping[str, Any]) -> bool:
    """Whether a data set holds images: an image kind (``x-image-kinds``), or ``input_kind: image``."""
    return dataset_cfg.get("kind") in IMAGE_DATASET_KINDS or dataset_cfg.get("input_kind") == "image"


def ssl_for_dataset(ssl_cfg: dict[str, Any], dataset_cfg: dict[str, Any]) -> dict[str, Any]:
    """An SSL entry without the keys that do not apply (``x-applies-to``) to its method or to the data set's
    input (``input: [image]``: the image-only keys are dropped unless the data set holds images).

    Keeps the parameters (a Snakemake rerun trigger), the config hash and the MLflow params of signal and vector
    variants free of settings that cannot affect them.
    """
    context = {"method": ssl_cfg.get("method"), "input": "image" if is_image_data(dataset_cfg) else "other"}
    return {k: v for k, v in ssl_cfg.items() if applies("ssl", k, context)}


def _applicable(section: str, cfg: dict[str, Any], parameters: bool) -> dict[str, Any]:
    """The keys of ``cfg`` that apply to its method or kind (``x-applies-to``) and are parameters (``parameters``)
    or run settings (``x-parameter: false``)."""
    context = {name: cfg[name] for name in ("method", "kind") if name in cfg}
    return {k: cfg[k] for k, spec in _properties(section).items()
            if k in cfg and spec.get("x-parameter", True) == parameters and applies(section, k, context)}


def relevant(section: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The keys of a validated ``curation`` or ``dataset`` entry that change its result: those that apply to its
    method or kind (``x-applies-to``), less the settings of how it runs (``x-parameter: false``). They go into
    run parameters, hashes and rerun triggers. A ``file`` or ``image-folder`` data set with both probe files
    draws nothing, so its ``seed`` is left out (changing it reruns nothing)."""
    keys = _applicable(section, cfg, parameters=True)
    if section == "dataset" and _probes_given(cfg):
        keys.pop("seed", None)
    return keys


def _probes_given(cfg: dict[str, Any]) -> bool:
    """Whether a ``file`` or ``image-folder`` data set names both probe files instead of holding probes out."""
    return (cfg.get("kind") in ("file", "image-folder") and cfg.get("probe_fraction") is None
            and bool(cfg.get("probe_train_path")) and bool(cfg.get("probe_test_path")))


def run_settings(section: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The keys of a ``curation`` entry that change only how it runs (``x-parameter: false``: device, workers,
    chunk sizes), where they apply: the job needs them, but they are no parameter and trigger no rerun."""
    return _applicable(section, cfg, parameters=False)


def main(argv: list[str] | None = None) -> int:
    """``python -m workflow.config CONFIG``: print the study's results folder (what the Makefile's targets use)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m workflow.config CONFIG", file=sys.stderr)
        return 2
    try:
        print(study_results(load_study(args[0])))
    except StrataError as err:
        print(f"strata: invalid config: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
