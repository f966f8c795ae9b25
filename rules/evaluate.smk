rule evaluate:
    """Clustering (ACC/NMI/ARI), retrieval (Recall@K, mAP@R) and kNN / linear-probe accuracy of a variant."""
    input:
        probe_train=f"{RESULTS}/{{dataset}}/embed/{{curation}}/{{ssl}}/seed{{seed}}/probe_train.parquet",
        probe_test=f"{RESULTS}/{{dataset}}/embed/{{curation}}/{{ssl}}/seed{{seed}}/probe_test.parquet",
        curation_stats=f"{RESULTS}/{{dataset}}/curate/{{curation}}/seed{{seed}}/stats.json",
    output:
        metrics=f"{RESULTS}/{{dataset}}/evaluate/{{curation}}/{{ssl}}/seed{{seed}}/metrics.json",
    params:
        cfg=as_json(config["evaluation"]),
        variant=lambda w: as_json(
            {"dataset": w.dataset, "curation": w.curation, "ssl": w.ssl, "seed": int(w.seed)}
        ),
        tracking=tracking("evaluate", "variant"),
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/{{curation}}/{{ssl}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{dataset}}/{{curation}}/{{ssl}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,  # memory-bound: more on each retry
        runtime=30,
    shell:
        "strata evaluate --params {params.cfg:q} --tracking {params.tracking:q} --seed {wildcards.seed}"
        " --variant {params.variant:q} --probe-train {input.probe_train} --probe-test {input.probe_test}"
        " --curation-stats {input.curation_stats} --output {output.metrics} > {log} 2>&1"


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
        all_metrics(),
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
        f"{RESULTS}/logs/summarize.log",
    benchmark:
        f"{RESULTS}/benchmarks/summarize.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "strata summarize --metrics {input} --csv {output.csv} --md {output.md}"
        " --stats {output.stats} --png {output.png} --forest {output.forest} --verdict {output.verdict}"
        " --summary {params.summary:q} --curations {params.curations:q} {params.curve}"
        " --tracking-uri {params.tracking_uri:q} --experiment {params.experiment:q} > {log} 2>&1"
