"""Take the README's screenshots from the default study's results (run `make run` and `make report` first).

    python docs/screenshots.py   # or: make screenshots

Writes docs/images/mlflow_compare.png and docs/images/report_{pretraining,embeddings}.png with Debian's Chromium.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from browser import browser_page, open_compare_view, open_report_figure, show_compare_metrics  # noqa: E402

from workflow.ui import _only_study, free_port, start_ui  # noqa: E402


def main() -> int:
    results, images = REPO / "results", REPO / "docs" / "images"
    uri = f"sqlite:///{results / 'mlflow.db'}"
    experiment = _only_study(uri)
    if experiment is None or not (results / "report.html").is_file():
        print("need results/mlflow.db with one study and results/report.html: run `make run` and `make report`")
        return 2
    import pandas as pd

    names = [f"{r.curation}/{r.ssl}/s{r.seed} · {r.dataset}"  # the variant runs' names (rules/common.smk)
             for r in pd.read_csv(results / "summary.csv").itertuples()]
    port = free_port()
    proc = start_ui(uri, port=port)
    try:
        with browser_page(1600, 1000) as page:
            open_compare_view(page, f"http://127.0.0.1:{port}", experiment, names)
            show_compare_metrics(page)
            page.screenshot(path=str(images / "mlflow_compare.png"))
    finally:
        proc.terminate()
    with browser_page(1400, 900) as page:
        for category in ("Pretraining", "Embeddings"):
            open_report_figure(page, results / "report.html", category)
            page.screenshot(path=str(images / f"report_{category.lower()}.png"))
    print(f"wrote screenshots to {images}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
