# Per-variant figures for the Snakemake report (`snakemake --report`) and MLflow (as stage-run artifacts).


def report_verdict_rst():
    """The verdict as reStructuredText for the report's first page (report/workflow.rst), from results/verdict.json.

    Snakemake renders that page with only the config in scope, so the text is put under the config key
    `_report_verdict` (not a study key: it is set after validation and read only by the report).
    """
    from pathlib import Path

    from workflow.errors import StrataError
    from workflow.verdict import read_verdict, verdict_rst

    path = Path(RESULTS) / "verdict.json"
    if not path.is_file():
        return "*No verdict yet: run the study (``make run``), then ``make report``.*"
    try:
        return verdict_rst(read_verdict(path))
    except (StrataError, KeyError, TypeError) as err:
        return f"*results/verdict.json could not be read ({type(err).__name__}); re-run the summarize job.*"


config["_report_verdict"] = report_verdict_rst()


rule plot_training:
    """Training curves of a pretraining run: every loss term, learning rate, throughput, collapse monitors."""
    input:
        history=rules.pretrain.output.history,
    output:
        png=report(
            f"{RESULTS}/{{dataset}}/figures/{{curation}}/{{ssl}}/seed{{seed}}/training.png",
            caption="../report/training.rst",
            category="Pretraining",
            subcategory="{dataset} · {ssl}",
            labels={"curation": "{curation}", "seed": "{seed}", "figure": "training curves"},
        ),
    params:
        title=lambda w: f"{w.curation} · {w.ssl} · {w.dataset} · seed {w.seed}",
        tracking=job_file("plot_training", "tracking"),
    log:
        job_file("plot_training", "log"),
    benchmark:
        job_file("plot_training", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "plot_training: {wildcards.curation} · {wildcards.ssl} on {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        """
        {STRATA} plot-training --history {input.history} --output {output.png} --title {params.title:q} \\
            --tracking {params.tracking} > {log} 2>&1
        """


rule plot_embeddings:
    """2-D t-SNE map of a variant's probe_test embeddings, coloured by label."""
    input:
        embeddings=rules.embed_probes.output.probe_test,
    output:
        png=report(
            f"{RESULTS}/{{dataset}}/figures/{{curation}}/{{ssl}}/seed{{seed}}/embeddings.png",
            caption="../report/embeddings.rst",
            category="Embeddings",
            subcategory="{dataset} · {ssl}",
            labels={"curation": "{curation}", "seed": "{seed}", "figure": "t-SNE of probe_test"},
        ),
    params:
        title=lambda w: f"{w.curation} · {w.ssl} · {w.dataset} · seed {w.seed}",
        tracking=job_file("plot_embeddings", "tracking"),
        max_points=config["report"]["map_max_points"],
    log:
        job_file("plot_embeddings", "log"),
    benchmark:
        job_file("plot_embeddings", "benchmark")
    conda:
        "../envs/strata.yaml"
    message:
        "plot_embeddings: {wildcards.curation} · {wildcards.ssl} on {wildcards.dataset}, seed {wildcards.seed} (log: {log})"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        """
        {STRATA} plot-embeddings --embeddings {input.embeddings} --output {output.png} --seed {wildcards.seed} \\
            --title {params.title:q} --max-points {params.max_points} --tracking {params.tracking} > {log} 2>&1
        """
