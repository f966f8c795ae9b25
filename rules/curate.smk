rule curate:
    """Select a subset of the pool: none, random, kmeans, hkmeans (Vo et al. 2024) or semdedup."""
    input:
        pool=f"{RESULTS}/{{dataset}}/data/pool.parquet",
        features=curation_features,
    output:
        selection=f"{RESULTS}/{{dataset}}/curate/{{curation}}/seed{{seed}}/selection.parquet",
        stats=f"{RESULTS}/{{dataset}}/curate/{{curation}}/seed{{seed}}/stats.json",
        diagnostics=report(
            directory(f"{RESULTS}/{{dataset}}/curate/{{curation}}/seed{{seed}}/diagnostics"),
            patterns=["{name}.png"],
            caption="../report/curation.rst",
            category="Curation",
            subcategory="{curation} seed {seed}",
        ),
    params:
        cfg=lambda w: as_json(curation_config(w.curation)),
        tracking=tracking("curate", "dataset"),
    log:
        f"{RESULTS}/logs/curate/{{dataset}}/{{curation}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/curate/{{dataset}}/{{curation}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,  # memory-bound: more on each retry
        runtime=60,
    shell:
        "strata curate --params {params.cfg:q} --tracking {params.tracking:q} --seed {wildcards.seed}"
        " --pool {input.pool} --features {input.features}"
        " --selection {output.selection} --stats {output.stats} --diagnostics {output.diagnostics}"
        " --cache-dir {RESULTS}/.work/curate-cache --threads {threads} > {log} 2>&1"
