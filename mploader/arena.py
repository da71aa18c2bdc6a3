"""One load's shared-memory segment: a file in a tmpfs directory, mapped by its owner and workers.

The coordinator creates the segment with mode 0600 (readable and writable by its owner only) after
checking that the filesystem has room for it. Workers open it by path and fill it, and the
coordinator unlinks it as soon as the workers are done. From then on nothing is left in the
directory even if the process is killed; the pages live until the last mapping goes, which is when
the last array built over them is garbage-collected.

The directory is ``/dev/shm`` unless ``MPLOADER_SHM_DIR`` names another, for example a tmpfs
mounted with ``huge=always``.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets

from .errors import SharedMemoryFullError

__all__ = ["Segment", "shm_directory"]

logger = logging.getLogger("mploader")

SEGMENT_PREFIX = "mploader-"
_DEFAULT_DIRECTORY = "/dev/shm"


def shm_directory() -> str:
    """Return the directory for shared-memory segments."""
    return os.environ.get("MPLOADER_SHM_DIR") or _DEFAULT_DIRECTORY


class Segment:
    """A shared-memory file of ``size_bytes``, owned by the coordinator of one load.

    Parameters
    ----------
    size_bytes : int
        Size of the segment. A zero size is rounded up to one byte, since a mapping cannot be empty.
    directory : str, optional
        Where to create it; :func:`shm_directory` by default.

    Raises
    ------
    SharedMemoryFullError
        If the filesystem has fewer free bytes than the segment needs.
    """

    def __init__(self, size_bytes: int, directory: str | None = None) -> None:
        self.size_bytes = max(1, size_bytes)
        directory = directory or shm_directory()
        self._check_free_space(directory)
        self.path = os.path.join(directory, f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._linked = True
        try:
            os.ftruncate(fd, self.size_bytes)
            self.mapping: mmap.mmap | None = mmap.mmap(fd, self.size_bytes)
        except BaseException:
            self.unlink()
            raise
        finally:
            os.close(fd)
        logger.debug("created shared-memory segment %s of %d bytes", self.path, self.size_bytes)

    def _check_free_space(self, directory: str) -> None:
        try:
            stats = os.statvfs(directory)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"shared-memory directory {directory} does not exist; create it or set "
                "MPLOADER_SHM_DIR to an existing tmpfs directory"
            ) from exc
        free_bytes = stats.f_bavail * stats.f_frsize
        if free_bytes < self.size_bytes:
            raise SharedMemoryFullError(
                f"the load needs {self.size_bytes} bytes of shared memory but {directory} has only "
                f"{free_bytes} bytes free; enlarge it (for Docker, --shm-size), set MPLOADER_SHM_DIR "
                "to a larger tmpfs, load fewer tensors with choice_func, or pass workers=0 to load "
                "in-process without shared memory"
            )

    def unlink(self) -> None:
        """Remove the segment's name. Existing mappings stay valid. Safe to call twice."""
        if self._linked:
            self._linked = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            logger.debug("unlinked shared-memory segment %s", self.path)

    def close(self) -> None:
        """Unlink the segment and drop the coordinator's mapping. Safe to call twice.

        Arrays built over the mapping keep it alive; in that case the memory is released when the
        last of them is garbage-collected.
        """
        self.unlink()
        mapping, self.mapping = self.mapping, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass  # arrays still view it; dropping our reference is enough
