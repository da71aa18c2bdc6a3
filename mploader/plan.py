"""Pure planning: where each entry lands in the destination buffer, and how the bytes are split.

A load copies a set of source byte ranges into one destination buffer. :func:`layout` gives every
array part an aligned place in that buffer, and :func:`split_balanced` cuts the copy into tasks of
nearly equal byte counts, splitting a range where needed so that one large tensor can be shared
among workers. Nothing here touches a file or a process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from .formats.index import Entry

__all__ = ["ALIGN_BYTES", "Layout", "Piece", "cover_span", "layout", "split_balanced", "task_count_for"]

# Each array starts on a 64-byte boundary: the cache-line size on x86-64 and AArch64, and enough
# for every numpy dtype and for SIMD loads.
ALIGN_BYTES = 64

# A task is at most this large. Smaller tasks balance better on a busy machine and let a cancel
# take effect sooner, but each costs one round trip to a worker (well under a millisecond).
MAX_TASK_BYTES = 64 * 1024 * 1024

# Cuts inside a range fall on a page boundary of the destination where possible, so each page is
# filled by one worker.
_CUT_ALIGN_BYTES = 4096


class Piece(NamedTuple):
    """Copy ``length_bytes`` from ``source_offset`` in a file to ``dest_offset`` in the buffer."""

    source_offset: int
    length_bytes: int
    dest_offset: int


class Layout(NamedTuple):
    """Destination offsets of every entry part and the pieces that fill them."""

    part_offsets: list[list[int]]  # per entry, per part: offset in the destination buffer
    pieces_by_path: dict[str, list[Piece]]  # sorted by source offset
    total_bytes: int


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def layout(entries: Sequence[Entry]) -> Layout:
    """Place every part of ``entries`` in one buffer, in entry order, each part aligned.

    A part's ranges are placed back to back, so a parameter stored in several records, or a map
    tensor split across records, becomes one contiguous array.
    """
    offset = 0
    part_offsets: list[list[int]] = []
    pieces_by_path: dict[str, list[Piece]] = {}
    for entry in entries:
        offsets = []
        pieces = pieces_by_path.setdefault(entry.path, [])
        for part in entry.parts:
            offset = _align_up(offset, ALIGN_BYTES)
            offsets.append(offset)
            for source_offset, length_bytes in part.ranges:
                if length_bytes:
                    pieces.append(Piece(source_offset, length_bytes, offset))
                offset += length_bytes
        part_offsets.append(offsets)
    for pieces in pieces_by_path.values():
        pieces.sort()
    return Layout(part_offsets, pieces_by_path, offset)


def task_count_for(total_bytes: int, worker_count: int) -> int:
    """Return how many tasks to cut ``total_bytes`` into for ``worker_count`` workers.

    At least one task per worker, a multiple of the worker count so that every worker gets the same
    share, and ``ceil(total_bytes / count)`` at most MAX_TASK_BYTES. split_balanced may still
    add up to 4095 bytes to a task to cut on a page boundary.
    """
    if total_bytes <= 0:
        return 1
    rounds = max(1, math.ceil(total_bytes / (MAX_TASK_BYTES * worker_count)))
    return worker_count * rounds


def split_balanced(pieces: Sequence[Piece], task_count: int) -> list[list[Piece]]:
    """Cut ``pieces`` into at most ``task_count`` consecutive groups of nearly equal size.

    Pieces keep their order. A piece that straddles a boundary is split, at a 4 KiB-aligned
    destination offset where the piece is large enough, so a large tensor is shared among tasks.
    Empty groups are dropped.

    Returns
    -------
    list of list of Piece
        Groups that together cover exactly the input bytes. With ``target = ceil(total /
        task_count)``, every group contains at most ``target + 4095`` bytes and every group but
        the last at least ``target - 4095``. Because a cut may add up to 4095 bytes to its group,
        fewer than ``task_count`` groups can come back, but only when ``target`` is less than
        ``4095 + task_count`` bytes.
    """
    if task_count < 1:
        raise ValueError(f"task_count must be at least 1, got {task_count}")
    total_bytes = sum(piece.length_bytes for piece in pieces)
    if total_bytes == 0:
        return [list(pieces)] if pieces else []
    target_bytes = math.ceil(total_bytes / task_count)

    groups: list[list[Piece]] = [[]]
    # Group i (counting from 1) closes at the first cut at or after byte i * target_bytes of the
    # input. A page-aligned cut that overshoots one group by up to 4095 bytes thus shortens the
    # next group, instead of the overshoots adding up and starving the last group.
    assigned_bytes = 0
    for piece in pieces:
        remaining = piece
        while remaining.length_bytes:
            room = len(groups) * target_bytes - assigned_bytes
            while room <= 0 and len(groups) < task_count:
                groups.append([])
                room += target_bytes
            if remaining.length_bytes <= room or len(groups) == task_count:
                groups[-1].append(remaining)
                assigned_bytes += remaining.length_bytes
                break
            # A range read only for its CRC has no destination, so any cut will do.
            cut = room if remaining.dest_offset < 0 else _cut_point(remaining, room)
            groups[-1].append(Piece(remaining.source_offset, cut, remaining.dest_offset))
            assigned_bytes += cut
            next_dest = remaining.dest_offset + cut if remaining.dest_offset >= 0 else remaining.dest_offset
            remaining = Piece(remaining.source_offset + cut, remaining.length_bytes - cut, next_dest)
    return [group for group in groups if group]


def _cut_point(piece: Piece, room: int) -> int:
    """Return how many bytes of ``piece`` go before a cut near ``room`` bytes in.

    The cut falls on a page boundary of the destination: the last one within ``room`` if there is
    one, else the first one after it, else the piece stays whole.
    """
    end = piece.dest_offset + room
    aligned_down = end - end % _CUT_ALIGN_BYTES
    if aligned_down > piece.dest_offset:
        return aligned_down - piece.dest_offset
    aligned_up = aligned_down + _CUT_ALIGN_BYTES
    if aligned_up < piece.dest_offset + piece.length_bytes:
        return aligned_up - piece.dest_offset
    return piece.length_bytes


def cover_span(pieces: Sequence[Piece], end_bytes: int) -> list[Piece]:
    """Fill the gaps between sorted ``pieces`` so that together they cover ``[0, end_bytes)``.

    The fillers have ``dest_offset`` -1: they are read only to extend a CRC over the whole file.
    """
    covered: list[Piece] = []
    position = 0
    for piece in pieces:
        if piece.source_offset > position:
            covered.append(Piece(position, piece.source_offset - position, -1))
        covered.append(piece)
        position = max(position, piece.source_offset + piece.length_bytes)
    if position < end_bytes:
        covered.append(Piece(position, end_bytes - position, -1))
    return covered
