from workflow.report_layout import CATEGORY, study_labels  # noqa: E402


rule evaluate:
    """Clustering (ACC/NMI/ARI), retrieval (Recall@K, mAP@R) and kNN / linear-probe accuracy of a variant."""
    input:
        probe_train=rules.embed_probes.output.probe_train,
        probe_test=rules.embed_probes.output.probe_test,
        curation_stats=rules.curate.output.stats,
    output:
        metrics=f"{RESULTS}/{{dataset}}/evaluate/{{curation}}/{{ssl}}/seed{{seed}}/metrics.json",
    params:
        cfg=as_json(config["evaluation"]),
        cfg_file=job_file("evaluate", "params"),
        tracking=job_file("evaluate", "tracking"),
        variant=lambda w: as_json(
            {"dataset": w.dataset, "curation": w.curation, "ssl": w.ssl, "seed": int(w.seed)}
        ),
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
            --curation-stats {input.curation_stats} --output {output.metrics} > {log} 2>&1
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
