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
        tracking=tracking("data", "dataset"),
    log:
        f"{RESULTS}/logs/data/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/data/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "strata data --name {wildcards.dataset} --params {params.cfg:q} --tracking {params.tracking:q}"
        " --pool {output.pool} --probe-train {output.probe_train} --probe-test {output.probe_test}"
        " --info {output.info} > {log} 2>&1"
