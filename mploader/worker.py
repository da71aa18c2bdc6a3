"""Code that runs inside worker processes: copy file byte ranges into a shared-memory segment.

A task is a plain tuple of paths, offsets and lengths, never tensor data. The worker opens the
checkpoint and the segment by path, reads its pieces with ``preadv`` straight into the segment's
mapping, and returns its process id, the CRC32 of what it read (when asked) and the byte count.
The same :func:`copy_pieces` serves the in-process path, with an anonymous buffer as destination.

This module imports no numpy and nothing heavy so that workers start fast.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Sequence
from typing import NamedTuple

from .errors import CheckpointError

__all__ = [
    "CopyTask",
    "DecryptTask",
    "FileIdentity",
    "copy_pieces",
    "file_identity",
    "run_copy_task",
    "run_decrypt_task",
]

# Gaps between wanted ranges up to this size (record headers, mostly) are read into a scratch
# buffer so that neighbouring small tensors come in with one preadv call instead of one each.
_MAX_GAP_BYTES = 64 * 1024
# Linux allows 1024 buffers per preadv call (IOV_MAX); stay well below it.
_MAX_BUFFERS_PER_CALL = 512
# Bytes hashed through the scratch buffer at a time when a range is read only for its CRC.
_SCRATCH_BYTES = 1024 * 1024


class FileIdentity(NamedTuple):
    """Identity of one version of a file: a replaced or resized file differs in one field."""

    device: int
    inode: int
    size_bytes: int
    mtime_ns: int


class CopyTask(NamedTuple):
    """One worker task: copy ``pieces`` of ``file_path`` into the segment at ``segment_path``.

    ``pieces`` are (source_offset, length_bytes, dest_offset) sorted by source offset. A negative
    dest_offset means the range is read only to extend the CRC. With ``want_crc``, the pieces are
    contiguous in the file and the task returns the CRC32 of the whole span.
    """

    segment_path: str
    segment_bytes: int
    file_path: str
    identity: FileIdentity
    pieces: Sequence[tuple[int, int, int]]
    want_crc: bool


class DecryptTask(NamedTuple):
    """One worker task: decrypt one frame of ``file_path`` into the staging segment.

    ``frame`` is a :class:`mploader.formats.crypto.Frame` as a plain tuple; its plaintext goes to
    ``frame.plain_offset`` in the segment.
    """

    segment_path: str
    segment_bytes: int
    file_path: str
    identity: FileIdentity
    mode: str
    key: bytes
    frame: tuple[int, int, int, int, bytes, bytes, int, int]
    want_crc: bool

    def __repr__(self) -> str:
        # The key must never reach a log or a traceback.
        return f"DecryptTask(file_path={self.file_path!r}, mode={self.mode!r}, frame={self.frame[0]})"


class TaskResult(NamedTuple):
    """Result of one worker task."""

    pid: int
    crc: int | None
    bytes_read: int


def file_identity(fd: int) -> FileIdentity:
    """Return the identity of the open file ``fd``."""
    status = os.fstat(fd)
    return FileIdentity(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _check_identity(fd: int, path: str, expected: FileIdentity) -> None:
    actual = file_identity(fd)
    if actual != expected:
        raise CheckpointError(
            path,
            f"the file changed while it was being loaded (size {expected.size_bytes} -> "
            f"{actual.size_bytes} bytes, inode {expected.inode} -> {actual.inode}); load it again "
            "once it is no longer being written",
        )


def _preadv_full(fd: int, path: str, buffers: list[memoryview], offset: int) -> None:
    """Fill ``buffers`` from consecutive file bytes at ``offset``, retrying short reads."""
    expected_bytes = sum(len(buffer) for buffer in buffers)
    done_bytes = 0
    while buffers:
        count = os.preadv(fd, buffers, offset + done_bytes)
        if count == 0:
            raise CheckpointError(
                path,
                f"expected {expected_bytes} bytes, received {done_bytes}: the file ends early; it "
                "was truncated or is being rewritten",
                offset + done_bytes,
            )
        done_bytes += count
        while buffers and count >= len(buffers[0]):
            count -= len(buffers.pop(0))
        if count:
            buffers[0] = buffers[0][count:]


def copy_pieces(
    fd: int, path: str, pieces: Sequence[tuple[int, int, int]], dest: memoryview, want_crc: bool
) -> int | None:
    """Copy every piece from the file ``fd`` into ``dest``; return the CRC32 when ``want_crc``.

    Neighbouring pieces separated by small gaps are read with one ``preadv`` call. The CRC covers
    the pieces in order, so with ``want_crc`` the caller passes a contiguous span.
    """
    scratch = memoryview(bytearray(_SCRATCH_BYTES))
    crc = 0
    index = 0
    while index < len(pieces):
        source_offset, length_bytes, dest_offset = pieces[index]
        if dest_offset < 0:
            # A range read only for the CRC goes through the scratch buffer.
            done_bytes = 0
            while done_bytes < length_bytes:
                chunk = scratch[: min(_SCRATCH_BYTES, length_bytes - done_bytes)]
                _preadv_full(fd, path, [chunk], source_offset + done_bytes)
                crc = zlib.crc32(chunk, crc)
                done_bytes += len(chunk)
            index += 1
            continue

        run_start = source_offset
        position = source_offset
        buffers: list[memoryview] = []
        while index < len(pieces) and len(buffers) < _MAX_BUFFERS_PER_CALL - 1:
            source_offset, length_bytes, dest_offset = pieces[index]
            gap_bytes = source_offset - position
            if dest_offset < 0 or gap_bytes < 0 or (buffers and gap_bytes > _MAX_GAP_BYTES):
                break
            if gap_bytes:
                buffers.append(scratch[:gap_bytes])
            buffers.append(dest[dest_offset : dest_offset + length_bytes])
            position = source_offset + length_bytes
            index += 1
        if want_crc:
            # _preadv_full consumes its list, so keep the buffers to hash afterwards.
            hashed = list(buffers)
        _preadv_full(fd, path, buffers, run_start)
        if want_crc:
            for buffer in hashed:
                crc = zlib.crc32(buffer, crc)
    return crc if want_crc else None


def run_copy_task(task: CopyTask) -> TaskResult:
    """Run one copy task in a worker process."""
    fd = os.open(task.file_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check_identity(fd, task.file_path, task.identity)
        written = [(dest, length) for _, length, dest in task.pieces if dest >= 0 and length]
        start = min((dest for dest, _ in written), default=0)
        end = max((dest + length for dest, length in written), default=0)
        mapping = _map_segment(task.segment_path, task.segment_bytes, start, end - start)
        try:
            view = memoryview(mapping)
            crc = copy_pieces(fd, task.file_path, task.pieces, view, task.want_crc)
            view.release()
        finally:
            _close_mapping(mapping)
        _check_identity(fd, task.file_path, task.identity)
    finally:
        os.close(fd)
    return TaskResult(os.getpid(), crc, sum(length for _, length, _ in task.pieces))


def _map_segment(path: str, size_bytes: int, start: int, length_bytes: int) -> mmap.mmap:
    """Map a segment after allocating the pages of ``[start, start + length_bytes)``.

    ``posix_fallocate`` turns a full shared-memory filesystem into ``OSError(ENOSPC)`` here instead
    of SIGBUS on first write.
    """
    segment_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if length_bytes:
            os.posix_fallocate(segment_fd, start, length_bytes)
        return mmap.mmap(segment_fd, size_bytes)
    finally:
        os.close(segment_fd)


def _close_mapping(mapping: mmap.mmap) -> None:
    try:
        mapping.close()
    except BufferError:
        # A traceback still references views into the mapping, which is unmapped when they go.
        pass


def run_decrypt_task(task: DecryptTask) -> TaskResult:
    """Decrypt one frame in a worker process; return the CRC32 of its plaintext when asked."""
    from .formats.crypto import Frame, decrypt_frame_into

    frame = Frame._make(task.frame)
    fd = os.open(task.file_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check_identity(fd, task.file_path, task.identity)
        mapping = _map_segment(task.segment_path, task.segment_bytes, frame.plain_offset, frame.plain_len_bytes)
        try:
            view = memoryview(mapping)
            out = view[frame.plain_offset : frame.plain_offset + frame.plain_len_bytes]
            crc = decrypt_frame_into(
                fd, task.mode, task.key, frame, out, path=task.file_path, want_crc=task.want_crc
            )
            out.release()
            view.release()
        finally:
            _close_mapping(mapping)
        _check_identity(fd, task.file_path, task.identity)
    finally:
        os.close(fd)
    return TaskResult(os.getpid(), crc, frame.cipher_len_bytes)


def initialize_worker() -> None:
    """Prepare a new worker process: leave Ctrl-C to the parent, which cancels the load."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
