"""The machine a run ran on: CPU model, logical cores and OS, recorded with every tracked run and results block.

Results reproduce bit for bit on one machine only: another CPU runs other float kernels, and training amplifies
their last-bit differences (README, "Reproducibility"), so runs say where they ran.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path


def machine() -> dict[str, str | int | None]:
    """``cpu`` (the model name from /proc/cpuinfo, else :func:`platform.processor`), ``cores`` (logical) and
    ``os``."""
    cpu, cores, system = _machine()
    return {"cpu": cpu, "cores": cores, "os": system}


@cache
def _machine() -> tuple[str, int | None, str]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return model, os.cpu_count(), f"{platform.system()} {platform.release()}"


def machine_tag() -> str:
    """One line for a run's ``strata.machine`` tag, e.g. ``Intel(R) Xeon(R) Processor, 2 logical cores, Linux
    6.1``."""
    m = machine()
    return f"{m['cpu']}, {m['cores']} logical cores, {m['os']}"
