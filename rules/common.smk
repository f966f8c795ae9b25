# Helpers shared by the rule files: config validation, the experiment grid, MLflow tracking specs.

import json
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.utils import update_config  # noqa: E402

from workflow.config import check_study, config_hash, relevant, ssl_for_dataset, typed_overrides  # noqa: E402
from workflow.errors import StrataError  # noqa: E402
from workflow.tracking import resolve_tracking_uri  # noqa: E402

# `--config key=value` overrides, typed as in a config file (Snakemake leaves nested values strings).
CONFIG_OVERRIDES = typed_overrides(workflow.config_settings.config)
update_config(config, CONFIG_OVERRIDES)
CONFIG_SOURCE = ", ".join(map(str, workflow.overwrite_configfiles)) or "configs/default.yaml"
if CONFIG_OVERRIDES:
    CONFIG_SOURCE += " with --config " + ", ".join(CONFIG_OVERRIDES)

try:
    # Same schema as snakemake.utils.validate (defaults filled in), with messages naming the key.
    check_study(config, CONFIG_SOURCE)
except StrataError as err:
    # One line and exit status 2, like every `strata` command; nothing is created (no results/, no mlflow.db).
    print(f"strata: invalid config: {err}", file=sys.stderr, flush=True)
    sys.exit(2)
validate(config, "../configs/schema.yaml")

RESULTS = "results"
TRACKING_URI = resolve_tracking_uri(config["tracking"]["uri"], RESULTS)
NAME = "[A-Za-z0-9_.-]+"


wildcard_constraints:
    dataset=NAME,
    curation=NAME,
    ssl=NAME,
    seed=r"\d+",
    split="probe_train|probe_test",


def variants():
    """Every (dataset, curation, ssl, seed) of the study."""
    return [
        (d, c, s, seed)
        for d in config["datasets"]
        for c in config["curations"]
        for s in config["ssl"]
        for seed in config["seeds"]
    ]


def curation_config(name):
    # `none` (the whole pool) is implicit: the pretrain-on-pool job behind feature extraction uses it.
    return relevant("curation", config["curations"].get(name, {"method": "none"}))


def dataset_config(name):
    return relevant("dataset", config["datasets"][name])


def ssl_config(ssl, dataset):
    """An SSL method's settings as they apply to a data set (image-only keys dropped for other data)."""
    return ssl_for_dataset(config["ssl"][ssl], config["datasets"][dataset])


def dataset_files(wildcards):
    """A user data set's files or image folders (kinds `file`, `image-folder`): changing them reruns its data job.

    A folder counts as changed when files are added, removed or renamed in it (its mtime), not when a file is
    edited in place; `snakemake --forcerun data` rebuilds it then.
    """
    cfg = config["datasets"][wildcards.dataset]
    return [cfg[key] for key in ("path", "labels_path", "probe_train_path", "probe_test_path") if cfg.get(key)]


def all_metrics():
    return [
        f"{RESULTS}/{d}/evaluate/{c}/{s}/seed{seed}/metrics.json"
        for d, c, s, seed in variants()
    ]


def all_figures():
    """Each variant's training curves and embedding map (the report's per-variant figures)."""
    if not config["report"]["figures"]:
        return []
    return [
        f"{RESULTS}/{d}/figures/{c}/{s}/seed{seed}/{name}.png"
        for d, c, s, seed in variants()
        for name in ("training", "embeddings")
    ]


def curation_features(wildcards):
    """The feature table a curation runs on: the raw pool or pool embeddings of an encoder trained on it."""
    features = curation_config(wildcards.curation).get("features", "raw")
    if curation_config(wildcards.curation)["method"] == "none" or features == "raw":
        return f"{RESULTS}/{wildcards.dataset}/data/pool.parquet"
    return f"{RESULTS}/{wildcards.dataset}/embed/none/{features}/seed{wildcards.seed}/pool.parquet"


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def dataset_parent(dataset):
    params = {"dataset": {"name": dataset, **dataset_config(dataset)}}
    key = f"dataset:{dataset}:{config_hash(params)}"
    return {"parent_kind": "dataset", "parent_key": key, "parent_name": f"data {dataset}", "parent_params": params}


def variant_parent(dataset, curation, ssl, seed):
    params = {
        "dataset": {"name": dataset, **dataset_config(dataset)},
        "curation": {"name": curation, **curation_config(curation)},
        "ssl": {"name": ssl, **ssl_config(ssl, dataset)},
        "evaluation": config["evaluation"],
        "seed": int(seed),
    }
    key = f"variant:{dataset}/{curation}/{ssl}/seed{seed}:{config_hash(params)}"
    name = f"{curation} · {ssl} · {dataset} · seed {seed}"
    return {"parent_kind": "variant", "parent_key": key, "parent_name": name, "parent_params": params}


def tracking(stage, parent):
    """A params function: the MLflow spec of a job (JSON for `strata --tracking`)."""

    def spec(wildcards):
        parts = [wildcards[k] for k in ("dataset", "curation", "ssl") if k in wildcards.keys()]
        if "seed" in wildcards.keys():
            parts.append(f"seed{wildcards.seed}")
        job = "/".join([stage, *parts])
        if parent == "dataset":
            p = dataset_parent(wildcards.dataset)
        else:
            curation = wildcards.curation if "curation" in wildcards.keys() else "none"
            p = variant_parent(wildcards.dataset, curation, wildcards.ssl, wildcards.seed)
        return as_json(
            {
                "uri": TRACKING_URI,
                "experiment": config["study"],
                "job": job,
                # Every rule names its log and benchmark files results/{logs,benchmarks}/<job>.{log,tsv}.
                "log": f"{RESULTS}/logs/{job}.log",
                "benchmark": f"{RESULTS}/benchmarks/{job}.tsv",
                **p,
            }
        )

    return spec


def attach_job_files():
    """Log each finished job's log and benchmark files to its MLflow stage run (runs in the main process)."""
    from workflow.tracking import attach_job_files as attach

    try:
        attach(TRACKING_URI, config["study"])
    except Exception as err:  # tracking must never turn a finished workflow into a failed one
        print(f"strata: could not attach job files to MLflow: {err}", file=sys.stderr)
