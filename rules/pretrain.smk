rule pretrain:
    """Self-supervised pretraining of an encoder on a curated subset, on Ray Train."""
    input:
        pool=f"{RESULTS}/{{dataset}}/data/pool.parquet",
        selection=f"{RESULTS}/{{dataset}}/curate/{{curation}}/seed{{seed}}/selection.parquet",
    output:
        encoder=f"{RESULTS}/{{dataset}}/pretrain/{{curation}}/{{ssl}}/seed{{seed}}/encoder.safetensors",
        history=f"{RESULTS}/{{dataset}}/pretrain/{{curation}}/{{ssl}}/seed{{seed}}/history.parquet",
    params:
        cfg=lambda w: as_json(ssl_config(w.ssl, w.dataset)),
        tracking=tracking("pretrain", "variant"),
        ray_address=config["ray"]["address"] or "",
    log:
        f"{RESULTS}/logs/pretrain/{{dataset}}/{{curation}}/{{ssl}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{dataset}}/{{curation}}/{{ssl}}/seed{{seed}}.tsv"
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,  # memory-bound: more on each retry
        runtime=120,
        gpu=0,
    shell:
        "strata pretrain --params {params.cfg:q} --tracking {params.tracking:q} --seed {wildcards.seed}"
        " --pool {input.pool} --selection {input.selection}"
        " --encoder {output.encoder} --history {output.history}"
        " --threads {threads} --gpus {resources.gpu} --ray-address={params.ray_address:q}"
        " --work-root {RESULTS}/.work > {log} 2>&1"
