"""``strata``: the command-line entry points that the Snakemake rules call, one subcommand per stage.

Every stage also runs on its own, without Snakemake, e.g.::

    strata data --name mnist1d-lt --params '{"kind": "mnist1d-lt"}' --pool pool.parquet \\
        --probe-train probe_train.parquet --probe-test probe_test.parquet --info data.json

Errors in the input or the request print one line (file/key, what is wrong, how to fix it) and exit
with status 2; outputs of a failed command are removed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from workflow import allocator, joblog, timing
from workflow.errors import StrataError
from workflow.outputs import JobOutputs

EXIT_USER_ERROR = 2


def _tracking(args: argparse.Namespace) -> Any:
    """The job's MLflow spec: ``--tracking`` names the JSON file the workflow wrote for the job, or holds the JSON."""
    from workflow.tracking import TrackingSpec

    if not args.tracking:
        return None
    text = args.tracking
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise StrataError("the tracking spec file does not exist", where=f"--tracking {text}",
                              fix="let Snakemake write it (its `onstart` handler, so not with --no-hooks), "
                                  "pass the spec as JSON, or omit --tracking.")
        text = path.read_text()
    return TrackingSpec.from_json(text)


ARTIFACT_MAX_BYTES = 64 * 2**20  # larger outputs are tracked by digest only


def _record(stage: str, params: dict[str, Any], inputs: list[str], outputs: list[str]) -> Any:
    """A stage's MLflow record: its params, its outputs as artifacts, and the digests of its inputs."""
    from workflow.tables import file_digest
    from workflow.tracking import StageRecord

    files = [o for o in outputs if Path(o).is_file()]
    record = StageRecord(stage=stage, params=params,
                         artifacts=[o for o in files if Path(o).stat().st_size <= ARTIFACT_MAX_BYTES],
                         inputs={p: file_digest(p) for p in inputs if Path(p).is_file()})
    record.tags["strata.outputs"] = json.dumps({o: file_digest(o)[:16] for o in files})[:5000]
    return record


def cmd_data(args: argparse.Namespace) -> None:
    from workflow.config import code_version, config_hash, parse_params, relevant
    from workflow.curate.stage import label_stats
    from workflow.data import write_dataset
    from workflow.tables import write_json
    from workflow.tracking import log_stage

    params = parse_params(args.params, args.params_file, "dataset", f"datasets.{args.name}")
    start = time.perf_counter()
    outputs = {"pool": args.pool, "probe_train": args.probe_train, "probe_test": args.probe_test}
    with timing.compute():
        written = write_dataset(params, args.name, outputs, {"dataset": args.name, "config_hash": config_hash(params)},
                                log=lambda msg: print(msg, flush=True))
    used = relevant("dataset", params)  # the keys that made these data (not a seed that draws nothing)
    info = {**written.meta, **written.info, "params": used, "code_version": code_version(),
            "sizes": written.sizes, "pool_labels": label_stats(written.pool_labels)}
    write_json(info, args.info)
    record = _record("data", used, [], [*outputs.values(), args.info])
    record.add_datasets([(args.pool, "pool"), (args.probe_train, "probe_train"), (args.probe_test, "probe_test")])
    record.metrics = {"pool_size": written.sizes["pool"], "probe_train_size": written.sizes["probe_train"],
                      "probe_test_size": written.sizes["probe_test"], "seconds": time.perf_counter() - start}
    if "n_skipped" in written.info:
        record.metrics["skipped_files"] = written.info["n_skipped"]
    log_stage(_tracking(args), record)


def cmd_curate(args: argparse.Namespace) -> None:
    from workflow.config import parse_params, relevant
    from workflow.curate.stage import Curation, curate, write_selection
    from workflow.tables import read_table, write_json
    from workflow.tracking import log_stage

    params = parse_params(args.params, args.params_file, "curation", "curation")
    start = time.perf_counter()
    pool = read_table(args.pool)
    # An embedding table is read through a float32 memmap (converted once into the cache folder).
    features = pool if args.features in (None, args.pool) else args.features
    from workflow.curate.leakage import leakage_metrics, read_probes
    from workflow.feature_spaces import curation_space

    space = curation_space(params, "curation.features")  # its label: stats.json, params; a table's layout
    probes = read_probes({k: v for k, v in (("probe_train", args.probe_train), ("probe_test", args.probe_test)) if v},
                         {"probe_train": args.probe_train_features, "probe_test": args.probe_test_features}, space,
                         args.cache_dir)
    from workflow.chains import chain_metrics, chain_stats, prior_pool

    name = args.name or params["method"]
    # A chained curation (curations.<name>.pool): the prior selection's rows are its pool.
    subset, prior_stats, note = prior_pool(pool.ids, args.pool_selection, args.pool_stats, name, params["method"])
    if subset is not None:
        print(f"curate: the pool is the prior selection, {len(subset)} of {len(pool)} items", flush=True)
    if args.diagnostics:
        Path(args.diagnostics).mkdir(parents=True, exist_ok=True)
    rows, levels_ids, stats = curate(pool, features, Curation.from_config(params), args.seed,
                                     progress=lambda msg: print(f"curate: {msg}", flush=True),
                                     workers=args.threads, ray_address=args.ray_address,
                                     diagnostics_dir=args.diagnostics, cache_dir=args.cache_dir,
                                     threads=args.threads, probes=probes, space=space, subset=subset,
                                     pool_note=note)
    stats["chain"] = chain_stats(prior_stats, name, params["method"], len(rows), len(pool),
                                 None if subset is None else len(subset))
    stats["seconds"] = timing.add_compute(time.perf_counter() - start)
    write_selection(pool, rows, levels_ids, args.selection)
    write_json(stats, args.stats)
    print(f"curate: {params['method']} kept {len(rows)} of {len(pool) if subset is None else len(subset)} items "
          f"-> {args.selection}", flush=True)
    record = _record("curate", {**relevant("curation", params), "seed": args.seed, "feature_space": space.label},
                     [args.pool, args.features or args.pool, *filter(None, (args.pool_selection, args.pool_stats))],
                     [args.selection, args.stats])
    record.add_datasets([(args.pool, "pool"), (args.selection, "selection")])
    record.metrics = {"selected_size": len(rows), "pool_size": len(pool), "seconds": stats["seconds"]}
    record.metrics.update(chain_metrics(stats["chain"]))  # kept count and fractions of each step of a chain
    for when in ("before", "after"):
        if f"labels_{when}" in stats:
            record.metrics[f"label_entropy_{when}"] = stats[f"labels_{when}"]["normalized_entropy"]
    for level, (entropy, gini) in enumerate(zip(stats.get("cluster_size_entropy", []),
                                                stats.get("cluster_size_gini", []), strict=True), start=1):
        record.metrics[f"level{level}_size_entropy"] = entropy
        record.metrics[f"level{level}_size_gini"] = gini
    for which in ("selected", "pool"):
        if stats.get("vendi", {}).get(which) is not None:
            record.metrics[f"vendi_{which}"] = stats["vendi"][which]
    record.metrics.update(leakage_metrics(stats))  # exact / near copies of probe items, per class
    if args.diagnostics:
        record.artifacts += [str(p) for p in sorted(Path(args.diagnostics).glob("*.png"))]
    log_stage(_tracking(args), record)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from workflow.config import parse_params, ssl_for_dataset
    from workflow.pretrain.train import run_pretrain
    from workflow.tables import read_metadata
    from workflow.tracking import log_stage

    params = parse_params(args.params, args.params_file, "ssl", "ssl")
    start = time.perf_counter()
    history = run_pretrain(args.pool, args.selection, args.encoder, args.history, params, args.seed, args.threads,
                           args.gpus, args.ray_address, args.work_root)
    applicable = ssl_for_dataset(params, {"input_kind": read_metadata(args.pool).get("input_kind")})
    record = _record("pretrain", {**applicable, "seed": args.seed, "threads": args.threads, "gpus": args.gpus},
                     [args.pool, args.selection], [args.encoder, args.history])
    record.add_datasets([(args.selection, "training")])
    record.add_datasets([(args.pool, "pool")], to_parent=False)
    record.models = [{"path": args.encoder, "name": "encoder"}]  # an MLflow model of the stage and its variant
    record.share_series = True  # the loss history, on the variant run too
    # Every loss term, the learning rate, throughput and the collapse monitors, per logged step.
    record.series = [(k, v, int(row["step"])) for row in history for k, v in row.items()
                     if k not in ("step", "epoch") and v == v]
    record.metrics = {"final_loss": history[-1]["loss"], "seconds": time.perf_counter() - start,
                      "compute_s": timing.add_compute(timing.training_seconds(history, params, args.selection))}
    log_stage(_tracking(args), record)


def cmd_embed(args: argparse.Namespace) -> None:
    from workflow.embed import run_embed
    from workflow.tracking import log_stage

    if len(args.input) != len(args.output):
        raise StrataError(f"{len(args.input)} --input but {len(args.output)} --output", where="strata embed",
                          fix="give one --output per --input, in the same order.")
    stats = run_embed(args.encoder, list(zip(args.input, args.output, strict=True)), args.threads, args.gpus,
                      args.batch_size, args.ray_address, pooling=args.pooling)
    record = _record("embed", {"batch_size": args.batch_size, "threads": args.threads, "gpus": args.gpus,
                               "encoder": args.encoder, "pooling": args.pooling},
                     [args.encoder, *args.input], args.output)
    record.metrics = {f"{Path(k).stem}_rows_per_s": v["rows_per_s"] for k, v in stats.items()}
    record.metrics["compute_s"] = timing.add_compute(sum(v["seconds"] for v in stats.values()))
    log_stage(_tracking(args), record)


def _json_object(text: str, where: str, fix: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise StrataError(f"not valid JSON ({err})", where=where, fix=fix) from err
    if not isinstance(value, dict):
        raise StrataError(f"expected a JSON object, got {type(value).__name__}", where=where, fix=fix)
    return value


def _json_file(path: str, fix: str) -> dict[str, Any]:
    """A JSON object read from ``path``; a missing, unreadable or malformed file is a :class:`StrataError`."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise StrataError(f"cannot read the file ({getattr(err, 'strerror', None) or err})", where=path,
                          fix=fix) from err
    return _json_object(text, path, fix)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from workflow.config import parse_params, relevant
    from workflow.evaluate.stage import evaluate
    from workflow.tables import write_json
    from workflow.tracking import log_stage

    params = parse_params(args.params, args.params_file, "evaluation", "evaluation")
    variant = _json_object(args.variant, "--variant", "pass the variant as a JSON object.") if args.variant else {}
    cstats = _json_file(args.curation_stats, "re-run the curate job that writes it.") if args.curation_stats else {}
    with timing.compute():
        metrics = evaluate(args.probe_train, args.probe_test, params, args.seed)
    extra: dict[str, Any] = {"params": params}
    parent_metrics = dict(metrics)
    if args.curation_stats:
        extra["curation"] = {k: cstats[k] for k in ("selected_size", "pool_size") if k in cstats}
        parent_metrics["curated_size"] = cstats.get("selected_size", 0)
        if "labels_after" in cstats:
            parent_metrics["curated_label_entropy"] = cstats["labels_after"]["normalized_entropy"]
    write_json({"variant": variant, "metrics": metrics, **extra}, args.output)
    for k, v in metrics.items():
        print(f"evaluate: {k} = {v:.4f}", flush=True)
    record = _record("evaluate", {**relevant("evaluation", params), "seed": args.seed},
                     [args.probe_train, args.probe_test], [args.output])
    record.add_datasets([(args.probe_train, "probe_train"), (args.probe_test, "probe_test")])
    record.metrics = metrics
    log_stage(_tracking(args), record, parent_metrics=parent_metrics)


def cmd_summarize(args: argparse.Namespace) -> None:
    import pandas as pd

    from workflow.summarize import log_summary_to_mlflow, summarize
    from workflow.verdict import read_verdict, verdict_markdown

    def as_json(text: str | None, flag: str) -> dict[str, Any] | None:
        return _json_object(text, flag, f"pass {flag} as a JSON object.") if text else None

    study = _json_file(args.study_file, "pass the study's summary and curations as a JSON object.") \
        if args.study_file else {}
    summary = study.get("summary") or as_json(args.summary, "--summary") or {"baseline": args.baseline}
    curations = study.get("curations") or as_json(args.curations, "--curations")
    with timing.compute():
        df = summarize(args.metrics, args.csv, args.md, summary.get("baseline", args.baseline), png_path=args.png,
                       stats_path=args.stats, summary=summary, curations=curations,
                       verdict_path=args.verdict, forest_path=args.forest, curve_md=args.curve_md,
                       curve_png=args.curve_png, frozen=study.get("frozen"))
    print(f"summarize: {len(df)} variants -> {args.csv}, {args.md}", flush=True)
    print(Path(args.md).read_text(), flush=True)
    if args.tracking_uri:
        files = [f for f in (args.csv, args.md, args.png, args.stats, args.verdict, args.forest, args.curve_md,
                             args.curve_png) if f and Path(f).is_file()]
        note = verdict_markdown(read_verdict(args.verdict)) if args.verdict else None
        # In a local Snakemake run this is spooled and logged at the run's end, after the variant runs it
        # annotates (workflow.tracking.flush_spool).
        log_summary_to_mlflow(args.tracking_uri, args.experiment, pd.read_csv(args.stats), files,
                              baseline=summary.get("baseline", args.baseline), note=note)


def cmd_plot_training(args: argparse.Namespace) -> None:
    from workflow.figures import plot_training
    from workflow.tracking import log_stage

    with timing.compute():
        series = plot_training(args.history, args.output, args.title)
    print(f"plot-training: {len(series)} series ({', '.join(series)}) -> {args.output}", flush=True)
    record = _record("plot_training", {"title": args.title}, [args.history], [args.output])
    record.parent_artifacts = [args.output]  # the variant's figures
    log_stage(_tracking(args), record)


def cmd_plot_embeddings(args: argparse.Namespace) -> None:
    from workflow.figures import plot_embedding_map
    from workflow.tracking import log_stage

    start = time.perf_counter()
    with timing.compute():
        info = plot_embedding_map(args.embeddings, args.output, args.seed, args.title, args.max_points, args.map)
    print(f"plot-embeddings: t-SNE of {int(info['points'])} points in {time.perf_counter() - start:.1f} s, "
          f"trustworthiness@5 {info['trustworthiness']:.3f} -> {args.output}", flush=True)
    record = _record("plot_embeddings", {"title": args.title, "seed": args.seed, "max_points": args.max_points},
                     [args.embeddings], [args.output, *([args.map] if args.map else [])])
    record.metrics["map_trustworthiness"] = info["trustworthiness"]
    record.parent_artifacts = [args.output]  # the variant's figures
    log_stage(_tracking(args), record)


def cmd_attach(args: argparse.Namespace) -> None:
    from workflow.tracking import attach_job_files

    n = attach_job_files(args.tracking_uri, args.experiment)
    print(f"attached job logs and benchmarks to {n} stage run(s)")


SEED_MAX = 2**32 - 1  # scikit-learn's random_state bound


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum] (the message names the flag through argparse)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (flag, what is wrong, the fix) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}. Fix: see `{self.prog} --help`.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="strata", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, func: Callable[[argparse.Namespace], Any], help_text: str, outputs: list[str],
              params: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func, outputs=outputs)
        if params:
            p.add_argument("--params", help="the stage's config section as JSON/YAML (defaults from the schema)")
            p.add_argument("--params-file", help="...or a YAML file holding it")
        p.add_argument("--tracking", help="MLflow tracking spec: a JSON file (the Snakemake rules write one per "
                       "job) or the JSON itself; omit to run without MLflow")
        return p

    p = stage("data", cmd_data, "Build a data set's pool and probe tables.",
              ["pool", "probe_train", "probe_test", "info"])
    p.add_argument("--name", required=True, help="data set name (used in messages and metadata)")
    for flag in ("--pool", "--probe-train", "--probe-test", "--info"):
        p.add_argument(flag, required=True)

    def compute(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=_int_at_least(1), default=1, help="CPU cores of the job")
        p.add_argument("--gpus", type=_int_at_least(0), default=0, help="GPUs of the job")
        p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else local)")

    p = stage("curate", cmd_curate, "Select a subset of the pool.", ["selection", "stats"])
    p.add_argument("--pool", required=True, help="pool table (Parquet)")
    p.add_argument("--features", help="feature table with the pool's ids (default: the pool's own vectors)")
    p.add_argument("--seed", type=_int_at_least(0, SEED_MAX), default=0)
    p.add_argument("--selection", required=True, help="output: selected ids (Parquet)")
    p.add_argument("--stats", required=True, help="output: statistics (JSON)")
    p.add_argument("--diagnostics", help="output folder for the diagnostic pictures (PNG)")
    p.add_argument("--cache-dir", default="results/.work/curate-cache",
                   help="scratch folder for the features' float32 memmap")
    p.add_argument("--name", help="the curation's name in the study, for stats.json's chain (default: the method)")
    p.add_argument("--pool-selection", help="a chained curation's pool: the prior curation's selection.parquet "
                   "(same data set and seed); target_size applies to it")
    p.add_argument("--pool-stats", help="the prior curation's stats.json (the earlier steps of the chain)")
    for split in ("probe-train", "probe-test"):  # the leakage check (leakage_check, decontaminate)
        p.add_argument(f"--{split}", help=f"{split} table (Parquet) of the data set, for the leakage check")
        p.add_argument(f"--{split}-features", help=f"{split} in the curation's feature space (default: raw "
                       "vectors when the space is raw, else near copies are looked for in the raw space)")
    compute(p)

    p = stage("pretrain", cmd_pretrain, "Pretrain an encoder with self-supervised learning on Ray Train.",
              ["encoder", "history"])
    p.add_argument("--pool", required=True)
    p.add_argument("--selection", required=True, help="curated ids to train on")
    p.add_argument("--seed", type=_int_at_least(0, SEED_MAX), default=0)
    p.add_argument("--encoder", required=True, help="output: encoder weights (safetensors)")
    p.add_argument("--history", required=True, help="output: training history (Parquet)")
    p.add_argument("--work-root", default="results/.work", help="scratch space for Ray Train (not an output)")
    compute(p)

    p = stage("embed", cmd_embed, "Embed tables with a trained encoder through a Ray actor pool.", ["output"],
              params=False)
    p.add_argument("--encoder", required=True, help="a Strata encoder (.safetensors), or a pretrained backbone: a "
                   "transformers model folder or a TorchScript file (local files only)")
    p.add_argument("--pooling", choices=("auto", "pooler", "cls", "mean"), default="auto",
                   help="a transformers backbone's vector: pooled output, CLS token, mean of the other tokens")
    p.add_argument("--input", action="append", required=True, help="input table (repeatable)")
    p.add_argument("--output", action="append", required=True, help="output table (repeatable, same order)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=1024)
    compute(p)

    p = stage("evaluate", cmd_evaluate, "Clustering, retrieval and kNN/linear metrics of embeddings.", ["output"])
    p.add_argument("--probe-train", required=True)
    p.add_argument("--probe-test", required=True)
    p.add_argument("--seed", type=_int_at_least(0, SEED_MAX), default=0)
    p.add_argument("--variant", help="JSON identifying the variant (dataset, curation, ssl, seed)")
    p.add_argument("--curation-stats", help="the variant's curation stats.json (copied into the record)")
    p.add_argument("--output", required=True, help="output: metrics (JSON)")

    p = stage("summarize", cmd_summarize, "Aggregate metrics over variants and seeds.",
              ["csv", "md", "png", "stats", "verdict", "forest", "curve_md", "curve_png"], params=False)
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--csv", required=True, help="output: one row per variant")
    p.add_argument("--md", required=True, help="output: the summary as Markdown tables")
    p.add_argument("--stats", required=True, help="output: mean, sd, 95%% CI and paired differences (CSV)")
    p.add_argument("--png", help="output: per-metric dot plots (zoomed, baseline marked)")
    p.add_argument("--baseline", default="random", help="baseline curation when --summary does not name one")
    p.add_argument("--summary", help="the config's summary section as JSON (baseline, primary, rope, curve, ...)")
    p.add_argument("--curations", help="the config's curations as JSON (method, target_size: for summary.curve)")
    p.add_argument("--study-file", help="...or both as one JSON file: {\"summary\": ..., \"curations\": ...}, "
                   "with \"frozen\": {ssl entry: label} for the frozen-feature entries (ssl method none)")
    p.add_argument("--verdict", help="output: the pre-registered verdict (JSON)")
    p.add_argument("--forest", help="output: forest plot of the paired differences (PNG)")
    p.add_argument("--curve-md", help="output: size-sweep table (Markdown; needs summary.curve)")
    p.add_argument("--curve-png", help="output: size-sweep figure (PNG; needs summary.curve)")
    p.add_argument("--tracking-uri", help="log the summary to this MLflow store (study run + variant runs)")
    p.add_argument("--experiment", default="strata")

    p = stage("plot-training", cmd_plot_training, "Draw a pretraining run's curves (every loss term, learning "
              "rate, throughput, collapse monitors).", ["output"], params=False)
    p.add_argument("--history", required=True, help="history.parquet of a pretrain job")
    p.add_argument("--output", required=True, help="output: PNG")
    p.add_argument("--title", default="")

    p = stage("plot-embeddings", cmd_plot_embeddings, "Draw a t-SNE map of an embedding table coloured by label.",
              ["output", "map"], params=False)
    p.add_argument("--embeddings", required=True, help="embedding table (Parquet), e.g. probe_test")
    p.add_argument("--output", required=True, help="output: PNG")
    p.add_argument("--map", help="output: the map's coordinates (Parquet), which compare-embeddings draws")
    p.add_argument("--seed", type=_int_at_least(0, SEED_MAX), default=0)
    p.add_argument("--title", default="")
    p.add_argument("--max-points", type=_int_at_least(4), default=5000,
                   help="seeded sample size above which points are drawn")

    from workflow.compare_figures import add_commands

    add_commands(stage)  # compare-embeddings, compare-losses, kept-per-class: the report's comparative figures

    from workflow.frozen import add_commands as add_frozen_commands

    add_frozen_commands(stage)  # frozen-probes: a frozen table's probes with the data set's labels

    p = sub.add_parser("attach-files", help="Attach Snakemake logs/benchmarks to MLflow stage runs.")
    p.set_defaults(func=cmd_attach, outputs=[])
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", required=True)
    return parser


def _check_tracking(args: argparse.Namespace) -> None:
    """Fail before any work when the command's MLflow store cannot be reached or written."""
    from workflow.tracking import check_tracking_uri

    if getattr(args, "tracking", None):
        check_tracking_uri(_tracking(args).uri)
    elif getattr(args, "tracking_uri", None):
        check_tracking_uri(args.tracking_uri)


def main(argv: list[str] | None = None) -> int:
    clock = joblog.JobClock(from_process_start=argv is None)  # (a command of its own: imports included)
    allocator.keep_freed_memory()  # the torch loops of this process reuse their buffers (workflow/allocator.py)
    args = build_parser().parse_args(argv)
    outputs = JobOutputs(args)
    with joblog.filtered_streams(only_if_not_tty=True):  # a log file gets no colour codes
        try:
            _check_tracking(args)
            outputs.prepare()
            args.func(args)
        except (StrataError, OSError) as err:
            if isinstance(err, OSError) and not err.filename:
                outputs.remove()
                clock.end(args.command, outputs.files, outputs.folder, failed=True)
                raise
            if isinstance(err, OSError):  # a user path that cannot be read or written
                err = StrataError(err.strerror or str(err), where=str(err.filename),
                                  fix="check that the path exists and that you may read or write it.")
            outputs.remove()
            clock.end(args.command, outputs.files, outputs.folder, failed=True)
            message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # one line
            print(f"strata {args.command}: error: {message}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR
        except BaseException:
            outputs.remove()
            clock.end(args.command, outputs.files, outputs.folder, failed=True)
            raise
        clock.end(args.command, outputs.files, outputs.folder)  # the log's last lines
    return 0


if __name__ == "__main__":
    sys.exit(main())
