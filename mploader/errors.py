"""Exceptions raised by mploader.

Every problem with a file's bytes is a :class:`CheckpointError`, which is a ``ValueError`` that
carries the file's path and, where there is one, the absolute byte offset of the problem.
"""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "CheckpointError",
    "CrcMismatchError",
    "DecryptionError",
    "SharedMemoryFullError",
    "WorkerCrashedError",
]


class CheckpointError(ValueError):
    """A checkpoint file is invalid, truncated or not what it claims to be.

    Parameters
    ----------
    path : str or os.PathLike
        The file whose bytes are wrong.
    message : str
        What is wrong and, where it helps, what to do.
    offset : int, optional
        Absolute byte offset in the file where the problem was found.
    """

    def __init__(self, path: str | os.PathLike[str], message: str, offset: int | None = None) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = message
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{self.path}{where}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str, int | None]]:
        # Exceptions cross process boundaries by pickling; keep the fields, not only the text.
        return (type(self), (self.path, self.reason, self.offset))


class DecryptionError(CheckpointError):
    """An encrypted checkpoint cannot be decrypted: wrong key, wrong mode, or damaged frames."""


class CrcMismatchError(CheckpointError):
    """The CRC32 stored in a checkpoint's trailer does not match its contents."""


class SharedMemoryFullError(MemoryError):
    """The shared-memory filesystem has too little free space for a load."""


class WorkerCrashedError(BrokenProcessPool):
    """A worker process died while it was loading a checkpoint."""
