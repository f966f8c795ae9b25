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
        history=f"{RESULTS}/{{dataset}}/pretrain/{{curation}}/{{ssl}}/seed{{seed}}/history.parquet",
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
        tracking=tracking("plot_training", "variant"),
    log:
        f"{RESULTS}/logs/plot_training/{{dataset}}/{{curation}}/{{ssl}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot_training/{{dataset}}/{{curation}}/{{ssl}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "strata plot-training --history {input.history} --output {output.png} --title {params.title:q}"
        " --tracking {params.tracking:q} > {log} 2>&1"


rule plot_embeddings:
    """2-D t-SNE map of a variant's probe_test embeddings, coloured by label."""
    input:
        embeddings=f"{RESULTS}/{{dataset}}/embed/{{curation}}/{{ssl}}/seed{{seed}}/probe_test.parquet",
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
        tracking=tracking("plot_embeddings", "variant"),
        max_points=config["report"]["map_max_points"],
    log:
        f"{RESULTS}/logs/plot_embeddings/{{dataset}}/{{curation}}/{{ssl}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot_embeddings/{{dataset}}/{{curation}}/{{ssl}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "strata plot-embeddings --embeddings {input.embeddings} --output {output.png} --seed {wildcards.seed}"
        " --title {params.title:q} --max-points {params.max_points} --tracking {params.tracking:q} > {log} 2>&1"
