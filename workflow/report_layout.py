"""How the Snakemake report is laid out: its categories in stage order, each item's labels, and figure titles.

* The report's menu sorts categories (and subcategories) alphabetically, so each category name starts with its
  stage's number: :data:`CATEGORY` (verdict first, then curation, pretraining, embeddings, evaluation).
* Within a (sub)category the items are a table with one column per label, sorted by the first label; captions
  sit behind each row's (i) button. Every item therefore carries labels (never only its path). The first,
  ``item``, says what the figure is and, after a dash, the caption's key sentence in a few words (visible without
  a click); it sorts the comparisons ("All ...") before the per-variant figures. Per-variant rows add
  ``curation`` and ``seed``; comparison and study rows carry ``item`` only. Labels stay short: the report's menu
  widens to its longest row, and the figure shown beside it gets the rest of the screen.
* Why so few columns: the report turns a label other than the first into an on/off toggle when it has exactly
  two values, each on half of the rows, and a toggle over rows that do not pair up leaves the page blank
  (Snakemake 9.x, ``abstract_results.js``). A label missing from some row never becomes a toggle, so every
  category with a comparison row has none; in the others only ``curation`` or ``seed`` can, over a full grid.
* Every figure title names the curation, the seed and the feature space the curation ran on
  (:func:`feature_space`: ``raw`` or an ``ssl`` entry, with the seed of that encoder).
* :func:`first_page_rst`: the report's first page, the verdict and the forest plot (embedded as a data URI, so it
  shows in the single-file report without a click).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import quote

#: Report categories, numbered in stage order (the report sorts them by name).
CATEGORY = {
    "verdict": "1 · Verdict",
    "curation": "2 · Curation",
    "pretraining": "3 · Pretraining",
    "embeddings": "4 · Embeddings",
    "evaluation": "5 · Evaluation",
}

#: The first label (what the figure is — the key sentence) and the per-variant labels.
ITEM, CURATION, SEED = "item", "curation", "seed"


#: The study-level items: their file name → (item, what it shows). Labels stay short: the report's menu widens to
#: its longest row and leaves the figure beside it the rest of the screen.
STUDY_ITEMS = {
    "forest.png": ("Forest plot", "paired differences, CIs, verdicts"),
    "curve.png": ("Size curve", "the effect against the curated size"),
    "verdict.json": ("Verdict (JSON)", "the numbers behind it"),
    "summary.png": ("Every metric", "each seed, mean ± 95% CI, zoomed"),
    "summary_stats.csv": ("Statistics (CSV)", "mean, CI, paired differences"),
}

#: The curate job's diagnostics: picture name → (item, what it shows). Per-variant items must sort after the
#: comparisons' (which start with "All").
DIAGNOSTICS = {
    "cluster_sizes": ("Cluster sizes", "flatter = centroids spread out"),
    "labels": ("Label histogram", "pool vs selection"),
    "map": ("Pool and selection map", "selection in colour"),
    "leakage": ("Probe copies in the pool", "per class"),
}


def feature_space(curation: dict[str, Any], seed: int | str | None) -> str:
    """The features a curation ran on, in words, e.g. ``simclr features, encoder seed 0``.

    Args:
        curation: The curation's config section (``method``, and ``features``/``features_seed`` where they apply).
        seed: The variant's seed (the features encoder's seed unless ``features_seed`` fixes it); None for a
            figure of every seed.
    """
    method = curation.get("method", "none")
    if method == "none":
        return "whole pool, no features"
    if method == "random":
        return "uniform, no features"
    features = curation.get("features", "raw")
    if features == "raw":
        return "raw features"
    if not isinstance(features, str):  # {table: ...} or {backbone: ...}: one fixed space for every seed
        from workflow.feature_spaces import feature_space as parse

        return f"{parse(features).label} features"
    fixed = curation.get("features_seed")
    if fixed is not None:
        return f"{features} features, encoder seed {fixed} for every seed"
    return f"{features} features, encoder seed {'= variant seed' if seed is None else seed}"


def curation_name(curation: str, curation_cfg: dict[str, Any], seed: int | str) -> str:
    """A curation with its feature space: ``hkmeans [simclr features, encoder seed 0]``."""
    return f"{curation} [{feature_space(curation_cfg, seed)}]"


def variant_title(dataset: str, curation: str, curation_cfg: dict[str, Any], ssl: str, seed: int | str) -> str:
    """A per-variant figure's title: ``hkmeans [simclr features, encoder seed 0] · simclr · mnist1d-lt · seed 0``."""
    return f"{curation_name(curation, curation_cfg, seed)} · {ssl} · {dataset} · seed {seed}"


def item_text(item: str, shows: str) -> str:
    """The ``item`` label: what the figure is, a dash, what it shows."""
    return f"{item} — {shows}"


def study_labels(name: str) -> dict[str, str]:
    """Labels of a study-level item (``forest.png``, ``verdict.json`` ...)."""
    return {ITEM: item_text(*STUDY_ITEMS[name])}


def comparison_labels(item: str, shows: str) -> dict[str, str]:
    """Labels of a comparative figure (several curations or seeds): ``item`` only (see the module docstring)."""
    return {ITEM: item_text(item, shows)}


def variant_labels(item: str, shows: str, curation: str, seed: int | str) -> dict[str, str]:
    """Labels of a per-variant figure: ``item``, ``curation``, ``seed`` (the figure's title names the feature
    space)."""
    return {ITEM: item_text(item, shows), CURATION: curation, SEED: str(seed)}


def diagnostics_labels(name: str, curation: str, seed: int | str) -> dict[str, str]:
    """Labels of one curate-job picture (``name`` without ``.png``); unknown pictures keep their name."""
    item, shows = DIAGNOSTICS.get(name, (name.replace("_", " ").capitalize(), "curation diagnostic"))
    return variant_labels(item, shows, curation, seed)


def _png_data_uri(path: Path, indent: str = "   ", width: int = 76) -> str:
    """A PNG as a data URI wrapped in indented lines: docutils rejects lines over 10,000 characters and joins an
    image URI's lines, dropping the whitespace."""
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return f"\n{indent}".join(uri[i:i + width] for i in range(0, len(uri), width))


def first_page_rst(results: str | Path) -> str:
    """The verdict and the forest plot as reStructuredText, for the report's first page (report/workflow.rst).

    Reads ``verdict.json`` and ``forest.png`` of the study's results folder; says what to run when they are
    missing or unreadable. The forest plot is embedded (a data URI), and clicking it opens the verdict category.
    """
    from workflow.errors import StrataError
    from workflow.verdict import read_verdict, verdict_rst

    results = Path(results)
    path = results / "verdict.json"
    if not path.is_file():
        return "*No verdict yet: run the study (``make run``), then ``make report``.*\n"
    try:
        text = verdict_rst(read_verdict(path))
    except (StrataError, KeyError, TypeError) as err:
        return f"*{path} could not be read ({type(err).__name__}); re-run the summarize job.*\n"
    forest = results / "forest.png"
    if forest.is_file():
        target = "javascript:app.showCategory('" + quote(CATEGORY["verdict"]) + "')"
        text += (f"\n.. image:: {_png_data_uri(forest)}\n   :alt: Forest plot of paired differences\n"
                 f"   :width: 100%\n   :target: {target}\n")
    return text
