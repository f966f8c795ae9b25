"""workflow.power: the paired t-test's power against a simulation, the seeds it asks for, and its CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from workflow import power
from workflow.effects import t_interval


@pytest.mark.parametrize(("effect", "sd", "n"), [(0.03, 0.038, 10), (-0.02, 0.05, 6), (0.01, 0.01, 4)])
def test_power_matches_a_simulated_paired_t_test(effect: float, sd: float, n: int) -> None:
    # Independent computation: draw normal paired differences and count how often scipy's t-test rejects.
    rng = np.random.default_rng(0)
    d = rng.normal(effect, sd, size=(40_000, n))
    rejected = sps.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
    simulated = float(rejected.mean())
    assert abs(power.paired_t_power(effect, sd, n) - simulated) < 0.01  # MC sd <= 0.0025


def test_power_without_an_effect_is_the_test_level() -> None:
    assert power.paired_t_power(0.0, 0.04, 8) == pytest.approx(0.05, abs=1e-9)


def test_seeds_needed_is_the_smallest_n_that_reaches_the_power() -> None:
    n = power.seeds_needed(0.03, 0.038, 0.8)
    assert power.paired_t_power(0.03, 0.038, n) >= 0.8 > power.paired_t_power(0.03, 0.038, n - 1)
    assert power.seeds_needed(0.03, 0.038, 0.9) > n  # more power, more seeds
    assert power.seeds_needed(0.06, 0.038, 0.8) < n  # larger effect, fewer seeds
    with pytest.raises(ValueError):
        power.seeds_needed(0.0, 0.038)
    # Large n: the same smallest-n property where SciPy's nct needs the normal limit.
    big = power.seeds_needed(0.002, 0.038)
    assert power.paired_t_power(0.002, 0.038, big) >= 0.8 > power.paired_t_power(0.002, 0.038, big - 1)
    assert all(0.05 <= power.paired_t_power(0.03, 0.038, n) <= 1 for n in (100, 1000, 5000))


def test_pilot_sd_inverts_the_verdict_interval() -> None:
    diffs = np.array([-0.07, -0.01, -0.03, -0.02, 0.01])
    n, mean, sd, half = t_interval(diffs)
    comparison = {"n": n, "ci_low": mean - half, "ci_high": mean + half}
    assert power.pilot_sd(comparison) == pytest.approx(sd, rel=1e-12)
    assert power.pilot_sd({"n": 1, "ci_low": None, "ci_high": None}) is None
    assert power.t_half_width(sd, n) == pytest.approx(half, rel=1e-12)


def _pilot(tmp_path, **overrides):
    comparison = {"dataset": "mnist1d-lt", "ssl": "simclr", "curation": "hkmeans", "baseline": "random",
                  "n": 4, "ci_low": -0.092, "ci_high": 0.028, **overrides}
    path = tmp_path / "verdict.json"
    path.write_text(json.dumps({"primary": "knn_accuracy", "rope": 0.01, "confidence": 0.95,
                                "comparisons": [comparison]}))
    return path


def test_cli_sizes_the_confirmatory_study_from_the_default_studys_verdict(tmp_path, capsys) -> None:
    # The default study's verdict (README): -0.032 [-0.092, +0.028] over 4 seeds -> configs/confirm.yaml's 15.
    assert power.main([str(_pilot(tmp_path)), "--effect", "0.03"]) == 0
    out = capsys.readouterr().out
    sd = 0.06 * 2 / sps.t.ppf(0.975, 3)
    assert f"sd of the paired difference {sd:.4f} (pilot, 4 seeds) -> 15 seeds give 82% power" in out
    assert f"expected 95% half-width {sps.t.ppf(0.975, 14) * sd / math.sqrt(15):.3f}" in out


def test_cli_plans_with_a_given_sd(tmp_path, capsys) -> None:
    assert power.main([str(_pilot(tmp_path)), "--effect", "0.03", "--sd", "0.02"]) == 0
    assert f"-> {power.seeds_needed(0.03, 0.02)} seeds" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--effect", "0"], ["--effect", "0.03", "--power", "1.5"],
                                  ["--effect", "0.03", "--sd", "-1"]])
def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys, args) -> None:
    assert power.main([str(_pilot(tmp_path)), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("power: error:") and err.count("\n") == 1


def test_cli_names_a_missing_or_malformed_verdict(tmp_path, capsys) -> None:
    assert power.main([str(tmp_path / "absent.json"), "--effect", "0.03"]) == 2
    assert "absent.json" in capsys.readouterr().err
    bad = tmp_path / "verdict.json"
    bad.write_text(json.dumps({"comparisons": [{"n": 4}]}))
    assert power.main([str(bad), "--effect", "0.03"]) == 2
    err = capsys.readouterr().err
    assert "verdict.json" in err and "KeyError: 'curation'" in err and err.count("\n") == 1
    bad.write_text(json.dumps({"comparisons": []}))
    assert power.main([str(bad), "--effect", "0.03"]) == 2
    assert "no comparison" in capsys.readouterr().err


def test_cli_plans_the_pooled_comparison_too(tmp_path, capsys) -> None:
    path = _pilot(tmp_path)
    verdict = json.loads(path.read_text())
    verdict["pooled"] = [{**verdict["comparisons"][0], "ssl": "mean of 7 SSL entries", "n": 4, "ci_low": -0.03,
                          "ci_high": 0.01}]
    path.write_text(json.dumps(verdict))
    assert power.main([str(path), "--effect", "0.03"]) == 0
    pooled = [line for line in capsys.readouterr().out.splitlines() if "pooled:" in line]
    assert len(pooled) == 1 and "(mnist1d-lt · mean of 7 SSL entries)" in pooled[0]
    sd = 0.02 * 2 / sps.t.ppf(0.975, 3)
    assert f"sd of the paired difference {sd:.4f}" in pooled[0]


@pytest.mark.parametrize("text", ["[1, 2]", '{"comparisons": [{"curation": "h", "baseline": "r", "dataset": "d", '
                                            '"ssl": "s", "n": "4", "ci_low": 0, "ci_high": 1}], "confidence": null}',
                                  '{"comparisons": ["x"]}'])
def test_cli_rejects_a_file_that_is_no_verdict_in_one_line(tmp_path, capsys, text) -> None:
    path = tmp_path / "verdict.json"
    path.write_text(text)
    assert power.main([str(path), "--effect", "0.03"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("power: error:") and "verdict.json" in err and err.count("\n") == 1


def test_non_finite_arguments_are_rejected(tmp_path, capsys) -> None:
    for args in (["--effect", "nan"], ["--effect", "0.03", "--sd", "nan"], ["--effect", "inf"]):
        assert power.main([str(_pilot(tmp_path)), *args]) == 2
        assert capsys.readouterr().err.startswith("power: error:")
    with pytest.raises(ValueError):
        power.seeds_needed(math.nan, 0.04)
    assert power.paired_t_power(0.03, 0.04, 1) == 0.0  # one seed: no interval, never resolved
