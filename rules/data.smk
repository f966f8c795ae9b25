rule data:
    """Build a data set's uncurated pool and its balanced labelled probe splits."""
    input:
        dataset_files,
    output:
        pool=f"{RESULTS}/{{dataset}}/data/pool.parquet",
        probe_train=f"{RESULTS}/{{dataset}}/data/probe_train.parquet",
        probe_test=f"{RESULTS}/{{dataset}}/data/probe_test.parquet",
        info=f"{RESULTS}/{{dataset}}/data/info.json",
    params:
        cfg=lambda w: as_json(dataset_config(w.dataset)),
        cfg_file=job_file("data", "params"),
        tracking=job_file("data", "tracking"),
    log:
        job_file("data", "log"),
    benchmark:
        job_file("data", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "data: pool and probe splits of {wildcards.dataset} (log: {log})"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        """
        {STRATA} data --name {wildcards.dataset} --params-file {params.cfg_file} --tracking {params.tracking} \\
            --pool {output.pool} --probe-train {output.probe_train} --probe-test {output.probe_test} \\
            --info {output.info} > {log} 2>&1
        """
