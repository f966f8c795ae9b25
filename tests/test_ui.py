"""The results as people look at them, in a real browser (Debian's Chromium through Playwright):

* the MLflow UI over the store of the end-to-end study: open the experiment, select the variant runs, open the
  compare view, and find every variant and the key metrics there;
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
    open_compare_view,
    open_report_figure,
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
    out = Path(os.environ.get("STRATA_SCREENSHOT_DIR", study / "results" / "screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_mlflow_compare_view(study: Path, browser_ready: None) -> None:
    from browser import browser_page

    uri = f"sqlite:///{study / 'results' / 'mlflow.db'}"
    port = free_port()
    proc = start_ui(uri, port=port, log_path=str(study / "results" / "mlflow-ui.log"))
    try:
        base = f"http://127.0.0.1:{port}"
        assert experiment_url(base, uri, "strata-test").endswith("/runs?workflowType=machine_learning")
        summary = pd.read_csv(study / "results" / "summary.csv")
        names = [f"{r.curation} · {r.ssl} · {r.dataset} · seed {r.seed}" for r in summary.itertuples()]
        with browser_page(1600, 1000) as page:
            text = open_compare_view(page, base, "strata-test", names)
            show_compare_metrics(page)
            page.screenshot(path=str(_screenshot_dir(study) / "mlflow_compare.png"))
            metrics = compare_view_metrics(page)
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
    assert value in text


def test_report_in_browser(study: Path, browser_ready: None) -> None:
    from browser import browser_page

    report = study / "results" / "report.html"
    result = snakemake(study, "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    with browser_page(1400, 900) as page:
        # The first page states the verdict; the first category is the answer, and its first figure the forest plot.
        page.goto(report.resolve().as_uri())
        page.get_by_text("Verdict on knn_accuracy").first.wait_for()
        assert "hkmeans vs random" in page.inner_text("body")
        page.screenshot(path=str(_screenshot_dir(study) / "report_first_page.png"))
        menu = page.inner_text("body")
        assert menu.index("Answer") < menu.index("Curation") < menu.index("Pretraining")
        text = open_report_figure(page, report, "Answer")
        assert "forest.png" in text and text.index("forest.png") < text.index("summary.png")
        for category in ("Curation", "Pretraining", "Embeddings", "Answer"):
            text = open_report_figure(page, report, category)
            assert category in text
            page.screenshot(path=str(_screenshot_dir(study) / f"report_{category.lower()}.png"))
        # Per-variant figures are labelled by curation and seed.
        text = open_report_figure(page, report, "Pretraining")
        for curation in ("none", "random", "hkmeans"):
            assert curation in text
        assert "training curves" in text
