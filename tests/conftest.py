"""Shared fixtures: the real end-to-end study (one `snakemake --cores 2` run on configs/test.yaml per session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def data_cli(params: dict[str, Any], out: Path, name: str) -> tuple[int, dict[str, Path]]:
    """Run ``strata data`` in process into ``out``: its exit code and the paths of the three tables and info."""
    from workflow.cli import main

    out.mkdir(parents=True, exist_ok=True)
    paths = {split: out / f"{split}.parquet" for split in ("pool", "probe_train", "probe_test")}
    paths["info"] = out / "info.json"
    rc = main(["data", "--name", name, "--params", json.dumps(params), "--pool", str(paths["pool"]),
               "--probe-train", str(paths["probe_train"]), "--probe-test", str(paths["probe_test"]),
               "--info", str(paths["info"])])
    return rc, paths


def snakemake(workdir: Path, *args: str,
              configfile: Path = REPO / "configs" / "test.yaml") -> subprocess.CompletedProcess:
    """Run the real Snakemake on the repository's workflow in ``workdir`` (no MLflow/Ray from the environment)."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--configfile", str(configfile), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)


def assert_config_refused(config: Path, work: Path, words: list[str], *args: str) -> None:
    """`snakemake` on a bad study ``config`` in a fresh folder ``work``: exit 2, no traceback, one
    `strata: invalid config:` line that names the config file, the fix and each of ``words``, and nothing
    created (no results folder, no MLflow store)."""
    work.mkdir()
    result = snakemake(work, *args, configfile=config)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("strata: invalid config: ")]
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0] and "Fix:" in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (work / "results").exists()


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished study of configs/test.yaml (shared by the end-to-end and browser tests).

    ``STRATA_E2E_STUDY=<dir>`` reuses a study directory (the workflow still runs there, doing only what is
    missing), which saves minutes when iterating on the tests.
    """
    workdir = Path(os.environ.get("STRATA_E2E_STUDY") or tmp_path_factory.mktemp("study"))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small vector pool (blobs) and a selection of all of it: the inputs of a real `strata pretrain` job."""
    from workflow.config import validate
    from workflow.curate.stage import write_selection
    from workflow.data import build_dataset
    from workflow.tables import write_table

    root = tmp_path_factory.mktemp("pool")
    splits = build_dataset(validate({"kind": "blobs", "n_max": 200, "imbalance_ratio": 4, "dim": 8}, "dataset"),
                           "blobs")
    pool, selection = root / "pool.parquet", root / "selection.parquet"
    write_table(splits.pool, pool, metadata={"input_kind": "vector"})
    write_selection(splits.pool, np.arange(len(splits.pool)), None, str(selection))
    return pool, selection
