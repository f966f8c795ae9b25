"""glibc malloc settings for the stages' torch loops: keep freed buffers in the process instead of returning them.

A training step frees and allocates the same multi-megabyte activation and gradient buffers again and again. With
glibc's defaults the larger ones come from ``mmap`` and go back to the OS when freed, and the top of the heap is
trimmed, so every step faults its pages in again: 2 300-4 000 minor page faults per SimCLR step (batch 512, MNIST-1D
CNN) in the main thread, and 17-23 with these settings, which made the step 2-22% faster by the machine's load
(2-core Intel Xeon, interleaved runs; docs/performance.md). A fixed mmap threshold of 32 MiB and a trim threshold of
256 MiB keep the buffers. The setting changes no number, only where memory comes from.

Ray's processes read the same values from the environment when they start (``MALLOC_*`` in
:data:`workflow.distributed.RAY_ENV_DEFAULTS`); a stage's own process, where one-thread jobs train (Ray Train's
local mode), embed and fit probes, sets them with :func:`keep_freed_memory` when its command starts.
"""

from __future__ import annotations

import ctypes

#: Allocations up to this size come from the heap and are reused, not mapped and unmapped each time.
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap is returned to the OS only beyond this size.
TRIM_THRESHOLD = 256 * 2**20
#: The same settings as glibc's environment variables, for processes that start later (Ray's).
ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> parameter numbers


def keep_freed_memory() -> bool:
    """Set this process's mmap and trim thresholds (glibc ``mallopt``); False where the C library has no
    ``mallopt`` (macOS) or refuses a value, and nothing changes then."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
