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


rule summarize:
    """One table for the study: every variant, and per curation the mean and sd over seeds."""
    input:
        all_metrics(),
    output:
        csv=f"{RESULTS}/summary.csv",
        md=f"{RESULTS}/summary.md",
        stats=report(f"{RESULTS}/summary_stats.csv", caption="../report/summary_csv.rst", category="Summary"),
        png=report(f"{RESULTS}/summary.png", caption="../report/summary_png.rst", category="Summary"),
    params:
        baseline=config["summary"]["baseline"],
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
        " --stats {output.stats} --png {output.png} --baseline {params.baseline}"
        " --tracking-uri {params.tracking_uri:q} --experiment {params.experiment:q} > {log} 2>&1"
