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
        pooling="auto",
    log:
        job_file("embed_probes", "log"),
    benchmark:
        job_file("embed_probes", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "embed: probe splits, {wildcards.curation} · {wildcards.ssl} · {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 1  # like pretrain: jobs of a study run side by side, and embedding a small table is fast
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    shell:
        """
        {STRATA} embed --encoder {input.encoder} --pooling {params.pooling} --tracking {params.tracking} \\
            {params.tables} \\
            --batch-size {params.batch_size} --threads {threads} --gpus {resources.gpu} --ray-address={params.ray_address:q} \\
            > {log} 2>&1
        """


use rule embed_probes as embed_pool with:
    """Pool embeddings with the encoder trained on the whole pool: the features that curation clusters; and the
    probes in that space, for the curation's leakage check."""
    input:
        encoder=expand(rules.pretrain.output.encoder, curation="none", allow_missing=True),
        pool=rules.data.output.pool,
        probe_train=rules.data.output.probe_train,
        probe_test=rules.data.output.probe_test,
    output:
        pool=f"{RESULTS}/{{dataset}}/embed/none/{{ssl}}/seed{{seed}}/pool.parquet",
        probe_train=f"{RESULTS}/{{dataset}}/embed/none/{{ssl}}/seed{{seed}}/features_probe_train.parquet",
        probe_test=f"{RESULTS}/{{dataset}}/embed/none/{{ssl}}/seed{{seed}}/features_probe_test.parquet",
    params:
        tracking=job_file("embed_pool", "tracking"),
    wildcard_constraints:
        curation="none",
    log:
        job_file("embed_pool", "log"),
    benchmark:
        job_file("embed_pool", "benchmark")
    message:
        "embed_pool: the pool and probes, none · {wildcards.ssl} · {wildcards.dataset}, seed {wildcards.seed} (log: {log})"


use rule embed_probes as embed_backbone with:
    """Embeddings of the pool and the probes with a pretrained backbone read from local files (a transformers model
    folder or a TorchScript file): a curation's feature space, `features: {backbone: <path>}`."""
    input:
        encoder=lambda w: BACKBONES[w.space].path,
        pool=rules.data.output.pool,
        probe_train=rules.data.output.probe_train,
        probe_test=rules.data.output.probe_test,
    output:
        pool=f"{RESULTS}/{{dataset}}/features/{{space}}/pool.parquet",
        probe_train=f"{RESULTS}/{{dataset}}/features/{{space}}/probe_train.parquet",
        probe_test=f"{RESULTS}/{{dataset}}/features/{{space}}/probe_test.parquet",
    params:
        tracking=job_file("embed_backbone", "tracking"),
        pooling=lambda w: BACKBONES[w.space].pooling,
    log:
        job_file("embed_backbone", "log"),
    benchmark:
        job_file("embed_backbone", "benchmark")
    message:
        "embed_backbone: the pool and probes of {wildcards.dataset} in the {wildcards.space} space (log: {log})"
