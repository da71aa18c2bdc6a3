"""CRC32 trailers of MindSpore checkpoints, and CRC32 combination for parallel checks.

With ``crc_check=True``, MindSpore appends 17 bytes to a ``.ckpt`` file::

    offset  size  field
    0       7     ASCII "crc_num"
    7       10    big-endian unsigned integer: zlib.crc32 of every byte before the trailer

Workers compute the CRC32 of separate byte ranges. :func:`combine_crcs` joins those values into
the CRC32 of the whole file without reading the bytes again, using the standard GF(2) matrix
method: appending ``n`` zero bytes to a message is a linear map on the 32-bit CRC register, and
the maps for ``n = 2**k`` are squared from each other and cached.

This module imports nothing heavy, because worker processes import it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = [
    "TRAILER_MAGIC",
    "TRAILER_SIZE_BYTES",
    "combine_crcs",
    "crc32_combine",
    "make_trailer",
    "parse_trailer",
]

TRAILER_MAGIC = b"crc_num"
TRAILER_SIZE_BYTES = 17
_TRAILER_VALUE_BYTES = TRAILER_SIZE_BYTES - len(TRAILER_MAGIC)

_CRC32_LIMIT = 1 << 32
# The CRC-32 generator polynomial (IEEE 802.3, as zlib uses it) in bit-reversed form.
_CRC32_POLYNOMIAL_REVERSED = 0xEDB88320

# A linear map on 32-bit values, stored as four 256-entry lookup tables. The image of a value is
# the XOR of table[j][byte j of the value] for j in 0..3.
_ByteTables = tuple[list[int], list[int], list[int], list[int]]

# _ZERO_BYTE_OPERATORS[k] maps the CRC register to its value after 2**k more zero bytes.
_ZERO_BYTE_OPERATORS: list[_ByteTables] = []
_OPERATORS_LOCK = threading.Lock()


def make_trailer(crc: int) -> bytes:
    """Build the 17-byte trailer that MindSpore appends for ``crc_check=True``.

    Parameters
    ----------
    crc : int
        The ``zlib.crc32`` of every byte that precedes the trailer.

    Returns
    -------
    bytes
        ``b"crc_num"`` followed by ``crc`` as a 10-byte big-endian unsigned integer.

    Raises
    ------
    ValueError
        If ``crc`` is not in ``[0, 2**32)``.
    """
    _check_crc_value("crc", crc)
    return TRAILER_MAGIC + crc.to_bytes(_TRAILER_VALUE_BYTES, "big")


def parse_trailer(tail: bytes | bytearray | memoryview) -> int | None:
    """Read the CRC stored in a trailer, if the end of a file is one.

    Parameters
    ----------
    tail : bytes-like
        The last bytes of a file. Only the last 17 are examined, and fewer than 17 bytes are never
        a trailer.

    Returns
    -------
    int or None
        The stored value when the last 17 bytes are ``b"crc_num"`` and a 10-byte integer,
        otherwise None.

    Notes
    -----
    The stored field is 10 bytes wide, so a damaged trailer can hold a value of ``2**32`` or more.
    That value is returned as it is, and it never equals a CRC32.
    """
    view = memoryview(tail).cast("B")
    if len(view) < TRAILER_SIZE_BYTES:
        return None
    trailer = bytes(view[-TRAILER_SIZE_BYTES:])
    if not trailer.startswith(TRAILER_MAGIC):
        return None
    return int.from_bytes(trailer[len(TRAILER_MAGIC):], "big")


def crc32_combine(crc1: int, crc2: int, length2_bytes: int) -> int:
    """Compute the CRC32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``.

    Parameters
    ----------
    crc1 : int
        ``zlib.crc32(A)``.
    crc2 : int
        ``zlib.crc32(B)``.
    length2_bytes : int
        ``len(B)`` in bytes.

    Returns
    -------
    int
        ``zlib.crc32(A + B)``.

    Raises
    ------
    ValueError
        If a CRC is not in ``[0, 2**32)`` or ``length2_bytes`` is negative.

    Notes
    -----
    The work is one table lookup per byte of the register for each set bit of ``length2_bytes``,
    so ``O(log length2_bytes)``. The operator tables for each power of two are built on first use
    and cached for the life of the process, 4 KiB of tables per power.
    """
    _check_crc_value("crc1", crc1)
    _check_crc_value("crc2", crc2)
    if length2_bytes < 0:
        raise ValueError(f"length2_bytes must be 0 or more, but it is {length2_bytes}")

    # crc32(A + B) = Z(crc32(A)) ^ crc32(B), where Z feeds len(B) zero bytes through the register.
    # The pre- and post-inversion of CRC-32 cancel out in this identity.
    register = crc1
    power = 0
    remaining_bytes = length2_bytes
    while remaining_bytes:
        if remaining_bytes & 1:
            register = _apply(_zero_byte_operator(power), register)
        remaining_bytes >>= 1
        power += 1
    return register ^ crc2


def combine_crcs(pieces: Iterable[tuple[int, int]]) -> int:
    """Compute the CRC32 of consecutive pieces from the CRC32 and length of each.

    Parameters
    ----------
    pieces : iterable of (crc, length_bytes)
        ``zlib.crc32`` and length in bytes of each piece, in file order. Pieces may be empty.

    Returns
    -------
    int
        The CRC32 of all pieces joined, which is 0 when there are no pieces.

    Raises
    ------
    ValueError
        If a CRC is not in ``[0, 2**32)`` or a length is negative.
    """
    total = 0
    for crc, length_bytes in pieces:
        total = crc32_combine(total, crc, length_bytes)
    return total


def _check_crc_value(name: str, value: int) -> None:
    if not 0 <= value < _CRC32_LIMIT:
        raise ValueError(f"{name} must be a CRC32 value in [0, 2**32), but it is {value}")


def _apply(tables: _ByteTables, value: int) -> int:
    return (
        tables[0][value & 0xFF]
        ^ tables[1][(value >> 8) & 0xFF]
        ^ tables[2][(value >> 16) & 0xFF]
        ^ tables[3][value >> 24]
    )


def _tables_from_columns(columns: list[int]) -> _ByteTables:
    """Build the byte lookup tables of the linear map whose image of ``1 << i`` is ``columns[i]``."""
    tables = []
    for byte_index in range(4):
        table = [0] * 256
        for byte in range(1, 256):
            lowest_bit = (byte & -byte).bit_length() - 1
            table[byte] = table[byte & (byte - 1)] ^ columns[8 * byte_index + lowest_bit]
        tables.append(table)
    return (tables[0], tables[1], tables[2], tables[3])


def _one_zero_byte_columns() -> list[int]:
    # One zero bit shifts the reflected register right and XORs in the polynomial when the bit
    # shifted out was 1. Eight such steps make one zero byte.
    columns = []
    for bit in range(32):
        register = 1 << bit
        for _ in range(8):
            register = (register >> 1) ^ (_CRC32_POLYNOMIAL_REVERSED if register & 1 else 0)
        columns.append(register)
    return columns


def _zero_byte_operator(power: int) -> _ByteTables:
    """Return the cached map for appending ``2**power`` zero bytes, building missing powers."""
    if power < len(_ZERO_BYTE_OPERATORS):
        return _ZERO_BYTE_OPERATORS[power]
    with _OPERATORS_LOCK:
        if not _ZERO_BYTE_OPERATORS:
            _ZERO_BYTE_OPERATORS.append(_tables_from_columns(_one_zero_byte_columns()))
        while len(_ZERO_BYTE_OPERATORS) <= power:
            # Squaring the map for 2**k zero bytes gives the map for 2**(k + 1).
            previous = _ZERO_BYTE_OPERATORS[-1]
            columns = [_apply(previous, _apply(previous, 1 << bit)) for bit in range(32)]
            _ZERO_BYTE_OPERATORS.append(_tables_from_columns(columns))
    return _ZERO_BYTE_OPERATORS[power]
