from workflow.report_layout import CATEGORY, study_labels  # noqa: E402


# A frozen table's probes belong to no single variant (one job per data set and table): no MLflow stage run.
JOBS["frozen_probes"] = ("frozen_probes/{dataset}/{space}", None)


rule frozen_probes:
    """The probe splits in a precomputed table's space, with the data set's labels: what a frozen-feature entry
    (ssl method none, `features: {table: ..., probe_train: ..., probe_test: ...}`) is evaluated on."""
    input:
        probe_train=rules.data.output.probe_train,
        probe_test=rules.data.output.probe_test,
        features_train=lambda w: FROZEN_TABLES[w.space].probe_train,
        features_test=lambda w: FROZEN_TABLES[w.space].probe_test,
    output:
        probe_train=f"{RESULTS}/{{dataset}}/frozen/{{space}}/probe_train.parquet",
        probe_test=f"{RESULTS}/{{dataset}}/frozen/{{space}}/probe_test.parquet",
    params:
        table=lambda w: shlex.quote(FROZEN_TABLES[w.space].path),
        layout=lambda w: " ".join(
            f"--{k} {shlex.quote(str(v))}"
            for k, v in (
                ("column", FROZEN_TABLES[w.space].column),
                ("dim", FROZEN_TABLES[w.space].dim),
                ("label", FROZEN_TABLES[w.space].label),
            )
            if v is not None
        ),
    log:
        job_file("frozen_probes", "log"),
    benchmark:
        job_file("frozen_probes", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "frozen_probes: the probes of {wildcards.dataset} in the {wildcards.space} table's space (log: {log})"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        """
        {STRATA} frozen-probes --table {params.table} {params.layout} \\
            --probe {input.probe_train} --features {input.features_train} --output {output.probe_train} \\
            --probe {input.probe_test} --features {input.features_test} --output {output.probe_test} \\
            --cache-dir {RESULTS}/.work/frozen-cache > {log} 2>&1
        """


rule evaluate:
    """Clustering (ACC/NMI/ARI), retrieval (Recall@K, mAP@R) and kNN / linear-probe accuracy of a variant."""
    input:
        unpack(variant_probes),  # a frozen-feature entry (ssl method none): its space's probes, no curation
    output:
        metrics=f"{RESULTS}/{{dataset}}/evaluate/{{curation}}/{{ssl}}/seed{{seed}}/metrics.json",
    params:
        cfg=as_json(config["evaluation"]),
        cfg_file=job_file("evaluate", "params"),
        tracking=job_file("evaluate", "tracking"),
        variant=lambda w: as_json(
            {"dataset": w.dataset, "curation": w.curation, "ssl": w.ssl, "seed": int(w.seed)}
        ),
        curation_stats=curation_stats_arg,
    log:
        job_file("evaluate", "log"),
    benchmark:
        job_file("evaluate", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "evaluate: {wildcards.curation} · {wildcards.ssl} on {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,  # memory-bound: more on each retry
        runtime=30,
    shell:
        """
        {STRATA} evaluate --params-file {params.cfg_file} --tracking {params.tracking} --seed {wildcards.seed} \\
            --variant {params.variant:q} \\
            --probe-train {input.probe_train} --probe-test {input.probe_test} \\
            {params.curation_stats} --output {output.metrics} > {log} 2>&1
        """


def summary_curve_outputs():
    """The size sweep's table and figure (report category 1 · Verdict), only when summary.curve is set."""
    if not config["summary"]["curve"]:
        return {}
    return {
        "curve_md": f"{RESULTS}/curve.md",
        "curve_png": report(
            f"{RESULTS}/curve.png",
            caption="../report/curve.rst",
            category=CATEGORY["verdict"],
            labels=study_labels("curve.png"),
        ),
    }


rule summarize:
    """The study's answer: the pre-registered verdict, the paired differences, every variant (report: 1 · Verdict
    and 5 · Evaluation)."""
    input:
        for_variants(rules.evaluate.output.metrics),
    output:
        csv=f"{RESULTS}/summary.csv",
        md=f"{RESULTS}/summary.md",
        # Report category 1 · Verdict sorts first; its items sort by their first label: the forest plot is first.
        forest=report(
            f"{RESULTS}/forest.png",
            caption="../report/forest.rst",
            category=CATEGORY["verdict"],
            labels=study_labels("forest.png"),
        ),
        png=report(
            f"{RESULTS}/summary.png",
            caption="../report/summary_png.rst",
            category=CATEGORY["evaluation"],
            labels=study_labels("summary.png"),
        ),
        stats=report(
            f"{RESULTS}/summary_stats.csv",
            caption="../report/summary_csv.rst",
            category=CATEGORY["evaluation"],
            labels=study_labels("summary_stats.csv"),
        ),
        verdict=report(
            f"{RESULTS}/verdict.json",
            caption="../report/verdict.rst",
            category=CATEGORY["verdict"],
            labels=study_labels("verdict.json"),
        ),
        **summary_curve_outputs(),
    params:
        metrics=lambda w, input: one_per_line(input),
        # The summary section, and what summary.curve pairs by (method, target_size) and what the figures'
        # titles name (the feature space) of each curation: a file written by `onstart`, as for other jobs.
        cfg=as_json(
            {
                "summary": config["summary"],
                "curations": {
                    n: {k: c[k] for k in ("method", "target_size", "features", "features_seed") if c.get(k) is not None}
                    for n, c in ((n, curation_config(n)) for n in config["curations"])
                },
                # Frozen-feature entries (ssl method none): reference rows, never compared between curations.
                "frozen": {s: frozen_label(c) for s, c in config["ssl"].items() if is_frozen(c)},
            }
        ),
        cfg_file=job_file("summarize", "params"),
        curve=lambda w, output: (
            f"--curve-md {output.curve_md} --curve-png {output.curve_png}" if config["summary"]["curve"] else ""
        ),
        tracking_uri=TRACKING_URI,
        experiment=config["study"],
    log:
        job_file("summarize", "log"),
    benchmark:
        job_file("summarize", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "summarize: the verdict and summary of study {params.experiment} (log: {log})"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        """
        {STRATA} summarize --csv {output.csv} --md {output.md} --stats {output.stats} \\
            --png {output.png} --forest {output.forest} --verdict {output.verdict} {params.curve} \\
            --study-file {params.cfg_file} \\
            --tracking-uri {params.tracking_uri:q} --experiment {params.experiment:q} \\
            --metrics {params.metrics} > {log} 2>&1
        """
