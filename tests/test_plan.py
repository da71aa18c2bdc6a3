"""The planner: where entries land in the destination buffer, and the balanced split of the copy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mploader.formats.index import Entry, TensorIndex
from mploader.plan import ALIGN_BYTES, MAX_TASK_BYTES, Layout, Piece, layout, split_balanced, task_count_for

PAGE_BYTES = 4096


# ----------------------------------------------------------------------------------------------
# split_balanced
# ----------------------------------------------------------------------------------------------


@st.composite
def piece_lists(draw: st.DrawFn) -> list[Piece]:
    """Pieces sorted by source offset, with random lengths (0 included) and random gaps.

    About one piece in six has ``dest_offset`` -1, a range read only to extend a CRC.
    """
    source = draw(st.integers(0, 10_000))
    dest = draw(st.integers(0, 10_000))
    pieces = []
    for _ in range(draw(st.integers(0, 10))):
        length = draw(
            st.one_of(st.just(0), st.integers(1, 100), st.integers(1, 30_000), st.integers(1, 3_000_000))
        )
        crc_only = draw(st.integers(0, 5)) == 0
        pieces.append(Piece(source, length, -1 if crc_only else dest))
        source += length + draw(st.sampled_from([0, 0, 1, 17, 4096, 100_000]))
        if not crc_only:
            dest += length + draw(st.sampled_from([0, 0, 1, 63, 4096, 100_000]))
    return pieces


def merged(pieces: list[Piece]) -> list[Piece]:
    """Join neighbours that continue each other in the source and the destination, and drop empty pieces."""
    result: list[Piece] = []
    for piece in pieces:
        if not piece.length_bytes:
            continue
        if result:
            last = result[-1]
            source_continues = last.source_offset + last.length_bytes == piece.source_offset
            if last.dest_offset < 0:
                dest_continues = piece.dest_offset < 0
            else:
                dest_continues = last.dest_offset + last.length_bytes == piece.dest_offset
            if source_continues and dest_continues:
                result[-1] = Piece(last.source_offset, last.length_bytes + piece.length_bytes, last.dest_offset)
                continue
        result.append(piece)
    return result


def group_sizes(groups: list[list[Piece]]) -> list[int]:
    return [sum(piece.length_bytes for piece in group) for group in groups]


@settings(max_examples=200, deadline=None)
@given(pieces=piece_lists(), task_count=st.integers(1, 40))
def test_split_covers_input(pieces: list[Piece], task_count: int) -> None:
    groups = split_balanced(pieces, task_count)
    output = [piece for group in groups for piece in group]

    assert merged(output) == merged(pieces)
    assert sum(group_sizes(groups)) == sum(piece.length_bytes for piece in pieces)


@settings(max_examples=200, deadline=None)
@given(pieces=piece_lists(), task_count=st.integers(1, 40))
def test_split_order_without_overlap(pieces: list[Piece], task_count: int) -> None:
    output = [piece for group in split_balanced(pieces, task_count) for piece in group]
    for before, after in zip(output, output[1:]):
        assert before.source_offset + before.length_bytes <= after.source_offset


@settings(max_examples=200, deadline=None)
@given(pieces=piece_lists(), task_count=st.integers(1, 40))
def test_split_group_count(pieces: list[Piece], task_count: int) -> None:
    groups = split_balanced(pieces, task_count)
    total_bytes = sum(piece.length_bytes for piece in pieces)

    assert len(groups) <= task_count
    assert all(groups)
    if total_bytes:
        assert all(piece.length_bytes for group in groups for piece in group)
    # There are fewer groups than tasks only when the target is under a page plus task_count bytes.
    if total_bytes and len(groups) < task_count:
        assert math.ceil(total_bytes / task_count) < PAGE_BYTES - 1 + task_count


@settings(max_examples=200, deadline=None)
@given(pieces=piece_lists(), task_count=st.integers(1, 40))
def test_split_group_sizes(pieces: list[Piece], task_count: int) -> None:
    total_bytes = sum(piece.length_bytes for piece in pieces)
    sizes = group_sizes(split_balanced(pieces, task_count))
    if not total_bytes:
        return
    target_bytes = math.ceil(total_bytes / task_count)

    for size in sizes:
        assert size <= target_bytes + PAGE_BYTES - 1
    for size in sizes[:-1]:
        assert size >= target_bytes - (PAGE_BYTES - 1)


@settings(max_examples=200, deadline=None)
@given(pieces=piece_lists(), task_count=st.integers(1, 40))
def test_split_cuts_page_aligned(pieces: list[Piece], task_count: int) -> None:
    # A cut inside a piece with a destination falls on a destination page boundary.
    starts = {piece.source_offset for piece in pieces}
    for group in split_balanced(pieces, task_count):
        for piece in group:
            if piece.source_offset in starts or piece.dest_offset < 0:
                continue
            assert piece.dest_offset % PAGE_BYTES == 0


@pytest.mark.parametrize("task_count", [1, 2, 3, 7, 16, 64])
@pytest.mark.parametrize("dest_offset", [0, 64, 4095])
def test_split_one_huge_piece(task_count: int, dest_offset: int) -> None:
    piece = Piece(1000, 1 << 30, dest_offset)
    groups = split_balanced([piece], task_count)
    target_bytes = math.ceil(piece.length_bytes / task_count)

    assert len(groups) == task_count
    assert merged([part for group in groups for part in group]) == [piece]
    for size in group_sizes(groups):
        assert abs(size - target_bytes) < PAGE_BYTES


def test_split_last_group_not_starved() -> None:
    # Each of the cuts overshoots its target by most of a page. The overshoots must not add up,
    # because each one comes off the next group.
    task_count = 12
    target_bytes = 37_261
    piece = Piece(0, task_count * target_bytes, 1)
    sizes = group_sizes(split_balanced([piece], task_count))

    assert len(sizes) == task_count
    assert sizes[-1] > target_bytes - PAGE_BYTES


def test_split_single_task_keeps_pieces() -> None:
    pieces = [Piece(0, 10, 0), Piece(50, 5000, 64), Piece(6000, 3, 5120)]
    assert split_balanced(pieces, 1) == [pieces]


def test_split_small_pieces_stay_whole() -> None:
    pieces = [Piece(offset * 100, 10, offset * 64) for offset in range(8)]
    groups = split_balanced(pieces, 4)

    assert [piece for group in groups for piece in group] == pieces
    assert group_sizes(groups) == [20, 20, 20, 20]


def test_split_crc_only_piece_cut_exactly() -> None:
    groups = split_balanced([Piece(0, 10_000, -1)], 4)

    assert group_sizes(groups) == [2500, 2500, 2500, 2500]
    assert all(group[0].dest_offset == -1 for group in groups)


def test_split_no_pieces() -> None:
    assert split_balanced([], 3) == []


def test_split_zero_length_pieces() -> None:
    pieces = [Piece(0, 0, 0), Piece(10, 0, 64)]
    groups = split_balanced(pieces, 3)
    assert len(groups) <= 1
    assert sum(group_sizes(groups)) == 0


@pytest.mark.parametrize("task_count", [0, -1])
def test_split_invalid_task_count(task_count: int) -> None:
    with pytest.raises(ValueError, match="task_count"):
        split_balanced([Piece(0, 10, 0)], task_count)


# ----------------------------------------------------------------------------------------------
# layout
# ----------------------------------------------------------------------------------------------


def make_entry(name: str, part_ranges: list[list[tuple[int, int]]], path: str = "a.ckpt") -> Entry:
    parts = tuple(
        TensorIndex("UInt8", np.dtype(np.uint8), (sum(length for _, length in ranges),), tuple(ranges))
        for ranges in part_ranges
    )
    return Entry(name, "map" if len(parts) == 3 else "tensor", parts, path)


@st.composite
def entry_lists(draw: st.DrawFn) -> list[Entry]:
    """Entries of one or three parts, each of one to three ranges, spread over two files."""
    source = 0
    entries = []
    for number in range(draw(st.integers(0, 8))):
        part_ranges = []
        for _ in range(draw(st.sampled_from([1, 3]))):
            ranges = []
            for _ in range(draw(st.integers(1, 3))):
                length = draw(st.one_of(st.just(0), st.integers(1, 200), st.integers(1, 100_000)))
                source += draw(st.integers(1, 50))
                ranges.append((source, length))
                source += length
            part_ranges.append(ranges)
        path = draw(st.sampled_from(["a.ckpt", "b.ckpt"]))
        entries.append(make_entry(f"entry{number}", part_ranges, path))
    return entries


def part_spans(entries: list[Entry], plan: Layout) -> list[tuple[int, int]]:
    """Return (offset, end) in the buffer of every part, in entry order."""
    spans = []
    for entry, offsets in zip(entries, plan.part_offsets):
        for part, offset in zip(entry.parts, offsets):
            spans.append((offset, offset + part.nbytes))
    return spans


@settings(max_examples=100, deadline=None)
@given(entries=entry_lists())
def test_layout_aligned_in_order(entries: list[Entry]) -> None:
    plan = layout(entries)

    assert [len(offsets) for offsets in plan.part_offsets] == [len(entry.parts) for entry in entries]
    spans = part_spans(entries, plan)
    for offset, _ in spans:
        assert offset % ALIGN_BYTES == 0
    for (_, end), (next_offset, _) in zip(spans, spans[1:]):
        assert end <= next_offset


@settings(max_examples=100, deadline=None)
@given(entries=entry_lists())
def test_layout_total_bytes(entries: list[Entry]) -> None:
    plan = layout(entries)
    spans = part_spans(entries, plan)
    part_count = len(spans)

    assert plan.total_bytes == max((end for _, end in spans), default=0)
    assert plan.total_bytes <= sum(entry.nbytes for entry in entries) + (ALIGN_BYTES - 1) * part_count


@settings(max_examples=100, deadline=None)
@given(entries=entry_lists())
def test_layout_ranges_contiguous(entries: list[Entry]) -> None:
    plan = layout(entries)
    by_source = {(path, piece.source_offset): piece for path, pieces in plan.pieces_by_path.items() for piece in pieces}

    for entry, offsets in zip(entries, plan.part_offsets):
        for part, offset in zip(entry.parts, offsets):
            dest = offset
            for source_offset, length_bytes in part.ranges:
                if length_bytes:
                    assert by_source[(entry.path, source_offset)] == Piece(source_offset, length_bytes, dest)
                dest += length_bytes


@settings(max_examples=100, deadline=None)
@given(entries=entry_lists())
def test_layout_pieces_sorted(entries: list[Entry]) -> None:
    plan = layout(entries)
    nonzero_ranges = sum(1 for entry in entries for part in entry.parts for _, length in part.ranges if length)

    assert sum(len(pieces) for pieces in plan.pieces_by_path.values()) == nonzero_ranges
    for pieces in plan.pieces_by_path.values():
        assert pieces == sorted(pieces)
        assert all(piece.length_bytes for piece in pieces)


def test_layout_example() -> None:
    entries = [
        make_entry("weight", [[(100, 10)]]),
        make_entry("table", [[(200, 8)], [(300, 64), (400, 36)], [(500, 0)]]),
        make_entry("bias", [[(600, 4)]], path="b.ckpt"),
    ]
    plan = layout(entries)

    assert plan.part_offsets == [[0], [64, 128, 256], [256]]
    assert plan.pieces_by_path["a.ckpt"] == [
        Piece(100, 10, 0),
        Piece(200, 8, 64),
        Piece(300, 64, 128),
        Piece(400, 36, 192),
    ]
    assert plan.pieces_by_path["b.ckpt"] == [Piece(600, 4, 256)]
    assert plan.total_bytes == 260


def test_layout_no_entries() -> None:
    plan = layout([])
    assert plan.part_offsets == []
    assert plan.pieces_by_path == {}
    assert plan.total_bytes == 0


# ----------------------------------------------------------------------------------------------
# task_count_for
# ----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(total_bytes=st.integers(1, 2**45), worker_count=st.integers(1, 256))
def test_task_count_multiple_of_workers(total_bytes: int, worker_count: int) -> None:
    count = task_count_for(total_bytes, worker_count)

    assert count % worker_count == 0
    assert count >= worker_count
    assert math.ceil(total_bytes / count) <= MAX_TASK_BYTES
    # One round fewer would need tasks above MAX_TASK_BYTES.
    if count > worker_count:
        assert math.ceil(total_bytes / (count - worker_count)) > MAX_TASK_BYTES


@pytest.mark.parametrize("total_bytes", [0, -5])
def test_task_count_nothing_to_copy(total_bytes: int) -> None:
    assert task_count_for(total_bytes, 8) == 1


def test_task_count_examples() -> None:
    assert task_count_for(1, 4) == 4
    assert task_count_for(4 * MAX_TASK_BYTES, 4) == 4
    assert task_count_for(4 * MAX_TASK_BYTES + 1, 4) == 8
    assert task_count_for(100 * MAX_TASK_BYTES, 3) == 102


@settings(max_examples=100, deadline=None)
@given(total_bytes=st.integers(1, 2**40), worker_count=st.integers(1, 64))
def test_task_sizes_near_max(total_bytes: int, worker_count: int) -> None:
    # With task_count_for and split_balanced together, no task exceeds MAX_TASK_BYTES by a page.
    piece = Piece(0, total_bytes, 0)
    groups = split_balanced([piece], task_count_for(total_bytes, worker_count))
    for size in group_sizes(groups):
        assert size < MAX_TASK_BYTES + PAGE_BYTES
