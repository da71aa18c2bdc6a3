"""Index, validate and write safetensors files, including the ones MindSpore writes.

Byte layout
-----------
::

    offset   size   field
    0        8      N: length of the header in bytes, unsigned 64-bit little-endian
    8        N      header: a UTF-8 JSON object, padded at the end with spaces (0x20)
    8 + N    rest   data section: every tensor's raw bytes, little-endian, C order

The header maps each tensor name to ``{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin,
end]}``. ``begin`` and ``end`` are byte offsets relative to the start of the data section, not to
the file, and ``end`` is exclusive. ``end - begin`` must equal the element count times the element
size. The optional key ``__metadata__`` maps strings to strings.

Sorted by offset, the tensors tile the data section: the first starts at 0, each starts where the
previous one ends, and the last ends at the end of the file. A zero-size tensor has ``begin ==
end`` and occupies no bytes. The header's key order need not follow the data order.

MindSpore 2.10 writes standard files with metadata ``"format": "ms"``, which it leaves out only when
there are no tensors. With ``crc_check=True`` it adds ``"crc_num"``, the decimal CRC32 that
:func:`mindspore_crc` computes. For each tensor that MindSpore treats as packed 4-bit integers it adds
``name: "Int4"`` (see :func:`as_int4_entry`). Given a bool ``remove_redundancy`` argument, it also
stores ``"remove_redundancy": "True"`` or ``"False"``.

Every length and offset read from a file is checked against the file size before it is used, and
the header is read only when it is at most :data:`MAX_HEADER_BYTES` long, so a hostile header
length never makes the reader allocate in proportion to it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import types
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Union

import numpy as np
import numpy.typing as npt

from ..errors import CheckpointError
from .crc import combine_crcs, crc32_combine
from .dtypes import LazyDtypes
from .index import Entry, TensorIndex

__all__ = [
    "CRC_METADATA_KEY",
    "INT4_TYPE_NAME",
    "LENGTH_FIELD_BYTES",
    "MAX_HEADER_BYTES",
    "MINDSPORE_FORMAT",
    "PACKED_TYPE_BITS",
    "SAFETENSORS_DTYPES",
    "WRITE_CHUNK_BYTES",
    "SafetensorsIndex",
    "SafetensorsWriter",
    "as_int4_entry",
    "index_safetensors",
    "int4_names",
    "MindsporeCrc",
    "mindspore_crc",
    "mindspore_metadata",
    "safetensors_type_of",
    "save_safetensors",
    "stored_crc",
]

logger = logging.getLogger("mploader")

# Size of the little-endian header length that starts every file.
LENGTH_FIELD_BYTES = 8

# Largest header this reader parses, in bytes. The safetensors reference reader (0.8) and
# MindSpore 2.10's reader reject longer headers too, so no file they accept is rejected here.
# At about 80 header bytes per tensor this allows over a million tensors (an estimate). Parsing
# costs a few times the header size in Python objects, so a larger cap costs memory.
MAX_HEADER_BYTES = 100_000_000

# Largest temporary copy, in bytes, that save_safetensors makes to write an array that is not
# C-contiguous or not little-endian. Larger chunks mean fewer write calls and more memory. Tests
# may lower it to exercise the chunking with small arrays.
WRITE_CHUNK_BYTES = 64 * 1024 * 1024

_METADATA_KEY = "__metadata__"
_HEADER_PADDING = b" "
_HEADER_ALIGNMENT_BYTES = 8

# Endings shared by error messages: the likely cause and what to do.
_TRUNCATED = "the file is truncated or not a safetensors file"
_NOT_SAFETENSORS = "the file is corrupt or not a safetensors file"
_CORRUPT_HEADER = "the header is corrupt, so re-save or re-download the file"
_CHANGED = "the file was truncated or changed while it was read"

# safetensors dtype string -> numpy dtype for every safetensors 0.8 type that occupies whole bytes.
# The F8 names follow safetensors: F8_E4M3 is the variant ml_dtypes calls float8_e4m3fn.
SAFETENSORS_DTYPES: LazyDtypes = LazyDtypes({
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"),
}, {
    # Resolved through ml_dtypes on first use. ml_dtypes provides float8_e8m0fnu from version 0.5
    # on; with an older one, F8_E8M0 is an unknown type.
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
})

# safetensors 0.8 types whose elements are narrower than a byte and stored packed, with their
# bits per element. numpy has no dtype that views packed elements (ml_dtypes' float4 and float6
# types take a whole byte each), so the reader rejects these types with a specific message.
PACKED_TYPE_BITS: dict[str, int] = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}

_type_name_by_dtype: dict[np.dtype[Any], str] = {}


def _type_names_by_dtype() -> dict[np.dtype[Any], str]:
    # Built on first use, because listing every type imports ml_dtypes.
    if not _type_name_by_dtype:
        for name in SAFETENSORS_DTYPES:
            try:
                _type_name_by_dtype[SAFETENSORS_DTYPES[name]] = name
            except KeyError:
                continue  # F8_E8M0 with an ml_dtypes older than 0.5
    return _type_name_by_dtype

# Metadata that MindSpore 2.10's save_checkpoint(format="safetensors") writes for every non-empty file.
MINDSPORE_FORMAT: Mapping[str, str] = types.MappingProxyType({"format": "ms"})
CRC_METADATA_KEY = "crc_num"
# The metadata value, under a tensor's name, that marks the tensor as MindSpore qint4x2.
INT4_TYPE_NAME = "Int4"

_CRC32_MAX = 0xFFFF_FFFF

# Byte counts above this are reported as "more than" it. The bound keeps a header with huge or
# very many dimensions from building enormous integers, and it exceeds any possible file size.
_MAX_COUNTED_BYTES = 2**64

BytesLike = Union[bytes, bytearray, memoryview, "npt.NDArray[Any]"]
LayoutItem = tuple[str, "npt.DTypeLike", Sequence[int]]


# ----------------------------------------------------------------------------------------------
# Element types
# ----------------------------------------------------------------------------------------------


def safetensors_type_of(dtype: npt.DTypeLike) -> str:
    """Return the safetensors dtype string that stores arrays of ``dtype``.

    Parameters
    ----------
    dtype : numpy dtype or anything ``numpy.dtype`` accepts
        Big-endian dtypes map to the same string as their little-endian form, because the data
        is always stored little-endian.

    Returns
    -------
    str
        One of the keys of :data:`SAFETENSORS_DTYPES`, for example ``"BF16"``.

    Raises
    ------
    TypeError
        If safetensors has no type for ``dtype``.
    """
    resolved = np.dtype(dtype)
    if resolved.byteorder == ">":
        resolved = resolved.newbyteorder("<")
    name = _type_names_by_dtype().get(resolved)
    if name is None:
        supported = ", ".join(f"{dtype} ({name})" for name, dtype in SAFETENSORS_DTYPES.items())
        raise TypeError(
            f"dtype {resolved} cannot be stored in a safetensors file; supported dtypes are {supported}"
        )
    return name


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsIndex:
    """The index of one safetensors file.

    Attributes
    ----------
    entries : list of Entry
        One ``"tensor"`` entry per tensor, in data order (the order of their bytes in the file).
        Each has one part with one ``(absolute file offset, length_bytes)`` range. A zero-size
        tensor has a range of length 0.
    metadata : dict of str to str
        The header's ``__metadata__``, or an empty dict when the header has none or it is null.
    data_offset : int
        Absolute file offset of the data section: ``8 + N`` for a header of ``N`` bytes.
    """

    entries: list[Entry]
    metadata: dict[str, str]
    data_offset: int


def index_safetensors(path: str, fileobj: BinaryIO, file_size_bytes: int) -> SafetensorsIndex:
    """Read and validate a safetensors header without reading tensor bytes.

    Parameters
    ----------
    path : str
        The file's path. It is stored in every entry and named in every error.
    fileobj : binary file
        The open file. Only the length field and the header are read, from offset 0.
    file_size_bytes : int
        The file's size in bytes, for example from ``os.fstat``.

    Returns
    -------
    SafetensorsIndex
        The entries in data order, the metadata and the offset of the data section.

    Raises
    ------
    CheckpointError
        If any of these is true:

        - the file is shorter than 8 bytes;
        - the header length exceeds the file or :data:`MAX_HEADER_BYTES`;
        - the header is not UTF-8, not JSON or not a JSON object, or repeats a key;
        - ``__metadata__`` is not a mapping of strings to strings;
        - a tensor lacks ``dtype``, ``shape`` or ``data_offsets``, or one has the wrong type;
        - a dtype is unknown, or packs elements narrower than a byte;
        - a tensor's byte length does not match its shape and dtype;
        - the tensors do not tile the data section exactly, including when bytes follow the
          last tensor (the safetensors reference reader and MindSpore 2.10 reject those too).

        The error carries the absolute byte offset of the problem. That is 0 for the length
        field, 8 for a problem in the header's content (or the exact byte for invalid UTF-8 or
        JSON), and the tensor's first byte for problems in the data section.

    Notes
    -----
    Zero-size tensors are accepted, including several at one offset. Keys in a tensor's object
    other than ``dtype``, ``shape`` and ``data_offsets`` are ignored, as the safetensors
    reference reader ignores them.
    """
    header_length_bytes = _read_header_length(path, fileobj, file_size_bytes)
    data_offset = LENGTH_FIELD_BYTES + header_length_bytes
    header_bytes = _read_exact(path, fileobj, LENGTH_FIELD_BYTES, header_length_bytes, "header")
    header = _parse_header(path, header_bytes)

    metadata = _parse_metadata(path, header.pop(_METADATA_KEY, None))

    data_size_bytes = file_size_bytes - data_offset
    spans = [
        _parse_tensor(path, name, description, data_offset, data_size_bytes)
        for name, description in header.items()
    ]
    # Sorting by (begin, end) puts zero-size tensors before a tensor that starts at their offset.
    # The sort is stable, so tensors with equal offsets keep their header order.
    spans.sort(key=lambda span: (span.begin, span.end))
    _check_tiling(path, spans, data_offset, data_size_bytes)

    return SafetensorsIndex(
        entries=[span.entry for span in spans],
        metadata=metadata,
        data_offset=data_offset,
    )


@dataclass(frozen=True)
class _Span:
    """A validated tensor with its data_offsets, relative to the data section."""

    name: str
    begin: int
    end: int
    entry: Entry


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _read_exact(path: str, fileobj: BinaryIO, offset: int, length_bytes: int, part_name: str) -> bytes:
    """Read ``length_bytes`` at ``offset``. The caller has checked both against the file size."""
    fileobj.seek(offset)
    chunks: list[bytes] = []
    received_bytes = 0
    while received_bytes < length_bytes:
        chunk = fileobj.read(length_bytes - received_bytes)
        if not chunk:
            break
        chunks.append(chunk)
        received_bytes += len(chunk)
    if received_bytes != length_bytes:
        raise CheckpointError(
            path,
            f"the {part_name} needs {length_bytes} bytes, but the file ended after {received_bytes}; {_CHANGED}",
            offset + received_bytes,
        )
    return b"".join(chunks)


def _read_header_length(path: str, fileobj: BinaryIO, file_size_bytes: int) -> int:
    if file_size_bytes < LENGTH_FIELD_BYTES:
        raise CheckpointError(
            path,
            f"file has {file_size_bytes} bytes, fewer than the 8-byte header length field; {_TRUNCATED}",
            0,
        )
    length_field = _read_exact(path, fileobj, 0, LENGTH_FIELD_BYTES, "header length")
    header_length_bytes = int.from_bytes(length_field, "little")

    available_bytes = file_size_bytes - LENGTH_FIELD_BYTES
    if header_length_bytes > available_bytes:
        raise CheckpointError(
            path,
            f"header length is {header_length_bytes} bytes, but {available_bytes} follow; {_TRUNCATED}",
            0,
        )
    if header_length_bytes > MAX_HEADER_BYTES:
        raise CheckpointError(
            path,
            f"header length {header_length_bytes} exceeds {MAX_HEADER_BYTES} bytes; {_NOT_SAFETENSORS}",
            0,
        )
    return header_length_bytes


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _parse_header(path: str, header_bytes: bytes) -> dict[str, Any]:
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(
            path,
            f"header is not valid UTF-8 ({error.reason}); {_NOT_SAFETENSORS}",
            LENGTH_FIELD_BYTES + error.start,
        ) from error

    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKeyError as error:
        raise CheckpointError(
            path,
            f"header contains the key {error.key!r} twice, so it is ambiguous; {_CORRUPT_HEADER}",
            LENGTH_FIELD_BYTES,
        ) from error
    except json.JSONDecodeError as error:
        error_offset = LENGTH_FIELD_BYTES + len(text[: error.pos].encode("utf-8"))
        raise CheckpointError(
            path,
            f"header is not valid JSON ({error.msg}); {_NOT_SAFETENSORS}",
            error_offset,
        ) from error
    except RecursionError as error:
        raise CheckpointError(
            path,
            f"header nests JSON arrays or objects too deeply to parse; {_NOT_SAFETENSORS}",
            LENGTH_FIELD_BYTES,
        ) from error
    except ValueError as error:
        # json raises a plain ValueError for an integer literal with too many digits.
        raise CheckpointError(
            path,
            f"header contains a JSON value that cannot be parsed ({error}); {_NOT_SAFETENSORS}",
            LENGTH_FIELD_BYTES,
        ) from error

    if not isinstance(header, dict):
        raise CheckpointError(
            path,
            f"header is a JSON {_json_kind(header)}, not a JSON object of tensors; {_NOT_SAFETENSORS}",
            LENGTH_FIELD_BYTES,
        )
    return header


def _json_kind(value: object) -> str:
    """Name the JSON type of a parsed value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _parse_metadata(path: str, raw: object) -> dict[str, str]:
    # The safetensors reference reader accepts a null __metadata__ as no metadata.
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CheckpointError(
            path,
            f"__metadata__ is a JSON {_json_kind(raw)}, not an object of strings; {_CORRUPT_HEADER}",
            LENGTH_FIELD_BYTES,
        )
    for key, value in raw.items():
        if not isinstance(value, str):
            raise CheckpointError(
                path,
                f"__metadata__ maps {key!r} to a JSON {_json_kind(value)}, not a string; {_CORRUPT_HEADER}",
                LENGTH_FIELD_BYTES,
            )
    return dict(raw)


def _parse_tensor(
    path: str, name: str, description: object, data_offset: int, data_size_bytes: int
) -> _Span:
    """Validate one tensor's header fields and build its entry."""
    if not isinstance(description, dict):
        raise CheckpointError(
            path,
            f"tensor {name!r} is a JSON {_json_kind(description)}, not a JSON object; {_CORRUPT_HEADER}",
            LENGTH_FIELD_BYTES,
        )
    for field in ("dtype", "shape", "data_offsets"):
        if field not in description:
            raise CheckpointError(
                path,
                f"tensor {name!r} has no {field!r} field; {_CORRUPT_HEADER}",
                LENGTH_FIELD_BYTES,
            )

    type_name = description["dtype"]
    dtype = _parse_dtype(path, name, type_name)
    shape = _parse_shape(path, name, description["shape"])
    begin, end = _parse_data_offsets(path, name, description["data_offsets"])

    if end > data_size_bytes:
        raise CheckpointError(
            path,
            f"tensor {name!r} ends at byte {data_offset + end}, past the end of the file; {_TRUNCATED}",
            data_offset + begin,
        )

    length_bytes = end - begin
    expected_bytes = _byte_count_up_to(shape, dtype.itemsize, _MAX_COUNTED_BYTES)
    if expected_bytes != length_bytes:
        need = f"more than {_MAX_COUNTED_BYTES}" if expected_bytes is None else f"{expected_bytes}"
        raise CheckpointError(
            path,
            f"tensor {name!r} of {type_name} {list(shape)} needs {need} bytes, but its data_offsets [{begin}, {end}] span {length_bytes}; {_CORRUPT_HEADER}",  # noqa: E501
            data_offset + begin,
        )

    part = TensorIndex(
        type_name=type_name,
        dtype=dtype,
        shape=shape,
        ranges=((data_offset + begin, length_bytes),),
    )
    entry = Entry(name=name, kind="tensor", parts=(part,), path=path)
    return _Span(name=name, begin=begin, end=end, entry=entry)


def _parse_dtype(path: str, name: str, type_name: object) -> np.dtype[Any]:
    if not isinstance(type_name, str):
        raise CheckpointError(
            path,
            f"tensor {name!r} has dtype {type_name!r}, which is not a string; {_CORRUPT_HEADER}",
            LENGTH_FIELD_BYTES,
        )
    dtype = SAFETENSORS_DTYPES.get(type_name)
    if dtype is not None:
        return dtype
    bits = PACKED_TYPE_BITS.get(type_name)
    if bits is not None:
        raise CheckpointError(
            path,
            f"tensor {name!r} has dtype {type_name}, which packs {bits}-bit elements; numpy has no dtype to view them, so convert the tensor to a whole-byte type such as BF16",  # noqa: E501
            LENGTH_FIELD_BYTES,
        )
    known = ", ".join(SAFETENSORS_DTYPES)
    raise CheckpointError(
        path,
        f"tensor {name!r} has unknown dtype {type_name!r}; known dtypes are {known}",
        LENGTH_FIELD_BYTES,
    )


def _parse_shape(path: str, name: str, raw: object) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise CheckpointError(
            path,
            f"tensor {name!r} has shape {raw!r}, which is not a JSON array; {_CORRUPT_HEADER}",
            LENGTH_FIELD_BYTES,
        )
    for axis, dim in enumerate(raw):
        # bool is a subclass of int in Python, but JSON true is not a dimension.
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise CheckpointError(
                path,
                f"tensor {name!r} has dimension {dim!r} on axis {axis}, not an integer >= 0; {_CORRUPT_HEADER}",
                LENGTH_FIELD_BYTES,
            )
    return tuple(raw)


def _parse_data_offsets(path: str, name: str, raw: object) -> tuple[int, int]:
    if isinstance(raw, list) and len(raw) == 2:
        begin, end = raw
        # bool is a subclass of int in Python, but JSON true is not an offset.
        if (
            isinstance(begin, int)
            and isinstance(end, int)
            and not isinstance(begin, bool)
            and not isinstance(end, bool)
            and 0 <= begin <= end
        ):
            return begin, end
    raise CheckpointError(
        path,
        f"tensor {name!r} has data_offsets {raw!r}, not [begin, end] with 0 <= begin <= end; {_CORRUPT_HEADER}",
        LENGTH_FIELD_BYTES,
    )


def _byte_count_up_to(shape: tuple[int, ...], itemsize: int, limit_bytes: int) -> int | None:
    """Return the byte count of ``shape``, or None once it exceeds ``limit_bytes``."""
    if 0 in shape:
        return 0
    count_bytes = itemsize
    for dim in shape:
        count_bytes *= dim
        if count_bytes > limit_bytes:
            return None
    return count_bytes


def _check_tiling(path: str, spans: list[_Span], data_offset: int, data_size_bytes: int) -> None:
    """Check that the sorted spans cover the data section from 0 with no gap or overlap."""
    covered_bytes = 0
    previous: _Span | None = None
    for span in spans:
        if span.begin > covered_bytes:
            raise CheckpointError(
                path,
                f"data bytes [{covered_bytes}, {span.begin}) before {span.name!r} are in no tensor; {_CORRUPT_HEADER}",
                data_offset + covered_bytes,
            )
        # covered_bytes > 0 here, so an earlier span exists.
        if span.begin < covered_bytes and previous is not None:
            raise CheckpointError(
                path,
                f"tensor {span.name!r} at data bytes [{span.begin}, {span.end}) overlaps tensor {previous.name!r} at [{previous.begin}, {previous.end}); {_CORRUPT_HEADER}",  # noqa: E501
                data_offset + span.begin,
            )
        covered_bytes = span.end
        previous = span

    if covered_bytes != data_size_bytes:
        trailing_bytes = data_size_bytes - covered_bytes
        raise CheckpointError(
            path,
            f"{trailing_bytes} bytes after the last tensor belong to no tensor; {_CORRUPT_HEADER}",
            data_offset + covered_bytes,
        )


# ----------------------------------------------------------------------------------------------
# MindSpore metadata
# ----------------------------------------------------------------------------------------------


def mindspore_crc(tensors: Iterable[tuple[str, BytesLike]]) -> int:
    """Compute the CRC32 that MindSpore stores as ``crc_num`` in a safetensors file.

    Parameters
    ----------
    tensors : iterable of (name, bytes-like)
        Every tensor of the file with its raw little-endian bytes, in any order. A numpy array
        must be C-contiguous, and its bytes are used as they are.

    Returns
    -------
    int
        The CRC32 chained over the tensors sorted by name (by code point, as Python sorts
        strings): for each, ``zlib.crc32`` of the name's UTF-8 bytes, then of the tensor's bytes,
        starting from 0. MindSpore 2.10 computes it this way in ``save_checkpoint`` and in
        ``load_checkpoint(..., crc_check=True)``.

    Raises
    ------
    ValueError
        If two tensors have the same name, or an array is not C-contiguous.
    """
    by_name: dict[str, BytesLike] = {}
    for name, data in tensors:
        if name in by_name:
            raise ValueError(
                f"tensor name {name!r} appears twice; pass each tensor of the file once"
            )
        by_name[name] = data

    crc = 0
    for name in sorted(by_name):
        crc = zlib.crc32(name.encode("utf-8"), crc)
        crc = zlib.crc32(_byte_view(by_name[name]), crc)
    return crc


class MindsporeCrc:
    """MindSpore's safetensors ``crc_num``, accumulated from tensors given in any order.

    MindSpore 2.10 chains ``zlib.crc32`` over each name's UTF-8 bytes and then ``bytes(array)``,
    in name order. That equals the CRC32 of the concatenation, so each tensor's piece is hashed on
    its own and the pieces are combined in name order at the end.

    ``bytes(array)`` is the array's raw data except for a 0-d integer array: Python's ``bytes()``
    takes it as a count and returns that many zero bytes (checked with numpy 2.4), and MindSpore
    hashes those. This class does the same, so MindSpore accepts the CRC. A negative 0-d integer
    makes ``bytes()`` raise, so MindSpore can neither write nor check a CRC for such a file.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._pieces: dict[str, tuple[int, int]] = {}

    def add(self, name: str, array: np.ndarray) -> None:
        """Add one tensor to the CRC.

        Raises
        ------
        ValueError
            If a tensor of this name was added before.
        """
        if name in self._pieces:
            raise ValueError(f"tensor name {name!r} was added twice; pass each tensor of the file once")
        name_bytes = name.encode("utf-8")
        name_crc = zlib.crc32(name_bytes)
        if array.ndim == 0 and array.dtype.kind in "iu":
            count = int(array)
            if count < 0:
                raise CheckpointError(
                    self._path,
                    f"tensor {name!r} is the 0-d integer {count}; MindSpore 2.10 computes crc_num with "
                    "bytes(array), which fails for a negative 0-d integer, so no valid crc_num exists",
                )
            crc = crc32_combine(name_crc, _crc32_of_zeros(count), count)
            self._pieces[name] = (crc, len(name_bytes) + count)
            return
        data = _byte_view(array)
        self._pieces[name] = (zlib.crc32(data, name_crc), len(name_bytes) + data.nbytes)

    def value(self) -> int:
        """Return the CRC32 over every tensor added so far, in name order."""
        return combine_crcs(self._pieces[name] for name in sorted(self._pieces))


def _crc32_of_zeros(count: int) -> int:
    """Return ``zlib.crc32(bytes(count))`` without allocating the bytes, in O(log count) steps."""
    result = 0
    result_length = 0
    power_crc = zlib.crc32(b"\0")  # the CRC32 of 2**k zero bytes, starting at k = 0
    power_length = 1
    remaining = count
    while remaining:
        if remaining & 1:
            result = crc32_combine(result, power_crc, power_length)
            result_length += power_length
        remaining >>= 1
        if remaining:
            power_crc = crc32_combine(power_crc, power_crc, power_length)
            power_length *= 2
    return result


def stored_crc(metadata: Mapping[str, str], path: str) -> int | None:
    """Read the CRC32 that MindSpore stored in a safetensors file's metadata.

    Parameters
    ----------
    metadata : mapping of str to str
        The file's ``__metadata__``, for example :attr:`SafetensorsIndex.metadata`.
    path : str
        The file's path, named in errors.

    Returns
    -------
    int or None
        The value of ``crc_num``, or None when the metadata has no ``crc_num``.

    Raises
    ------
    CheckpointError
        If ``crc_num`` is not a decimal number of ASCII digits in ``[0, 2**32)``. MindSpore 2.10
        parses it with ``int()``, which also accepts signs, surrounding spaces and underscores.
        It never writes them, so this check is stricter on purpose.
    """
    text = metadata.get(CRC_METADATA_KEY)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > _CRC32_MAX:
        raise CheckpointError(
            path,
            f"metadata crc_num is {text!r}, not a decimal CRC32; load the file without a CRC check",
            LENGTH_FIELD_BYTES,
        )
    return int(text)


def int4_names(metadata: Mapping[str, str]) -> set[str]:
    """Return the names of the tensors that MindSpore metadata marks as Int4.

    Parameters
    ----------
    metadata : mapping of str to str
        A file's ``__metadata__``.

    Returns
    -------
    set of str
        Every key whose value is ``"Int4"``. A marker may name a tensor that the file lacks, and
        the caller decides what that means.
    """
    return {name for name, value in metadata.items() if value == INT4_TYPE_NAME}


def as_int4_entry(entry: Entry) -> Entry:
    """Describe a tensor that MindSpore metadata marks as Int4 the way MindSpore 2.10 presents it.

    MindSpore 2.10 saves a qint4x2 tensor as safetensors ``I8`` holding two 4-bit values per
    byte, with the byte array's shape, and adds the metadata ``name: "Int4"``. When it loads the
    file it returns a Parameter of dtype ``Int4`` with that same shape, whose ``asnumpy()`` is
    the stored bytes as int8. So the presentation is the stored bytes unchanged, viewed as int8
    with the stored shape, and type name ``"Int4"``.

    Parameters
    ----------
    entry : Entry
        A ``"tensor"`` entry produced by :func:`index_safetensors`.

    Returns
    -------
    Entry
        The same entry with a part of type name ``"Int4"`` and dtype int8. Shape and ranges are
        unchanged.

    Raises
    ------
    CheckpointError
        If the stored dtype is not ``I8`` or ``U8``. MindSpore writes Int4 only as ``I8``. For a
        wider stored type, MindSpore 2.10 casts each element to int8 rather than reinterpreting
        bytes, so a byte view would disagree with it.
    """
    (part,) = entry.parts
    if part.type_name not in ("I8", "U8"):
        raise CheckpointError(
            entry.path,
            f"tensor {entry.name!r} is marked Int4 but stored as {part.type_name}, not I8; {_CORRUPT_HEADER}",
            part.ranges[0][0],
        )
    int4_part = TensorIndex(
        type_name=INT4_TYPE_NAME,
        dtype=np.dtype(np.int8),
        shape=part.shape,
        ranges=part.ranges,
    )
    return Entry(name=entry.name, kind=entry.kind, parts=(int4_part,), path=entry.path)


def mindspore_metadata(
    *, crc: int | None = None, int4_tensor_names: Iterable[str] = ()
) -> dict[str, str]:
    """Build the metadata MindSpore 2.10 writes, for a file that MindSpore should load.

    Parameters
    ----------
    crc : int, optional
        The value from :func:`mindspore_crc`, stored as ``crc_num``. Omit it for a file saved
        without a CRC check.
    int4_tensor_names : iterable of str
        Tensors to mark as ``Int4``. Each must be stored as ``I8``.

    Returns
    -------
    dict of str to str
        ``{"format": "ms"}``, plus ``crc_num`` and the Int4 markers when given.

    Raises
    ------
    ValueError
        If ``crc`` is not in ``[0, 2**32)``, or an Int4 name is ``"format"`` or ``"crc_num"``.
    """
    metadata = dict(MINDSPORE_FORMAT)
    if crc is not None:
        if not 0 <= crc <= _CRC32_MAX:
            raise ValueError(f"crc must be a CRC32 value from 0 to {_CRC32_MAX}, but it is {crc}")
        metadata[CRC_METADATA_KEY] = str(crc)
    for name in int4_tensor_names:
        if name in metadata:
            raise ValueError(
                f"tensor name {name!r} is a MindSpore metadata key, so it cannot be marked Int4; rename it"
            )
        metadata[name] = INT4_TYPE_NAME
    return metadata


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _byte_view(data: BytesLike) -> memoryview:
    """View bytes-like data, including arrays of ml_dtypes types, as flat unsigned bytes."""
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError(
                f"array of shape {data.shape} is not C-contiguous; pass numpy.ascontiguousarray(array)"
            )
        # ml_dtypes types such as bfloat16 do not support the buffer protocol, but uint8 does.
        return data.reshape(-1).view(np.uint8).data
    return memoryview(data).cast("B")


def _encode_header(
    layout: Sequence[LayoutItem], metadata: Mapping[str, str] | None
) -> tuple[bytes, int]:
    """Return the length field plus padded header, and the data section size in bytes."""
    header: dict[str, object] = {}
    if metadata is not None:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(
                    f"metadata must map strings to strings, but it maps {key!r} to {value!r}"
                )
        header[_METADATA_KEY] = dict(metadata)

    # Header keys follow the data order: MindSpore 2.10's reader checks the offsets in header order
    # and rejects a file whose header lists tensors in any other order.
    data_size_bytes = 0
    for name, dtype_like, shape_like in layout:
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, but one is {name!r}")
        if name == _METADATA_KEY:
            raise ValueError(
                f"tensor name {_METADATA_KEY!r} is reserved for the header's metadata; rename the tensor"
            )
        if name in header:
            raise ValueError(f"tensor name {name!r} appears twice in the layout; names must be unique")
        dtype = np.dtype(dtype_like)
        type_name = safetensors_type_of(dtype)
        shape = [int(dim) for dim in shape_like]
        if any(dim < 0 for dim in shape):
            raise ValueError(f"tensor {name!r} has shape {shape}, but dimensions must be non-negative")

        length_bytes = dtype.itemsize
        for dim in shape:
            length_bytes *= dim
        header[name] = {
            "dtype": type_name,
            "shape": shape,
            "data_offsets": [data_size_bytes, data_size_bytes + length_bytes],
        }
        data_size_bytes += length_bytes

    try:
        encoded = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"a tensor name or metadata string cannot be encoded as UTF-8 ({error.reason}); fix the text"
        ) from error

    # Padding the header keeps the data section 8-byte aligned, as safetensors writers do.
    padding_bytes = -(LENGTH_FIELD_BYTES + len(encoded)) % _HEADER_ALIGNMENT_BYTES
    encoded += _HEADER_PADDING * padding_bytes
    if len(encoded) > MAX_HEADER_BYTES:
        raise ValueError(
            f"header would be {len(encoded)} bytes, over the {MAX_HEADER_BYTES}-byte limit; use several files"
        )
    return len(encoded).to_bytes(LENGTH_FIELD_BYTES, "little") + encoded, data_size_bytes


def _create_temporary_file(path: str) -> tuple[str, int]:
    """Create an empty, uniquely named file next to ``path`` and return its name and descriptor."""
    directory, base_name = os.path.split(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    # 64 random bits make a name collision practically impossible. The loop only guards against one.
    for _ in range(3):
        temporary_path = os.path.join(directory, f".{base_name}.{secrets.token_hex(8)}.partial")
        try:
            # Mode 0o666 lets the process umask decide the final permissions, as open() does.
            return temporary_path, os.open(temporary_path, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temporary file next to {path}")


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable. Failures are only logged, because the file is in place."""
    if os.name == "nt":
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError as error:
        logger.warning("could not open directory %s to sync a rename: %s", directory, error)
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        logger.warning("could not sync directory %s after a rename: %s", directory, error)
    finally:
        os.close(descriptor)


class SafetensorsWriter:
    """Write a safetensors file from a known layout, streaming the tensor bytes in order.

    The header is computed from the layout when the writer is created. The data goes to a
    temporary file in the destination's directory, and :meth:`commit` syncs it and renames it
    over ``path``. Until then ``path`` is untouched, and :meth:`abort` deletes the temporary.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file. An existing file there is replaced on commit.
    layout : sequence of (name, dtype, shape)
        Every tensor in the order its bytes will be written. ``dtype`` is anything
        ``numpy.dtype`` accepts, with a safetensors type (see :func:`safetensors_type_of`).
    metadata : mapping of str to str, optional
        Stored as the header's ``__metadata__``. Omitted from the header when None.

    Raises
    ------
    TypeError
        If a name is not a string, a dtype has no safetensors type, or metadata is not strings.
    ValueError
        If a name repeats or is ``"__metadata__"``, a dimension is negative, or the header
        would exceed :data:`MAX_HEADER_BYTES`.
    OSError
        If the temporary file cannot be created or written.

    Notes
    -----
    If :meth:`write` or :meth:`commit` raises, the writer aborts first, so no temporary file is
    left behind. As a context manager, the writer aborts when the block raises and commits when
    it ends normally, unless it was already committed or aborted. A writer that is neither
    committed nor aborted leaves its temporary file on disk.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        layout: Sequence[LayoutItem],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        header, self.data_size_bytes = _encode_header(layout, metadata)
        self.header_size_bytes = len(header)
        self.bytes_written = 0
        self._state = "open"

        self._temporary_path, descriptor = _create_temporary_file(self.path)
        try:
            self._file = os.fdopen(descriptor, "wb")
        except BaseException:
            os.close(descriptor)
            os.unlink(self._temporary_path)
            raise
        try:
            self._file.write(header)
        except BaseException:
            self.abort()
            raise

    @property
    def data_offset(self) -> int:
        """Absolute file offset where the data section starts, in bytes."""
        return self.header_size_bytes

    def write(self, data: BytesLike) -> None:
        """Append the next bytes of the data section.

        Parameters
        ----------
        data : bytes-like or numpy.ndarray
            Raw little-endian bytes, written unchanged. A numpy array must be C-contiguous and
            not big-endian. Pieces may split or join tensors freely.

        Raises
        ------
        ValueError
            If the writer is committed or aborted, ``data`` would run past the data section, or
            an array is non-contiguous or big-endian. The writer aborts before raising.
        OSError
            If writing fails. The writer aborts before raising.
        """
        self._check_open("write")
        try:
            if isinstance(data, np.ndarray) and data.dtype.byteorder == ">":
                raise ValueError(
                    f"array of dtype {data.dtype} is big-endian; pass it converted to little-endian"
                )
            view = _byte_view(data)
            if self.bytes_written + view.nbytes > self.data_size_bytes:
                raise ValueError(
                    f"writing {view.nbytes} more bytes after {self.bytes_written} would overrun the {self.data_size_bytes}-byte data section of {self.path}; write exactly the layout's bytes"  # noqa: E501
                )
            self._file.write(view)
            self.bytes_written += view.nbytes
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        """Sync the file and rename it over the destination path.

        Raises
        ------
        ValueError
            If the writer is committed or aborted, or fewer bytes were written than the layout
            needs. The writer aborts before raising.
        OSError
            If syncing or renaming fails. The writer aborts before raising.
        """
        self._check_open("commit")
        try:
            if self.bytes_written != self.data_size_bytes:
                raise ValueError(
                    f"cannot commit {self.path}: {self.bytes_written} of {self.data_size_bytes} data bytes are written; write every tensor first"  # noqa: E501
                )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._temporary_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        file_size_bytes = self.data_offset + self.data_size_bytes
        logger.debug("wrote safetensors file %s (%d bytes)", self.path, file_size_bytes)
        _fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def abort(self) -> None:
        """Close and delete the temporary file. Safe to call twice, and a no-op after commit."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._file.close()
        finally:
            try:
                os.unlink(self._temporary_path)
            except FileNotFoundError:
                pass

    def _check_open(self, operation: str) -> None:
        if self._state != "open":
            raise ValueError(
                f"cannot {operation}: the writer for {self.path} is already {self._state}; use a new writer"
            )

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.commit()


def save_safetensors(
    tensors: Mapping[str, npt.NDArray[Any]],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write arrays to a safetensors file atomically.

    Parameters
    ----------
    tensors : mapping of str to numpy.ndarray
        The arrays, written in the mapping's order. Any layout and byte order is accepted; the
        file stores each array little-endian in C order.
    path : str or os.PathLike
        Destination file. It appears only once complete, replacing any existing file.
    metadata : mapping of str to str, optional
        Stored as the header's ``__metadata__``. For a file MindSpore should recognize as its
        own, pass :func:`mindspore_metadata`.

    Raises
    ------
    TypeError
        If a value is not a numpy array, its dtype has no safetensors type, or metadata is not
        strings.
    ValueError
        If a name is ``"__metadata__"`` or the header would exceed :data:`MAX_HEADER_BYTES`.
    OSError
        If the file cannot be written. No partial file and no temporary file remain.

    Notes
    -----
    Contiguous little-endian arrays are written straight from their memory. Other arrays are
    converted in copies of at most :data:`WRITE_CHUNK_BYTES` (or one element, if larger), so
    memory use does not grow with the total size.
    """
    for name, array in tensors.items():
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"tensor {name!r} is a {type(array).__name__}, not a numpy array; pass numpy.asarray(value)"
            )
    layout = [(name, array.dtype, array.shape) for name, array in tensors.items()]

    with SafetensorsWriter(path, layout, metadata=metadata) as writer:
        for array in tensors.values():
            for chunk in _iter_little_endian_chunks(array, WRITE_CHUNK_BYTES):
                writer.write(chunk)


def _iter_little_endian_chunks(
    array: npt.NDArray[Any], chunk_bytes: int
) -> Iterator[npt.NDArray[np.uint8]]:
    """Yield the array's little-endian C-order bytes as uint8 arrays of at most ``chunk_bytes``."""
    if array.flags.c_contiguous and array.dtype.byteorder != ">":
        flat = array.reshape(-1).view(np.uint8)
        for start in range(0, flat.size, chunk_bytes):
            yield flat[start : start + chunk_bytes]
        return

    little_endian = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    yield from _iter_converted_blocks(array, little_endian, chunk_bytes)


def _iter_converted_blocks(
    array: npt.NDArray[Any], dtype: np.dtype[Any], chunk_bytes: int
) -> Iterator[npt.NDArray[np.uint8]]:
    """Copy ``array`` to contiguous ``dtype`` in blocks of leading-axis rows, splitting big rows."""
    if array.ndim == 0 or array.nbytes <= chunk_bytes:
        yield np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8)
        return

    row_count = array.shape[0]
    row_bytes = array.nbytes // row_count
    if row_bytes >= chunk_bytes:
        for row in range(row_count):
            yield from _iter_converted_blocks(array[row], dtype, chunk_bytes)
        return

    rows_per_block = chunk_bytes // row_bytes
    for start in range(0, row_count, rows_per_block):
        block = np.ascontiguousarray(array[start : start + rows_per_block], dtype=dtype)
        yield block.reshape(-1).view(np.uint8)
