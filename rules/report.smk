# The report's figures (`snakemake --report`): per variant (training curves, t-SNE map; also MLflow stage-run
# artifacts) and comparative (all curations of a seed side by side, loss curves per comparison, what each curation
# kept per class). Layout (categories in stage order, labels, titles): workflow/report_layout.py.

from workflow.comparisons import references  # noqa: E402
from workflow.report_layout import (  # noqa: E402
    CATEGORY,
    comparison_labels,
    feature_space,
    first_page_rst,
    variant_labels,
    variant_title,
)

# The report's first page (report/workflow.rst) is rendered with only the config in scope, so the verdict and the
# forest plot are put under the config key `_report_verdict` (not a study key: set after validation, read only by
# the report).
config["_report_verdict"] = first_page_rst(RESULTS)

# The comparative figures' jobs (no MLflow stage run: they belong to no single variant).
JOBS.update(
    {
        "compare_embeddings": ("compare_embeddings/{dataset}/{ssl}/seed{seed}", None),
        "compare_losses": ("compare_losses/{dataset}/{ssl}/{curation}", None),
        "kept_per_class": ("kept_per_class/{dataset}/seed{seed}", None),
    }
)


def comparisons():
    """Each compared curation -> its reference (summary.baseline, or its same-size control in a size sweep)."""
    return references(config["curations"], config["summary"]["baseline"], config["summary"]["curve"])


def curated(curation, seed):
    """The feature space a curation ran on at a seed (None: every seed), e.g. `simclr features, encoder seed 0`."""
    return feature_space(curation_config(curation), seed)


def comparative_figures():
    """The comparative figures of the study. The t-SNE panels (one map per variant) follow `report.figures`, as
    the per-variant figures do; the loss overlays and the kept-per-class figures only read small files."""
    out = []
    for dataset in config["datasets"]:
        if any(curation_config(c)["method"] != "none" for c in config["curations"]):
            out += expand(rules.kept_per_class.output.png, dataset=dataset, seed=config["seeds"])
        for ssl in trained_ssl():  # a frozen-feature entry has no curations to compare, nor losses
            out += expand(rules.compare_losses.output.png, dataset=dataset, ssl=ssl, curation=list(comparisons()))
            if config["report"]["figures"]:
                out += expand(rules.compare_embeddings.output.png, dataset=dataset, ssl=ssl, seed=config["seeds"])
    return out


def variant_item(item, shows):
    """Report labels of a per-variant figure (a function of the job's wildcards)."""
    return lambda w: variant_labels(item, shows, w.curation, w.seed)


def figure_title(w):
    """A per-variant figure's title; a frozen-feature entry's names its space (it has no curation)."""
    cfg = config["ssl"][w.ssl]
    if is_frozen(cfg):
        return f"{frozen_label(cfg)} · {w.ssl} · {w.dataset} · seed {w.seed}"
    return variant_title(w.dataset, w.curation, curation_config(w.curation), w.ssl, w.seed)


rule plot_training:
    """Training curves of a pretraining run: every loss term, learning rate, throughput, collapse monitors."""
    input:
        history=rules.pretrain.output.history,
    output:
        png=report(
            f"{RESULTS}/{{dataset}}/figures/{{curation}}/{{ssl}}/seed{{seed}}/training.png",
            caption="../report/training.rst",
            category=CATEGORY["pretraining"],
            subcategory="{dataset} · {ssl}",
            labels=variant_item("Training curves", "still falling = train longer"),
        ),
    params:
        title=figure_title,
        tracking=job_file("plot_training", "tracking"),
    log:
        job_file("plot_training", "log"),
    benchmark:
        job_file("plot_training", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "plot_training: {wildcards.curation} · {wildcards.ssl} on {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        """
        {STRATA} plot-training --history {input.history} --output {output.png} --title {params.title:q} \\
            --tracking {params.tracking} > {log} 2>&1
        """


rule plot_embeddings:
    """2-D t-SNE map of a variant's probe_test embeddings, coloured by label."""
    input:
        embeddings=lambda w: variant_probes(w)["probe_test"],  # a frozen entry: its space's probes
    output:
        png=report(
            f"{RESULTS}/{{dataset}}/figures/{{curation}}/{{ssl}}/seed{{seed}}/embeddings.png",
            caption="../report/embeddings.rst",
            category=CATEGORY["embeddings"],
            subcategory="{dataset} · {ssl}",
            labels=variant_item("t-SNE map", "tight groups = classes apart"),
        ),
        coordinates=f"{RESULTS}/{{dataset}}/figures/{{curation}}/{{ssl}}/seed{{seed}}/map.parquet",  # compare_embeddings
    params:
        title=figure_title,
        tracking=job_file("plot_embeddings", "tracking"),
        max_points=config["report"]["map_max_points"],
    log:
        job_file("plot_embeddings", "log"),
    benchmark:
        job_file("plot_embeddings", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "plot_embeddings: {wildcards.curation} · {wildcards.ssl} on {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        """
        {STRATA} plot-embeddings --embeddings {input.embeddings} --output {output.png} --map {output.coordinates} \\
            --seed {wildcards.seed} --title {params.title:q} --max-points {params.max_points} \\
            --tracking {params.tracking} > {log} 2>&1
        """


def each_curation(pattern, w):
    """`pattern` (a rule's output) for every curation of the study at a job's data set, SSL method and seed."""
    return expand(pattern, curation=list(config["curations"]), dataset=w.dataset, ssl=w.ssl, seed=w.seed)


rule compare_embeddings:
    """Every curation's t-SNE map of probe_test side by side, for one data set, SSL method and seed: the maps
    plot_embeddings computed, so t-SNE runs once per variant."""
    input:
        maps=lambda w: each_curation(rules.plot_embeddings.output.coordinates, w),
        metrics=lambda w: each_curation(rules.evaluate.output.metrics, w),
    output:
        png=report(
            f"{RESULTS}/{{dataset}}/compare/{{ssl}}/seed{{seed}}/embeddings.png",
            caption="../report/compare_embeddings.rst",
            category=CATEGORY["embeddings"],
            subcategory="{dataset} · {ssl}",
            labels=lambda w: comparison_labels(f"All curations, seed {w.seed}: t-SNE", "compare the groups"),
        ),
    params:
        panels=lambda w, input: one_per_line(
            f"--panel {shlex.quote(c)} {shlex.quote(curated(c, w.seed))} {t} {m}"
            for c, t, m in zip(config["curations"], input.maps, input.metrics)
        ),
        title=lambda w: f"{w.dataset} · {w.ssl} · seed {w.seed}",
        metric=config["summary"]["primary"],
    log:
        job_file("compare_embeddings", "log"),
    benchmark:
        job_file("compare_embeddings", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "compare_embeddings: every curation's map, {wildcards.ssl} on {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        """
        {STRATA} compare-embeddings --output {output.png} --seed {wildcards.seed} --title {params.title:q} \\
            --metric {params.metric} {params.panels} > {log} 2>&1
        """


def loss_pairs(w):
    """(curation, seed) of every pretraining run a loss overlay draws: the compared curation, then its reference."""
    return [(c, s) for c in (w.curation, comparisons()[w.curation]) for s in config["seeds"]]


def loss_runs(w):
    """The pretraining histories of a compared curation and of its reference, every seed."""
    pattern = rules.pretrain.output.history
    return [expand(pattern, dataset=w.dataset, curation=c, ssl=w.ssl, seed=s)[0] for c, s in loss_pairs(w)]


rule compare_losses:
    """The pretraining loss of a compared curation and of its reference overlaid, per seed and over all seeds."""
    input:
        histories=loss_runs,
    output:
        png=report(
            f"{RESULTS}/{{dataset}}/compare/{{ssl}}/losses/{{curation}}.png",
            caption="../report/compare_losses.rst",
            category=CATEGORY["pretraining"],
            subcategory="{dataset} · {ssl}",
            labels=lambda w: comparison_labels(
                f"All seeds: loss, {w.curation} vs {comparisons()[w.curation]}", "overlaid"
            ),
        ),
    params:
        runs=lambda w, input: one_per_line(
            f"--run {shlex.quote(c)} {shlex.quote(curated(c, None))} {s} {h}"
            for (c, s), h in zip(loss_pairs(w), input.histories)
        ),
        control=lambda w: comparisons()[w.curation],
        title=lambda w: f"{w.curation} vs {comparisons()[w.curation]} · {w.ssl} · {w.dataset}",
    log:
        job_file("compare_losses", "log"),
    benchmark:
        job_file("compare_losses", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "compare_losses: {wildcards.curation} vs {params.control}, {wildcards.ssl} on {wildcards.dataset} (log: {log})"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        """
        {STRATA} compare-losses --output {output.png} --treatment {wildcards.curation} --control {params.control} \\
            --title {params.title:q} \\
            {params.runs} > {log} 2>&1
        """


def selecting_curations():
    """The curations that select (all but `none`, which keeps the whole pool)."""
    return [c for c in config["curations"] if curation_config(c)["method"] != "none"]


rule kept_per_class:
    """The fraction of each class that every curation kept, log axis (one data set and seed)."""
    input:
        stats=lambda w: expand(
            rules.curate.output.stats, curation=selecting_curations(), dataset=w.dataset, seed=w.seed
        ),
    output:
        png=report(
            f"{RESULTS}/{{dataset}}/compare/kept_per_class/seed{{seed}}.png",
            caption="../report/kept_per_class.rst",
            category=CATEGORY["curation"],
            subcategory="{dataset}",
            labels=lambda w: comparison_labels(f"All curations, seed {w.seed}: kept per class", "log axis"),
        ),
    params:
        curations=lambda w, input: one_per_line(
            f"--curation {shlex.quote(c)} {shlex.quote(curated(c, w.seed))} {p}"
            for c, p in zip(selecting_curations(), input.stats)
        ),
        title=lambda w: f"{w.dataset} · seed {w.seed}: what each curation kept of each class",
    log:
        job_file("kept_per_class", "log"),
    benchmark:
        job_file("kept_per_class", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "kept_per_class: every curation of {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        """
        {STRATA} kept-per-class --output {output.png} --title {params.title:q} \\
            {params.curations} > {log} 2>&1
        """
