rule pretrain:
    """Self-supervised pretraining of an encoder on a curated subset, on Ray Train."""
    input:
        pool=rules.data.output.pool,
        selection=rules.curate.output.selection,
    output:
        encoder=f"{RESULTS}/{{dataset}}/pretrain/{{curation}}/{{ssl}}/seed{{seed}}/encoder.safetensors",
        history=f"{RESULTS}/{{dataset}}/pretrain/{{curation}}/{{ssl}}/seed{{seed}}/history.parquet",
    params:
        cfg=lambda w: as_json(ssl_config(w.ssl, w.dataset)),
        cfg_file=job_file("pretrain", "params"),
        tracking=job_file("pretrain", "tracking"),
        ray_address=config["ray"]["address"] or "",
    log:
        job_file("pretrain", "log"),
    benchmark:
        job_file("pretrain", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "pretrain: {wildcards.ssl} on the {wildcards.curation} subset of {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 1  # one thread per job: a study runs several side by side, and small convolutions scale poorly
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,  # memory-bound: more on each retry
        runtime=120,
        gpu=0,
    shell:
        """
        {STRATA} pretrain --params-file {params.cfg_file} --tracking {params.tracking} --seed {wildcards.seed} \\
            --pool {input.pool} --selection {input.selection} \\
            --encoder {output.encoder} --history {output.history} \\
            --threads {threads} --gpus {resources.gpu} --ray-address={params.ray_address:q} \\
            --work-root {RESULTS}/.work > {log} 2>&1
        """
