# Helpers shared by the rule files: config validation, the experiment grid, each job's files and MLflow spec.

import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from snakemake.settings.types import DeploymentMethod  # noqa: E402
from snakemake.utils import update_config  # noqa: E402

from workflow.config import check_study, config_hash, relevant, ssl_for_dataset, typed_overrides  # noqa: E402
from workflow.config import validate  # noqa: E402
from workflow.errors import StrataError  # noqa: E402
from workflow.feature_spaces import check_features  # noqa: E402
from workflow.feature_spaces import curation_space as feature_space_of  # noqa: E402
from workflow.tracking import resolve_tracking_uri  # noqa: E402

# `--config key=value` overrides, typed as in a config file (Snakemake leaves nested values strings).
CONFIG_OVERRIDES = typed_overrides(workflow.config_settings.config)
update_config(config, CONFIG_OVERRIDES)
CONFIG_SOURCE = ", ".join(map(str, workflow.overwrite_configfiles)) or "configs/default.yaml"
if CONFIG_OVERRIDES:
    CONFIG_SOURCE += " with --config " + ", ".join(CONFIG_OVERRIDES)

try:
    # The one validation of the study (configs/schema.yaml, defaults filled in, as snakemake.utils.validate would),
    # with messages naming the key.
    check_study(config, CONFIG_SOURCE)
except StrataError as err:
    # One line and exit status 2, like every `strata` command; nothing is created (no results/, no mlflow.db).
    print(f"strata: invalid config: {err}", file=sys.stderr, flush=True)
    sys.exit(2)

RESULTS = "results"
TRACKING_URI = resolve_tracking_uri(config["tracking"]["uri"], RESULTS)
NAME = "[A-Za-z0-9_.-]+"

# The `strata` CLI, run by the interpreter that runs Snakemake (so an unactivated `.venv/bin/snakemake` works),
# or with `--sdm conda` by the `python` of the rules' conda env (envs/strata.yaml).
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    STRATA = "python -m workflow"
else:
    STRATA = f"{shlex.quote(sys.executable)} -m workflow"


wildcard_constraints:
    dataset=NAME,
    curation=NAME,
    ssl=NAME,
    space=NAME,
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


def for_variants(pattern):
    """A rule's output pattern (e.g. ``rules.evaluate.output.metrics``) for every variant of the study."""
    d, c, s, seed = zip(*variants())
    return expand(pattern, zip, dataset=d, curation=c, ssl=s, seed=seed)


def all_figures():
    """Each variant's training curves and embedding map (the report's per-variant figures)."""
    if not config["report"]["figures"]:
        return []
    return for_variants(rules.plot_training.output.png) + for_variants(rules.plot_embeddings.output.png)


# The backbone feature spaces of the study by slug (workflow/feature_spaces.py): one embed_backbone job each.
BACKBONES = check_features(config, CONFIG_SOURCE)


def curation_space(curation):
    """A curation's feature space (raw, an ssl entry, a precomputed table or a pretrained backbone): its `label`
    names it in stats.json, MLflow params and titles."""
    return feature_space_of(curation_config(curation))


def curation_features(wildcards):
    """The feature table a curation runs on: the raw pool; pool embeddings of an encoder trained on the whole
    pool with the variant's seed (or with `features_seed`, one encoder for every seed); a precomputed table; or
    the pool embedded by a pretrained backbone (embed_backbone)."""
    cfg = curation_config(wildcards.curation)
    space = feature_space_of(cfg)
    if space.kind == "raw":
        return expand(rules.data.output.pool, dataset=wildcards.dataset)
    if space.kind == "table":
        return [space.path]
    if space.kind == "backbone":
        return expand(rules.embed_backbone.output.pool, dataset=wildcards.dataset, space=space.slug)
    seed = wildcards.seed if cfg.get("features_seed") is None else cfg["features_seed"]
    return expand(rules.embed_pool.output.pool, dataset=wildcards.dataset, ssl=space.ssl, seed=seed)


def curation_probes(wildcards):
    """The leakage check's inputs (leakage_check): the raw probe tables, and the probes in the curation's feature
    space where it has them (`probe_train_features`, `probe_test_features`); none when the check is off."""
    cfg = validate(dict(curation_config(wildcards.curation)), "curation")  # schema defaults for the implicit none
    if not cfg["leakage_check"]:
        return {}
    w = {"dataset": wildcards.dataset}
    files = {split: expand(getattr(rules.data.output, split), **w)[0] for split in ("probe_train", "probe_test")}
    space = feature_space_of(cfg)
    for split in ("probe_train", "probe_test"):
        if space.kind == "ssl":
            seed = wildcards.seed if cfg.get("features_seed") is None else cfg["features_seed"]
            out = getattr(rules.embed_pool.output, split)  # embedded with the pool: no extra job
            files[f"{split}_features"] = expand(out, ssl=space.ssl, seed=seed, **w)[0]
        elif space.kind == "backbone":
            files[f"{split}_features"] = expand(getattr(rules.embed_backbone.output, split), space=space.slug, **w)[0]
        elif space.kind == "table" and space.has_probe_features:
            files[f"{split}_features"] = getattr(space, split)
    return files


def probe_args(wildcards, input):
    """`--probe-train T --probe-test T [--probe-train-features F ...]` for the inputs curation_probes gave."""
    keys = ("probe_train", "probe_test", "probe_train_features", "probe_test_features")
    return one_per_line(f"--{k.replace('_', '-')} {input[k]}" for k in keys if k in input.keys())


def one_per_line(args):
    """Shell arguments one per line (continued with backslashes): lists that grow with the study stay readable."""
    return " \\\n            ".join(args)


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
    name = f"{curation}/{ssl}/s{seed} · {dataset}"  # short: the MLflow runs table shows the seed
    return {"parent_kind": "variant", "parent_key": key, "parent_name": name, "parent_params": params}


VARIANT = "{dataset}/{curation}/{ssl}/seed{seed}"

# Each rule's job name (its stage, then the wildcards that tell its jobs apart) and the MLflow run its stage runs
# nest under (None: no stage run).
JOBS = {
    "data": ("data/{dataset}", "dataset"),
    "curate": ("curate/{dataset}/{curation}/seed{seed}", "variant"),  # under its first ssl's variant, linked
    "pretrain": (f"pretrain/{VARIANT}", "variant"),
    "embed_pool": ("embed_pool/{dataset}/{ssl}/seed{seed}", "variant"),
    "embed_probes": (f"embed/{VARIANT}", "variant"),
    "embed_backbone": ("embed_backbone/{dataset}/{space}", "dataset"),
    "evaluate": (f"evaluate/{VARIANT}", "variant"),
    "plot_training": (f"plot_training/{VARIANT}", "variant"),
    "plot_embeddings": (f"plot_embeddings/{VARIANT}", "variant"),
    "summarize": ("summarize", None),
}
JOB_FILES = {
    "log": "logs/{}.log",
    "benchmark": "benchmarks/{}.tsv",
    # Written by `onstart` (write_job_files) for the job to read, so that no JSON travels on the command line.
    "tracking": ".work/jobs/{}/tracking.json",  # the MLflow spec (`strata --tracking`)
    "params": ".work/jobs/{}/params.json",  # the stage's config section, params.cfg (`strata --params-file`)
}


def job_file(rule_name, kind):
    """A job's log, benchmark, tracking-spec or params file (a wildcard pattern), e.g. results/logs/<job>.log."""
    return f"{RESULTS}/" + JOB_FILES[kind].format(JOBS[rule_name][0])


def tracking_spec(rule_name, wildcards):
    """The MLflow spec of a job (workflow.tracking.TrackingSpec): its stage run, and the run that holds it."""
    w = dict(wildcards)
    job, parent = JOBS[rule_name]
    links = []
    if parent == "dataset":
        p = dataset_parent(w["dataset"])
    elif "ssl" not in w:  # a curation: every ssl method's variant uses it; it nests under the first
        p, *links = (variant_parent(w["dataset"], w["curation"], s, w["seed"]) for s in config["ssl"])
    else:
        p = variant_parent(w["dataset"], w.get("curation", "none"), w["ssl"], w["seed"])
    return {
        "links": links,
        "uri": TRACKING_URI,
        "experiment": config["study"],
        "job": job.format(**w),
        "log": job_file(rule_name, "log").format(**w),
        "benchmark": job_file(rule_name, "benchmark").format(**w),
        **p,
    }


def _write(path, text):
    """Write a job file atomically, and only when it changes (another run's job may be reading it)."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_job_files():
    """`onstart`: the tracking spec and params file of each job to run (JOB_FILES), in the main process."""
    if not workflow.is_main_process or workflow.touch:
        return
    for job in workflow.dag.needrun_jobs(exclude_finished=False):
        rule_name = job.rule.name
        if rule_name not in JOBS:
            continue
        w = job.wildcards_dict
        if JOBS[rule_name][1]:
            _write(job_file(rule_name, "tracking").format(**w), as_json(tracking_spec(rule_name, w)))
        if "cfg" in job.params.keys():
            _write(job_file(rule_name, "params").format(**w), job.params.cfg)


def attach_job_files():
    """Log each finished job's log and benchmark files to its MLflow stage run (runs in the main process)."""
    from workflow.tracking import attach_job_files as attach

    try:
        attach(TRACKING_URI, config["study"])
    except Exception as err:  # tracking must never turn a finished workflow into a failed one
        print(f"strata: could not attach job files to MLflow: {err}", file=sys.stderr)
