"""The pre-registered verdict, the paired statistics behind it, the size sweep and the README generator.

Every statistic is checked against an independent computation (hand arithmetic, scipy.stats, a plain loop).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from workflow.comparisons import CurvePoint, check_summary, curve_points, references
from workflow.config import check_study, load_yaml
from workflow.effects import bootstrap_aggregate, paired_difference, prob_improvement
from workflow.errors import StrataError
from workflow.summarize import log_summary_to_mlflow, summarize, summary_stats, variant_record
from workflow.verdict import VERDICTS, build_verdict, classify, read_verdict, verdict_lines, write_verdict

REPO = Path(__file__).resolve().parent.parent
METRICS = ["knn_accuracy", "linear_accuracy", "cluster_ari"]
CONTRACT = {"dataset", "ssl", "curation", "diff_mean", "ci_low", "ci_high", "p_value", "prob_improvement", "verdict"}


def _frame(values: dict[str, list[tuple[float, float, float]]], dataset: str = "d") -> pd.DataFrame:
    """Per-variant frame: curation → one (knn, linear, ari) triple per seed 0..n−1."""
    rows = [(c, s, v) for c, per_seed in values.items() for s, v in enumerate(per_seed)]
    return pd.DataFrame([{"dataset": dataset, "ssl": "s", "curation": c, "seed": s,
                          **dict(zip(METRICS, v, strict=True))}
                         for c, s, v in rows])


STUDY = _frame({
    "random": [(0.60, 0.70, 0.10), (0.62, 0.71, 0.12), (0.58, 0.69, 0.09), (0.61, 0.70, 0.11)],
    "hkmeans": [(0.63, 0.72, 0.11), (0.64, 0.71, 0.13), (0.62, 0.70, 0.10), (0.64, 0.73, 0.12)],
    "none": [(0.59, 0.70, 0.10), (0.63, 0.70, 0.12), (0.58, 0.69, 0.08), (0.61, 0.71, 0.11)],
})


# ------------------------------------------------------------------------------------------------ verdict rules


@pytest.mark.parametrize(("lo", "hi", "rope", "expected"), [
    (0.001, 0.05, 0.01, "better"),          # above 0
    (0.002, 0.004, 0.01, "better"),         # above 0 and inside the rope: resolved, small (better wins)
    (-0.05, -0.001, 0.01, "worse"),         # below 0
    (-0.004, -0.002, 0.01, "worse"),
    (-0.008, 0.009, 0.01, "equivalent"),    # inside ±rope, crossing 0
    (-0.01, 0.01, 0.01, "equivalent"),      # the bounds count as inside
    (0.0, 0.0, 0.0, "equivalent"),          # a degenerate interval at 0 with no rope
    (-0.02, 0.03, 0.01, "unresolved"),      # crosses 0 and leaves the rope
    (0.0, 0.05, 0.01, "unresolved"),        # touches 0: not above it
    (math.nan, math.nan, 0.01, "unresolved"),  # one seed: no interval
])
def test_classify_every_branch(lo, hi, rope, expected):
    assert classify(lo, hi, rope) == expected
    assert expected in VERDICTS


def test_paired_difference_against_scipy_and_hand():
    x = pd.Series([0.63, 0.64, 0.62, 0.64])
    b = pd.Series([0.60, 0.62, 0.58, 0.61])
    d = x - b  # 0.03, 0.02, 0.04, 0.03: mean 0.03, sd sqrt(0.0002/3)
    out = paired_difference(x, b)
    sd = math.sqrt(((0.0) ** 2 + 0.01 ** 2 + 0.01 ** 2 + 0.0) / 3)
    t975 = 3.182446305284263  # Student t quantile, 3 degrees of freedom (tables)
    assert out["diff_n"] == 4 and out["diff_mean"] == pytest.approx(0.03)
    assert out["diff_sd"] == pytest.approx(sd)
    assert out["diff_ci95_low"] == pytest.approx(0.03 - t975 * sd / 2, rel=1e-9)
    lo, hi = sps.t.interval(0.95, 3, loc=d.mean(), scale=sps.sem(d))
    assert (out["diff_ci95_low"], out["diff_ci95_high"]) == pytest.approx((lo, hi), rel=1e-10)
    assert out["p_value"] == pytest.approx(sps.ttest_rel(x, b).pvalue)
    assert out["prob_improvement"] == 1.0
    assert paired_difference(x, None)["diff_n"] == 0


def test_prob_improvement_counts_ties_half():
    assert prob_improvement([0.1, -0.2, 0.0, 0.3]) == pytest.approx((2 + 0.5) / 4)
    assert prob_improvement([0.0, 0.0]) == 0.5
    assert prob_improvement([-1.0, np.nan]) == 0.0
    assert math.isnan(prob_improvement([np.nan]))


def test_bootstrap_aggregate_against_a_plain_loop():
    agg = bootstrap_aggregate(STUDY, "hkmeans", "random", METRICS, n_resamples=500, seed=7)
    # Independent: loop over resamples drawn from the same generator, same seeds for every metric.
    piv = {c: STUDY[STUDY["curation"] == c].set_index("seed")[METRICS] for c in ("hkmeans", "random")}
    seeds = np.array(sorted(piv["random"].index))

    def rel(sample):
        xs, bs = piv["hkmeans"].loc[sample], piv["random"].loc[sample]
        return float(np.mean([(xs[m].mean() - bs[m].mean()) / abs(bs[m].mean()) for m in METRICS]))

    draws = np.random.default_rng(7).integers(0, len(seeds), size=(500, len(seeds)))
    stars = [rel(seeds[row]) for row in draws]
    assert agg["mean"] == pytest.approx(rel(seeds), rel=1e-12)
    assert (agg["ci_low"], agg["ci_high"]) == pytest.approx(tuple(np.percentile(stars, [2.5, 97.5])), rel=1e-12)
    assert agg["n_units"] == 3 and agg["n_seeds"] == 4 and agg["n_resamples"] == 500 and agg["seed"] == 7
    # Seeded: the same call gives the same interval; another seed another one.
    assert bootstrap_aggregate(STUDY, "hkmeans", "random", METRICS, n_resamples=500, seed=7) == agg
    assert bootstrap_aggregate(STUDY, "hkmeans", "random", METRICS, n_resamples=500, seed=8)["ci_low"] != agg["ci_low"]


def test_bootstrap_aggregate_one_seed_has_no_interval():
    one = STUDY[STUDY["seed"] == 0]
    agg = bootstrap_aggregate(one, "hkmeans", "random", METRICS)
    assert agg["n_seeds"] == 1 and math.isfinite(agg["mean"]) and math.isnan(agg["ci_low"])


# ------------------------------------------------------------------------------------------------ verdict.json


def test_verdict_contract_and_values(tmp_path):
    refs = {"hkmeans": "random", "none": "random"}
    v = build_verdict(STUDY, "knn_accuracy", "random", 0.01, refs, METRICS)
    assert (v["primary"], v["baseline"], v["rope"], v["n_seeds"]) == ("knn_accuracy", "random", 0.01, 4)
    by = {c["curation"]: c for c in v["comparisons"]}
    assert set(by) == {"hkmeans", "none"} and all(CONTRACT <= set(c) for c in v["comparisons"])
    hk = by["hkmeans"]
    d = np.array([0.03, 0.02, 0.04, 0.03])
    lo, hi = sps.t.interval(0.95, 3, loc=d.mean(), scale=sps.sem(d))
    assert (hk["ci_low"], hk["ci_high"]) == pytest.approx((lo, hi)) and hk["verdict"] == "better"
    assert hk["sd"] == pytest.approx(np.std([0.63, 0.64, 0.62, 0.64], ddof=1))
    assert hk["baseline_sd"] == pytest.approx(np.std([0.60, 0.62, 0.58, 0.61], ddof=1))
    assert by["none"]["prob_improvement"] == pytest.approx((1 + 0.5 * 2) / 4)  # d = −.01, +.01, 0, 0: one win, 2 ties
    # none − random: d = (−0.01, +0.01, 0, 0), interval 0 ± 3.1824·0.008165/2 = ±0.0130: leaves ±0.01, inside ±0.02.
    assert by["none"]["verdict"] == "unresolved"
    wide = build_verdict(STUDY, "knn_accuracy", "random", 0.02, refs, METRICS)
    assert {c["curation"]: c["verdict"] for c in wide["comparisons"]}["none"] == "equivalent"
    path = tmp_path / "verdict.json"
    write_verdict(v, str(path))
    assert read_verdict(path) == json.loads(json.dumps(v))
    text = "\n".join(verdict_lines(v))
    assert "hkmeans vs random" in text and "BETTER" in text and max(map(len, text.splitlines())) <= 110


def test_pooled_over_ssl_methods_against_a_plain_loop():
    """Per seed the mean over methods of curated − reference, over the seeds every method has; frozen left out."""
    second = STUDY.assign(ssl="t", knn_accuracy=STUDY["knn_accuracy"] + 0.01 * STUDY["seed"] * (STUDY["curation"]
                                                                                                 == "hkmeans"))
    second = second[second["seed"] != 3]  # t lacks seed 3: pooled over seeds 0-2
    frozen = STUDY.assign(ssl="f", knn_accuracy=0.99)
    df = pd.concat([STUDY, second, frozen], ignore_index=True)
    v = build_verdict(df, "knn_accuracy", "random", 0.01, {"hkmeans": "random"}, METRICS, frozen={"f"})
    assert len(v["comparisons"]) == 2 and len(v["pooled"]) == 1  # s and t; f has none
    pooled = v["pooled"][0]
    d = []
    for seed in range(3):
        per_method = []
        for ssl in ("s", "t"):
            at = df[(df["ssl"] == ssl) & (df["seed"] == seed)].set_index("curation")["knn_accuracy"]
            per_method.append(at["hkmeans"] - at["random"])
        d.append(sum(per_method) / 2)
    test = sps.ttest_1samp(d, 0.0)
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean(d), scale=sps.sem(d))
    assert pooled["ssl_entries"] == ["s", "t"] and pooled["ssl"] == "mean of 2 SSL entries" and pooled["n"] == 3
    assert (pooled["diff_mean"], pooled["ci_low"], pooled["ci_high"]) == pytest.approx((np.mean(d), lo, hi))
    assert pooled["p_value"] == pytest.approx(test.pvalue)
    assert pooled["verdict"] == classify(lo, hi, 0.01)
    assert any(line.startswith("  pooled: hkmeans vs random") for line in verdict_lines(v))
    assert build_verdict(STUDY, "knn_accuracy", "random", 0.01, {"hkmeans": "random"}, METRICS)["pooled"] == []


def test_verdict_undefined_numbers_are_null(tmp_path):
    one = STUDY[STUDY["seed"] == 0]
    v = build_verdict(one, "knn_accuracy", "random", 0.01, {"hkmeans": "random"}, METRICS)
    c = v["comparisons"][0]
    assert c["ci_low"] is None and c["p_value"] is None and c["verdict"] == "unresolved"
    write_verdict(v, str(tmp_path / "v.json"))  # strict JSON: would raise on NaN
    assert "NaN" not in (tmp_path / "v.json").read_text()


def test_primary_metric_missing_names_the_key():
    with pytest.raises(StrataError, match=r"summary\.primary"):
        build_verdict(STUDY, "map_at_r", "random", 0.01, {"hkmeans": "random"}, METRICS)


# ------------------------------------------------------------------------------------------------ config + sweep

SWEEP = {"random_10": {"method": "random", "target_size": 10}, "hk_10": {"method": "hkmeans", "target_size": 10},
         "random_20": {"method": "random", "target_size": 20}, "hk_20": {"method": "hkmeans", "target_size": 20},
         "none": {"method": "none"}}
CURVE = {"treatment": "hkmeans", "control": "random"}


def test_curve_pairs_by_target_size():
    assert curve_points(SWEEP, CURVE) == [CurvePoint(10, "hk_10", "random_10"), CurvePoint(20, "hk_20", "random_20")]
    assert references(SWEEP, "random_20", CURVE) == {"hk_10": "random_10", "hk_20": "random_20", "none": "random_20"}
    assert references(SWEEP, "random_20") == {k: "random_20" for k in SWEEP if k != "random_20"}


@pytest.mark.parametrize(("change", "message"), [
    ({"hk_b": {"method": "hkmeans", "target_size": 10}}, "ambiguous"),
    ({"hk_30": {"method": "hkmeans", "target_size": 30}}, r"target sizes \[30\]"),
])
def test_curve_config_errors_name_the_key(change, message):
    with pytest.raises(StrataError, match=message) as err:
        curve_points({**SWEEP, **change}, CURVE, "my.yaml")
    assert "my.yaml: summary.curve" in str(err.value) and "Fix:" in str(err.value)


def test_study_configs_are_valid_and_bad_primary_is_rejected():
    for name in ("default", "test", "curve"):
        config = check_study(load_yaml(REPO / "configs" / f"{name}.yaml"), name)
        assert {"primary", "rope", "baseline"} <= set(config["summary"])
    curve = check_study(load_yaml(REPO / "configs" / "curve.yaml"))
    sizes = [p.size for p in curve_points(curve["curations"], curve["summary"]["curve"])]
    assert len(sizes) >= 4 and sizes[0] <= 0.06 * 2728 and sizes[-1] >= 0.45 * 2728
    bad = load_yaml(REPO / "configs" / "test.yaml")
    bad["summary"]["primary"] = "knn_acc"
    with pytest.raises(StrataError, match=r"summary\.primary"):
        check_study(bad, "bad.yaml")
    bad["summary"].update(primary="knn_accuracy", rope=-1)
    with pytest.raises(StrataError, match=r"summary\.rope"):
        check_study(bad, "bad.yaml")
    check_summary({"curations": SWEEP, "summary": {"primary": "recall_at_5", "curve": CURVE}})


# ------------------------------------------------------------------------------------------------ files + MLflow


def _write(tmp_path: Path, df: pd.DataFrame, pool: int = 100) -> list[str]:
    paths = []
    for i, row in df.iterrows():
        path = tmp_path / "metrics" / f"{i}.json"
        path.parent.mkdir(exist_ok=True)
        record = variant_record(row["dataset"], row["curation"], row["ssl"], int(row["seed"]),
                                {m: float(row[m]) for m in METRICS}, {"curation": {"pool_size": pool}})
        path.write_text(json.dumps(record))
        paths.append(str(path))
    return paths


def test_summarize_writes_verdict_forest_and_curve(tmp_path):
    frames = []
    for size, shift in ((10, 0.03), (20, 0.0)):
        for method, s in (("random", 0.0), ("hkmeans", shift)):
            f = STUDY[STUDY["curation"] == "random"].copy()
            f["curation"] = f"{'hk' if method == 'hkmeans' else 'random'}_{size}"
            f[METRICS] = f[METRICS] + s
            frames.append(f)
    out = tmp_path / "r"
    out.mkdir()
    summary = {"baseline": "random_20", "primary": "knn_accuracy", "rope": 0.01, "curve": CURVE}
    sweep = {k: v for k, v in SWEEP.items() if k != "none"}
    summarize(_write(tmp_path, pd.concat(frames, ignore_index=True)), str(out / "summary.csv"), str(out / "summary.md"),
              png_path=str(out / "summary.png"), summary=summary, curations=sweep, verdict_path=str(out / "v.json"),
              forest_path=str(out / "forest.png"), curve_md=str(out / "curve.md"), curve_png=str(out / "curve.png"))
    for name in ("summary.png", "forest.png", "curve.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    v = read_verdict(out / "v.json")
    assert [(c["curation"], c["baseline"], c["size"], c["verdict"]) for c in v["comparisons"]] == [
        ("hk_10", "random_10", 10, "better"), ("hk_20", "random_20", 20, "equivalent")]
    curve = (out / "curve.md").read_text()
    assert "| d · s | 10 | 10 | 4 |" in curve and "+0.030 [+0.030, +0.030]" in curve
    assert (out / "summary.md").read_text().startswith("# Strata study summary\n\n```\nVerdict on knn_accuracy")
    stats = pd.read_csv(out / "summary_stats.csv").set_index(["curation", "metric"])
    assert stats.loc[("hk_10", "knn_accuracy"), "baseline"] == "random_10"
    assert stats.loc[("hk_10", "knn_accuracy"), "prob_improvement"] == 1.0
    with pytest.raises(StrataError, match=r"summary\.curve"):
        summarize(_write(tmp_path, STUDY), str(out / "s.csv"), str(out / "s.md"), curve_md=str(out / "c.md"))


def test_verdict_is_the_mlflow_study_description(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).create_experiment("study-v", artifact_location=(tmp_path / "artifacts").as_uri())
    v = build_verdict(STUDY, "knn_accuracy", "random", 0.01, {"hkmeans": "random"}, METRICS)
    from workflow.verdict import verdict_markdown

    log_summary_to_mlflow(uri, "study-v", summary_stats(STUDY), [], note=verdict_markdown(v))
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("study-v")
    run = client.search_runs([exp.experiment_id], filter_string="tags.`strata.kind` = 'study'")[0]
    assert "hkmeans vs random" in run.data.tags["mlflow.note.content"]
    assert "BETTER" in run.data.tags["mlflow.note.content"]
    assert run.data.metrics["hkmeans.knn_accuracy.prob_improvement"] == 1.0


def test_make_run_prints_the_verdict(tmp_path):
    write_verdict(build_verdict(STUDY, "knn_accuracy", "random", 0.01, {"hkmeans": "random"}, METRICS),
                  str(tmp_path / "verdict.json"))
    out = subprocess.run([sys.executable, "-m", "workflow.verdict", str(tmp_path / "verdict.json")], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("Verdict on knn_accuracy") and len(out.splitlines()) == 3
    noisy = STUDY.copy()  # hkmeans behind on two seeds, ahead on two: the interval crosses 0 and ±rope
    noisy.loc[(noisy["curation"] == "hkmeans") & (noisy["seed"] < 2), "knn_accuracy"] -= 0.06
    write_verdict(build_verdict(noisy, "knn_accuracy", "random", 0.01, {"hkmeans": "random"}, METRICS),
                  str(tmp_path / "verdict.json"))
    out = subprocess.run([sys.executable, "-m", "workflow.verdict", str(tmp_path / "verdict.json")], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "UNRESOLVED" in out and f"python -m workflow.power {tmp_path / 'verdict.json'} --effect" in out
    missing = subprocess.run([sys.executable, "-m", "workflow.verdict", str(tmp_path / "nope.json")], cwd=REPO,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "make run" in missing.stderr


def _summarized(tmp_path: Path, name: str) -> Path:
    """A results folder holding a summarised study (summary, verdict and forest plot), not stamped yet."""
    results = tmp_path / name
    results.mkdir()
    summarize(_write(tmp_path, STUDY), str(results / "summary.csv"), str(results / "summary.md"),
              summary={"baseline": "random", "primary": "knn_accuracy", "rope": 0.01},
              verdict_path=str(results / "verdict.json"), forest_path=str(results / "forest.png"))
    return results


def test_readme_results_regenerates_the_block(tmp_path):
    results = _summarized(tmp_path, "results")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- verdict:start -->\nold verdict\n<!-- verdict:end -->\n"
                      "<!-- results:start -->\nstale numbers\n<!-- results:end -->\nafter\n")
    script = [sys.executable, str(REPO / "docs" / "readme_results.py"), "--results", str(results)]
    missing = subprocess.run([*script, "--readme", str(readme)], capture_output=True, text=True)
    assert missing.returncode == 2 and "run.json" in missing.stderr  # results not made by `make run`
    for stamp in ("start", "end"):
        subprocess.run([*script, "--stamp", stamp], check=True)
    subprocess.run([*script, "--readme", str(readme), "--images", str(tmp_path / "img")], check=True)
    text = readme.read_text()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert "stale numbers" not in text and text.startswith("intro\n") and text.endswith("<!-- results:end -->\nafter\n")
    assert f"`{commit[:12]}" in text and "logical cores" in text and "wall" in text
    assert "| hkmeans − random | d · s |" in text and "**better**" in text and "| d · s | none | 4 |" in text
    assert (tmp_path / "img" / "default_study_forest.png").is_file()
    assert "old verdict" not in text and "hkmeans vs random (d · s): **better**" in text  # the first screen's line


def test_readme_results_confirmatory_and_methods_blocks(tmp_path):
    # make confirm's and make methods' blocks have the default study's layout; the first screen's line then
    # states the confirmatory verdict; the methods block adds the pooled row.
    script = [sys.executable, str(REPO / "docs" / "readme_results.py")]
    two_methods = pd.concat([STUDY, STUDY.assign(ssl="t")], ignore_index=True)
    folders = {}
    for name, frame in (("pilot", STUDY), ("confirm", STUDY), ("methods", two_methods)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        summarize(_write(tmp_path / name, frame), str(folders[name] / "summary.csv"),
                  str(folders[name] / "summary.md"),
                  summary={"baseline": "random", "primary": "knn_accuracy", "rope": 0.01},
                  verdict_path=str(folders[name] / "verdict.json"), forest_path=str(folders[name] / "forest.png"))
        for stamp in ("start", "end"):
            subprocess.run([*script, "--results", str(folders[name]), "--stamp", stamp], check=True)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- verdict:start -->\nold\n<!-- verdict:end -->\n<!-- results:start -->\nold pilot\n"
                      "<!-- results:end -->\n<!-- confirm:start -->\nold confirm\n<!-- confirm:end -->\n"
                      "<!-- methods:start -->\nold methods\n<!-- methods:end -->\n")
    subprocess.run([*script, "--readme", str(readme), "--results", str(folders["pilot"]), "--confirm",
                    str(folders["confirm"]), "--methods", str(folders["methods"]), "--images", str(tmp_path / "img")],
                   check=True)
    text = readme.read_text()
    assert "old" not in text and text.count("| hkmeans − random | d · s |") == 3
    assert "| hkmeans − random | d · t |" in text and "| hkmeans − random, pooled | d · mean of 2 SSL entries |" in text
    for command in ("make run", "make confirm", "make methods"):
        assert f"from `{command}` at commit" in text
    assert "Current verdict of the confirmatory study" in text and "(#the-confirmatory-study)" in text
    assert "docs/images/confirm_forest.png" in text and "docs/images/methods_forest.png" in text
    assert {p.name for p in (tmp_path / "img").iterdir()} == {"confirm_forest.png", "default_study_forest.png",
                                                               "methods_forest.png"}


def test_a_new_pilot_keeps_the_confirmatory_verdict_line(tmp_path):
    # The first screen states the confirmatory verdict once a confirmatory block is in the README; regenerating
    # the pilot's block alone (make run on another machine, say) rewrites that block and leaves the line.
    results = _summarized(tmp_path, "pilot")
    script = [sys.executable, str(REPO / "docs" / "readme_results.py"), "--results", str(results)]
    for stamp in ("start", "end"):
        subprocess.run([*script, "--stamp", stamp], check=True)
    readme = tmp_path / "README.md"
    confirm = "<!-- confirm:start -->\nGenerated by `make readme-results` from `make confirm`\n<!-- confirm:end -->\n"
    readme.write_text("<!-- verdict:start -->\nconfirmatory line\n<!-- verdict:end -->\n<!-- results:start -->\n"
                      "old pilot\n<!-- results:end -->\n" + confirm)
    subprocess.run([*script, "--readme", str(readme), "--images", str(tmp_path / "img")], check=True)
    text = readme.read_text()
    assert "confirmatory line" in text and "old pilot" not in text and text.endswith(confirm)
    assert "| hkmeans − random | d · s |" in text
    # a confirm block that was never generated is no answer yet: the pilot's verdict takes the line
    readme.write_text("<!-- verdict:start -->\nold line\n<!-- verdict:end -->\n<!-- results:start -->\nold pilot\n"
                      "<!-- results:end -->\n<!-- confirm:start -->\nNot generated yet\n<!-- confirm:end -->\n")
    subprocess.run([*script, "--readme", str(readme), "--images", str(tmp_path / "img")], check=True)
    text = readme.read_text()
    assert "old line" not in text and "Current verdict of the default study" in text and "Not generated yet" in text


def test_readme_results_writes_the_curve_block_alone_and_keeps_the_others(tmp_path):
    curve = tmp_path / "curve"
    curve.mkdir()
    script = [sys.executable, str(REPO / "docs" / "readme_results.py")]
    for stamp in ("start", "end"):
        subprocess.run([*script, "--results", str(curve), "--stamp", stamp], check=True)
    (curve / "curve.md").write_text("# By how much\n\n| size | Δ |\n|---|---|\n| 136 | -0.033 |\n")
    (curve / "curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    readme = tmp_path / "README.md"
    before = ("<!-- verdict:start -->\nkept verdict\n<!-- verdict:end -->\n<!-- results:start -->\nkept numbers\n"
              "<!-- results:end -->\n<!-- curve:start -->\nNot generated yet\n<!-- curve:end -->\n")
    readme.write_text(before)
    nothing = subprocess.run([*script, "--readme", str(readme)], capture_output=True, text=True)
    assert nothing.returncode == 2 and "make run" in nothing.stderr and "make curve" in nothing.stderr
    assert readme.read_text() == before
    subprocess.run([*script, "--readme", str(readme), "--curve", str(curve), "--images", str(tmp_path / "img")],
                   check=True)
    text = readme.read_text()
    assert "kept verdict" in text and "kept numbers" in text and "Not generated yet" not in text
    assert "from `make curve` at commit" in text and "| 136 | -0.033 |" in text
    assert (tmp_path / "img" / "curve.png").read_bytes() == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "img" / "default_study_forest.png").exists()


def test_readme_results_replaces_nothing_when_a_picture_or_run_json_is_bad(tmp_path):
    curve = tmp_path / "curve"
    curve.mkdir()
    script = [sys.executable, str(REPO / "docs" / "readme_results.py")]
    subprocess.run([*script, "--results", str(curve), "--stamp", "start"], check=True)
    (curve / "curve.md").write_text("| size | Δ |\n|---|---|\n| 136 | -0.033 |\n")
    readme = tmp_path / "README.md"
    before = "<!-- curve:start -->\nold curve\n<!-- curve:end -->\n"
    readme.write_text(before)
    args = [*script, "--readme", str(readme), "--curve", str(curve), "--images", str(tmp_path / "img")]
    missing = subprocess.run(args, capture_output=True, text=True)  # no curve.png
    assert missing.returncode == 2 and "curve.png" in missing.stderr and "Traceback" not in missing.stderr
    assert readme.read_text() == before and not (tmp_path / "img" / "curve.png").exists()
    (curve / "curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (curve / "run.json").write_text("{not json")
    corrupt = subprocess.run(args, capture_output=True, text=True)
    assert corrupt.returncode == 2 and "Traceback" not in corrupt.stderr and "run.json" in corrupt.stderr
    assert readme.read_text() == before
