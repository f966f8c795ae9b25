"""glibc malloc settings for the stages' torch loops: keep freed buffers in the process instead of returning them.

A training step frees and allocates the same multi-megabyte activation and gradient buffers again and again. With
glibc's defaults the larger ones come from ``mmap`` and go back to the OS when freed, and the top of the heap is
trimmed, so every step faults its pages in again: 2 300-4 000 minor page faults per SimCLR step (batch 512, MNIST-1D
CNN) in the main thread, and 17-23 with these settings, which made the step 2-22% faster by the machine's load
(2-core Intel Xeon, interleaved runs; docs/performance.md). A fixed mmap threshold of 32 MiB and a trim threshold of
256 MiB keep the buffers. The setting changes no number, only where memory comes from: a process keeps up to 256 MiB
of freed memory for reuse.

Ray's processes read the same values from the environment when they start (``MALLOC_*`` in
:data:`workflow.distributed.RAY_ENV_DEFAULTS`); a stage's own process, where one-worker CPU jobs train (Ray Train's
local mode), embed and fit probes, sets them with :func:`keep_freed_memory` when its command starts. As for Ray's
processes, the environment wins: a threshold set by ``MALLOC_*`` or ``GLIBC_TUNABLES`` is left as it is.
"""

from __future__ import annotations

import ctypes
import os

#: Allocations up to this size come from the heap and are reused, not mapped and unmapped each time.
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap is returned to the OS only beyond this size.
TRIM_THRESHOLD = 256 * 2**20
# glibc's <malloc.h> parameter number, value, and the environment variable and tunable that set it at start.
_SETTINGS = ((-3, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
             (-1, TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"))
#: The same settings as glibc's environment variables, for processes that start later (Ray's).
ENV = {env: str(value) for _, value, env, _ in _SETTINGS}


def keep_freed_memory() -> bool:
    """Set this process's mmap and trim thresholds (glibc ``mallopt``), each unless the environment set it.

    Returns False where the C library has no ``mallopt`` (macOS, Windows) or refuses a value; nothing changes then.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError, TypeError):  # (TypeError: Windows has no process-wide symbol lookup)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    ok = True
    for param, value, env, tunable in _SETTINGS:
        if env not in os.environ and tunable not in tunables:
            ok = bool(mallopt(param, value)) and ok
    return ok
