"""One error type for every user-facing failure.

Each stage catches :class:`StrataError` in the command-line entry point and prints a single
line that names the file or config field, what is wrong and how to fix it, then exits 2.
"""

from __future__ import annotations


class StrataError(Exception):
    """A user-facing error: bad config, bad input data, impossible request.

    Args:
        message: What is wrong, in one sentence.
        where: The file and/or config field concerned (e.g. ``"configs/x.yaml: curations.hk.target_size"``).
        fix: What the user should do about it.
    """

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text
