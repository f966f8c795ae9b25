"""The results as people look at them, in a real browser (Debian's Chromium through Playwright):

* the MLflow UI over the store of the end-to-end study: open the experiment, select the variant runs, open the
  compare view, and find every variant and the key metrics there; open a variant run and find its datasets
  (schema, digest, source), its encoder as a logged model, its loss history, and the loss curves of all
  variants overlaid in the chart view;
* the Snakemake report of the same study: every result category and a figure of each.

Screenshots go to ``$STRATA_SCREENSHOT_DIR`` (default: the study's ``results/screenshots``). Without Chromium the
tests skip, unless ``STRATA_REQUIRE_BROWSER=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from browser import (
    chromium_path,
    compare_view_metrics,
    find_chart,
    open_chart_view,
    open_compare_view,
    open_logged_model,
    open_model_metrics,
    open_report_figure,
    open_run,
    open_run_datasets,
    show_compare_metrics,
)
from conftest import snakemake

from workflow.ui import experiment_url, free_port, start_ui

pytestmark = pytest.mark.e2e

KEY_METRICS = ("knn_accuracy", "linear_accuracy", "map_at_r", "recall_at_1", "cluster_acc", "cluster_nmi")


@pytest.fixture(scope="module")
def browser_ready() -> None:
    if chromium_path() is None:
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("STRATA_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _screenshot_dir(study: Path) -> Path:
    out = Path(os.environ.get("STRATA_SCREENSHOT_DIR", study / "results" / "strata-test" / "screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_mlflow_compare_view(study: Path, browser_ready: None) -> None:
    from browser import browser_page

    uri = f"sqlite:///{study / 'results' / 'mlflow.db'}"
    port = free_port()
    proc = start_ui(uri, port=port, log_path=str(study / "results" / "strata-test" / "mlflow-ui.log"))
    try:
        base = f"http://127.0.0.1:{port}"
        assert experiment_url(base, uri, "strata-test").endswith("/runs?workflowType=machine_learning")
        summary = pd.read_csv(study / "results" / "strata-test" / "summary.csv")
        names = [f"{r.curation}/{r.ssl}/s{r.seed} · {r.dataset}" for r in summary.itertuples()]
        with browser_page(1600, 1000) as page:
            text = open_compare_view(page, base, "strata-test", names)
            show_compare_metrics(page)
            page.screenshot(path=str(_screenshot_dir(study) / "mlflow_compare.png"))
            shown: list[str] = []  # the page's text while the metrics table scrolls (it renders the rows in view)
            metrics = compare_view_metrics(page, shown)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert f"Comparing {len(names)} Runs" in text
    for name in names:
        assert name in text
    for metric in KEY_METRICS:
        assert metric in metrics and f"{metric}.diff_vs_random" in metrics, metric
    # The chain's parameters are there too.
    for param in ("curation.method", "ssl.method", "dataset.name", "config_hash"):
        assert param in text, param
    # The compare table shows the variants' values: one of them, as the UI rounds it (3 decimals).
    value = f"{summary['knn_accuracy'].iloc[0]:.3f}".rstrip("0").rstrip(".")
    assert any(value in t for t in shown)


def test_mlflow_dataset_model_and_loss_views(study: Path, browser_ready: None) -> None:
    """A variant run as a user opens it: its datasets, its encoder (a logged model), its loss history; and the
    loss curves of every variant overlaid in the experiment's chart view."""
    from browser import browser_page
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{study / 'results' / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("strata-test")
    run = next(r for r in client.search_runs([exp.experiment_id], "tags.`strata.kind` = 'variant'")
               if r.data.params["curation.name"] == "hkmeans" and r.data.params["seed"] == "0")
    shots = _screenshot_dir(study)
    port = free_port()
    proc = start_ui(uri, port=port, log_path=str(study / "results" / "strata-test" / "mlflow-ui.log"))
    try:
        base = f"http://127.0.0.1:{port}"
        with browser_page(1600, 1000) as page:
            open_run(page, base, exp.experiment_id, run.info.run_id, run.info.run_name)
            page.get_by_text("Logged models (1)").first.wait_for()  # the encoder (the section loads last)
            text = page.inner_text("body")
            assert "Snakefile" in text  # the Source: the command and the commit
            commit = run.data.tags.get("mlflow.source.git.commit")
            assert commit is None or commit[:7] in text
            page.screenshot(path=str(shots / "mlflow_run.png"))
            drawer = open_run_datasets(page, r"tiny/\S+ \([0-9a-f]{16}\)$")
            for name in ("tiny/data/pool", "tiny/curate/hkmeans/seed0/selection",
                         "tiny/embed/hkmeans/simclr/seed0/probe_test"):
                assert name in drawer, name
            assert "num rows" in drawer and "Digest:" in drawer and "vector" in drawer
            page.screenshot(path=str(shots / "mlflow_datasets.png"))
            open_model_metrics(page, "loss")
            page.screenshot(path=str(shots / "mlflow_loss.png"))
            open_run(page, base, exp.experiment_id, run.info.run_id, run.info.run_name)
            open_logged_model(page, "encoder")
            # its source run: the name is fetched after the "Source run" label shows, so wait for the name itself
            page.get_by_text("pretrain hkmeans/simclr/s0").first.wait_for()
            page.screenshot(path=str(shots / "mlflow_model.png"))
            open_chart_view(page, experiment_url(base, uri, "strata-test"))
            find_chart(page, "loss", axis="Step")  # every variant's loss history, overlaid
            page.screenshot(path=str(shots / "mlflow_loss_curves.png"))
            find_chart(page, "embeddings")  # every variant's embedding map, side by side
            page.screenshot(path=str(shots / "mlflow_embedding_maps.png"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_report_in_browser(study: Path, browser_ready: None) -> None:
    from browser import browser_page, report_categories

    from workflow.report_layout import CATEGORY, ITEM, STUDY_ITEMS

    report = study / "results" / "strata-test" / "report.html"
    result = snakemake(study, "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    with browser_page(1400, 900) as page:
        # The first page states the verdict and shows the forest plot.
        page.goto(report.resolve().as_uri())
        page.get_by_text("Verdict on knn_accuracy").first.wait_for()
        assert "hkmeans vs random" in page.inner_text("body")
        forest = page.locator('img[alt="Forest plot of paired differences"]')
        forest.wait_for()
        assert forest.is_visible() and forest.evaluate("img => img.naturalWidth") > 100
        page.screenshot(path=str(_screenshot_dir(study) / "report_first_page.png"))
        # The result categories come in stage order, each named by its stage.
        assert report_categories(page) == list(CATEGORY.values())
        # The verdict category lists its items by label, forest plot first, with the caption's key sentence.
        text = open_report_figure(page, report, CATEGORY["verdict"])
        forest_item, forest_shows = STUDY_ITEMS["forest.png"]
        assert forest_item in text and forest_shows in text and ITEM.upper() in text.upper()
        assert text.index(forest_item) < text.index(STUDY_ITEMS["verdict.json"][0])
        for category in CATEGORY.values():
            text = open_report_figure(page, report, category)
            assert category in text
            stage = category.split(" · ")[1].lower()
            page.screenshot(path=str(_screenshot_dir(study) / f"report_{stage}.png"))
        # Items are labelled (not listed by path); comparisons come before the per-variant rows.
        text = open_report_figure(page, report, CATEGORY["curation"])
        assert "All curations, seed 0: kept per class" in text and "Label histogram" in text
        assert "labels.png" not in text and text.index("All curations") < text.index("Label histogram")
        text = open_report_figure(page, report, CATEGORY["pretraining"])
        assert "All seeds: loss, hkmeans vs random" in text and "Training curves" in text
        for curation in ("none", "random", "hkmeans"):
            assert curation in text
        text = open_report_figure(page, report, CATEGORY["embeddings"])
        assert "All curations, seed 0: t-SNE" in text and "t-SNE map" in text
        # The labels leave the figure most of the screen: the menu beside it stays narrow.
        nav = page.locator("nav").first.bounding_box()
        assert nav is not None and nav["width"] < 0.5 * 1400, nav
