rule embed_probes:
    """Embeddings of the probe splits with a variant's encoder (Ray actor pool)."""
    input:
        encoder=f"{RESULTS}/{{dataset}}/pretrain/{{curation}}/{{ssl}}/seed{{seed}}/encoder.safetensors",
        probe_train=f"{RESULTS}/{{dataset}}/data/probe_train.parquet",
        probe_test=f"{RESULTS}/{{dataset}}/data/probe_test.parquet",
    output:
        probe_train=f"{RESULTS}/{{dataset}}/embed/{{curation}}/{{ssl}}/seed{{seed}}/probe_train.parquet",
        probe_test=f"{RESULTS}/{{dataset}}/embed/{{curation}}/{{ssl}}/seed{{seed}}/probe_test.parquet",
    params:
        tracking=tracking("embed", "variant"),
        batch_size=config["embed"]["batch_size"],
        ray_address=config["ray"]["address"] or "",
    log:
        f"{RESULTS}/logs/embed/{{dataset}}/{{curation}}/{{ssl}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed/{{dataset}}/{{curation}}/{{ssl}}/seed{{seed}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    shell:
        "strata embed --encoder {input.encoder} --tracking {params.tracking:q}"
        " --input {input.probe_train} --output {output.probe_train}"
        " --input {input.probe_test} --output {output.probe_test}"
        " --batch-size {params.batch_size} --threads {threads} --gpus {resources.gpu}"
        " --ray-address={params.ray_address:q} > {log} 2>&1"


rule embed_pool:
    """Pool embeddings with the encoder trained on the whole pool: the features that curation clusters."""
    input:
        encoder=f"{RESULTS}/{{dataset}}/pretrain/none/{{ssl}}/seed{{seed}}/encoder.safetensors",
        pool=f"{RESULTS}/{{dataset}}/data/pool.parquet",
    output:
        pool=f"{RESULTS}/{{dataset}}/embed/none/{{ssl}}/seed{{seed}}/pool.parquet",
    params:
        tracking=tracking("embed_pool", "variant"),
        batch_size=config["embed"]["batch_size"],
        ray_address=config["ray"]["address"] or "",
    wildcard_constraints:
        curation="none",
    log:
        f"{RESULTS}/logs/embed_pool/{{dataset}}/{{ssl}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed_pool/{{dataset}}/{{ssl}}/seed{{seed}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    shell:
        "strata embed --encoder {input.encoder} --tracking {params.tracking:q}"
        " --input {input.pool} --output {output.pool}"
        " --batch-size {params.batch_size} --threads {threads} --gpus {resources.gpu}"
        " --ray-address={params.ray_address:q} > {log} 2>&1"
