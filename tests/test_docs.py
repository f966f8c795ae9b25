"""Claims of README.md and docs/*.md that can drift from the files, checked against them.

* every ``make <target>`` named exists in the Makefile;
* every config key named (``summary.rope``, ``curations.<name>.method``, ``features_seed: 0``) exists in
  configs/schema.yaml;
* every relative link (and its ``#anchor``) and every repository path named in backticks exists;
* the table contracts of docs/tables.md list the columns the code writes (``history.parquet``,
  ``summary_stats.csv``, ``verdict.json``, ``metrics.json``), beside tests/test_tables.py, which checks the
  vector tables' Arrow schema;
* README.md keeps its newcomer's first screen (the two commands with time and disk, the verdict) and no table
  row runs past 200 characters;
* ``make screenshots`` writes to an untracked folder unless asked to replace docs/images/.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]


def _ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(REPO).as_posix() for p in paths]


def _code_spans(text: str, fenced: bool = True) -> list[str]:
    """Inline code spans and (``fenced``) the lines of fenced code blocks."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M) if fenced else []
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"``(.+?)``|`([^`\n]+)`", prose)
    return [a or b for a, b in spans] + [line for block in blocks for line in block.splitlines()]


# ---- Make targets -----------------------------------------------------------------------------------------------

def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_make_target_named_exists(page: Path) -> None:
    targets = _make_targets()
    named = {m for span in _code_spans(page.read_text()) for m in re.findall(r"(?:^|[\s;&|(])make ([a-z][\w-]*)",
                                                                                span)}
    named |= set(re.findall(r"`make ([a-z][\w-]*)", page.read_text()))
    assert named - targets == set(), f"{page.name} names make targets the Makefile lacks: {named - targets}"


# ---- config keys -------------------------------------------------------------------------------------------------

SCHEMA = yaml.safe_load((REPO / "configs" / "schema.yaml").read_text())


def _resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _branches(node: Any) -> list[dict[str, Any]]:
    """The node and every schema it combines (allOf/anyOf/oneOf/if/then/else), resolved."""
    node = _resolve(node)
    if not isinstance(node, dict):
        return []
    out = [node]
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key, []):
            out += _branches(sub)
    for key in ("if", "then", "else", "items"):
        if key in node:
            out += _branches(node[key])
    return out


def _children(node: Any, name: str) -> list[Any]:
    """The schemas of key ``name`` under ``node`` (``<…>``: any name of a map such as ``curations``)."""
    found = []
    for branch in _branches(node):
        props = branch.get("properties", {})
        if name.startswith("<") and isinstance(branch.get("additionalProperties"), dict):
            found.append(branch["additionalProperties"])
        elif name in props:
            found.append(props[name])
    return found


def schema_has(dotted: str) -> bool:
    """Whether ``a.b.c`` (``<name>`` for a map's entry) is a path of configs/schema.yaml."""
    nodes: list[Any] = [SCHEMA]
    for part in dotted.split("."):
        nodes = [child for node in nodes for child in _children(node, part)]
        if not nodes:
            return False
    return True


def _all_keys(node: Any = None, seen: set[int] | None = None) -> set[str]:
    node, seen = (SCHEMA if node is None else node), seen if seen is not None else set()
    if id(node) in seen:
        return set()
    seen.add(id(node))
    keys: set[str] = set()
    for branch in _branches(node):
        for k, v in branch.get("properties", {}).items():
            keys |= {k} | _all_keys(v, seen)
        if isinstance(branch.get("additionalProperties"), dict):
            keys |= _all_keys(branch["additionalProperties"], seen)
    return keys


TOP = set(SCHEMA["properties"])
#: Backticked words followed by a colon that are YAML of something else than a study config.
NOT_CONFIG = {"study", "pool", "id", "name", "table", "backbone", "sbatch", "slurm", "executor", "strata",
              # Snakemake rule and profile keys (docs/cluster.md)
              "conda", "message", "gpu", "jobs", "mem_mb", "retries", "runtime", "slurm_account", "slurm_extra",
              "slurm_partition"}


#: MLflow parameter names the docs quote that look like config paths but are not (a frozen baseline's variant run).
MLFLOW_PARAMS = {"ssl.method", "ssl.feature_space"}


def test_schema_lookup_works() -> None:
    assert schema_has("summary.rope") and schema_has("curations.<name>.method")
    assert schema_has("curations.<name>.features") and not schema_has("summary.nonsense")
    assert "features_seed" in _all_keys() and "nonsense" not in _all_keys()


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_config_key_named_exists_in_the_schema(page: Path) -> None:
    spans = _code_spans(page.read_text(), fenced=False)
    dotted = {s for s in spans if re.fullmatch(r"[a-z_]+(\.(?:[a-z_0-9]+|<[a-z]+>))+", s) and s.split(".")[0] in TOP
              and not re.search(r"\.(py|yaml|json|md|png|parquet|csv|npy|db|smk|html|rst|txt)$", s)}
    missing = sorted(k for k in dotted - MLFLOW_PARAMS if not schema_has(k))
    # `key: value` / `key:` spans name a key somewhere in a study config.
    keys = _all_keys()
    # (`dedup: {method: semdedup}` names a curation entry, not a key.)
    colon = {m.group(1) for s in spans if (m := re.fullmatch(r"([a-z_]+):(?: (?!\{method:).*)?", s.strip()))}
    missing += sorted(k for k in colon - NOT_CONFIG if k not in keys)
    assert missing == [], f"{page.name} names config keys that configs/schema.yaml lacks: {missing}"


# ---- links and paths ---------------------------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_relative_link_and_anchor_exists(page: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert broken == [], f"{page.name} links to missing files or anchors: {broken}"


#: Folders whose paths the docs name in backticks.
TRACKED_ROOTS = ("workflow/", "tests/", "configs/", "benchmarks/", "docs/", "rules/", "profiles/", "envs/",
                 "report/", ".ci/")


#: Paths the docs ask you to create, and files that a run writes.
EXAMPLES = {"profiles/mycluster", "docs/images/curve.png"}


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_repository_path_named_exists(page: Path) -> None:
    named = set()
    for span in _code_spans(page.read_text()):
        for word in re.findall(r"[\w./-]+", span):
            if word.startswith(TRACKED_ROOTS) and not re.search(r"[<>*{}…]|[A-Z]{3,}", word):
                named.add(word.rstrip(".,:;"))
    # Outputs of benchmarks, and files the docs ask you to create, are not in the repository.
    named = {p for p in named if not p.startswith("benchmarks/results/") and p not in EXAMPLES}
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert missing == [], f"{page.name} names repository paths that do not exist: {missing}"


# ---- table contracts (docs/tables.md) ---------------------------------------------------------------------------

TABLES = (REPO / "docs" / "tables.md").read_text()


def _after(anchor: str, stop: str = "\n\n") -> str:
    """The docs/tables.md text from ``anchor`` to ``stop`` (default: the end of its paragraph)."""
    start = TABLES.index(anchor)
    end = TABLES.find(stop, start + len(anchor))
    return TABLES[start:end if end > 0 else None]


def _backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def _table_rows(text: str) -> dict[str, str]:
    """First cell → second cell of the Markdown table rows in ``text``."""
    return {cells[0].strip(): cells[1].strip() for line in text.splitlines() if line.startswith("| ")
            and len(cells := line.strip("|").split(" | ")) >= 2}


def test_summary_stats_columns_match_the_contract() -> None:
    from workflow.summarize import STATS_COLUMNS

    text = _after("summary_stats.csv`: one row per").split("columns in this order:", 1)[1]
    assert _backticked(text) == STATS_COLUMNS, "docs/tables.md: summary_stats.csv columns"


def _variants() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"dataset": "d", "ssl": ssl, "curation": c, "seed": s, "knn_accuracy": rng.uniform(),
             "linear_accuracy": rng.uniform()} for ssl in ("simclr", "byol") for c in ("random", "hkmeans")
            for s in range(3)]
    return pd.DataFrame(rows)


def test_verdict_fields_match_the_contract() -> None:
    from workflow.verdict import build_verdict

    verdict = build_verdict(_variants(), "knn_accuracy", "random", 0.01, {"hkmeans": "random"},
                            ["knn_accuracy", "linear_accuracy"], sizes={"hkmeans": 10, "random": 10}, n_resamples=50)
    rows = _table_rows(_after("verdict.json` (strict JSON", "\n\n`"))
    top = {k for key in rows for k in _backticked(key)}
    assert top == set(verdict), "docs/tables.md: verdict.json fields"
    comparison = rows["`comparisons`"]
    inner = re.search(r"`aggregate` \(([^)]*)\)", comparison)
    assert inner and set(_backticked(inner.group(1))) == set(verdict["comparisons"][0]["aggregate"])
    named = set(_backticked(comparison.replace(inner.group(0), "`aggregate`")))
    named -= {"better", "worse", "equivalent", "unresolved"}  # the verdict's values
    assert named == set(verdict["comparisons"][0]), "docs/tables.md: verdict.json comparisons"
    pooled = set(_backticked(rows["`pooled`"])) - {"mean of M SSL entries"}
    assert pooled == set(verdict["pooled"][0]), "docs/tables.md: verdict.json pooled"


@pytest.mark.e2e  # a real (tiny) training through Ray Train, like tests/test_pretrain.py
def test_history_columns_match_the_contract(tiny_pool: tuple[Path, Path], tmp_path: Path) -> None:
    from workflow.config import validate
    from workflow.pretrain.train import run_pretrain

    out = tmp_path / "history.parquet"
    params = validate({"method": "simclr", "steps": 6, "batch_size": 32, "embedding_dim": 8,
                       "projector_hidden_dim": 16}, "ssl")
    run_pretrain(str(tiny_pool[0]), str(tiny_pool[1]), str(tmp_path / "encoder.safetensors"), str(out), params,
                 seed=0, threads=1, work_root=str(tmp_path / "work"))
    rows = _table_rows(_after("columns in this order:\n\n| column |", "\n\nThe four monitors"))
    simclr_terms = re.search(r"SimCLR ((?:`\w+`(?:, )?)+)", rows["*loss terms*"]).group(1)
    documented = []
    for cell in rows:
        documented += _backticked(simclr_terms) if cell == "*loss terms*" else _backticked(cell)
    assert list(pd.read_parquet(out).columns) == documented, "docs/tables.md: history.parquet columns (SimCLR)"


def test_metric_names_match_the_contract(tmp_path: Path) -> None:
    from workflow.config import validate
    from workflow.data import build_dataset
    from workflow.evaluate.stage import evaluate
    from workflow.tables import write_table

    splits = build_dataset(validate({"kind": "blobs", "n_max": 60, "imbalance_ratio": 2, "dim": 4}, "dataset"),
                           "blobs")
    for name in ("probe_train", "probe_test"):
        write_table(getattr(splits, name), tmp_path / f"{name}.parquet")
    metrics = evaluate(str(tmp_path / "probe_train.parquet"), str(tmp_path / "probe_test.parquet"),
                       validate({}, "evaluation"), seed=0)
    text = _after("metrics.json`: `variant`").split("`metrics` (", 1)[1].split("; the\n`gallery_`", 1)[0]
    documented = set(_backticked(text))
    expanded: set[str] = set()
    for name in documented:
        pattern = re.escape(name).replace(r"\{k\}", r"\d+")
        hits = {m for m in metrics if re.fullmatch(pattern, m)}
        assert hits, f"docs/tables.md names metric {name!r} that evaluate does not write"
        expanded |= hits
    assert set(metrics) - expanded == set(), "docs/tables.md: metrics.json metrics"


def test_headline_metrics_match_the_docs() -> None:
    from workflow.summarize import HEADLINE

    text = (REPO / "docs" / "metrics.md").read_text()
    named = re.search(r"the headline metrics \(([^)]*)\)", text)
    assert named and [m for m in _backticked(named.group(1))] == HEADLINE, "docs/metrics.md: the headline metrics"


# ---- README's first screen ---------------------------------------------------------------------------------------

def test_readme_first_screen_has_the_commands_the_estimates_and_the_verdict() -> None:
    first = "\n".join(README.read_text().splitlines()[:40])
    assert "make run" in first and "make test" in first
    assert re.search(r"\d+ min", first) and re.search(r"\d+(\.\d+)? GB", first), "time and disk estimates"
    assert "<!-- verdict:start -->" in first and "<!-- verdict:end -->" in first


def test_no_readme_table_row_runs_past_200_characters() -> None:
    long = [line[:60] + "…" for line in README.read_text().splitlines() if line.startswith("|") and len(line) > 200]
    assert long == [], "README.md: table rows over 200 characters (details go to docs/)"


# ---- make screenshots -------------------------------------------------------------------------------------------

def test_screenshots_go_to_an_untracked_folder_unless_asked(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "docs"))
    try:
        import screenshots
    finally:
        sys.path.remove(str(REPO / "docs"))
    results = tmp_path / "results" / "study"
    assert screenshots.output_folder(screenshots.parse_args([]), results) == results / "screenshots"
    assert screenshots.output_folder(screenshots.parse_args(["--out", str(tmp_path)]), results) == tmp_path
    assert screenshots.output_folder(screenshots.parse_args(["--update-docs"]), results) == REPO / "docs" / "images"
    ignored = subprocess.run(["git", "check-ignore", "-q", "results/study/screenshots/x.png"], cwd=REPO)
    assert ignored.returncode == 0, "results/ must stay untracked (.gitignore)"
    dry = subprocess.run(["make", "-n", "screenshots"], cwd=REPO, capture_output=True, text=True).stdout
    assert "screenshots.py" in dry and "--update-docs" not in dry
    dry = subprocess.run(["make", "-n", "screenshots", "UPDATE_DOCS=1"], cwd=REPO, capture_output=True, text=True)
    assert "--update-docs" in dry.stdout
