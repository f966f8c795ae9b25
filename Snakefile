# Strata: does curating the pool make self-supervised representations better, and by how much?
# The study is the product datasets x curations x ssl x seeds from the config; see README.md.

from snakemake.utils import min_version

min_version("9.0")


report: "report/workflow.rst"


# A --configfile given on the command line is the whole study (no merging with the default study).
if not workflow.overwrite_configfiles:

    configfile: "configs/default.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/curate.smk"
include: "rules/pretrain.smk"
include: "rules/embed.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/ray.smk"


rule all:
    default_target: True
    input:
        rules.summarize.output.md,
        rules.summarize.output.csv,
        all_figures(),
        comparative_figures(),


onstart:
    write_job_files()
    start_run_cluster()
    start_tracking_spool()


onsuccess:
    stop_run_cluster()
    flush_tracking()
    attach_job_files()


onerror:
    stop_run_cluster()
    flush_tracking()
    attach_job_files()
