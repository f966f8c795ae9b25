"""The data of a k-means run: rows of an ``(n, d)`` matrix served as float32 tensors, one chunk at a time.

Data may be an in-memory array or tensor, a ``numpy.memmap`` or the path of a ``.npy`` file (e.g. from
:func:`workflow.curate.features.load_features_memmap`); a memmap is only ever touched one row chunk at a time,
so a Lloyd pass never materialises a float copy of the whole matrix. The argument checks of the engine live
here too, next to the data they check.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from workflow.errors import StrataError


def check_int(value: object, name: str, minimum: int, where: str) -> int:
    """``value`` as an int ≥ ``minimum`` (bools and floats refused: a mistyped config must not run silently)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise StrataError(f"{name} must be an integer, got {value!r}.", where=where,
                          fix=f"Pass an integer {name} >= {minimum}.")
    if int(value) < minimum:
        raise StrataError(f"{name} must be >= {minimum}, got {value}.", where=where,
                          fix=f"Pass an integer {name} >= {minimum}.")
    return int(value)


def resolve_device(device: str | torch.device, progress: Callable[[str], None] | None = None) -> torch.device:
    """The torch device to use: ``cuda`` falls back to CPU (with a message) when no GPU is available;
    ``auto`` is ``cuda`` when available, else ``cpu``."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        if progress is not None:
            progress(f"warning: device {name!r} requested but CUDA is not available; using the CPU.")
        name = "cpu"
    return torch.device(name)


def from_numpy_readonly(arr: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without copying a read-only array (memmap, Arrow view); never written to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(arr)


def as_float_tensor(x: np.ndarray | torch.Tensor, device: str | torch.device = "cpu",
                    where: str = "kmeans") -> torch.Tensor:
    """Validate a 2-D, non-empty, finite array and return it as a float32 tensor on ``device``.

    Args:
        x: ``(n, d)`` array or tensor.
        device: Target torch device.
        where: Context named in error messages.

    Returns:
        ``(n, d)`` contiguous float32 tensor on ``device`` (no copy when ``x`` already is one).

    Raises:
        StrataError: If ``x`` is not 2-D, is empty or holds NaN/inf.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device=device, dtype=torch.float32)
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise StrataError(f"input must be a numeric array, got dtype {arr.dtype}.", where=where,
                              fix="Pass a float array of shape (n_points, dim).")
        t = from_numpy_readonly(np.ascontiguousarray(arr, dtype=np.float32)).to(device)
    if t.ndim != 2:
        raise StrataError(f"input must be 2-D (n_points, dim), got shape {tuple(t.shape)}.", where=where,
                          fix="Reshape the embeddings to (n_points, dim).")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise StrataError(f"input is empty (shape {tuple(t.shape)}).", where=where,
                          fix="Provide at least one point with at least one feature.")
    if not bool(torch.isfinite(t).all()):
        raise StrataError("input contains NaN or infinite values.", where=where,
                          fix="Remove or repair the non-finite embeddings before clustering.")
    return t.contiguous()


def is_memmap(x: object) -> bool:
    """Whether ``x`` is a NumPy memory-mapped array (kept on disk, read chunk by chunk)."""
    return isinstance(x, np.memmap)


class DataSource:
    """Rows of an ``(n, d)`` matrix served as float32 tensors on one device, one row chunk at a time.

    * torch tensor or in-memory NumPy array: converted once to a float32 tensor on ``device`` (no copy
      when it already is a contiguous float32 CPU array/tensor);
    * ``numpy.memmap`` (or a path to a ``.npy`` file, opened with ``mmap_mode="r"``): never loaded
      whole; a chunk of a float32 C-contiguous memmap is a zero-copy view of the mapped pages, other
      dtypes are converted chunk by chunk.

    Validation (2-D, non-empty, finite) runs chunk by chunk.
    """

    def __init__(self, x: Any, device: str | torch.device = "cpu", where: str = "kmeans",
                 check: bool = True) -> None:
        self.device = torch.device(device)
        if isinstance(x, (str, os.PathLike)):
            x = np.load(os.fspath(x), mmap_mode="r")
        self.memmap: np.ndarray | None = None
        self.tensor: torch.Tensor | None = None
        if is_memmap(x):
            arr = x
            if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
                raise StrataError(f"input must be a numeric array, got dtype {arr.dtype}.", where=where,
                                  fix="Pass a float array of shape (n_points, dim).")
            if arr.ndim != 2:
                raise StrataError(f"input must be 2-D (n_points, dim), got shape {arr.shape}.", where=where,
                                  fix="Reshape the embeddings to (n_points, dim).")
            self.memmap = arr
            self.n, self.d = int(arr.shape[0]), int(arr.shape[1])
            if self.n == 0 or self.d == 0:
                raise StrataError(f"input is empty (shape {arr.shape}).", where=where,
                                  fix="Provide at least one point with at least one feature.")
            if check:
                step = max(1, (2**22) // self.d)
                for start in range(0, self.n, step):
                    if not np.isfinite(arr[start:start + step]).all():
                        raise StrataError("input contains NaN or infinite values.", where=where,
                                          fix="Remove or repair the non-finite embeddings before clustering.")
        else:
            if check:
                self.tensor = as_float_tensor(x, self.device, where)
            elif isinstance(x, torch.Tensor):
                self.tensor = x.detach().to(device=self.device, dtype=torch.float32).contiguous()
            else:
                arr = np.ascontiguousarray(x, dtype=np.float32)
                self.tensor = from_numpy_readonly(arr).to(self.device)
            self.n, self.d = int(self.tensor.shape[0]), int(self.tensor.shape[1])

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as a float32 tensor on the device."""
        if self.tensor is not None:
            return self.tensor[start:stop]
        block = self.memmap[start:stop]
        if block.dtype != np.float32 or not block.flags.c_contiguous:
            block = np.ascontiguousarray(block, dtype=np.float32)
        return from_numpy_readonly(block).to(self.device)

    def chunks(self, size: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, rows)`` for consecutive chunks of ``size`` rows of ``[start, stop)``."""
        stop = self.n if stop is None else stop
        for s in range(start, stop, size):
            e = min(stop, s + size)
            yield s, e, self.chunk(s, e)

    def rows(self, index: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The given rows (any order) as a ``(len(index), d)`` float32 tensor on the device (written into
        ``out`` when given: a reused buffer avoids the page faults of a fresh large allocation)."""
        if self.tensor is not None:
            idx = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index,
                                  dtype=torch.int64, device=self.device)
            # index_select: ~20x faster than tensor[idx] on CPU (measured)
            return self.tensor.index_select(0, idx) if out is None else torch.index_select(self.tensor, 0, idx,
                                                                                           out=out)
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        block = torch.from_numpy(np.ascontiguousarray(self.memmap[idx], dtype=np.float32)).to(self.device)
        return block if out is None else out.copy_(block)

    def numpy_or_memmap(self) -> np.ndarray:
        """The data as a NumPy array (the memmap itself, or a CPU view of the tensor)."""
        if self.memmap is not None:
            return self.memmap
        return self.tensor.cpu().numpy()

