def embed_tables(wildcards, input, output):
    """`--input T --output E` for each output: E embeds the input table of the same name."""
    return one_per_line(f"--input {input[name]} --output {output[name]}" for name in output.keys())


rule embed_probes:
    """Embeddings of the probe splits with a variant's encoder (Ray actor pool)."""
    input:
        encoder=rules.pretrain.output.encoder,
        probe_train=rules.data.output.probe_train,
        probe_test=rules.data.output.probe_test,
    output:
        probe_train=f"{RESULTS}/{{dataset}}/embed/{{curation}}/{{ssl}}/seed{{seed}}/probe_train.parquet",
        probe_test=f"{RESULTS}/{{dataset}}/embed/{{curation}}/{{ssl}}/seed{{seed}}/probe_test.parquet",
    params:
        tables=embed_tables,
        tracking=job_file("embed_probes", "tracking"),
        batch_size=config["embed"]["batch_size"],
        ray_address=config["ray"]["address"] or "",
    log:
        job_file("embed_probes", "log"),
    benchmark:
        job_file("embed_probes", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "embed: probe splits, {wildcards.curation} · {wildcards.ssl} · {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    shell:
        """
        {STRATA} embed --encoder {input.encoder} --tracking {params.tracking} \\
            {params.tables} \\
            --batch-size {params.batch_size} --threads {threads} --gpus {resources.gpu} --ray-address={params.ray_address:q} \\
            > {log} 2>&1
        """


use rule embed_probes as embed_pool with:
    """Pool embeddings with the encoder trained on the whole pool: the features that curation clusters."""
    input:
        encoder=expand(rules.pretrain.output.encoder, curation="none", allow_missing=True),
        pool=rules.data.output.pool,
    output:
        pool=f"{RESULTS}/{{dataset}}/embed/none/{{ssl}}/seed{{seed}}/pool.parquet",
    params:
        tracking=job_file("embed_pool", "tracking"),
    wildcard_constraints:
        curation="none",
    log:
        job_file("embed_pool", "log"),
    benchmark:
        job_file("embed_pool", "benchmark")
    message:
        "embed_pool: the pool, none · {wildcards.ssl} · {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
