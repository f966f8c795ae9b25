"""The Snakemake rules' wiring: directives on every rule, the conda env's pins, short shell lines, no venv on PATH."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((REPO / "rules").glob("*.smk"))
MAX_SHELL_LINE = 400


def _rule_blocks() -> dict[str, tuple[str, str]]:
    """Each rule's name -> (its kind, "rule" or "use", and its text), from rules/*.smk."""
    blocks = {}
    for path in RULE_FILES:
        parts = re.split(r"^(?=\S)", path.read_text(), flags=re.M)  # top-level statements
        for part in parts:
            if m := re.match(r"rule (\w+):", part):
                blocks[m.group(1)] = ("rule", part)
            elif m := re.match(r"use rule \w+ as (\w+) with:", part):
                blocks[m.group(1)] = ("use", part)
    return blocks


def _section(block: str, name: str) -> str:
    """The text of one directive of a rule (up to the next directive)."""
    m = re.search(rf"^    {name}:(.*?)(?=^    \w+:|\Z)", block, flags=re.M | re.S)
    return m.group(1) if m else ""


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        if m := re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.split("#")[0].strip()):
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_every_rule_has_the_directives_of_a_catalog_rule() -> None:
    blocks = _rule_blocks()
    assert {"data", "curate", "pretrain", "embed_probes", "embed_pool", "evaluate", "summarize", "plot_training",
            "plot_embeddings"} <= set(blocks)
    for name, (kind, block) in blocks.items():
        # `use rule ... with:` inherits threads, resources, conda and the shell command; it names its own files.
        needed = ("log", "benchmark", "message") if kind == "use" else (
            "log", "benchmark", "conda", "message", "threads", "resources", "shell")
        for directive in needed:
            assert re.search(rf"^    {directive}:", block, flags=re.M), (name, directive)
        if kind == "rule":
            assert _section(block, "conda").strip() == '"../envs/strata.yaml"', name
            assert "{STRATA} " in _section(block, "shell"), name  # the CLI through Snakemake's interpreter
        # Logs and benchmarks come from the one helper (rules/common.smk: job_file), not retyped paths.
        assert "job_file(" in _section(block, "log") and "job_file(" in _section(block, "benchmark"), name
        # Inputs refer to other rules' outputs (or input functions), never to retyped path templates.
        assert "RESULTS" not in _section(block, "input"), name
    # Conda paths are relative to the .smk file.
    assert (REPO / "rules" / "../envs/strata.yaml").is_file()
    # embed_pool is embed_probes with other tables: one shell command.
    assert (REPO / "rules" / "embed.smk").read_text().count("shell:") == 1


def test_the_conda_env_pins_what_requirements_lock_pins() -> None:
    env = yaml.safe_load((REPO / "envs" / "strata.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    lock = _pins((REPO / "requirements.lock").read_text().splitlines())
    assert lock, "requirements.lock pins nothing"
    assert _pins(pip) == lock
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert sys.version.startswith(python.split("=")[1] + "."), (python, sys.version)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return env


def test_dry_run_prints_short_shell_lines(tmp_path: Path) -> None:
    """`snakemake -n -p` of the default study: no shell line over 400 characters, no JSON tracking spec."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "-n", "-p", "--configfile", str(REPO / "configs" / "default.yaml")],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    commands = re.findall(r"^Shell command:(.*?)(?=^\S|\Z)", out, flags=re.M | re.S)
    assert len(commands) >= 50, out[-3000:]  # every job of the study is shown
    lines = [line for command in commands for line in command.splitlines()]
    assert max(map(len, lines)) <= MAX_SHELL_LINE, max(lines, key=len)
    assert all("--tracking '" not in line and "--params '" not in line for line in lines)
    assert all(c.strip().startswith(f"{sys.executable} -m workflow ") for c in commands if c.strip() != "None")
    assert list(tmp_path.iterdir()) == [tmp_path / ".snakemake"] or not list(tmp_path.iterdir())  # writes nothing


def test_unactivated_venv_snakemake_runs_a_job(tmp_path: Path) -> None:
    """`.venv/bin/snakemake` with the venv off PATH: jobs run `strata` through Snakemake's own interpreter."""
    env = _env()
    env["PATH"] = os.pathsep.join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if Path(p).is_dir())
    snakemake = Path(sys.executable).parent / "snakemake"
    result = subprocess.run(
        [str(snakemake), "results/strata-test/tiny/data/info.json", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--cores", "1", "--configfile", str(REPO / "configs" / "test.yaml")],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results" / "strata-test"  # each study in its own folder
    assert (results / "tiny" / "data" / "pool.parquet").is_file()
    spec = json.loads((results / ".work" / "jobs" / "data" / "tiny" / "tracking.json").read_text())
    assert spec["job"] == "data/tiny" and spec["log"] == "results/strata-test/logs/data/tiny.log"
    assert spec["benchmark"] == "results/strata-test/benchmarks/data/tiny.tsv" and spec["parent_kind"] == "dataset"
    assert spec["uri"] == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"  # one store shared by the studies
    assert json.loads((results / ".work" / "jobs" / "data" / "tiny" / "params.json").read_text())


def test_curation_run_settings_reach_the_job_but_trigger_no_rerun(tmp_path: Path) -> None:
    """A curation's run settings (x-parameter: false) are in its job's params file, not in its parameters."""
    config = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    config["curations"] = {"random": {"method": "random", "target_size": 20},
                           "km": {"method": "kmeans", "target_size": 20, "n_clusters": [4], "n_iters": 3,
                                  "chunk_size": 128, "prune": "never"}}
    config["summary"] = {"baseline": "random"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "results/strata-test/tiny/curate/km/seed0/stats.json", "--snakefile",
           str(REPO / "Snakefile"), "--directory", str(tmp_path), "--cores", "1", "--configfile", str(path)]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = tmp_path / "results" / "strata-test" / ".work" / "jobs" / "curate" / "tiny" / "km" / "seed0"
    params = json.loads((jobs / "params.json").read_text())
    assert params["chunk_size"] == 128 and params["prune"] == "never" and params["n_clusters"] == [4]
    # Changing a run setting changes no parameter: nothing to rerun.
    config["curations"]["km"]["chunk_size"] = 256
    path.write_text(yaml.safe_dump(config))
    dry = subprocess.run([*cmd, "-n", "--rerun-triggers", "params"], env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]


def test_tracking_spec_from_a_file_or_json(tmp_path: Path) -> None:
    from workflow import cli
    from workflow.errors import StrataError
    from workflow.tracking import TrackingSpec

    spec = {"uri": "sqlite:///x.db", "experiment": "e", "parent_kind": "dataset", "parent_key": "k",
            "parent_name": "n", "parent_params": {}, "job": "data/x"}
    path = tmp_path / "tracking.json"
    path.write_text(json.dumps(spec))
    base = ["data", "--name", "x", "--pool", "p", "--probe-train", "a", "--probe-test", "b", "--info", "i"]
    for value in (str(path), json.dumps(spec)):
        args = cli.build_parser().parse_args([*base, "--tracking", value])
        assert cli._tracking(args) == TrackingSpec(**spec)
    args = cli.build_parser().parse_args([*base, "--tracking", str(tmp_path / "missing.json")])
    with pytest.raises(StrataError, match="does not exist"):
        cli._tracking(args)
