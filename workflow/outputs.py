"""A ``strata`` command's outputs: their folders made before any work, nothing partial left behind on failure."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from workflow.errors import StrataError


def output_files(args: argparse.Namespace) -> list[Path]:
    """The files a command writes: the values of the argument names listed in ``args.outputs``."""
    files = []
    for name in args.outputs:
        values = getattr(args, name, None)
        files += [Path(v) for v in (values if isinstance(values, list) else [values]) if v]
    return files


def _stamp(path: Path) -> tuple[int, int] | None:
    """A file's identity and version (inode, mtime); None when absent. Atomic writes change the inode."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


class JobOutputs:
    """A command's outputs: their folders made before any work, and everything it made removed on failure.

    Folders that did not exist are created (an impossible one is a :class:`StrataError` naming the path) and
    removed again on failure when empty. A failed command removes its output files, those of an earlier run
    included (no stale results); an output folder (``curate --diagnostics``) loses the files the command
    wrote into it, and the folder itself when the command created it.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.files = output_files(args)
        self.folder = Path(args.diagnostics) if getattr(args, "diagnostics", None) else None
        self.created: list[Path] = []  # folders this command created, parents first
        self.before: dict[str, tuple[int, int] | None] = {}  # the output folder's files before the command
        if self.folder is not None and self.folder.is_dir():
            self.before = {f.name: _stamp(f) for f in self.folder.iterdir() if f.is_file()}

    def prepare(self) -> None:
        from workflow.tables import output_dir

        for path in self.files:
            if path.is_dir():
                raise StrataError("the output path is a folder", where=str(path), fix="name a file to write.")
            self._make(path.parent, path, output_dir)
        if self.folder is not None:
            if self.folder.exists() and not self.folder.is_dir():
                raise StrataError("the output folder is a file", where=str(self.folder),
                                  fix="name a folder (or a path that does not exist yet).")
            self._make(self.folder, self.folder / "x", output_dir)
        for folder in {path.parent for path in self.files} | ({self.folder} if self.folder else set()):
            if not os.access(folder, os.W_OK | os.X_OK):
                raise StrataError(f"the output folder {str(folder)!r} is not writable", where=str(folder),
                                  fix="choose an output path in a folder you can write to.")

    def _make(self, folder: Path, probe: Path, make: Callable[[Path], Path]) -> None:
        missing = []
        while not folder.exists() and folder.parent != folder:
            missing.append(folder)
            folder = folder.parent
        make(probe)
        self.created += [f for f in reversed(missing) if f not in self.created]

    def remove(self) -> None:
        for path in self.files:
            with contextlib.suppress(OSError):
                if path.is_file() or path.is_symlink():
                    path.unlink()
        if self.folder is not None and self.folder.is_dir():
            for f in self.folder.iterdir():
                with contextlib.suppress(OSError):
                    if f.is_file() and self.before.get(f.name) != _stamp(f):
                        f.unlink()
        for folder in reversed(self.created):  # deepest first; only empty ones (another job may share them)
            with contextlib.suppress(OSError):
                folder.rmdir()
