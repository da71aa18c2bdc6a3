"""Tests of CRC trailers and CRC32 combination."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mploader.formats.crc import (
    TRAILER_MAGIC,
    TRAILER_SIZE_BYTES,
    combine_crcs,
    crc32_combine,
    make_trailer,
    parse_trailer,
)

FIXTURES = Path(__file__).parent / "fixtures"


@st.composite
def data_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    data = draw(st.binary(max_size=2048))
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=8))
    return data, sorted(cuts)


@given(data_and_cuts())
def test_combine_crcs_random_splits(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    bounds = [0, *cuts, len(data)]
    pieces = [data[start:end] for start, end in zip(bounds, bounds[1:])]

    combined = combine_crcs((zlib.crc32(piece), len(piece)) for piece in pieces)

    assert combined == zlib.crc32(data)


@given(st.binary(max_size=512), st.binary(max_size=512))
def test_crc32_combine_two_parts(first: bytes, second: bytes) -> None:
    combined = crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))

    assert combined == zlib.crc32(first + second)


@pytest.mark.parametrize("length_bytes", [1, 255, 4096, 1_000_003, 16 * 1024 * 1024 + 5])
def test_crc32_combine_long_second_part(length_bytes: int) -> None:
    first = b"mploader"
    second = bytes(length_bytes)

    combined = crc32_combine(zlib.crc32(first), zlib.crc32(second), length_bytes)

    assert combined == zlib.crc32(first + second)


def test_combine_crcs_zero_length_pieces() -> None:
    first = b"0123456789"
    second = b"abcdef"
    pieces = [(0, 0), (zlib.crc32(first), len(first)), (0, 0), (0, 0), (zlib.crc32(second), len(second)), (0, 0)]

    assert combine_crcs(pieces) == zlib.crc32(first + second)
    assert combine_crcs([]) == 0
    assert combine_crcs([(0, 0)]) == 0
    assert crc32_combine(zlib.crc32(first), 0, 0) == zlib.crc32(first)
    assert crc32_combine(0, zlib.crc32(second), len(second)) == zlib.crc32(second)


def test_crc32_combine_rejects_invalid_input() -> None:
    with pytest.raises(ValueError, match="length2_bytes"):
        crc32_combine(0, 0, -1)
    with pytest.raises(ValueError, match="crc1"):
        crc32_combine(1 << 32, 0, 1)
    with pytest.raises(ValueError, match="crc2"):
        crc32_combine(0, -1, 1)
    with pytest.raises(ValueError, match="length2_bytes"):
        combine_crcs([(0, 4), (0, -4)])


def test_fixture_trailer_matches_contents() -> None:
    data = (FIXTURES / "all_dtypes_crc.ckpt").read_bytes()

    stored = parse_trailer(data[-TRAILER_SIZE_BYTES:])

    assert stored is not None
    assert stored == zlib.crc32(data[:-TRAILER_SIZE_BYTES])
    assert data[-TRAILER_SIZE_BYTES:] == make_trailer(stored)


def test_fixture_without_crc_has_no_trailer() -> None:
    data = (FIXTURES / "all_dtypes.ckpt").read_bytes()

    assert parse_trailer(data[-TRAILER_SIZE_BYTES:]) is None


def test_make_trailer_layout() -> None:
    trailer = make_trailer(0x12345678)

    assert len(trailer) == TRAILER_SIZE_BYTES
    assert trailer.startswith(TRAILER_MAGIC)
    assert trailer[len(TRAILER_MAGIC):] == bytes(6) + bytes.fromhex("12345678")
    assert make_trailer(0) == b"crc_num" + bytes(10)


def test_make_trailer_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="crc"):
        make_trailer(1 << 32)
    with pytest.raises(ValueError, match="crc"):
        make_trailer(-1)


def test_parse_trailer_cases() -> None:
    trailer = make_trailer(0xDEADBEEF)

    assert parse_trailer(trailer) == 0xDEADBEEF
    assert parse_trailer(b"record bytes" + trailer) == 0xDEADBEEF
    assert parse_trailer(memoryview(trailer)) == 0xDEADBEEF
    assert parse_trailer(trailer[1:]) is None
    assert parse_trailer(b"") is None
    assert parse_trailer(trailer + b"\x00") is None
    assert parse_trailer(b"crc_nun" + bytes(10)) is None
    assert parse_trailer(b"crc_num" + b"\xff" * 10) == (1 << 80) - 1
