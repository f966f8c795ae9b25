"""Take the README's screenshots from a study's results (run `make run` and `make report` first).

    python docs/screenshots.py                  # or: make screenshots; writes results/<study>/screenshots/
    python docs/screenshots.py --out /tmp/shots
    python docs/screenshots.py --update-docs    # or: make screenshots UPDATE_DOCS=1; replaces docs/images/

Takes mlflow_compare.png (the MLflow compare view of the variant runs) and report_{pretraining,embeddings}.png (the
report's first figure of those categories) with Debian's Chromium. By default they go to an untracked folder,
``screenshots/`` in the study's results folder, so that trying it never changes a tracked file; only
``--update-docs`` writes the README's pictures in docs/images/ (then review them with `git diff --stat`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

#: The tracked pictures that ``--update-docs`` replaces.
DOCS_IMAGES = REPO / "docs" / "images"
#: What one run writes, in either folder.
PICTURES = ("mlflow_compare.png", "report_pretraining.png", "report_embeddings.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python docs/screenshots.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.yaml",
                        help="the study config: its results folder, tracking store and experiment "
                             "(default: %(default)s; what `make screenshots CONFIG=…` passes)")
    parser.add_argument("--results", default=None,
                        help="the study's results folder (default: the config's, results/<study>/)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", default=None,
                       help="folder for the pictures (default: screenshots/ in the results folder; untracked)")
    where.add_argument("--update-docs", action="store_true",
                       help=f"replace the tracked README pictures in {DOCS_IMAGES.relative_to(REPO)}/ instead")
    return parser.parse_args(argv)


def output_folder(args: argparse.Namespace, results: Path) -> Path:
    """Where the pictures go: docs/images/ only with ``--update-docs``, else ``--out`` or the results folder."""
    if args.update_docs:
        return DOCS_IMAGES
    return Path(args.out) if args.out else results / "screenshots"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from workflow.config import load_study, study_results
    from workflow.errors import StrataError
    from workflow.ui import _study_store

    try:
        study = load_study(args.config)
        uri, experiment = _study_store(args.config)
    except StrataError as err:
        print(f"screenshots: error: {err}", file=sys.stderr)
        return 2
    results = Path(args.results or study_results(study))
    if not (results / "report.html").is_file() or not (results / "summary.csv").is_file():
        print(f"screenshots: need {results}/summary.csv and {results}/report.html: run `make run` and "
              "`make report` (with the same CONFIG=) first", file=sys.stderr)
        return 2
    images = output_folder(args, results)
    images.mkdir(parents=True, exist_ok=True)

    import pandas as pd
    from browser import browser_page, open_compare_view, open_report_figure, show_compare_metrics

    from workflow.ui import free_port, start_ui

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
    print(f"screenshots: wrote {', '.join(PICTURES)} to {images}"
          + ("" if args.update_docs else " (the README's copies in docs/images/ are unchanged: --update-docs "
                                         "replaces them)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
