"""What a job's log looks like: plain text (no colour codes, no Ray noise) that ends with the job's wall time
and its outputs.

A Snakemake job's log is the ``strata`` command's stdout and stderr (``> {log} 2>&1``); MLflow shows it as an
artifact, raw. Ray is told not to colour its worker prefixes (``RAY_COLOR_PREFIX=0``, set by
``workflow/distributed.py``) and to keep its own logs at WARNING; :class:`LineFilter` is the last resort for what
no Ray setting reaches: colour codes from any source, and the lines of Ray Train's ``PlacementGroupCleaner``
actor, whose monitor thread dies with a 30-line traceback when Ray's dashboard (its State API) is off, as it is
here (ray/train/v2/_internal/execution/controller/placement_group_cleaner.py: it only matters when a Train
controller dies ungracefully, and the cluster ends with the job or run anyway).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")  # CSI sequences (colours) and 2-byte escapes
# Ray actors whose forwarded output is noise in a job's log ("(PlacementGroupCleaner pid=123) ...").
NOISY_RAY_ACTORS = ("PlacementGroupCleaner",)
# Ray warnings that Ray itself calls safe to ignore, dropped with their traceback: the Train controller's
# request to the autoscaling coordinator (there is no autoscaler here) that times out on a busy machine.
SAFE_RAY_WARNINGS = ("Failed to send resource request for train-",)
_RAY_PREFIX = re.compile(r"^(\((\S+) [^)]*pid=[^)]*\)) ?(.*)$")  # "(RayTrainWorker pid=12, ip=…) message"
_TRACEBACK_LINE = re.compile(r"^(Traceback |During handling |The above exception |\s|$)")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Warning|Exit|Interrupt)\b")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves)."""
    return ANSI_ESCAPE.sub("", text)


class RayNoise:
    """Tells the noise among the lines a Ray driver prints for its workers and actors, in order: every line of
    :data:`NOISY_RAY_ACTORS`, and each of :data:`SAFE_RAY_WARNINGS` with the traceback that follows it."""

    def __init__(self) -> None:
        self._block: str | None = None  # the prefix of the warning whose traceback is being dropped

    def __call__(self, line: str) -> bool:
        match = _RAY_PREFIX.match(strip_ansi(line).rstrip("\n"))
        if match is None:
            return False
        prefix, source, message = match.groups()
        if source in NOISY_RAY_ACTORS:
            return True
        if self._block == prefix:
            if _TRACEBACK_LINE.match(message):
                return True
            self._block = None
            if _EXCEPTION_LINE.match(message):  # the traceback's last line
                return True
        if message.startswith(SAFE_RAY_WARNINGS):
            self._block = prefix
            return True
        return False


class LineFilter:
    """A text stream that writes whole lines to ``stream``, without colour codes, dropping those ``drop`` names.

    Thread-safe (Ray prints its workers' output from a thread of its own). Other attributes (``fileno``,
    ``buffer``, ``isatty``, ...) are the wrapped stream's.
    """

    def __init__(self, stream: TextIO, drop: Callable[[str], bool] | None = None) -> None:
        self.stream = stream
        self.drop = drop
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            if "\n" in self._pending:
                *lines, self._pending = self._pending.split("\n")
                kept = [strip_ansi(line) for line in lines if not (self.drop and self.drop(line))]
                if kept:
                    self.stream.write("\n".join(kept) + "\n")
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            # A partial line goes out now (a prompt, a progress bar), unless it may be a Ray line to drop.
            if self._pending and not (self.drop and strip_ansi(self._pending).startswith("(")):
                self.stream.write(strip_ansi(self._pending))
                self._pending = ""
            self.stream.flush()

    def close_pending(self) -> None:
        """Write out what is left of an unfinished line (unless it is one to drop)."""
        with self._lock:
            pending, self._pending = self._pending, ""
        if pending and not (self.drop and self.drop(pending)):
            self.stream.write(strip_ansi(pending))
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def filtered_streams(drop: Callable[[str], bool] | None = None, only_if_not_tty: bool = False) -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` through a :class:`LineFilter` for the block (restored afterwards).

    With ``only_if_not_tty``, a stream that is a terminal is left alone (colours are fine there).
    """
    saved = sys.stdout, sys.stderr
    wrapped = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        with contextlib.suppress(AttributeError, ValueError):
            if only_if_not_tty and stream.isatty():
                continue
        wrapper = LineFilter(stream, drop)
        setattr(sys, name, wrapper)
        wrapped.append(wrapper)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        for wrapper in wrapped:
            with contextlib.suppress(OSError, ValueError):
                wrapper.close_pending()


def ray_noise_filtered() -> contextlib.AbstractContextManager[None]:
    """The streams of a Ray driver for the block: no colour codes, no :class:`RayNoise`."""
    return filtered_streams(RayNoise())


# ------------------------------------------------------------------------------------------------ the log's end


def format_duration(seconds: float) -> str:
    """A short duration: ``0.4s``, ``8s``, ``2m05s``, ``1h02m``."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def format_size(n: int) -> str:
    """A file size: ``812 B``, ``35.1 kB``, ``1.2 MB``, ``3.4 GB`` (powers of 1000)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000  # type: ignore[assignment]
        if n < 999.95 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def process_seconds() -> float | None:
    """How long this process has run (from /proc; None where that is not available)."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def describe_outputs(files: Iterable[Path], folder: Path | None = None) -> str:
    """``path (size), ...`` for a job's output files (``missing`` for one it did not write), and its folder."""
    parts = [f"{f} ({format_size(f.stat().st_size)})" if f.is_file() else f"{f} (missing)" for f in files]
    if folder is not None:
        n = sum(1 for f in folder.iterdir() if f.is_file()) if folder.is_dir() else 0
        parts.append(f"{folder}/ ({n} file{'s' if n != 1 else ''})")
    return ", ".join(parts) or "none"


def job_end_lines(command: str, seconds: float, files: Iterable[Path], folder: Path | None = None,
                  failed: bool = False, compute_s: float = 0.0) -> list[str]:
    """The last lines of a job's log: its outputs, then its wall time (and the part of it spent on the job's own
    work, ``workflow/timing.py``), or ``failed after`` when it failed."""
    if failed:
        return [f"strata {command}: failed after {format_duration(seconds)}"]
    compute = f" ({format_duration(compute_s)} of it computing)" if compute_s > 0 else ""
    return [f"strata {command}: outputs {describe_outputs(files, folder)}",
            f"strata {command}: done in {format_duration(seconds)}{compute}"]


class JobClock:
    """The wall time of a job: since it was made or, with ``from_process_start``, since its process started
    (interpreter and imports included: what the job costs when it is a command of its own)."""

    def __init__(self, from_process_start: bool = False) -> None:
        from workflow.timing import compute_total

        self._t0 = time.monotonic() - ((process_seconds() or 0.0) if from_process_start else 0.0)
        self._compute0 = compute_total()  # (in-process callers run several jobs)

    def seconds(self) -> float:
        return time.monotonic() - self._t0

    def end(self, command: str, files: Iterable[Path], folder: Path | None = None, failed: bool = False) -> None:
        """Print the job log's last lines on stdout (:func:`job_end_lines`)."""
        from workflow.timing import compute_total

        for line in job_end_lines(command, self.seconds(), files, folder, failed, compute_total() - self._compute0):
            print(line, flush=True)
