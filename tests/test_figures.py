"""The report's figures on small synthetic inputs: files written, titles that name the curation, the seed and the
feature space, log axes where the tail matters; the report's layout (stage order, labels, first page); and a dry
run that shows the comparative rules, following `report.figures`."""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow import compare_figures
from workflow.compare_figures import Panel, plot_embedding_panels, plot_kept_per_class, plot_loss_overlay
from workflow.figures import map_points, plot_embedding_map, plot_training, read_map
from workflow.report_layout import (
    CATEGORY,
    DIAGNOSTICS,
    STUDY_ITEMS,
    comparison_labels,
    diagnostics_labels,
    feature_space,
    first_page_rst,
    study_labels,
    variant_title,
)
from workflow.tables import VectorTable, write_table

REPO = Path(__file__).resolve().parent.parent
HKMEANS = {"method": "hkmeans", "features": "simclr"}
HK_SPACE = "simclr features, encoder seed 0"


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure the comparative functions save (still written to disk)."""
    saved: list[Any] = []
    real = compare_figures._save

    def keep(fig: Any, path: str) -> None:
        saved.append(fig)
        real(fig, path)

    monkeypatch.setattr(compare_figures, "_save", keep)
    return saved


def _titles(fig: Any) -> str:
    return "\n".join([fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes])


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


def _stats(path: Path, before: dict[str, int], after: dict[str, int] | None) -> str:
    stats: dict[str, Any] = {"method": "x", "selected_size": sum((after or {}).values())}
    if after is not None:
        stats["labels_before"] = {"histogram": before}
        stats["labels_after"] = {"histogram": after}
    path.write_text(json.dumps(stats))
    return str(path)


def _embeddings(path: Path, seed: int, n: int = 40) -> str:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    vectors = (rng.normal(size=(n, 8)) + 3 * np.eye(8)[labels]).astype(np.float32)
    write_table(VectorTable(ids=np.arange(n, dtype=np.int64), vectors=vectors, labels=labels.astype(np.int64)), path)
    return str(path)


def _map(tmp_path: Path, name: str, seed: int) -> str:
    """A saved t-SNE map, as plot_embeddings writes it for compare_embeddings."""
    path = tmp_path / f"{name}.map.parquet"
    plot_embedding_map(_embeddings(tmp_path / f"{name}.parquet", seed), str(tmp_path / f"{name}.png"), 0,
                       map_path=str(path))
    return str(path)


def _history(path: Path, scale: float, steps: int = 30) -> str:
    step = np.arange(1, steps + 1)
    pd.DataFrame({"step": step, "epoch": step // 10, "loss": scale * (1 + 5 / step), "lr": 1e-3 * np.ones(steps)}
                 ).to_parquet(path)
    return str(path)


# ---- titles and feature spaces ----------------------------------------------------------------------------------

def test_feature_space_names_the_features_and_their_encoder_seed() -> None:
    assert feature_space(HKMEANS, 2) == "simclr features, encoder seed 2"
    assert feature_space({**HKMEANS, "features_seed": 0}, 2) == "simclr features, encoder seed 0 for every seed"
    assert feature_space(HKMEANS, None) == "simclr features, encoder seed = variant seed"
    assert feature_space({"method": "kmeans", "features": "raw"}, 1) == "raw features"
    assert feature_space({"method": "random"}, 1) == "uniform, no features"
    assert feature_space({"method": "none"}, 1) == "whole pool, no features"
    title = variant_title("mnist1d-lt", "hkmeans", HKMEANS, "simclr", 3)
    assert title == "hkmeans [simclr features, encoder seed 3] · simclr · mnist1d-lt · seed 3"


def test_per_variant_figures_carry_the_given_title(tmp_path: Path) -> None:
    title = variant_title("tiny", "hkmeans", HKMEANS, "simclr", 0)
    plot_training(_history(tmp_path / "h.parquet", 1.0), str(tmp_path / "training.png"), title)
    info = plot_embedding_map(_embeddings(tmp_path / "e.parquet", 0), str(tmp_path / "map.png"), 0, title)
    assert _is_png(tmp_path / "training.png") and _is_png(tmp_path / "map.png")
    assert info["points"] == 40 and 0 < info["trustworthiness"] <= 1


def test_a_saved_map_is_the_map_that_was_drawn(tmp_path: Path) -> None:
    table = _embeddings(tmp_path / "e.parquet", 0)
    info = plot_embedding_map(table, str(tmp_path / "map.png"), 3, max_points=30, map_path=str(tmp_path / "m.pq"))
    xy, labels, trust = read_map(str(tmp_path / "m.pq"))
    want_xy, want_labels, want_trust = map_points(table, 3, 30)  # computed again, independently
    np.testing.assert_array_equal(xy, want_xy)
    np.testing.assert_array_equal(labels, want_labels)
    assert trust == want_trust == info["trustworthiness"] and xy.shape == (30, 2)


@pytest.mark.parametrize("damage", ["float-labels", "null-labels", "nan-coordinates", "three-points"])
def test_a_damaged_map_is_refused_by_name(damage: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workflow.errors import StrataError
    from workflow.figures import write_map

    path = tmp_path / "map.parquet"
    xy = np.arange(16, dtype=np.float64).reshape(8, 2)
    write_map(str(path), xy[:3] if damage == "three-points" else xy, np.arange(3 if damage == "three-points" else 8),
              0.9, 0, "e.parquet")
    table = pq.read_table(path)
    if damage == "float-labels":
        table = table.set_column(2, "label", pa.array(np.linspace(0, 1, 8)))
    elif damage == "null-labels":
        table = table.set_column(2, "label", pa.array([1, None] * 4, pa.int64()))
    elif damage == "nan-coordinates":
        table = table.set_column(0, "x", pa.array([np.nan] * 8))
    pq.write_table(table, path)
    with pytest.raises(StrataError, match="t-SNE map") as err:
        read_map(str(path))
    assert str(path) in str(err.value) and "plot_embeddings" in str(err.value)


# ---- comparative figures ----------------------------------------------------------------------------------------

def test_kept_per_class_is_on_a_log_axis_with_the_tail_on_the_right(tmp_path: Path, figures: list[Any]) -> None:
    pool = {"0": 1000, "1": 300, "2": 30, "3": 5}
    curations = [
        Panel("random", "uniform, no features", _stats(tmp_path / "r.json", pool, {"0": 100, "1": 30, "2": 3})),
        Panel("hkmeans", HK_SPACE, _stats(tmp_path / "h.json", pool, {"0": 60, "1": 50, "2": 20, "3": 3})),
    ]
    out = tmp_path / "kept.png"
    kept = plot_kept_per_class(curations, str(out), "tiny · seed 0: what each curation kept of each class")
    assert _is_png(out)
    assert kept["hkmeans"]["3"] == pytest.approx(0.6) and kept["random"]["3"] == 0.0
    assert kept["random"]["0"] == pytest.approx(0.1)
    fig = figures[-1]
    counts, frac = fig.axes[:2]
    assert counts.get_yscale() == frac.get_yscale() == "log"
    # Classes from the largest to the smallest: the tail on the right.
    assert [t.get_text().split("\n")[0] for t in frac.get_xticklabels()] == ["0", "1", "2", "3"]
    text = _titles(fig)
    for needed in ("random", "hkmeans", "seed 0", HK_SPACE, "uniform, no features"):
        assert needed in text, needed


def test_kept_per_class_without_labels_says_so(tmp_path: Path, figures: list[Any]) -> None:
    out = tmp_path / "kept.png"
    kept = plot_kept_per_class([Panel("random", "uniform, no features", _stats(tmp_path / "r.json", {}, None))],
                               str(out), "user data · seed 0")
    assert kept == {} and _is_png(out)
    assert "no labels" in figures[-1].axes[0].texts[0].get_text()


# ---- curation diagnostics (curate job) ---------------------------------------------------------------------------

@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every matplotlib figure saved while the test runs, by file name (still written to disk)."""
    from matplotlib.figure import Figure

    saved: dict[str, Any] = {}
    real = Figure.savefig

    def keep(fig: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        saved[Path(path).name] = fig
        real(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def test_labels_png_is_on_log_axes_with_the_tail_on_the_right(tmp_path: Path) -> None:
    from workflow.curate.diagnostics import plot_labels

    labels = np.repeat([0, 1, 2, 3], [1000, 300, 30, 5])  # the tail class: 5 in 1 335
    rows = np.r_[np.arange(0, 1000, 10), np.arange(1000, 1300, 6), np.arange(1300, 1330, 3)]  # class 3: none kept
    fig = plot_labels(labels, rows, tmp_path / "labels.png", "hkmeans [simclr features] · seed 2")
    assert _is_png(tmp_path / "labels.png")
    shares, frac = fig.axes[:2]
    assert shares.get_yscale() == frac.get_yscale() == "log"
    # Largest class first: the tail is on the right, and readable on the log axis (its share 5/1335 is above
    # the axis' bottom).
    assert [t.get_text().split("\n")[0] for t in frac.get_xticklabels()] == ["0", "1", "2", "3"]
    assert shares.get_ylim()[0] < 5 / labels.size
    kept = frac.lines[0].get_ydata()
    np.testing.assert_allclose(kept[:3], [0.1, 50 / 300, 10 / 30])
    assert np.isnan(kept[3])  # nothing kept of class 3: marked ▼ at the bottom instead
    assert "hkmeans [simclr features] · seed 2" in fig._suptitle.get_text()


def test_every_diagnostics_title_names_the_curation_the_space_and_the_seed(tmp_path: Path,
                                                                           saved_figures: dict[str, Any]) -> None:
    from workflow.curate.diagnostics import write_diagnostics

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [200, 50, 10])
    x = rng.normal(size=(labels.size, 6)) + 4 * np.eye(6)[labels]
    leakage = {"flagged": 2, "threshold": 0.98, "near_space": "simclr", "decontaminated": False,
               "per_class": {"0": {"exact": 1, "near": 1}}}
    folder = tmp_path / "curate" / "hk_mine" / "seed3" / "diagnostics"  # the workflow's layout names the curation
    written = write_diagnostics(folder, x, np.arange(0, labels.size, 4), labels, [np.array([100, 80, 80])], 3,
                                method="hkmeans", space="simclr", leakage=leakage)
    names = sorted(Path(p).name for p in written)
    assert names == ["cluster_sizes.png", "labels.png", "leakage.png", "map.png"]
    for name in names:
        fig = saved_figures[name]
        assert "hk_mine [simclr features] · seed 3" in _titles(fig), name
    # `random` uses no features, and an explicit name wins over the folder layout.
    write_diagnostics(tmp_path / "d", x, np.arange(50), labels, None, 0, method="random", space="raw",
                      curation="random")
    assert "random [uniform, no features] · seed 0" in _titles(saved_figures["labels.png"])


def test_loss_overlay_has_a_panel_per_seed_and_one_of_all(tmp_path: Path, figures: list[Any]) -> None:
    runs = [Panel(c, space, _history(tmp_path / f"{c}{s}.parquet", scale), seed=s)
            for c, space, scale in (("hkmeans", HK_SPACE, 1.1), ("random", "uniform, no features", 1.0))
            for s in (0, 1, 2)]
    runs.append(Panel("none", "whole pool, no features", _history(tmp_path / "n.parquet", 2.0), seed=0))  # ignored
    out = tmp_path / "losses.png"
    seeds = plot_loss_overlay(runs, "hkmeans", "random", str(out), "hkmeans vs random · simclr · tiny")
    assert seeds == [0, 1, 2] and _is_png(out)
    fig = figures[-1]
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["seed 0", "seed 1", "seed 2", "all 3 seeds: mean, band = min–max"]
    assert all(len(ax.get_lines()) == 2 for ax in fig.axes[:4])  # curated and reference, overlaid
    text = _titles(fig)
    for needed in ("hkmeans", "random", HK_SPACE, "uniform, no features", "seeds 0, 1, 2"):
        assert needed in text, needed


def test_loss_overlay_needs_a_common_seed(tmp_path: Path) -> None:
    from workflow.errors import StrataError

    runs = [Panel("hkmeans", HK_SPACE, _history(tmp_path / "h.parquet", 1.0), seed=0),
            Panel("random", "uniform", _history(tmp_path / "r.parquet", 1.0), seed=1)]
    with pytest.raises(StrataError, match="no seed has both"):
        plot_loss_overlay(runs, "hkmeans", "random", str(tmp_path / "x.png"), "t")


def test_embedding_panels_put_every_curation_of_a_seed_side_by_side(tmp_path: Path, figures: list[Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"metrics": {"knn_accuracy": 0.75}}))
    panels = [Panel("random", "uniform, no features", _map(tmp_path, "r", 1), metrics=str(metrics)),
              Panel("hkmeans", HK_SPACE, _map(tmp_path, "h", 2))]
    out = tmp_path / "emb.png"
    import workflow.figures

    def no_tsne(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("compare-embeddings ran t-SNE again")

    monkeypatch.setattr(workflow.figures, "embedding_map", no_tsne)  # the panels are the saved maps
    trust = plot_embedding_panels(panels, str(out), 0, "tiny · simclr · seed 0", "knn_accuracy")
    assert set(trust) == {"random", "hkmeans"} and _is_png(out)
    assert trust["hkmeans"] == read_map(panels[1].path)[2]
    fig = figures[-1]
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0].startswith("random · seed 0\n[uniform, no features]") and "knn_accuracy 0.750" in titles[0]
    assert titles[1].startswith(f"hkmeans · seed 0\n[{HK_SPACE}]")
    assert "seed 0" in fig._suptitle.get_text()


def test_the_subcommands_parse_and_draw(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, func: Any, help_text: str, outputs: list[str], params: bool = True) -> Any:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func, outputs=outputs)
        p.add_argument("--tracking")
        return p

    compare_figures.add_commands(stage)
    pool = {"0": 50, "1": 5}
    stats = _stats(tmp_path / "s.json", pool, {"0": 5, "1": 5})
    args = parser.parse_args(["kept-per-class", "--output", str(tmp_path / "k.png"), "--title", "t",
                              "--curation", "hkmeans", HK_SPACE, stats])
    args.func(args)
    runs = [arg for c in ("hkmeans", "random") for s in (0, 1)
            for arg in ("--run", c, "space", str(s), _history(tmp_path / f"{c}{s}.parquet", 1.0))]
    args = parser.parse_args(["compare-losses", "--output", str(tmp_path / "l.png"), "--treatment", "hkmeans",
                              "--control", "random", *runs])
    args.func(args)
    args = parser.parse_args(["compare-embeddings", "--output", str(tmp_path / "e.png"), "--seed", "0",
                              "--panel", "hkmeans", HK_SPACE, _map(tmp_path, "e", 0), "-"])
    args.func(args)
    assert all(_is_png(tmp_path / f"{n}.png") for n in "kle")


def test_strata_has_the_comparative_subcommands() -> None:
    from workflow.cli import build_parser

    help_text = build_parser().format_help()
    for name in ("compare-embeddings", "compare-losses", "kept-per-class"):
        assert name in help_text, name


def test_forest_and_metric_plots_name_the_feature_spaces_and_seeds(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from workflow import summary_figures
    from workflow.summarize import summarize, variant_record

    saved: dict[str, Any] = {}
    monkeypatch.setattr(summary_figures, "_save", lambda fig, path: saved.__setitem__(Path(path).name, fig))
    paths = []
    for i, (curation, seed, knn) in enumerate([("random", 0, 0.50), ("random", 1, 0.55), ("random", 2, 0.47),
                                               ("hkmeans", 0, 0.58), ("hkmeans", 1, 0.57), ("hkmeans", 2, 0.55)]):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(variant_record("d", curation, "simclr", seed, {"knn_accuracy": knn})))
        paths.append(str(path))
    curations = {"random": {"method": "random", "target_size": 10},
                 "hkmeans": {"method": "hkmeans", "target_size": 10, "features": "simclr", "features_seed": 0}}
    summarize(paths, str(tmp_path / "s.csv"), str(tmp_path / "s.md"), png_path=str(tmp_path / "summary.png"),
              summary={"baseline": "random"}, curations=curations, verdict_path=str(tmp_path / "verdict.json"),
              forest_path=str(tmp_path / "forest.png"))
    fixed = "hkmeans [simclr features, encoder seed 0 for every seed]"
    for name in ("forest.png", "summary.png"):
        title = saved[name]._suptitle.get_text()
        assert fixed in title and "random [uniform, no features]" in title, (name, title)
    assert "over 3 seeds" in saved["forest.png"]._suptitle.get_text()
    assert "Seeds 0, 1, 2" in saved["summary.png"]._suptitle.get_text()


def test_forest_rows_name_their_ssl_method_when_the_study_has_several(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from workflow import summary_figures
    from workflow.summarize import summarize, variant_record

    saved: dict[str, Any] = {}
    monkeypatch.setattr(summary_figures, "_save", lambda fig, path: saved.__setitem__(Path(path).name, fig))
    paths = []
    for i, (ssl, curation, seed) in enumerate(itertools.product(["simclr", "byol"], ["random", "hkmeans"], [0, 1, 2])):
        path = tmp_path / f"{i}.json"
        knn = 0.5 + 0.01 * seed + (0.03 if curation == "hkmeans" else 0.0) + (0.1 if ssl == "byol" else 0.0)
        path.write_text(json.dumps(variant_record("d", curation, ssl, seed, {"knn_accuracy": knn})))
        paths.append(str(path))
    summarize(paths, str(tmp_path / "s.csv"), str(tmp_path / "s.md"), summary={"baseline": "random"},
              verdict_path=str(tmp_path / "verdict.json"), forest_path=str(tmp_path / "forest.png"))
    right = saved["forest.png"].axes[1]
    labels = [t.get_text() for t in right.get_yticklabels()]
    assert "knn_accuracy  [hkmeans · byol]" in labels and "knn_accuracy  [hkmeans · simclr]" in labels
    assert "aggregate, bootstrap CI  [hkmeans · byol]" in labels


# ---- the report's layout ----------------------------------------------------------------------------------------

def test_categories_sort_in_stage_order() -> None:
    names = list(CATEGORY.values())
    assert sorted(names) == names  # the report's menu sorts categories by name
    assert [n.split(" · ")[1] for n in names] == ["Verdict", "Curation", "Pretraining", "Embeddings", "Evaluation"]
    # In the verdict category, items sort by their first label: the forest plot first.
    verdict_items = sorted(STUDY_ITEMS[n][0] for n in ("forest.png", "curve.png", "verdict.json"))
    assert verdict_items[0] == STUDY_ITEMS["forest.png"][0]
    # Comparisons ("All ...") sort before the per-variant rows; per-variant rows name the curation and the seed.
    assert all(item.casefold() > "all ~" for item, _ in DIAGNOSTICS.values())
    labels = diagnostics_labels("labels", "hkmeans", 1)
    assert labels == {"item": "Label histogram — pool vs selection", "curation": "hkmeans", "seed": "1"}
    # Short labels: the report's menu widens to its longest row, the figure beside it gets the rest.
    assert max(len(" ".join(labels.values())) for labels in map(study_labels, STUDY_ITEMS)) <= 60
    # Study and comparison rows carry `item` only: a label missing from a row never becomes a toggle, and a
    # toggle over rows that do not pair up leaves the report's page blank.
    assert list(study_labels("forest.png")) == ["item"]
    assert list(comparison_labels("All seeds: loss, hkmeans vs random", "curves apart")) == ["item"]


def test_every_report_item_is_labelled_in_a_stage_category() -> None:
    text = "".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    items = re.findall(r"report\((.*?)\n        \)", text, flags=re.S)
    assert len(items) >= 10
    for item in items:
        assert "labels=" in item and 'category=CATEGORY["' in item, item[:200]


def test_first_page_holds_the_verdict_and_the_forest_plot(tmp_path: Path) -> None:
    assert "No verdict yet" in first_page_rst(tmp_path)
    verdict = {"primary": "knn_accuracy", "baseline": "random", "rope": 0.01, "n_seeds": 3, "confidence": 0.95,
               "comparisons": [{"dataset": "d", "ssl": "simclr", "curation": "hkmeans", "baseline": "random",
                                "diff_mean": 0.02, "ci_low": 0.01, "ci_high": 0.03, "p_value": 0.01,
                                "prob_improvement": 1.0, "verdict": "better"}]}
    (tmp_path / "verdict.json").write_text(json.dumps(verdict))
    png = b"\x89PNG" + bytes(range(256)) * 200  # a plot's size: its data URI is longer than a docutils line
    (tmp_path / "forest.png").write_bytes(png)
    rst = first_page_rst(tmp_path)
    assert rst.startswith("**Verdict on knn_accuracy") and "hkmeans vs random" in rst
    assert ".. image:: data:image/png;base64," in rst and ":alt: Forest plot of paired differences" in rst
    from docutils.core import publish_parts

    html = publish_parts(rst, writer="html", settings_overrides={"halt_level": 2})["html_body"]
    assert "System Message" not in html
    uri = re.search(r'<img alt="Forest plot of paired differences" src="([^"]+)"', html).group(1)
    assert uri == "data:image/png;base64," + base64.b64encode(png).decode()


# ---- the workflow ------------------------------------------------------------------------------------------------

def _dry_run(workdir: Path, config: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "-n", "--configfile", str(config)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _job_counts(out: str) -> dict[str, int]:
    table = out[out.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def test_dry_run_shows_the_comparative_rules_and_follows_report_figures(tmp_path: Path) -> None:
    config = REPO / "configs" / "test.yaml"
    counts = _job_counts(_dry_run(tmp_path / "on", config))
    # tiny: 3 curations (none, random, hkmeans) x 2 seeds; random is the baseline.
    assert counts["compare_embeddings"] == 2  # one per seed
    assert counts["compare_losses"] == 2  # none vs random, hkmeans vs random
    assert counts["kept_per_class"] == 2  # one per seed
    assert counts["plot_embeddings"] == counts["plot_training"] == 6
    study = yaml.safe_load(config.read_text())
    study["report"] = {"figures": False}
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump(study))
    counts = _job_counts(_dry_run(tmp_path / "off", off))
    assert "compare_embeddings" not in counts and "plot_embeddings" not in counts and "plot_training" not in counts
    assert counts["compare_losses"] == 2 and counts["kept_per_class"] == 2  # cheap: small files only
