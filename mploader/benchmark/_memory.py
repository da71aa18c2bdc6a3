"""Sample the memory held by a process tree: anonymous pages plus shared-memory objects.

The benchmark harness runs one :class:`TreeMemorySampler` per loader subprocess. It samples from the
harness process, outside the measured tree, so it neither takes the GIL of the loader nor shows up
in the loader's memory. Each sample is

* the sum of anonymous resident bytes (``RssAnon``, computed from ``/proc/PID/statm``) over the
  root process and all its descendants, found through ``/proc/PID/task/TID/children``; plus
* the allocated bytes (``st_blocks * 512``) of every distinct shared-memory object that a process
  of the tree maps with ``MAP_SHARED``, or that is still linked in the shared-memory directory under
  a name the tree creates. Objects are counted once by (device, inode), however many processes map
  them and whether or not a page is in any page table yet.

``RssAnon`` and the shared-memory page count are separate kernel counters, so no page is counted
twice between the two terms. File-backed pages (library code, page cache of the checkpoint) are not
counted: they are reclaimable and shared with the rest of the system.

NOTE: a copy-on-write page shared by the forkserver and the workers it forked is counted once per
process, so the anonymous term overstates a worker pool. The excess was about 4 MiB per worker,
measured with a pool of two under CPython 3.11. Exact proportional counts (``Pss_Anon`` in ``/proc/PID/smaps_rollup``)
cost a page-table walk per read, about 17 ms for a process that maps 1.5 GiB on the development VM,
which is too slow to sample every few milliseconds.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import NamedTuple

__all__ = ["MemorySample", "TreeMemorySampler", "tree_process_ids"]

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# Shared mappings with these names live in the kernel's internal shmem mount, which is not listed
# in /proc/self/mountinfo: memfd_create files, System V segments and MAP_SHARED|MAP_ANONYMOUS memory.
_INTERNAL_SHMEM_PREFIXES = (b"/memfd:", b"/SYSV", b"/dev/zero (deleted)")
# A MAP_SHARED line of /proc/PID/maps ("address perms offset dev inode pathname"), matched in one
# pass over the whole file because most lines are private library mappings.
_SHARED_MAPPING = re.compile(rb"^([0-9a-f]+-[0-9a-f]+) ...s [0-9a-f]+ ([0-9a-f]+):([0-9a-f]+) \d+ +(.*)$", re.MULTILINE)


class MemorySample(NamedTuple):
    """One reading of the tree's memory. ``time`` is ``time.monotonic()`` in seconds."""

    time: float
    anonymous_bytes: int
    shared_memory_bytes: int
    process_count: int

    @property
    def total_bytes(self) -> int:
        return self.anonymous_bytes + self.shared_memory_bytes


def _tmpfs_devices() -> set[tuple[int, int]]:
    """Return the (major, minor) device numbers of every mounted tmpfs."""
    devices: set[tuple[int, int]] = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return devices
    for line in lines:
        fields = line.split()
        try:
            separator = fields.index("-")
        except ValueError:
            continue
        if fields[separator + 1] != "tmpfs":
            continue
        major, minor = fields[2].split(":")
        devices.add((int(major), int(minor)))
    return devices


def tree_process_ids(root_pid: int) -> list[int]:
    """Return ``root_pid`` and all its live descendants, parents before children.

    Uses ``/proc/PID/task/TID/children`` (Linux 3.5+ with CONFIG_PROC_CHILDREN). A child started by
    any thread of a process is listed under that thread, so every thread is read.
    """
    found = [root_pid]
    index = 0
    while index < len(found):
        pid = found[index]
        index += 1
        try:
            thread_ids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for thread_id in thread_ids:
            try:
                with open(f"/proc/{pid}/task/{thread_id}/children", encoding="ascii") as file:
                    text = file.read()
            except OSError:
                continue
            found.extend(int(child) for child in text.split() if int(child) not in found)
    return found


def _read_statm(pid: int) -> tuple[int, int] | None:
    """Return (virtual size in pages, anonymous resident bytes) of ``pid``, or None if it is gone.

    In /proc/PID/statm, "resident" is anonymous + file + shmem pages and "shared" is file + shmem
    pages, so their difference is the RssAnon of /proc/PID/status, read at a fraction of the cost.
    """
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            fields = file.read().split()
    except OSError:
        return None
    return int(fields[0]), (int(fields[1]) - int(fields[2])) * _PAGE_BYTES


class TreeMemorySampler:
    """Sample the memory of ``root_pid``'s process tree every ``interval_seconds`` on a thread.

    Parameters
    ----------
    root_pid : int
        The process whose tree is measured; sampling stops by itself when it exits.
    interval_seconds : float
        Time between the starts of two samples. One sample of a tree of five processes costs a few
        hundred microseconds of CPU time.
    shm_directory : str
        The shared-memory directory scanned for linked segments.
    linked_prefixes : tuple of str
        Name prefixes of segments in ``shm_directory`` that belong to the tree when followed by
        ``"{pid}-"`` of one of its processes (mploader names its segments ``mploader-{pid}-...``).
    """

    def __init__(
        self,
        root_pid: int,
        interval_seconds: float,
        shm_directory: str = "/dev/shm",
        linked_prefixes: tuple[str, ...] = ("mploader-", "mploader-bench-floor-"),
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be positive, got {interval_seconds}")
        self.root_pid = root_pid
        self.interval_seconds = interval_seconds
        self.shm_directory = shm_directory
        self.linked_prefixes = linked_prefixes
        self.samples: list[MemorySample] = []
        self.cpu_seconds = 0.0
        self.max_process_count = 0
        self._tmpfs_devices = _tmpfs_devices()
        # pid -> (virtual size in pages when the maps were read, shared-memory address ranges)
        self._shared_ranges: dict[int, tuple[int, list[str]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"memory-sampler-{root_pid}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread. Safe to call twice."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        cpu_start = time.thread_time()
        next_time = time.monotonic()
        while not self._stop.is_set():
            sample = self.sample()
            if sample is None:
                break
            self.samples.append(sample)
            next_time += self.interval_seconds
            delay = next_time - time.monotonic()
            if delay < 0:
                # Sampling fell behind because the machine is busy, so resume the schedule from now.
                next_time = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)
        self.cpu_seconds = time.thread_time() - cpu_start

    def sample(self) -> MemorySample | None:
        """Take one sample now; return None once the root process has exited."""
        now = time.monotonic()
        pids = tree_process_ids(self.root_pid)
        anonymous = 0
        objects: dict[tuple[int, int], int] = {}
        for pid in pids:
            statm = _read_statm(pid)
            if statm is None:
                if pid == self.root_pid:
                    return None
                continue
            virtual_pages, anonymous_bytes = statm
            anonymous += anonymous_bytes
            self._add_mapped_objects(pid, virtual_pages, objects)
        self._add_linked_objects(pids, objects)
        for pid in set(self._shared_ranges) - set(pids):
            del self._shared_ranges[pid]
        self.max_process_count = max(self.max_process_count, len(pids))
        return MemorySample(now, anonymous, sum(objects.values()), len(pids))

    def _add_mapped_objects(self, pid: int, virtual_pages: int, objects: dict[tuple[int, int], int]) -> None:
        """Add the shared-memory objects that ``pid`` maps to ``objects``.

        Parsing /proc/PID/maps costs far more than the rest of a sample, so the shared-memory
        address ranges of each process are cached and read again only when its virtual size changes
        or a cached range is no longer mapped. A range that now maps another object is still right,
        because /proc/PID/map_files resolves the range afresh.
        """
        cached = self._shared_ranges.get(pid)
        fresh = cached is None or cached[0] != virtual_pages
        if fresh:
            cached = self._shared_ranges[pid] = (virtual_pages, self._read_shared_ranges(pid))
        assert cached is not None
        for address_range in cached[1]:
            try:
                status = os.stat(f"/proc/{pid}/map_files/{address_range}")
            except OSError:
                if fresh:
                    continue
                # The cache is stale: read the maps again once.
                self._shared_ranges.pop(pid, None)
                self._add_mapped_objects(pid, virtual_pages, objects)
                return
            objects[(status.st_dev, status.st_ino)] = status.st_blocks * 512

    def _read_shared_ranges(self, pid: int) -> list[str]:
        """Return the address ranges of ``pid``'s MAP_SHARED mappings of shared memory."""
        try:
            with open(f"/proc/{pid}/maps", "rb") as file:
                text = file.read()
        except OSError:
            return []
        ranges = []
        for match in _SHARED_MAPPING.finditer(text):
            address_range, major, minor, pathname = match.groups()
            device = (int(major, 16), int(minor, 16))
            if device in self._tmpfs_devices or pathname.startswith(_INTERNAL_SHMEM_PREFIXES):
                ranges.append(address_range.decode("ascii"))
        return ranges

    def _add_linked_objects(self, pids: list[int], objects: dict[tuple[int, int], int]) -> None:
        try:
            names = os.listdir(self.shm_directory)
        except OSError:
            return
        owned = tuple(f"{prefix}{pid}-" for prefix in self.linked_prefixes for pid in pids)
        for name in names:
            if not name.startswith(owned):
                continue
            try:
                status = os.stat(os.path.join(self.shm_directory, name))
            except OSError:
                continue
            objects[(status.st_dev, status.st_ino)] = status.st_blocks * 512
