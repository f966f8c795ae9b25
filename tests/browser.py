"""Drive Debian's Chromium (no browser download) through Playwright: the MLflow compare, run, dataset, model
and metric views, and the report.

Used by tests/test_ui.py and by docs/screenshots.py (the README's pictures).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Debian's `chromium` package; Playwright's own browser download is not used (no network at run time).
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
#: Flags for a root, headless, offline Chromium: no sandbox (root), no background calls to Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
#: The placeholder of the runs page's search box (MLflow 3.x).
RUN_SEARCH_PLACEHOLDER = 'metrics.rmse < 1 and params.model = "tree"'


def chromium_path() -> str | None:
    for candidate in (*CHROMIUM_CANDIDATES, shutil.which("chromium") or ""):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@contextmanager
def browser_page(width: int = 1500, height: int = 950) -> Iterator[Any]:
    """A fresh page of a headless Debian Chromium."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("Chromium not found; install Debian's `chromium` package")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def open_compare_view(page: Any, base_url: str, experiment: str, run_names: list[str]) -> str:
    """Open the experiment as a user does, tick each named run and press Compare; returns the compare page's text.

    Steps: the experiment list → "Model training" mode → the experiment → filter the variant runs → tick each
    run → Compare. The runs grid re-renders while the filter applies, so the ticking waits until exactly the
    expected rows are listed, and is checked before Compare is pressed.
    """
    page.goto(f"{base_url}/#/experiments")
    page.get_by_text("Model training", exact=True).click()
    page.get_by_role("link", name=experiment).click()
    assistant = page.get_by_role("button", name="Close")
    if assistant.count():  # the MLflow Assistant side panel takes a third of the screen
        assistant.first.click()
    page.get_by_text(re.compile(r"^\d+ matching runs$")).wait_for()  # the runs grid has loaded
    search = page.get_by_placeholder(RUN_SEARCH_PLACEHOLDER)
    query = "tags.`strata.kind` = 'variant'"

    def is_filtered_search(response: Any) -> bool:  # the grid's own request, with the typed filter
        return "runs/search" in response.url and "strata.kind" in (response.request.post_data or "")

    for attempt in range(3):
        # A search typed while the page still settles can be reset, and an open suggestion list can take the
        # Enter key: wait for the grid's search request with this filter itself, then for its rows.
        search.fill(query)
        try:
            with page.expect_response(is_filtered_search, timeout=15_000) as response:
                search.press("Enter")
            if not response.value.ok:
                raise AssertionError(f"the runs search answered HTTP {response.value.status}")
            page.get_by_text(f"{len(run_names)} matching runs", exact=True).wait_for(timeout=20_000)
            break
        except Exception:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")  # close a suggestion list before typing again
    row_boxes = page.get_by_role("row").get_by_role("checkbox", name=re.compile("toggle row selection"))
    try:
        _wait_until(lambda: row_boxes.count() == len(run_names)
                    and all(page.get_by_role("link", name=n, exact=True).count() == 1 for n in run_names))
    except TimeoutError:
        missing = [n for n in run_names if page.get_by_role("link", name=n, exact=True).count() != 1]
        raise AssertionError(f"runs grid lists {row_boxes.count()} rows for {len(run_names)} runs; "
                             f"not listed once: {missing}") from None
    for name in run_names:
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))
        row.get_by_role("checkbox", name=re.compile("toggle row selection")).check()
    checked = sum(row_boxes.nth(i).is_checked() for i in range(row_boxes.count()))
    if checked != len(run_names):
        raise AssertionError(f"{checked} runs ticked, expected {len(run_names)}")
    page.get_by_role("button", name="Compare").click()
    page.get_by_text(f"Comparing {len(run_names)} Runs").wait_for()
    page.get_by_text("Run details").wait_for()
    page.wait_for_timeout(1500)  # let the parallel-coordinates plot draw
    return page.inner_text("body")


def show_compare_metrics(page: Any) -> None:
    """Collapse the compare view's plots and parameters so that run names and metrics share the screen."""
    page.get_by_text("Visualizations", exact=True).click()
    page.get_by_text("Parameters", exact=True).click()
    page.get_by_text("Show diff only").last.wait_for()
    page.wait_for_timeout(800)


#: Scrolls every virtualised grid of the page one step down; true when all are at their end.
_SCROLL_GRIDS = """() => {
  let done = true;
  for (const grid of document.querySelectorAll('.ReactVirtualized__Grid')) {
    if (grid.scrollTop + grid.clientHeight < grid.scrollHeight - 1) { grid.scrollTop += 200; done = false; }
  }
  return done;
}"""


def compare_view_metrics(page: Any, texts: list[str] | None = None) -> set[str]:
    """The metric names of the compare view's metrics table.

    The table is a virtualised grid (react-virtualized) that renders only the rows in view, so it is scrolled
    to its end while the names (its "Plot chart" links) are collected; ``texts``, when given, receives the
    page's text at each step (the values of every row).
    """
    names: set[str] = set()
    for _ in range(200):
        names |= set(page.eval_on_selector_all('a[title="Plot chart"]', "els => els.map(e => e.textContent.trim())"))
        if texts is not None:
            texts.append(page.inner_text("body"))
        if page.evaluate(_SCROLL_GRIDS):
            break
        page.wait_for_timeout(100)
    names |= set(page.eval_on_selector_all('a[title="Plot chart"]', "els => els.map(e => e.textContent.trim())"))
    if texts is not None:
        texts.append(page.inner_text("body"))
    return names


def open_run(page: Any, base_url: str, experiment_id: str, run_id: str, run_name: str) -> str:
    """Open a run's page (its Overview) and return its text once the run's name shows."""
    page.goto(f"{base_url}/#/experiments/{experiment_id}/runs/{run_id}")
    page.get_by_text(run_name, exact=True).first.wait_for()
    overview = page.get_by_role("tab", name="Overview")
    if overview.count():  # the page keeps the tab last shown
        overview.first.click()
    page.get_by_text("About this run").first.wait_for()
    return page.inner_text("body")


def open_run_datasets(page: Any, name_pattern: str) -> str:
    """On a run's page, open the datasets drawer from the first dataset tag whose text matches ``name_pattern``
    (a regular expression, e.g. the data set's name); returns the drawer's text (schema, digest, source)."""
    page.get_by_text(re.compile(name_pattern)).first.click()
    page.get_by_text(re.compile(r"\d+ datasets? used")).first.wait_for()
    page.get_by_text("Digest:").first.wait_for()
    text = page.inner_text("body")
    page.keyboard.press("Escape")
    return text


def open_logged_model(page: Any, name: str) -> str:
    """From a run's page, follow the link of its logged model ``name``; returns the model page's text.

    The link's address is followed rather than clicked: the table of logged models re-renders while the page
    settles, and a click on it then can be lost.
    """
    link = page.get_by_role("link", name=name, exact=True).first
    href = link.get_attribute("href")
    page.goto(page.url.split("#")[0] + href if href and href.startswith("#") else href)
    page.get_by_text("About this logged model").first.wait_for()
    page.get_by_text("Source run", exact=True).first.wait_for()
    return page.inner_text("body")


def open_model_metrics(page: Any, metric: str) -> str:
    """On a run's page, open the *Model metrics* tab and wait for the chart of ``metric``; returns its text."""
    page.get_by_role("tab", name="Model metrics").first.click()
    search = page.get_by_placeholder(re.compile("Search metric charts"))
    search.first.wait_for()
    search.first.fill(metric)  # a run has dozens of charts, drawn only when scrolled into view: show this one
    page.get_by_text(metric, exact=True).first.wait_for()
    page.get_by_text("Step", exact=True).first.wait_for()  # a step axis: a history, not one value
    page.wait_for_timeout(1000)  # let the charts draw
    return page.inner_text("body")


def open_chart_view(page: Any, experiment_url: str) -> None:
    """Open an experiment's runs page in its chart view: one chart per metric (every listed run overlaid) and
    one per logged image key (every listed run's picture side by side)."""
    page.goto(experiment_url)
    page.get_by_text(re.compile(r"^\d+ matching runs$")).wait_for()
    page.locator("label", has=page.locator('input[name="runs-view-mode"][value="CHART"]')).click()
    page.get_by_placeholder("Search metric charts").wait_for()


def find_chart(page: Any, key: str, axis: str | None = None) -> str:
    """In the chart view, search the charts for ``key`` and wait for its chart (and the ``axis`` label, e.g.
    ``Step`` for a history); returns the page's text."""
    page.get_by_placeholder("Search metric charts").fill(key)
    page.get_by_text(key, exact=True).first.wait_for()
    if axis:
        page.get_by_text(axis, exact=True).first.wait_for()
    page.wait_for_timeout(1500)  # let the charts draw
    return page.inner_text("body")


def _wait_until(condition: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the page did not reach the expected state")
        time.sleep(0.25)


def report_categories(page: Any) -> list[str]:
    """The result categories of the open Snakemake report's menu, in menu order."""
    page.get_by_text("Results", exact=True).first.wait_for()
    names = [t.strip() for t in page.get_by_role("link").all_inner_texts()]
    return [n for n in names if re.fullmatch(r"\d+ · .+", n)]


def report_category(page: Any, name: str) -> str:
    """A category's menu name: ``name`` itself, or the numbered one whose stage it names (``Curation`` ->
    ``2 · Curation``; the report numbers its categories in stage order)."""
    for full in report_categories(page):
        if full == name or full.split(" · ", 1)[1] == name:
            return full
    return name


def open_report_figure(page: Any, report: Path, category: str, subcategory: str | None = None) -> str:
    """Open a Snakemake report, go to a result category (and subcategory) and show its first figure.

    A category with several subcategories first lists them; the given one (default: the first) is opened.
    Returns the page text.
    """
    page.goto(report.resolve().as_uri())
    page.get_by_role("link", name=report_category(page, category), exact=True).click()
    figures = page.locator("table a")
    _wait_until(lambda: figures.count() > 0 or page.get_by_role("link").count() > 5, timeout_s=30)
    if figures.count() == 0:  # a list of subcategories: the links after the breadcrumb
        links = page.get_by_role("link")
        names = [links.nth(i).inner_text().strip() for i in range(links.count())]
        after = names[names.index(category) + 1:]
        page.get_by_role("link", name=subcategory or next(n for n in after if n), exact=True).click()
    # The rows' eye buttons are unnamed links; the first shows the first figure.
    figures.first.click()
    page.wait_for_timeout(1500)
    return page.inner_text("body")
