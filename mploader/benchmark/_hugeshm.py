"""Provide a tmpfs mounted with ``huge=always`` for the ``mploader-hugeshm`` loader.

The harness mounts one under the temporary directory when it runs as root and ``mount`` succeeds,
and unmounts it when the benchmark ends, also on error or Ctrl-C. Otherwise the loader is skipped
with the reason, unless ``--hugeshm-dir`` names a directory on such a tmpfs that an administrator
mounted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["HugePageDirectory", "huge_page_directory", "mount_options"]

_HUGE_PAGE_BYTES = 2 * 1024 * 1024
# Room beyond the segment, for tmpfs rounding each file up to whole huge pages.
_MARGIN_BYTES = 64 * 1024 * 1024
_COMMAND_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class HugePageDirectory:
    """A directory on a huge-page tmpfs (``path``), or the reason there is none (``skip_reason``)."""

    path: str | None
    skip_reason: str | None = None
    mounted_by_harness: bool = False
    mount_options: str | None = None


def mount_options(directory: str) -> tuple[str, str] | None:
    """Return (filesystem type, superblock options) of the mount holding ``directory``, or None."""
    target = os.path.realpath(directory)
    best: tuple[str, str, str] | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        mount_point = fields[4]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        # Later lines mount over earlier ones at the same point, so >= keeps the last.
        if inside and (best is None or len(mount_point) >= len(best[0])):
            best = (mount_point, fields[separator + 1], fields[separator + 3] if len(fields) > separator + 3 else "")
    return None if best is None else (best[1], best[2])


def _huge_option(options: str) -> str | None:
    for option in options.split(","):
        if option.startswith("huge="):
            return option.removeprefix("huge=")
    return None


def _check_existing(directory: str) -> HugePageDirectory:
    if not os.path.isdir(directory):
        return HugePageDirectory(None, f"--hugeshm-dir {directory} is not a directory")
    found = mount_options(directory)
    if found is None or found[0] != "tmpfs":
        kind = found[0] if found else "unknown"
        return HugePageDirectory(None, f"--hugeshm-dir {directory} is on {kind}, not on a tmpfs")
    huge = _huge_option(found[1])
    if huge not in ("always", "within_size"):
        return HugePageDirectory(
            None, f"--hugeshm-dir {directory} is on a tmpfs mounted with huge={huge or 'never'}; mount it with "
            "huge=always"
        )
    return HugePageDirectory(directory, mount_options=found[1])


def _unmount(directory: str) -> None:
    try:
        completed = subprocess.run(["umount", directory], capture_output=True, text=True,
                                   timeout=_COMMAND_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"warning: failed to unmount {directory}: {exc}; run `umount {directory}`", file=sys.stderr)
        return
    if completed.returncode != 0:
        print(f"warning: failed to unmount {directory}: {completed.stderr.strip()}; run `umount {directory}`",
              file=sys.stderr)
        return
    os.rmdir(directory)


@contextlib.contextmanager
def huge_page_directory(size_bytes: int, existing: str | None = None) -> Iterator[HugePageDirectory]:
    """Yield a directory on a ``huge=always`` tmpfs that can hold a segment of ``size_bytes``.

    With ``existing``, that directory is checked and used as it is. Otherwise a tmpfs is mounted on a
    new temporary directory and unmounted, and the directory removed, when the context exits.
    """
    if existing is not None:
        yield _check_existing(existing)
        return
    if os.geteuid() != 0:
        yield HugePageDirectory(
            None, "the harness runs without root, so it cannot mount a tmpfs; mount one with "
            "`mount -t tmpfs -o huge=always,size=SIZE tmpfs DIR` and pass --hugeshm-dir DIR"
        )
        return
    if shutil.which("mount") is None or shutil.which("umount") is None:
        yield HugePageDirectory(None, "mount or umount is not on PATH")
        return

    pages = -(-(size_bytes + _MARGIN_BYTES) // _HUGE_PAGE_BYTES)
    directory = tempfile.mkdtemp(prefix="mploader-bench-hugeshm-")
    command = ["mount", "-t", "tmpfs", "-o", f"huge=always,size={pages * _HUGE_PAGE_BYTES},mode=0700", "tmpfs",
               directory]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        os.rmdir(directory)
        yield HugePageDirectory(None, f"`{' '.join(command)}` failed: {exc}")
        return
    if completed.returncode != 0:
        os.rmdir(directory)
        yield HugePageDirectory(None, f"`{' '.join(command)}` failed: {completed.stderr.strip()}")
        return

    try:
        found = mount_options(directory)
        if found is None or found[0] != "tmpfs" or _huge_option(found[1]) != "always":
            # The kernel accepted the mount but ignores huge pages (no CONFIG_TRANSPARENT_HUGEPAGE).
            yield HugePageDirectory(None, f"the tmpfs mounted on {directory} has options {found}, not huge=always")
        else:
            yield HugePageDirectory(directory, mounted_by_harness=True, mount_options=found[1])
    finally:
        _unmount(directory)
