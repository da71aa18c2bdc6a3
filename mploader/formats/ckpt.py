"""Read the index of a MindSpore ``.ckpt`` file, and write ``.ckpt`` files byte for byte as MindSpore does.

Byte layout
-----------
A ``.ckpt`` file is a sequence of records, each a serialized protobuf ``Checkpoint`` message holding
one ``Value``. All integers are protobuf varints (little-endian base-128, at most 10 bytes)::

    record      := 0x0A  varint(L)  Value[L]                  Checkpoint.value, field 1
    Value       := 0x0A  varint(n)  tag[n]                    UTF-8 entry name, field 1
                   0x12  varint(n)  TensorProto[n]            field 2, or
                   0x1A  varint(n)  MapTensorProto[n]         field 3
    TensorProto := 0x08  varint(dim) ...                      dims, field 1, one int64 per dim
                                                              (or 0x0A varint(n) packed dims)
                   0x12  varint(n)  tensor_type[n]            "Float16", "Int32", "str", ...
                   0x1A  varint(n)  tensor_content[n]         raw little-endian elements
    MapTensorProto := (0x0A varint(n) TensorProto[n]) x 3     keys, values, status

MindSpore writes fields in number order with the content last, but a reader must accept any field
order, packed dims and unknown fields of every wire type, so this one does.

- A 0-d scalar has no dims; ``dims == [0]`` is also read as a scalar.
- A string entry has tensor_type ``str``, dims ``[0]`` and UTF-32-LE content, as numpy ``U`` data.
- A parameter larger than 512 MiB (536,870,912 bytes) is cut into chunks of that many raw bytes, one
  record each, every record carrying the full dims; a chunk may end inside an element. Consecutive
  records with one tag are concatenated; the total must equal ``prod(dims) * itemsize``.
- Map tensor records with one tag are concatenated along axis 0; ``dims[0]`` is each record's row
  count, and the parts' types are numpy names (``int32``, ``float32``).
- With a CRC check, 17 bytes follow the records: ASCII ``crc_num`` and the ``zlib.crc32`` of every
  byte before it as a 10-byte big-endian integer.

Every length and offset read from the file is checked against the enclosing message and the file
size before it is used, so a hostile length never makes the reader allocate or seek past the data.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

import numpy as np

from ..errors import CheckpointError
from . import crc as crc_format
from .dtypes import CKPT_DTYPES, MAP_PART_DTYPES, STRING_TYPE, ckpt_type_of
from .index import Entry, TensorIndex

__all__ = [
    "CkptIndex",
    "SLICE_BYTES",
    "index_ckpt",
    "iter_records",
    "normalize_save_obj",
    "write_checkpoint",
]

logger = logging.getLogger("mploader")

# MindSpore 2.10's save_checkpoint cuts a parameter's raw bytes into records of this size.
# Tests may lower it to exercise slicing with small arrays.
SLICE_BYTES = 512 * 1024 * 1024

# The reader fetches record headers through one cached window of this size. Headers are short
# (name, dims, type), so a small window keeps tensor bytes out of the coordinator while still
# covering the next header when tensors are tiny.
_HEADER_WINDOW_BYTES = 4096

_MAX_VARINT_BYTES = 10
_INT64_MAX = 2**63 - 1
_MAX_FIELD_NUMBER = 2**29 - 1

_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_LENGTH_DELIMITED = 2
_WIRE_FIXED32 = 5


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

Source = BinaryIO | IO[bytes] | memoryview


class _Reader:
    """Bounds-checked random access to a file or an in-memory buffer, through a cached window."""

    def __init__(self, path: str, source: Source, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self._buffer = source if isinstance(source, memoryview) else None
        self._file = None if isinstance(source, memoryview) else source
        self._window_offset = 0
        self._window = b""

    def read(self, offset: int, length: int, what: str, limit: int | None = None) -> bytes:
        """Return ``length`` bytes at ``offset``; raise CheckpointError if the data ends first.

        A cache miss fetches a window of up to 4 KiB, but never past ``limit`` (the end of the
        message being parsed), so reading one record's header never touches another record.
        """
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise CheckpointError(
                self.path,
                f"{what} needs {length} bytes but the data ends at byte {self.size_bytes}; "
                "the file is truncated or corrupt",
                offset,
            )
        if self._buffer is not None:
            return bytes(self._buffer[offset : offset + length])
        start = offset - self._window_offset
        if 0 <= start and start + length <= len(self._window):
            return self._window[start : start + length]
        window_end = min(self.size_bytes if limit is None else limit, self.size_bytes)
        fetch_bytes = max(length, min(_HEADER_WINDOW_BYTES, window_end - offset))
        assert self._file is not None
        self._file.seek(offset)
        data = self._file.read(fetch_bytes)
        if len(data) < length:
            raise CheckpointError(
                self.path,
                f"{what}: expected {length} bytes, received {len(data)}; the file shrank while it "
                "was read",
                offset,
            )
        self._window_offset = offset
        self._window = data
        return data[:length]

    def varint(self, offset: int, end: int, what: str) -> tuple[int, int]:
        """Decode a varint at ``offset`` that must end before ``end``; return (value, next offset)."""
        available = min(_MAX_VARINT_BYTES, end - offset)
        if available <= 0:
            raise CheckpointError(self.path, f"{what} is missing: the message ends here", offset)
        data = self.read(offset, available, what, limit=end)
        value = 0
        for index, byte in enumerate(data):
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if index == _MAX_VARINT_BYTES - 1 and byte > 1:
                    break
                return value, offset + index + 1
        if len(data) == _MAX_VARINT_BYTES:
            raise CheckpointError(self.path, f"{what} is not a valid varint (over 64 bits)", offset)
        raise CheckpointError(self.path, f"{what} runs past the end of its message", offset)


@dataclass
class _Tensor:
    """One TensorProto as found in one record."""

    offset: int
    dims: list[int] = field(default_factory=list)
    type_name: str | None = None
    content: tuple[int, int] | None = None  # (offset, length_bytes)


@dataclass
class _Record:
    """One Value message: a tag with a tensor or a map tensor."""

    offset: int
    tag: str
    tensor: _Tensor | None
    map_parts: list[_Tensor] | None


def _check_field_number(reader: _Reader, key: int, offset: int) -> None:
    """Reject a key whose field number protobuf never assigns, as protobuf's parser does.

    Without this, a flipped bit that turns a record key 0x0a into 0x02 (field 0) would make the
    record an unknown field, and the entry would vanish from the load without an error.
    """
    number = key >> 3
    if not 1 <= number <= _MAX_FIELD_NUMBER:
        raise CheckpointError(
            reader.path,
            f"field number {number} is not valid in protobuf (1 to {_MAX_FIELD_NUMBER}); the file is corrupt",
            offset,
        )


def _skip_field(reader: _Reader, wire_type: int, offset: int, end: int) -> int:
    """Skip one unknown field's payload; return the offset after it."""
    if wire_type == _WIRE_VARINT:
        return reader.varint(offset, end, "unknown varint field")[1]
    payload_offset = offset
    if wire_type == _WIRE_FIXED64:
        size = 8
    elif wire_type == _WIRE_FIXED32:
        size = 4
    elif wire_type == _WIRE_LENGTH_DELIMITED:
        size, payload_offset = reader.varint(offset, end, "length of an unknown field")
    else:
        raise CheckpointError(
            reader.path, f"field with wire type {wire_type} is not valid in a checkpoint", offset
        )
    if payload_offset + size > end:
        # Report a length-delimited field at its length prefix, because its payload may start at `end`.
        raise CheckpointError(
            reader.path,
            f"unknown field of {size} bytes runs past the end of its message at byte {end}",
            offset,
        )
    return payload_offset + size


def _length_delimited(reader: _Reader, offset: int, end: int, what: str) -> tuple[int, int]:
    """Read a length prefix; return (payload offset, payload end) after checking it fits."""
    length, start = reader.varint(offset, end, f"length of {what}")
    if start + length > end:
        raise CheckpointError(
            reader.path,
            f"{what} declares {length} bytes, but its enclosing message ends {end - start} bytes "
            "later; the file is truncated or corrupt",
            offset,
        )
    return start, start + length


def _parse_tensor(reader: _Reader, start: int, end: int) -> _Tensor:
    tensor = _Tensor(offset=start)
    pos = start
    while pos < end:
        key_offset = pos
        key, pos = reader.varint(pos, end, "field key")
        number, wire_type = key >> 3, key & 7
        if number == 1 and wire_type == _WIRE_VARINT:
            dim, pos = reader.varint(pos, end, "dimension")
            tensor.dims.append(_check_dim(reader, dim, key_offset))
        elif number == 1 and wire_type == _WIRE_LENGTH_DELIMITED:
            packed_start, packed_end = _length_delimited(reader, pos, end, "packed dims")
            pos = packed_start
            while pos < packed_end:
                dim_offset = pos
                dim, pos = reader.varint(pos, packed_end, "dimension")
                tensor.dims.append(_check_dim(reader, dim, dim_offset))
        elif number == 2 and wire_type == _WIRE_LENGTH_DELIMITED:
            text_start, pos = _length_delimited(reader, pos, end, "tensor_type")
            tensor.type_name = _decode_text(reader, text_start, pos, "tensor_type")
        elif number == 3 and wire_type == _WIRE_LENGTH_DELIMITED:
            content_start, pos = _length_delimited(reader, pos, end, "tensor_content")
            tensor.content = (content_start, pos - content_start)
        else:
            _check_field_number(reader, key, key_offset)
            pos = _skip_field(reader, wire_type, pos, end)
    if tensor.type_name is None:
        raise CheckpointError(reader.path, "tensor has no tensor_type field", start)
    if tensor.content is None:
        raise CheckpointError(reader.path, "tensor has no tensor_content field", start)
    return tensor


def _check_dim(reader: _Reader, dim: int, offset: int) -> int:
    if dim > _INT64_MAX:
        raise CheckpointError(
            reader.path, f"dimension {dim - 2**64} is negative; dimensions must be >= 0", offset
        )
    return dim


def _decode_text(reader: _Reader, start: int, end: int, what: str) -> str:
    try:
        return reader.read(start, end - start, what, limit=end).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(reader.path, f"{what} is not valid UTF-8: {exc.reason}", start) from exc


def _parse_value(reader: _Reader, start: int, end: int) -> _Record:
    tag: str | None = None
    tensor: _Tensor | None = None
    map_parts: list[_Tensor] | None = None
    pos = start
    while pos < end:
        key_offset = pos
        key, pos = reader.varint(pos, end, "field key")
        number, wire_type = key >> 3, key & 7
        if wire_type != _WIRE_LENGTH_DELIMITED or number not in (1, 2, 3):
            _check_field_number(reader, key, key_offset)
            pos = _skip_field(reader, wire_type, pos, end)
            continue
        field_start, pos = _length_delimited(reader, pos, end, "record field")
        if number == 1:
            tag = _decode_text(reader, field_start, pos, "entry name")
        elif tensor is not None or map_parts is not None:
            raise CheckpointError(reader.path, "record contains more than one tensor", key_offset)
        elif number == 2:
            tensor = _parse_tensor(reader, field_start, pos)
        else:
            map_parts = _parse_map(reader, field_start, pos)
    if tag is None:
        raise CheckpointError(reader.path, "record has no name (tag field)", start)
    if tensor is None and map_parts is None:
        raise CheckpointError(reader.path, f"record {tag!r} contains no tensor", start)
    return _Record(offset=start, tag=tag, tensor=tensor, map_parts=map_parts)


def _parse_map(reader: _Reader, start: int, end: int) -> list[_Tensor]:
    parts: list[_Tensor] = []
    pos = start
    while pos < end:
        key_offset = pos
        key, pos = reader.varint(pos, end, "field key")
        if key == (1 << 3) | _WIRE_LENGTH_DELIMITED:
            part_start, pos = _length_delimited(reader, pos, end, "map tensor part")
            parts.append(_parse_tensor(reader, part_start, pos))
        else:
            _check_field_number(reader, key, key_offset)
            pos = _skip_field(reader, key & 7, pos, end)
    if len(parts) != 3:
        raise CheckpointError(
            reader.path, f"map tensor has {len(parts)} parts; expected keys, values and status", start
        )
    return parts


# Magics that start each frame of an encrypted .ckpt, as little-endian uint32. They are repeated
# here, rather than imported from the crypto module, so that reading plain files never loads it.
_ENCRYPTION_MAGICS = {0x7F3A5ED8: "AES-GCM", 0x7F3A5ED9: "AES-CBC", 0x7F3A5EDA: "SM4-CBC"}


def _check_first_bytes(reader: _Reader, data_end: int) -> None:
    """Reject a stream that does not start like a plain checkpoint, naming what it looks like."""
    if data_end == 0:
        return
    head = reader.read(0, min(4, data_end), "file start", limit=min(4, data_end))
    if len(head) == 4 and int.from_bytes(head, "little") in _ENCRYPTION_MAGICS:
        mode = _ENCRYPTION_MAGICS[int.from_bytes(head, "little")]
        raise CheckpointError(
            reader.path,
            f"the file is encrypted with {mode}; pass its key as dec_key and dec_mode={mode!r}",
            0,
        )
    if head[:1] != b"\x0a":
        raise CheckpointError(
            reader.path,
            f"first byte is 0x{head[0]:02x}, not 0x0a; this is not a MindSpore .ckpt file",
            0,
        )


def iter_records(path: str, source: Source, data_end: int) -> Iterator[_Record]:
    """Yield every record of a ``.ckpt`` byte stream in file order, reading only headers.

    Parameters
    ----------
    path : str
        The file's name, for error messages.
    source : binary file or memoryview
        The record stream: an open file, or a buffer such as decrypted plaintext.
    data_end : int
        Offset where the records end (the file size, less any CRC trailer).
    """
    reader = _Reader(path, source, data_end)
    _check_first_bytes(reader, data_end)
    pos = 0
    while pos < data_end:
        key_offset = pos
        # The record's key and length take at most 11 bytes; reading no further keeps the
        # next records' contents out of this process.
        key, pos = reader.varint(pos, min(data_end, pos + 1 + _MAX_VARINT_BYTES), "record key")
        if key != (1 << 3) | _WIRE_LENGTH_DELIMITED:
            if key_offset == 0:
                raise CheckpointError(
                    path,
                    f"first byte is 0x{key & 0xFF:02x}, not 0x0a; this is not a MindSpore .ckpt "
                    "file (or it is encrypted: pass dec_key and dec_mode)",
                    0,
                )
            _check_field_number(reader, key, key_offset)
            pos = _skip_field(reader, key & 7, pos, data_end)
            continue
        length, start = reader.varint(pos, min(data_end, pos + _MAX_VARINT_BYTES), "record length")
        if start + length > data_end:
            raise CheckpointError(
                path,
                f"record declares {length} bytes, but the data ends {data_end - start} bytes later; "
                "the file is truncated or corrupt",
                key_offset,
            )
        pos = start + length
        yield _parse_value(reader, start, pos)


# ----------------------------------------------------------------------------------------------
# Building entries from records
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CkptIndex:
    """The entries of a ``.ckpt`` file and where its records end."""

    entries: list[Entry]
    data_end: int
    trailer_crc: int | None


def _element_count(path: str, dims: list[int], limit: int, offset: int) -> int:
    """Multiply dims, raising once the product of the nonzero dims exceeds ``limit``.

    Zero dims are skipped in that check, so ``[0, 2**62]`` is rejected like ``[2**62, 0]``, because
    numpy cannot build such a shape even with no elements.
    """
    nonzero_count = 1
    for dim in dims:
        nonzero_count *= max(dim, 1)
        if nonzero_count > limit:
            raise CheckpointError(
                path,
                f"dims {dims} describe more elements than the file can hold "
                f"({limit} bytes of data); the header is corrupt",
                offset,
            )
    return 0 if 0 in dims else nonzero_count


def _tensor_entry(path: str, records: list[_Record], data_end: int) -> Entry:
    first = records[0]
    assert first.tensor is not None
    type_name = first.tensor.type_name or ""
    dims = first.tensor.dims
    for record in records[1:]:
        assert record.tensor is not None
        if record.tensor.type_name != type_name or record.tensor.dims != dims:
            raise CheckpointError(
                path,
                f"slice of {first.tag!r} has type {record.tensor.type_name} and dims "
                f"{record.tensor.dims}, but its first record has {type_name} and {dims}",
                record.offset,
            )
    ranges = tuple(record.tensor.content for record in records if record.tensor and record.tensor.content)
    content_bytes = sum(length for _, length in ranges)

    if type_name == STRING_TYPE:
        if content_bytes % 4:
            raise CheckpointError(
                path,
                f"string entry {first.tag!r} has {content_bytes} content bytes, not a multiple of 4 "
                "(UTF-32)",
                first.offset,
            )
        part = TensorIndex(STRING_TYPE, np.dtype(np.uint8), (content_bytes,), ranges)
        return Entry(first.tag, "str", (part,), path)

    dtype = CKPT_DTYPES.get(type_name)
    if dtype is None:
        known = ", ".join(sorted(CKPT_DTYPES))
        raise CheckpointError(
            path, f"entry {first.tag!r} has unknown tensor_type {type_name!r}; known types: {known}",
            first.offset,
        )
    shape = tuple(dims)
    if dims == [0] and content_bytes == dtype.itemsize:
        shape = ()
    count = _element_count(path, list(shape), data_end, first.offset)
    expected_bytes = count * dtype.itemsize
    if expected_bytes != content_bytes:
        raise CheckpointError(
            path,
            f"entry {first.tag!r} has {content_bytes} content bytes, but dims {dims} of "
            f"{type_name} need {expected_bytes}",
            first.offset,
        )
    return Entry(first.tag, "tensor", (TensorIndex(type_name, dtype, shape, ranges),), path)


def _map_entry(path: str, records: list[_Record], data_end: int) -> Entry:
    parts: list[TensorIndex] = []
    for part_number, part_name in enumerate(("keys", "values", "status")):
        pieces = [record.map_parts[part_number] for record in records if record.map_parts]
        type_name = pieces[0].type_name or ""
        dtype = MAP_PART_DTYPES.get(type_name)
        if dtype is None:
            known = ", ".join(MAP_PART_DTYPES)
            raise CheckpointError(
                path,
                f"map tensor {records[0].tag!r} {part_name} have unknown type {type_name!r}; "
                f"known types: {known}",
                pieces[0].offset,
            )
        rows = 0
        trailing = pieces[0].dims[1:]
        for piece in pieces:
            if piece.type_name != type_name or not piece.dims or piece.dims[1:] != trailing:
                raise CheckpointError(
                    path,
                    f"map tensor {records[0].tag!r} {part_name} change type or trailing dims between "
                    f"records ({piece.type_name} {piece.dims} after {type_name} {pieces[0].dims})",
                    piece.offset,
                )
            count = _element_count(path, piece.dims, data_end, piece.offset)
            assert piece.content is not None
            if count * dtype.itemsize != piece.content[1]:
                raise CheckpointError(
                    path,
                    f"map tensor {records[0].tag!r} {part_name} have {piece.content[1]} content "
                    f"bytes, but dims {piece.dims} of {type_name} need {count * dtype.itemsize}",
                    piece.offset,
                )
            rows += piece.dims[0]
        ranges = tuple(piece.content for piece in pieces if piece.content is not None)
        parts.append(TensorIndex(type_name, dtype, (rows, *trailing), ranges))
    for record in records:
        assert record.map_parts is not None
        row_counts = [part.dims[0] for part in record.map_parts]
        if len(set(row_counts)) != 1:
            raise CheckpointError(
                path,
                f"map tensor {records[0].tag!r} has {row_counts} rows of keys, values and status in one "
                "record; all three need the same number of rows",
                record.offset,
            )
    return Entry(records[0].tag, "map", tuple(parts), path)


def _entry_from_group(path: str, records: list[_Record], data_end: int) -> Entry:
    kinds = {record.map_parts is not None for record in records}
    if len(kinds) > 1:
        raise CheckpointError(
            path, f"entry {records[0].tag!r} mixes tensor and map tensor records", records[0].offset
        )
    if records[0].map_parts is not None:
        return _map_entry(path, records, data_end)
    return _tensor_entry(path, records, data_end)


def index_ckpt(path: str, source: Source, size_bytes: int) -> CkptIndex:
    """Index a plain ``.ckpt`` byte stream without reading tensor contents.

    Parameters
    ----------
    path : str
        The file's name, used in error messages and stored in each entry.
    source : binary file or memoryview
        An open file positioned anywhere, or a buffer holding the whole stream.
    size_bytes : int
        Length of the stream, including any CRC trailer.

    Returns
    -------
    CkptIndex
        Entries in file order. A name that occurs again after other names replaces the earlier
        entry but keeps its position, as assigning to a Python dict does.

    Raises
    ------
    CheckpointError
        If any length, range, type or size is invalid. The error carries the byte offset.
    """
    if size_bytes == 0:
        raise CheckpointError(path, "file is empty; it is not a MindSpore checkpoint", 0)
    data_end = size_bytes
    trailer_crc = None
    if size_bytes >= crc_format.TRAILER_SIZE_BYTES:
        tail_offset = size_bytes - crc_format.TRAILER_SIZE_BYTES
        if isinstance(source, memoryview):
            tail = bytes(source[tail_offset:size_bytes])
        else:
            source.seek(tail_offset)
            tail = source.read(crc_format.TRAILER_SIZE_BYTES)
        trailer_crc = crc_format.parse_trailer(tail)
        if trailer_crc is not None:
            data_end = tail_offset

    entries: dict[str, Entry] = {}
    group: list[_Record] = []
    for record in iter_records(path, source, data_end):
        if group and record.tag != group[0].tag:
            _add_entry(entries, _entry_from_group(path, group, data_end))
            group = []
        group.append(record)
    if group:
        _add_entry(entries, _entry_from_group(path, group, data_end))
    if not entries:
        raise CheckpointError(path, "file contains no records, only a CRC trailer; it is not a usable checkpoint", 0)
    return CkptIndex(list(entries.values()), data_end, trailer_crc)


def _add_entry(entries: dict[str, Entry], entry: Entry) -> None:
    if entry.name in entries:
        logger.warning(
            "%s: entry %r occurs again later in the file; the later record replaces the earlier one",
            entry.path,
            entry.name,
        )
    entries[entry.name] = entry


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_prefixed(key: int, payload_bytes: int) -> bytes:
    return bytes((key,)) + _varint(payload_bytes)


def record_header(name: str, type_name: str, dims: Iterable[int], content_bytes: int) -> bytes:
    """Return the bytes of one tensor record up to its content, as MindSpore 2.10 writes them."""
    tag = name.encode("utf-8")
    tensor_head = _tensor_proto_header(type_name, dims, content_bytes)
    tensor_bytes = len(tensor_head) + content_bytes
    value_head = _length_prefixed(0x0A, len(tag)) + tag + _length_prefixed(0x12, tensor_bytes)
    value_bytes = len(value_head) + tensor_bytes
    return _length_prefixed(0x0A, value_bytes) + value_head + tensor_head


@dataclass(frozen=True)
class SaveItem:
    """One entry to write: a name and a little-endian C-contiguous array, or a string."""

    name: str
    value: np.ndarray | str | list[np.ndarray]


def _as_map_parts(name: str, value: list[Any] | tuple[Any, ...]) -> list[np.ndarray]:
    """Check a map tensor given as ``[keys, values, status]`` arrays."""
    if len(value) != 3:
        raise TypeError(
            f"value of {name!r} is a list of {len(value)} items; a map tensor is a list of three "
            "arrays [keys, values, status]"
        )
    parts = []
    for part_name, part in zip(("keys", "values", "status"), value):
        array = np.asarray(part)
        if array.dtype.name not in MAP_PART_DTYPES or array.ndim == 0:
            raise TypeError(
                f"map tensor {name!r} {part_name} must be an array of at least one dimension with "
                f"one of the types {', '.join(MAP_PART_DTYPES)}, not {array.dtype} of shape {array.shape}"
            )
        parts.append(np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)))
    if len({part.shape[0] for part in parts}) != 1:
        raise ValueError(
            f"map tensor {name!r} parts have {[part.shape[0] for part in parts]} rows; keys, values "
            "and status need the same number of rows"
        )
    return parts


def _as_array(name: str, value: Any) -> np.ndarray | str | list[np.ndarray]:
    """Convert a value accepted by save_checkpoint to what MindSpore would store."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return _as_map_parts(name, value)
    # bool is a subclass of int, so test it first.
    if isinstance(value, bool):
        return np.array(value, dtype=np.bool_)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(
                f"value of {name!r} is {value}, outside the Int64 range in which a Python int is "
                "stored. Pass a numpy array of another type (such as np.uint64) or a float"
            )
        return np.array(value, dtype=np.int64)
    # numpy.float64 is a subclass of float but keeps its own type, as in MindSpore's Tensor().
    if isinstance(value, float) and not isinstance(value, np.generic):
        return np.array(value, dtype=np.float32)
    if hasattr(value, "asnumpy"):
        value = value.asnumpy()
    if not isinstance(value, (np.ndarray, np.generic)):
        raise TypeError(
            f"value of {name!r} is a {type(value).__name__}; save_checkpoint takes numpy arrays, "
            "numpy scalars, int, float, bool, str and [keys, values, status] map tensors"
        )
    array = np.asarray(value)
    ckpt_type_of(array.dtype)  # raises TypeError for types a .ckpt cannot hold
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # np.ascontiguousarray would turn a 0-d scalar into shape (1,), which MindSpore writes differently.
    return array if array.flags.c_contiguous else array.copy(order="C")


def normalize_save_obj(
    save_obj: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    append_dict: Mapping[str, Any] | None = None,
    choice_func: Callable[[str], bool] | None = None,
) -> list[SaveItem]:
    """Turn save_checkpoint's arguments into the ordered list of entries to write.

    ``choice_func`` applies to ``save_obj`` only, and ``append_dict`` entries follow all others,
    as in MindSpore 2.10. Arrays with zero elements are dropped with a warning because MindSpore
    writes no record for them.
    """
    if isinstance(save_obj, Mapping):
        pairs = list(save_obj.items())
    elif isinstance(save_obj, (list, tuple)):
        pairs = []
        for position, item in enumerate(save_obj):
            if not isinstance(item, Mapping) or "name" not in item or "data" not in item:
                raise TypeError(
                    f"save_obj[{position}] must be a dict with keys 'name' and 'data', "
                    f"not {type(item).__name__}"
                )
            pairs.append((item["name"], item["data"]))
    else:
        raise TypeError(
            f"save_obj must be a dict or a list of {{'name', 'data'}} dicts, not {type(save_obj).__name__}"
        )
    if choice_func is not None:
        if not callable(choice_func):
            raise TypeError(f"choice_func must be callable, not {type(choice_func).__name__}")
        pairs = [(name, value) for name, value in pairs if choice_func(name)]
    if append_dict is not None:
        if not isinstance(append_dict, Mapping):
            raise TypeError(f"append_dict must be a dict, not {type(append_dict).__name__}")
        pairs.extend(append_dict.items())

    items: list[SaveItem] = []
    seen: set[str] = set()
    for name, value in pairs:
        if not isinstance(name, str):
            raise TypeError(f"entry names must be str, not {type(name).__name__} ({name!r})")
        if name in seen:
            raise ValueError(f"entry name {name!r} occurs twice; names in a checkpoint must be unique")
        seen.add(name)
        converted = _as_array(name, value)
        if isinstance(converted, np.ndarray) and converted.size == 0:
            logger.warning(
                "entry %r has no elements (shape %s); it is not written, as MindSpore writes no "
                "record for empty tensors",
                name,
                converted.shape,
            )
            continue
        items.append(SaveItem(name, converted))
    return items


def _tensor_proto_header(type_name: str, dims: Iterable[int], content_bytes: int) -> bytes:
    type_bytes = type_name.encode("ascii")
    head = b"".join(b"\x08" + _varint(dim) for dim in dims)
    head += _length_prefixed(0x12, len(type_bytes)) + type_bytes
    return head + _length_prefixed(0x1A, content_bytes)


def _map_record(name: str, parts: list[np.ndarray]) -> bytes:
    """Return one whole map tensor record, which MindSpore never slices."""
    body = b""
    for part in parts:
        content = part.tobytes()
        proto = _tensor_proto_header(part.dtype.name, part.shape, len(content)) + content
        body += _length_prefixed(0x0A, len(proto)) + proto
    tag = name.encode("utf-8")
    value = _length_prefixed(0x0A, len(tag)) + tag + _length_prefixed(0x1A, len(body)) + body
    return _length_prefixed(0x0A, len(value)) + value


def _item_chunks(item: SaveItem) -> Iterator[tuple[bytes, memoryview]]:
    """Yield (record header, content) pairs for one entry, slicing large arrays."""
    if isinstance(item.value, list):
        yield _map_record(item.name, item.value), memoryview(b"")
        return
    if isinstance(item.value, str):
        content = np.array(item.value, dtype=np.str_).tobytes()
        yield record_header(item.name, STRING_TYPE, [0], len(content)), memoryview(content)
        return
    array = item.value
    type_name = ckpt_type_of(array.dtype)
    raw = array.reshape(-1).view(np.uint8).data
    total_bytes = len(raw)
    chunk_count = max(1, math.ceil(total_bytes / SLICE_BYTES))
    for chunk in range(chunk_count):
        part = raw[chunk * SLICE_BYTES : (chunk + 1) * SLICE_BYTES]
        yield record_header(item.name, type_name, array.shape, len(part)), part


def _creation_mode() -> int:
    """Return the permission bits a new file gets under this process's umask."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


class AtomicFile:
    """A temporary file in the target's directory that replaces the target only on commit.

    Used as a context manager: leaving the block normally commits, and an exception removes the
    temporary file, so a failed write never leaves a partial file under the target name.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        directory = os.path.dirname(os.path.abspath(target))
        fd, self.temp_path = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".partial"
        )
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        os.fchmod(self.file.fileno(), _creation_mode())
        self.file.close()
        os.replace(self.temp_path, self.target)

    def abort(self) -> None:
        self.file.close()
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class _CrcWriter:
    """A file-like sink that keeps a running CRC32 of everything written through it."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.crc = 0

    def write(self, data: bytes | memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.sink.write(data)


def write_checkpoint(items: list[SaveItem], sink: Any, *, crc_check: bool = False) -> None:
    """Write ``items`` as a plain ``.ckpt`` record stream to a writable binary ``sink``.

    With ``crc_check``, the 17-byte CRC trailer over everything written follows the records.
    """
    writer = _CrcWriter(sink)
    for item in items:
        for header, content in _item_chunks(item):
            writer.write(header)
            writer.write(content)
    if crc_check:
        sink.write(crc_format.make_trailer(writer.crc))
