"""A job's log: pretraining's progress lines (step/total, loss, steps/s, ETA), no colour codes and no Ray noise,
and a last line with the job's wall time (workflow/joblog.py, workflow/pretrain/progress.py, cli.main)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from workflow.cli import main
from workflow.joblog import (
    LineFilter,
    RayNoise,
    describe_outputs,
    filtered_streams,
    format_duration,
    format_size,
    job_end_lines,
    strip_ansi,
)
from workflow.pretrain.progress import Progress, eta_seconds, progress_line

REPO = Path(__file__).resolve().parent.parent
PROGRESS = re.compile(r"^pretrain: step (\d+)/(\d+) \((\d+)%\) loss (nan|-?\d+\.\d{4}), ([\d.e+]+) steps/s, "
                      r"(\S+) elapsed, ETA (\S+)( \[(checkpoint|done)\])?$")
END = re.compile(r"^strata (\S+): done in \S+( \(\S+ of it computing\))?$")
CLEANER = ("(PlacementGroupCleaner pid=4242) Exception in thread PlacementGroupCleanerMonitor:\n"
           "(PlacementGroupCleaner pid=4242) Traceback (most recent call last):\n"
           "(PlacementGroupCleaner pid=4242) ConnectionError: Could not read 'dashboard' from GCS.\n")


# ------------------------------------------------------------------------------------------------ progress lines


@pytest.mark.parametrize(("seconds", "text"), [(0.0, "0.0s"), (0.44, "0.4s"), (8.0, "8.0s"), (12.4, "12s"),
                                               (59.6, "1m00s"), (125, "2m05s"), (3600 + 125, "1h02m")])
def test_durations_are_short(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_eta_is_the_remaining_steps_at_the_measured_rate() -> None:
    assert eta_seconds(120, 600, 40.0) == pytest.approx(12.0)
    assert eta_seconds(600, 600, 40.0) == 0.0
    assert eta_seconds(0, 600, 0.0) == float("inf")  # nothing measured yet


def test_progress_line_format() -> None:
    line = progress_line(120, 600, 5.30389, 33.4, 3.6, "checkpoint")
    assert line == "pretrain: step 120/600 (20%) loss 5.3039, 33.4 steps/s, 3.6s elapsed, ETA 14s [checkpoint]"
    assert PROGRESS.match(line)
    assert progress_line(3, 600, 6.1, 0.0, 0.0).endswith("ETA ?")


def test_progress_lines_every_ten_seconds_with_the_window_loss_and_the_run_rate() -> None:
    now = [100.0]
    out = io.StringIO()
    progress = Progress(total=1000, start_step=200, clock=lambda: now[0], out=out)  # resumed at step 200
    for step in range(201, 281):  # 80 steps in 5 s
        now[0] += 0.0625
        progress.add(float(step % 2))  # losses 1, 0, 1, ...: mean 0.5
        assert not progress.due()
    now[0] += 5.0  # 10 s since the start: a line is due, although no checkpoint came
    assert progress.due()
    progress.emit(280)
    line = out.getvalue().strip()
    assert line == "pretrain: step 280/1000 (28%) loss 0.5000, 8 steps/s, 10s elapsed, ETA 1m30s"
    assert not progress.due()  # the clock restarts at each line
    progress.add(2.0)
    now[0] += 1.0
    assert "loss 2.0000" in progress.line(290, "checkpoint")  # the loss since the previous line only


# ------------------------------------------------------------------------------------------------ filtered streams


def test_line_filter_drops_the_cleaners_lines_and_strips_colour_codes() -> None:
    sink = io.StringIO()
    stream = LineFilter(sink, RayNoise())
    stream.write("\x1b[36m(RayTrainWorker pid=4243)\x1b[0m pretrain: step 1/")
    stream.write("40 (2%)\n")
    stream.write(f"\x1b[36m{CLEANER.splitlines()[0]}\x1b[0m\n{CLEANER}")
    print("(raylet) a warning worth keeping", file=stream)
    stream.flush()
    assert sink.getvalue() == "(RayTrainWorker pid=4243) pretrain: step 1/40 (2%)\n(raylet) a warning worth keeping\n"


def test_a_warning_ray_calls_safe_to_ignore_goes_with_its_traceback() -> None:
    sink = io.StringIO()
    stream = LineFilter(sink, RayNoise())
    controller = "(TrainController pid=25768) "
    stream.write("".join(controller + line + "\n" for line in [
        "Failed to send resource request for train-56bb. If this only happens transiently during network "
        "partition or CPU being overloaded, it's safe to ignore this error.",
        "Traceback (most recent call last):",
        '  File "/x/ray/_private/worker.py", line 3009, in get',
        "    values, debugger_breakpoint = worker.get_objects(",
        "                                  ^^^^^^^^^^^^^^^^^^^",
        "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
        "Started training worker group of size 2",
        "Traceback (most recent call last):",  # another traceback: kept
    ]))
    assert sink.getvalue() == (f"{controller}Started training worker group of size 2\n"
                               f"{controller}Traceback (most recent call last):\n")


def test_filtered_streams_are_restored_and_flush_a_partial_line(capsys: pytest.CaptureFixture[str]) -> None:
    with filtered_streams(RayNoise()):
        print("\x1b[1;31mred\x1b[0m and plain")
        sys.stderr.write(CLEANER + "no newline")
    assert not isinstance(sys.stdout, LineFilter) and not isinstance(sys.stderr, LineFilter)
    out, err = capsys.readouterr()
    assert (out, err) == ("red and plain\n", "no newline")
    assert strip_ansi("\x1b[36m(x)\x1b[0m y\x1b[2K") == "(x) y"


# ------------------------------------------------------------------------------------------------ the log's end


def test_job_end_lines_name_the_outputs_and_the_wall_time(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_bytes(b"x" * 35_100)
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "one.png").write_bytes(b"")
    files = [tmp_path / "a.parquet", tmp_path / "b.json"]
    assert describe_outputs(files, tmp_path / "figs") == (
        f"{tmp_path}/a.parquet (35.1 kB), {tmp_path}/b.json (missing), {tmp_path}/figs/ (1 file)")
    assert job_end_lines("curate", 65.2, files[:1]) == [f"strata curate: outputs {tmp_path}/a.parquet (35.1 kB)",
                                                        "strata curate: done in 1m05s"]
    assert job_end_lines("curate", 3.0, files, failed=True) == ["strata curate: failed after 3.0s"]
    assert job_end_lines("curate", 65.2, [], compute_s=52.0)[-1] == "strata curate: done in 1m05s (52s of it computing)"
    assert END.match(job_end_lines("curate", 65.2, [], compute_s=52.0)[-1])
    assert [format_size(n) for n in (812, 1_234_567, 3_400_000_000)] == ["812 B", "1.2 MB", "3.4 GB"]


def test_a_commands_output_ends_with_its_outputs_and_wall_time(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import data_cli

    rc, paths = data_cli({"kind": "blobs", "n_max": 60, "dim": 4}, tmp_path, "blobs")
    assert rc == 0
    *_, outputs, last = capsys.readouterr().out.splitlines()
    assert END.match(last) and last.startswith("strata data: done in ")
    assert outputs.startswith("strata data: outputs ") and all(str(p) in outputs for p in paths.values())


def test_a_failed_command_says_how_long_it_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", "--probe-train", str(tmp_path / "missing.parquet"), "--probe-test",
               str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "m.json")])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1, err  # still one error line on stderr
    assert re.match(r"^strata evaluate: failed after \S+$", out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ real jobs


def _pretrain_job(pool: Path, selection: Path, out: Path, **params: object) -> list[str]:
    """Run ``strata pretrain`` as Snakemake does (``> {log} 2>&1``, no terminal); the log's lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "STRATA_RAY"))}
    params = {"method": "simclr", "steps": 40, "batch_size": 64, "embedding_dim": 16, "projector_hidden_dim": 32,
              "checkpoint_every": 1, **params}
    log = out / "pretrain.log"
    out.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        rc = subprocess.run([sys.executable, "-m", "workflow", "pretrain", "--params", json.dumps(params),
                             "--pool", str(pool), "--selection", str(selection), "--seed", "0",
                             "--encoder", str(out / "encoder.safetensors"), "--history", str(out / "history.parquet"),
                             "--threads", "2", "--work-root", str(out / "work")],
                            cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=600).returncode
    text = log.read_text()
    assert rc == 0, text
    return text.splitlines()


def _assert_quiet_informative(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert "\x1b" not in text, "colour codes in the log"
    assert "PlacementGroupCleaner" not in text
    assert not [line for line in lines if re.search(r"\bINFO\b .*\.py:\d+ -- ", line)], "Ray's INFO lines"
    progress = [m for line in lines if (m := PROGRESS.match(re.sub(r"^\(\S+ pid=\d+(, ip=\S+)?\) ", "", line)))]
    assert any(m.group(9) == "checkpoint" for m in progress), text  # one per checkpoint at least
    assert progress[-1].group(1) == "40" and progress[-1].group(7) == "0.0s" and progress[-1].group(9) == "done"
    assert all(m.group(7) != "?" for m in progress)
    assert lines[-2].startswith("strata pretrain: outputs ") and "encoder.safetensors (" in lines[-2]
    assert END.match(lines[-1]) and lines[-1].startswith("strata pretrain: done in "), text


@pytest.mark.e2e
def test_a_local_mode_pretrain_log_is_quiet_and_informative(tiny_pool: tuple[Path, Path], tmp_path: Path) -> None:
    _assert_quiet_informative(_pretrain_job(*tiny_pool, tmp_path))


@pytest.mark.e2e
def test_a_ray_train_workers_pretrain_log_is_quiet_and_informative(tiny_pool: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    lines = _pretrain_job(*tiny_pool, tmp_path, num_workers=2)  # two DDP workers on a private Ray
    _assert_quiet_informative(lines)
    assert any(line.startswith("(RayTrainWorker pid=") for line in lines)  # the workers' lines did arrive


@pytest.mark.e2e
def test_the_study_logs_end_with_the_wall_time_and_carry_no_noise(study: Path) -> None:
    logs = sorted(p for p in (study / "results").rglob("*.log") if "logs" in p.relative_to(study).parts)
    assert len(logs) > 10, logs  # data, curate, pretrain, embed, evaluate, plots, summarize
    for log in logs:
        lines = log.read_text().splitlines()
        assert lines and END.match(lines[-1]), (log, lines[-3:])
        assert "\x1b" not in "\n".join(lines) and "PlacementGroupCleaner" not in "\n".join(lines), log
    pretrain = [p for p in logs if "pretrain" in p.relative_to(study).parts]
    assert pretrain
    for log in pretrain:
        _assert_quiet_informative(log.read_text().splitlines())


def test_a_job_waiting_for_the_runs_ray_cluster_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workflow.errors import StrataError
    from workflow.raycluster import STATE, WAIT_NOTICE_S, _start_time, wait_for_cluster

    # A supervisor that is up (this process stands in for it) but has not published the cluster's address yet.
    (tmp_path / STATE).write_text(json.dumps({"supervisor_pid": os.getpid(),
                                              "supervisor_start": _start_time(os.getpid())}))
    with pytest.raises(StrataError, match="did not come up"):
        wait_for_cluster(tmp_path, timeout=WAIT_NOTICE_S + 0.5)
    assert capsys.readouterr().err.count("ray: waiting for the run's Ray cluster to come up") == 1
