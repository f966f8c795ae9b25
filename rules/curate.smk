from workflow.report_layout import CATEGORY, diagnostics_labels  # noqa: E402


def diagnostics_item(w):
    """Report labels of one diagnostics picture (`w.name`) of a curate job."""
    return diagnostics_labels(w.name, w.curation, w.seed)


def prior_curation(wildcards):
    """A chained curation's pool (`pool`, workflow/chains.py): the prior curation's selection and stats, same data
    set and seed (so the DAG runs it first); none for a curation of the data set's pool."""
    prior = curation_config(wildcards.curation).get("pool")
    if prior is None:
        return {}
    w = {"dataset": wildcards.dataset, "curation": prior, "seed": wildcards.seed}
    return {
        "pool_selection": expand(rules.curate.output.selection, **w)[0],
        "pool_stats": expand(rules.curate.output.stats, **w)[0],
    }


def chain_args(wildcards, input):
    """`--pool-selection S --pool-stats J` for the inputs prior_curation gave."""
    if "pool_selection" not in input.keys():
        return ""
    return f"--pool-selection {input.pool_selection} --pool-stats {input.pool_stats}"


rule curate:
    """Select a subset of the pool: none, random, kmeans, hkmeans (Vo et al. 2024) or semdedup, in the curation's
    feature space, after the leakage check against the probes (decontaminate: flagged items removed first)."""
    input:
        unpack(curation_probes),  # the leakage check's probe tables (none with leakage_check: false)
        unpack(prior_curation),  # a chained curation's pool: the prior curation's selection and stats
        pool=rules.data.output.pool,
        features=curation_features,
    output:
        selection=f"{RESULTS}/{{dataset}}/curate/{{curation}}/seed{{seed}}/selection.parquet",
        stats=f"{RESULTS}/{{dataset}}/curate/{{curation}}/seed{{seed}}/stats.json",
        diagnostics=report(
            directory(f"{RESULTS}/{{dataset}}/curate/{{curation}}/seed{{seed}}/diagnostics"),
            patterns=["{name}.png"],
            caption="../report/curation.rst",
            category=CATEGORY["curation"],
            subcategory="{dataset}",
            labels=diagnostics_item,
        ),
    params:
        cfg=lambda w: as_json(curation_config(w.curation)),
        cfg_file=job_file("curate", "params"),
        tracking=job_file("curate", "tracking"),
        probes=probe_args,
        chain=chain_args,
    log:
        job_file("curate", "log"),
    benchmark:
        job_file("curate", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "curate: {wildcards.curation} subset of {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,  # memory-bound: more on each retry
        runtime=60,
    shell:
        """
        {STRATA} curate --params-file {params.cfg_file} --tracking {params.tracking} --seed {wildcards.seed} \\
            --name {wildcards.curation} \\
            --pool {input.pool} --features {input.features} \\
            {params.probes} {params.chain} \\
            --selection {output.selection} --stats {output.stats} --diagnostics {output.diagnostics} \\
            --cache-dir {RESULTS}/.work/curate-cache --threads {threads} > {log} 2>&1
        """
