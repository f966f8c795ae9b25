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
    """The size sweep's table and figure (report category "By how much"), only when summary.curve is set."""
    if not config["summary"]["curve"]:
        return {}
    return {
        "curve_md": f"{RESULTS}/curve.md",
        "curve_png": report(f"{RESULTS}/curve.png", caption="../report/curve.rst", category="By how much"),
    }


rule summarize:
    """The study's answer: the pre-registered verdict, the paired differences, every variant (report: Answer)."""
    input:
        for_variants(rules.evaluate.output.metrics),
    output:
        csv=f"{RESULTS}/summary.csv",
        md=f"{RESULTS}/summary.md",
        # Report category "Answer" sorts first; within it files sort by name: forest.png is the first figure.
        forest=report(f"{RESULTS}/forest.png", caption="../report/forest.rst", category="Answer"),
        png=report(f"{RESULTS}/summary.png", caption="../report/summary_png.rst", category="Answer"),
        stats=report(f"{RESULTS}/summary_stats.csv", caption="../report/summary_csv.rst", category="Answer"),
        verdict=report(f"{RESULTS}/verdict.json", caption="../report/verdict.rst", category="Answer"),
        **summary_curve_outputs(),
    params:
        metrics=lambda w, input: one_per_line(input),
        summary=as_json(config["summary"]),
        curations=as_json(
            {n: {k: c[k] for k in ("method", "target_size") if k in c} for n, c in config["curations"].items()}
        ),
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
            --summary {params.summary:q} \\
            --curations {params.curations:q} \\
            --tracking-uri {params.tracking_uri:q} --experiment {params.experiment:q} \\
            --metrics {params.metrics} > {log} 2>&1
        """
