# Helpers shared by the rule files: config validation, the experiment grid, each job's files and MLflow spec.

import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from snakemake.settings.types import DeploymentMethod  # noqa: E402
from snakemake.utils import update_config  # noqa: E402

from workflow.config import RESULTS_ROOT, check_study, config_hash, relevant, ssl_for_dataset  # noqa: E402
from workflow.config import exponent_floats, run_settings, study_results, typed_overrides  # noqa: E402
from workflow.config import validate  # noqa: E402
from workflow.chains import upstream  # noqa: E402
from workflow.data.paths import DATASET_PATH_KEYS, resolve_data_paths  # noqa: E402
from workflow.errors import StrataError  # noqa: E402
from workflow.feature_spaces import check_features  # noqa: E402
from workflow.feature_spaces import curation_space as feature_space_of  # noqa: E402
from workflow.frozen import FROZEN_CURATION, frozen_label, frozen_space, frozen_tables, is_frozen  # noqa: E402
from workflow.tracking import resolve_tracking_uri  # noqa: E402

# Snakemake reads the config file with YAML 1.1 rules, which leave `1e-6` a string: read it as the number it is.
config.update(exponent_floats(dict(config)))
# `--config key=value` overrides, typed as in a config file (Snakemake leaves nested values strings).
CONFIG_OVERRIDES = typed_overrides(workflow.config_settings.config)
update_config(config, CONFIG_OVERRIDES)
CONFIG_SOURCE = ", ".join(map(str, workflow.overwrite_configfiles)) or "configs/default.yaml"
if CONFIG_OVERRIDES:
    CONFIG_SOURCE += " with --config " + ", ".join(CONFIG_OVERRIDES)

try:
    # The one validation of the study (configs/schema.yaml, defaults filled in, as snakemake.utils.validate would),
    # with messages naming the key. First, relative data paths missing from the working directory are found
    # beside the config file that sets them (workflow/data/paths.py), so a study can ship with its data.
    resolve_data_paths(config, workflow.overwrite_configfiles)
    check_study(config, CONFIG_SOURCE)
except StrataError as err:
    # One line and exit status 2, like every `strata` command; nothing is created (no results/, no mlflow.db).
    print(f"strata: invalid config: {err}", file=sys.stderr, flush=True)
    sys.exit(2)

# Each study writes under its own folder, so studies coexist; they share one MLflow store (results/mlflow.db),
# one experiment per study.
RESULTS = study_results(config)
TRACKING_URI = resolve_tracking_uri(config["tracking"]["uri"], RESULTS_ROOT)
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


def variants(trained_only=False):
    """Every (dataset, curation, ssl, seed) of the study. A frozen-feature entry (ssl method none) does not
    depend on the curation: it is one variant per data set and seed, curation FROZEN_CURATION (workflow/frozen.py).
    `trained_only` leaves the frozen entries out (no pretraining run, no training curves)."""
    return [
        (d, c, s, seed)
        for d in config["datasets"]
        for s in config["ssl"]
        if not (trained_only and is_frozen(config["ssl"][s]))
        for c in ([FROZEN_CURATION] if is_frozen(config["ssl"][s]) else config["curations"])
        for seed in config["seeds"]
    ]


def trained_ssl():
    """The ssl entries that pretrain an encoder (all but the frozen-feature ones)."""
    return [s for s in config["ssl"] if not is_frozen(config["ssl"][s])]


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
    return [cfg[key] for key in DATASET_PATH_KEYS if cfg.get(key)]


def for_variants(pattern, trained_only=False):
    """A rule's output pattern (e.g. ``rules.evaluate.output.metrics``) for every variant of the study (with
    `trained_only`, of every variant that pretrains an encoder)."""
    chosen = variants(trained_only)
    if not chosen:
        return []
    d, c, s, seed = zip(*chosen)
    return expand(pattern, zip, dataset=d, curation=c, ssl=s, seed=seed)


def all_figures():
    """Each variant's training curves and embedding map (the report's per-variant figures)."""
    if not config["report"]["figures"]:
        return []
    # A frozen-feature entry trains nothing: an embedding map, no training curves.
    return for_variants(rules.plot_training.output.png, True) + for_variants(rules.plot_embeddings.output.png)


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


# The precomputed tables of frozen-feature entries by slug: one frozen_probes job per data set each.
FROZEN_TABLES = frozen_tables(config)


def variant_probes(wildcards):
    """The probe splits a variant is evaluated on (and, for a trained entry, its curation's stats.json): the
    probes embedded by the variant's encoder; for a frozen-feature entry (ssl method none) the probes in its
    space, with no pretraining and no curation: the data stage's tables (raw), a table's probes with the data
    set's labels (frozen_probes) or the backbone's embeddings (embed_backbone)."""
    w = dict(wildcards)
    cfg = config["ssl"][w["ssl"]]
    if not is_frozen(cfg):
        return {
            "probe_train": expand(rules.embed_probes.output.probe_train, **w)[0],
            "probe_test": expand(rules.embed_probes.output.probe_test, **w)[0],
            "curation_stats": expand(rules.curate.output.stats, **w)[0],
        }
    space = frozen_space(cfg)
    out = {"raw": rules.data.output, "table": rules.frozen_probes.output, "backbone": rules.embed_backbone.output}
    pattern = out[space.kind]
    return {
        split: expand(getattr(pattern, split), dataset=w["dataset"], space=space.slug)[0]
        for split in ("probe_train", "probe_test")
    }


def curation_stats_arg(wildcards, input):
    """`--curation-stats F` for a trained variant (a frozen-feature one has no curation)."""
    return f"--curation-stats {input.curation_stats}" if "curation_stats" in input.keys() else ""


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
        # A chained curation's upstream curations (workflow/chains.py): changing one is a new variant.
        "curation": {
            "name": curation,
            **curation_config(curation),
            **upstream(config["curations"], curation, curation_config),
        },
        "ssl": {"name": ssl, **ssl_config(ssl, dataset)},
        "evaluation": config["evaluation"],
        "seed": int(seed),
    }
    if is_frozen(config["ssl"][ssl]):  # no curation; the run records ssl.method none and the space's label
        del params["curation"]
        params["ssl"]["feature_space"] = frozen_space(config["ssl"][ssl]).label
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
        nest = trained_ssl() or list(config["ssl"])  # a frozen entry's variant uses no curation
        p, *links = (variant_parent(w["dataset"], w["curation"], s, w["seed"]) for s in nest)
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


def job_params(rule_name, wildcards, cfg):
    """A job's params file: its `cfg` param, plus a curation's run settings (device, workers, chunk sizes), which
    are kept out of `cfg` so that changing them reruns nothing."""
    if rule_name != "curate" or wildcards["curation"] not in config["curations"]:
        return cfg
    settings = run_settings("curation", config["curations"][wildcards["curation"]])
    return as_json({**json.loads(cfg), **settings}) if settings else cfg


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
            _write(job_file(rule_name, "params").format(**w), job_params(rule_name, w, job.params.cfg))


def attach_job_files():
    """Log each finished job's log and benchmark files to its MLflow stage run (runs in the main process)."""
    from workflow.tracking import attach_job_files as attach

    try:
        attach(TRACKING_URI, config["study"])
    except Exception as err:  # tracking must never turn a finished workflow into a failed one
        print(f"strata: could not attach job files to MLflow: {err}", file=sys.stderr)
