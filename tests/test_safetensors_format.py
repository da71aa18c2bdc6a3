"""The safetensors reader and writer, checked against files that safetensors 0.8 and MindSpore 2.10 wrote."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from helpers import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import deserialize, safe_open
from safetensors.numpy import load_file, save_file

from mploader.errors import CheckpointError
from mploader.formats import safetensors as st_format
from mploader.formats.dtypes import ckpt_type_of
from mploader.formats.index import Entry
from mploader.formats.safetensors import (
    MAX_HEADER_BYTES,
    SAFETENSORS_DTYPES,
    SafetensorsIndex,
    SafetensorsWriter,
    as_int4_entry,
    index_safetensors,
    int4_names,
    mindspore_crc,
    mindspore_metadata,
    safetensors_type_of,
    save_safetensors,
    stored_crc,
)

# A file written by MindSpore 2.10.0 with save_checkpoint(..., format="safetensors", crc_check=True)
# from a Float32 parameter "b" = [0, 1, 2] and a qint4x2 parameter "w4" of shape (2, 3). Loading it
# back, MindSpore returned "w4" as dtype Int4, shape (2, 3), and asnumpy() gave the int8 bytes
# 12 f3 7f 80 01 ab.
MINDSPORE_INT4_FILE = (
    bytes.fromhex("b800000000000000")
    + b'{"__metadata__":{"format":"ms","crc_num":"2319714462","w4":"Int4"},'
    + b'"b":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},'
    + b'"w4":{"dtype":"I8","shape":[2,3],"data_offsets":[12,18]}}      '
    + np.array([0, 1, 2], dtype="<f4").tobytes()
    + bytes.fromhex("12f37f8001ab")
)
MINDSPORE_INT4_CRC = 2319714462

# The dtypes that safetensors.numpy.load_file 0.8 can return. It fails on every F8 type, because
# it looks them up as numpy attributes that do not exist.
LOAD_FILE_TYPES = ["BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32", "F64", "C64"]

SHAPES = [(3, 5), (), (0,), (2, 0, 3), (7,), (1, 1, 1, 2)]


def index_file(path: Path, file_size_bytes: int | None = None) -> SafetensorsIndex:
    size = os.path.getsize(path) if file_size_bytes is None else file_size_bytes
    with open(path, "rb") as file:
        return index_safetensors(str(path), file, size)


def read_entry(entry: Entry) -> np.ndarray:
    """Read an entry's bytes with plain file reads and view them as its dtype and shape."""
    (part,) = entry.parts
    pieces = []
    with open(entry.path, "rb") as file:
        for offset, length_bytes in part.ranges:
            file.seek(offset)
            pieces.append(file.read(length_bytes))
    return np.frombuffer(b"".join(pieces), dtype=part.dtype).reshape(part.shape)


def random_array(dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Fill an array with random bit patterns, including NaNs and infinities. Bools get 0 or 1."""
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    count = int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, size=count * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def raw_header(header: dict[str, Any] | bytes) -> bytes:
    return header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")


def raw_file(header: dict[str, Any] | bytes, data: bytes = b"", header_length: int | None = None) -> bytes:
    """Build a file from a header, unpadded, so its data section starts at 8 + len(header)."""
    encoded = raw_header(header)
    length = len(encoded) if header_length is None else header_length
    return struct.pack("<Q", length) + encoded + data


def header_offsets(path: Path) -> tuple[int, dict[str, Any]]:
    """Parse a file's header independently of mploader: data section offset and tensors."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    return 8 + length, header


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ----------------------------------------------------------------------------------------------
# Files written by safetensors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", list(SAFETENSORS_DTYPES))
def test_index_matches_save_file(tmp_path: Path, type_name: str) -> None:
    dtype = SAFETENSORS_DTYPES[type_name]
    rng = np.random.default_rng(len(type_name))
    arrays = {f"t{i}": random_array(dtype, shape, rng) for i, shape in enumerate(SHAPES)}
    path = tmp_path / "model.safetensors"
    save_file(arrays, str(path))

    index = index_file(path)
    data_offset, header = header_offsets(path)

    assert index.data_offset == data_offset
    assert index.metadata == {}
    assert sorted(entry.name for entry in index.entries) == sorted(arrays)
    for entry in index.entries:
        (part,) = entry.parts
        begin, end = header[entry.name]["data_offsets"]
        original = arrays[entry.name]
        assert entry.kind == "tensor"
        assert entry.path == str(path)
        assert part.type_name == type_name
        assert part.dtype == dtype
        assert part.shape == original.shape
        assert part.ranges == ((data_offset + begin, end - begin),)
        loaded = read_entry(entry)
        assert loaded.dtype == dtype
        assert loaded.shape == original.shape
        assert loaded.tobytes() == original.tobytes()


def test_index_all_dtypes_in_file_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    arrays = {
        f"{type_name}.{i}": random_array(dtype, shape, rng)
        for type_name, dtype in SAFETENSORS_DTYPES.items()
        for i, shape in enumerate([(4, 3), (), (0, 2)])
    }
    path = tmp_path / "all.safetensors"
    save_file(arrays, str(path), metadata={"source": "safetensors"})

    index = index_file(path)

    assert index.metadata == {"source": "safetensors"}
    assert {entry.name for entry in index.entries} == set(arrays)
    next_offset = index.data_offset
    for entry in index.entries:
        ((offset, length_bytes),) = entry.parts[0].ranges
        assert offset == next_offset, entry.name
        next_offset = offset + length_bytes
        assert read_entry(entry).tobytes() == arrays[entry.name].tobytes(), entry.name
    assert next_offset == os.path.getsize(path)


def test_index_sorts_entries_by_offset(tmp_path: Path) -> None:
    # The header lists "late" first, but its bytes come after "early".
    header = {
        "late": {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]},
        "early": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
    }
    path = tmp_path / "order.safetensors"
    path.write_bytes(raw_file(header, b"abcde"))

    index = index_file(path)

    assert [entry.name for entry in index.entries] == ["early", "late"]
    assert read_entry(index.entries[0]).tobytes() == b"abc"
    assert read_entry(index.entries[1]).tobytes() == b"de"


def test_index_accepts_zero_size_at_one_offset(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "empty1": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]},
        "empty2": {"dtype": "I64", "shape": [2, 0], "data_offsets": [4, 4]},
        "b": {"dtype": "U8", "shape": [], "data_offsets": [4, 5]},
        "empty3": {"dtype": "BOOL", "shape": [0], "data_offsets": [5, 5]},
    }
    path = tmp_path / "zero.safetensors"
    path.write_bytes(raw_file(header, b"\x00\x00\x80\x3f\x07"))

    index = index_file(path)

    assert [entry.name for entry in index.entries] == ["a", "empty1", "empty2", "b", "empty3"]
    data_offset = index.data_offset
    assert index.entries[1].parts[0].ranges == ((data_offset + 4, 0),)
    assert index.entries[4].parts[0].ranges == ((data_offset + 5, 0),)
    assert read_entry(index.entries[1]).shape == (0, 3)
    assert read_entry(index.entries[3]).tolist() == 7


def test_index_accepts_null_metadata(tmp_path: Path) -> None:
    header = {"__metadata__": None, "x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    path = tmp_path / "null.safetensors"
    path.write_bytes(raw_file(header, b"\x01"))

    index = index_file(path)

    assert index.metadata == {}
    assert [entry.name for entry in index.entries] == ["x"]


def test_index_accepts_empty_header(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(raw_file(b"{}      "))

    index = index_file(path)

    assert index.entries == []
    assert index.metadata == {}
    assert index.data_offset == 16


def test_index_ignores_unknown_tensor_fields(tmp_path: Path) -> None:
    header = {"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "comment": [1, 2]}}
    path = tmp_path / "extra.safetensors"
    path.write_bytes(raw_file(header, b"\x01"))

    index = index_file(path)

    assert index.entries[0].parts[0].shape == (1,)


def test_index_fixture_matches_manifest(manifest: dict[str, Any]) -> None:
    path = FIXTURES / "lenet5_momentum.safetensors"
    expected = manifest["lenet5_momentum.safetensors"]["entries"]

    index = index_file(path)

    assert index.metadata == {"format": "ms"}
    assert stored_crc(index.metadata, str(path)) is None
    assert int4_names(index.metadata) == set()
    assert {entry.name for entry in index.entries} == set(expected)
    for entry in index.entries:
        (part,) = entry.parts
        raw = read_entry(entry).tobytes()
        assert entry.kind == expected[entry.name]["kind"], entry.name
        assert ckpt_type_of(part.dtype) == expected[entry.name]["dtype"], entry.name
        assert list(part.shape) == expected[entry.name]["shape"], entry.name
        assert hashlib.sha256(raw).hexdigest() == expected[entry.name]["sha256"], entry.name


# ----------------------------------------------------------------------------------------------
# Invalid and hostile files
# ----------------------------------------------------------------------------------------------

U8_TENSOR = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}


def tensor(dtype: Any = "U8", shape: Any = (4,), offsets: Any = (0, 4)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape, "data_offsets": offsets}


def data_offset_of(header: dict[str, Any]) -> int:
    return 8 + len(raw_header(header))


# Each case: file bytes, a phrase the message must contain, and the byte offset the error must
# carry (a function of the file bytes, for offsets inside the data section).
HOSTILE_CASES: dict[str, tuple[bytes, str, int]] = {}


def hostile(case_id: str, content: bytes, phrase: str, offset: int) -> None:
    HOSTILE_CASES[case_id] = (content, phrase, offset)


hostile("shorter than 8 bytes", b"\x02\x00\x00", "fewer than the 8-byte", 0)
hostile("empty file", b"", "fewer than the 8-byte", 0)
hostile("header length 2**63", raw_file(b"{}", header_length=2**63), "header length", 0)
hostile("header length 2**64-1", raw_file(b"{}", header_length=2**64 - 1), "header length", 0)
hostile("header length past end", raw_file(b"{}", header_length=3), "but 2 follow", 0)
hostile("non-UTF-8 header", raw_file(b'{"x\xff": 1}'), "not valid UTF-8", 8 + 3)
hostile("non-JSON header", raw_file(b'{"x": '), "not valid JSON", 8 + 6)
hostile("JSON array header", raw_file(b"[1, 2]"), "JSON array", 8)
hostile("JSON string header", raw_file(b'"x"'), "JSON string", 8)
hostile("empty header", raw_file(b""), "not valid JSON", 8)
hostile("NUL-padded header", raw_file(b"{}\x00\x00"), "not valid JSON", 8 + 2)
hostile("duplicate tensor", raw_file(b'{"x": {}, "x": {}}'), "'x' twice", 8)
hostile(
    "duplicate field",
    raw_file(b'{"x": {"dtype": "U8", "dtype": "I8", "shape": [], "data_offsets": [0, 1]}}', b"\x00"),
    "'dtype' twice",
    8,
)
hostile("deep nesting", raw_file(b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "too deeply", 8)
hostile("huge integer literal", raw_file(b'{"x": ' + b"1" * 5000 + b"}"), "cannot be parsed", 8)
hostile("metadata array", raw_file({"__metadata__": ["a"]}), "__metadata__ is a JSON array", 8)
hostile("metadata number value", raw_file({"__metadata__": {"crc_num": 5}}), "'crc_num' to a JSON number", 8)
hostile("tensor not object", raw_file({"x": [0, 4]}, b"abcd"), "'x' is a JSON array", 8)
for field in ("dtype", "shape", "data_offsets"):
    fields = {key: value for key, value in U8_TENSOR.items() if key != field}
    hostile(f"missing {field}", raw_file({"x": fields}, b"abcd"), f"no '{field}' field", 8)
hostile("dtype not string", raw_file({"x": tensor(dtype=8)}, b"abcd"), "dtype 8, which is not a string", 8)
hostile("unknown dtype", raw_file({"x": tensor(dtype="F128")}, b"abcd"), "'F128'; known dtypes are BOOL, U8", 8)
hostile("lowercase dtype", raw_file({"x": tensor(dtype="u8")}, b"abcd"), "unknown dtype 'u8'", 8)
hostile("packed F4 dtype", raw_file({"x": tensor(dtype="F4", shape=(8,))}, b"abcd"), "packs 4-bit elements", 8)
hostile("shape not array", raw_file({"x": tensor(shape="4")}, b"abcd"), "not a JSON array", 8)
hostile("negative dim", raw_file({"x": tensor(shape=(-4,))}, b"abcd"), "dimension -4 on axis 0", 8)
hostile("bool dim", raw_file({"x": tensor(shape=[True, 4])}, b"abcd"), "dimension True on axis 0", 8)
hostile("float dim", raw_file({"x": tensor(shape=[4.0])}, b"abcd"), "dimension 4.0 on axis 0", 8)
hostile("string dim", raw_file({"x": tensor(shape=["4"])}, b"abcd"), "dimension '4' on axis 0", 8)
hostile("one offset", raw_file({"x": tensor(offsets=[4])}, b"abcd"), "data_offsets [4], not [begin, end]", 8)
hostile("three offsets", raw_file({"x": tensor(offsets=[0, 2, 4])}, b"abcd"), "not [begin, end]", 8)
hostile("offsets reversed", raw_file({"x": tensor(offsets=[4, 0])}, b"abcd"), "0 <= begin <= end", 8)
hostile("negative begin", raw_file({"x": tensor(offsets=[-4, 0])}, b"abcd"), "0 <= begin <= end", 8)
hostile("bool offsets", raw_file({"x": tensor(shape=(1,), offsets=[False, True])}, b"a"), "not [begin, end]", 8)
hostile("float offsets", raw_file({"x": tensor(offsets=[0.0, 4.0])}, b"abcd"), "not [begin, end]", 8)
hostile("offsets object", raw_file({"x": tensor(offsets={"begin": 0})}, b"abcd"), "not [begin, end]", 8)

_mismatch = {"x": tensor(dtype="F32", shape=(2,), offsets=[0, 4])}
hostile("length mismatch", raw_file(_mismatch, b"abcd"), "needs 8 bytes, but its data_offsets [0, 4] span 4",
        data_offset_of(_mismatch))
_huge_shape = {"x": tensor(dtype="F64", shape=(2**40, 2**40, 2**40), offsets=[0, 4])}
hostile("huge shape", raw_file(_huge_shape, b"abcd"), f"needs more than {2**64} bytes", data_offset_of(_huge_shape))
_past_end = {"x": tensor(shape=(1000,), offsets=[0, 1000])}
hostile("offsets past end", raw_file(_past_end, b"abcd"), "past the end of the file", data_offset_of(_past_end))
_begin_past_end = {"x": tensor(shape=(4,), offsets=[2**62, 2**62 + 4])}
hostile("begin past end", raw_file(_begin_past_end, b"abcd"), "past the end of the file",
        data_offset_of(_begin_past_end) + 2**62)
_overlap = {"a": tensor(shape=(8,), offsets=[0, 8]), "b": tensor(shape=(8,), offsets=[4, 12])}
hostile("overlapping offsets", raw_file(_overlap, b"x" * 12), "'b' at data bytes [4, 12) overlaps tensor 'a'",
        data_offset_of(_overlap) + 4)
_same = {"a": tensor(), "b": tensor()}
hostile("same offsets", raw_file(_same, b"abcd"), "overlaps tensor 'a'", data_offset_of(_same))
_inside = {"a": tensor(shape=(8,), offsets=[0, 8]), "z": tensor(shape=(0,), offsets=[4, 4])}
hostile("zero-size inside tensor", raw_file(_inside, b"x" * 8), "'z' at data bytes [4, 4) overlaps",
        data_offset_of(_inside) + 4)
_gap = {"a": tensor(), "b": tensor(offsets=[8, 12])}
hostile("gap between tensors", raw_file(_gap, b"x" * 12), "data bytes [4, 8) before 'b' are in no tensor",
        data_offset_of(_gap) + 4)
_late_start = {"a": tensor(offsets=[4, 8])}
hostile("first tensor after 0", raw_file(_late_start, b"x" * 8), "data bytes [0, 4) before 'a'",
        data_offset_of(_late_start))
_trailing = {"a": tensor()}
hostile("trailing bytes", raw_file(_trailing, b"abcdef"), "2 bytes after the last tensor",
        data_offset_of(_trailing) + 4)
hostile("data without tensors", raw_file({}, b"ab"), "2 bytes after the last tensor", 8 + 2)


@pytest.mark.parametrize("case_id", list(HOSTILE_CASES))
def test_index_rejects_invalid_file(tmp_path: Path, case_id: str) -> None:
    content, phrase, offset = HOSTILE_CASES[case_id]
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(content)

    with pytest.raises(CheckpointError) as raised:
        index_file(path)

    error = raised.value
    assert error.path == str(path)
    assert str(error).startswith(f"{path} at byte {offset}: ")
    assert error.offset == offset
    assert phrase in error.reason


def test_huge_header_length_allocates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(raw_file(b"{}", header_length=2**63))

    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="header length"):
            index_file(path)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak_bytes < 1024 * 1024


def test_header_over_maximum_is_not_read(tmp_path: Path) -> None:
    # A sparse file large enough to hold the declared header, so only the maximum can reject it.
    header_length = MAX_HEADER_BYTES + 1
    path = tmp_path / "large.safetensors"
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", header_length))
        file.truncate(8 + header_length)

    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=f"exceeds {MAX_HEADER_BYTES} bytes") as raised:
            index_file(path)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert raised.value.offset == 0
    assert peak_bytes < 1024 * 1024


def test_index_detects_file_shrunk_after_stat(tmp_path: Path) -> None:
    path = tmp_path / "shrunk.safetensors"
    path.write_bytes(raw_file(b"{}" + b" " * 30)[:20])

    with pytest.raises(CheckpointError, match="ended after 12") as raised:
        index_file(path, file_size_bytes=40)

    assert raised.value.offset == 20


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", list(SAFETENSORS_DTYPES))
def test_save_output_reads_in_safetensors(tmp_path: Path, type_name: str) -> None:
    dtype = SAFETENSORS_DTYPES[type_name]
    rng = np.random.default_rng(len(type_name) + 100)
    arrays = {f"t{i}": random_array(dtype, shape, rng) for i, shape in enumerate(SHAPES)}
    path = tmp_path / "ours.safetensors"

    save_safetensors(arrays, path, metadata={"kind": type_name})

    # deserialize returns raw bytes for every dtype, including those load_file cannot return.
    tensors = dict(deserialize(path.read_bytes()))
    assert set(tensors) == set(arrays)
    for name, original in arrays.items():
        assert tensors[name]["dtype"] == type_name, name
        assert tuple(tensors[name]["shape"]) == original.shape, name
        assert bytes(tensors[name]["data"]) == original.tobytes(), name
    with safe_open(str(path), framework="np") as file:
        assert file.metadata() == {"kind": type_name}
    if type_name in LOAD_FILE_TYPES:
        loaded = load_file(str(path))
        for name, original in arrays.items():
            assert loaded[name].dtype == original.dtype, name
            assert loaded[name].shape == original.shape, name
            assert loaded[name].tobytes() == original.tobytes(), name


def test_save_writes_standard_layout(tmp_path: Path) -> None:
    arrays = {
        "z": np.arange(3, dtype=np.float32),
        "a": np.ones((2, 2), dtype=ml_dtypes.bfloat16),
        "m": np.zeros((), dtype=np.int64),
    }
    path = tmp_path / "layout.safetensors"

    save_safetensors(arrays, path, metadata={"format": "ms"})

    content = path.read_bytes()
    (header_length,) = struct.unpack("<Q", content[:8])
    header_text = content[8 : 8 + header_length].decode("utf-8")
    header = json.loads(header_text)
    json_text = header_text.rstrip(" ")
    assert (8 + header_length) % 8 == 0
    assert json_text.endswith("}")
    assert len(header_text) - len(json_text) < 8
    assert list(header) == ["__metadata__", "z", "a", "m"]
    assert header["z"]["data_offsets"] == [0, 12]
    assert header["a"]["data_offsets"] == [12, 20]
    assert header["m"]["data_offsets"] == [20, 28]
    assert len(content) == 8 + header_length + 28
    assert content[8 + header_length :] == b"".join(array.tobytes() for array in arrays.values())


def test_save_converts_strided_and_big_endian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny chunk size forces the converting path to split rows and even single rows.
    monkeypatch.setattr(st_format, "WRITE_CHUNK_BYTES", 16)
    base = np.arange(6 * 10, dtype=np.float64).reshape(6, 10)
    arrays: dict[str, np.ndarray] = {
        "transposed": base.T,
        "strided": base[::2, ::3],
        "big_endian": np.arange(50, dtype=">i4").reshape(5, 10),
        "big_endian_strided": np.arange(40, dtype=">f8").reshape(4, 10)[:, ::2],
        "wide_rows": np.arange(2 * 3 * 8, dtype=">u2").reshape(2, 3, 8),
        "scalar_big_endian": np.array(3.5, dtype=">f4"),
        "contiguous": np.arange(100, dtype=np.int16),
    }
    path = tmp_path / "converted.safetensors"

    save_safetensors(arrays, path)

    loaded = load_file(str(path))
    index = index_file(path)
    assert [entry.name for entry in index.entries] == list(arrays)
    for name, original in arrays.items():
        assert loaded[name].dtype == original.dtype.newbyteorder("<"), name
        assert loaded[name].shape == original.shape, name
        assert np.array_equal(loaded[name], original), name


def test_writer_streams_pieces_like_save(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "a": np.arange(10, dtype=np.int32),
        "b": np.ones((3, 3), dtype=np.float16),
        "c": np.zeros(0, np.uint8),
    }
    expected_path = tmp_path / "expected.safetensors"
    save_safetensors(arrays, expected_path, metadata={"k": "v"})
    data = b"".join(array.tobytes() for array in arrays.values())
    layout = [(name, array.dtype, array.shape) for name, array in arrays.items()]
    path = tmp_path / "streamed.safetensors"

    with SafetensorsWriter(path, layout, metadata={"k": "v"}) as writer:
        assert writer.data_size_bytes == len(data)
        assert writer.data_offset == os.path.getsize(expected_path) - len(data)
        # Pieces that split tensors and elements, of several bytes-like types.
        writer.write(data[:7])
        writer.write(bytearray(data[7:30]))
        writer.write(memoryview(data)[30:31])
        writer.write(np.frombuffer(data[31:], dtype=np.uint8))
        assert not path.exists()

    assert path.read_bytes() == expected_path.read_bytes()
    assert files_in(tmp_path) == ["expected.safetensors", "streamed.safetensors"]


def test_writer_accepts_bfloat16_arrays(tmp_path: Path) -> None:
    array = np.linspace(-2, 2, 12, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(3, 4)
    path = tmp_path / "bf16.safetensors"

    with SafetensorsWriter(path, [("w", array.dtype, array.shape)]) as writer:
        writer.write(array)

    (entry,) = index_file(path).entries
    assert entry.parts[0].type_name == "BF16"
    assert read_entry(entry).tobytes() == array.tobytes()


def test_save_error_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old contents")
    layout = [("a", np.float32, (4,))]

    with pytest.raises(RuntimeError, match="interrupted"):
        with SafetensorsWriter(path, layout) as writer:
            writer.write(b"\x00" * 8)
            raise RuntimeError("interrupted")

    assert path.read_bytes() == b"old contents"
    assert files_in(tmp_path) == ["model.safetensors"]


def test_save_rejects_non_arrays_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"

    with pytest.raises(TypeError, match="'b' is a list, not a numpy array"):
        save_safetensors({"a": np.zeros(2), "b": [1, 2]}, path)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="cannot be stored in a safetensors file"):
        save_safetensors({"a": np.zeros(2), "b": np.array(["text"])}, path)
    with pytest.raises(TypeError, match="cannot be stored in a safetensors file"):
        save_safetensors({"c": np.zeros(2, dtype=np.complex128)}, path)

    assert files_in(tmp_path) == []


def test_save_rejects_unwritable_destination(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        save_safetensors({"a": np.zeros(2)}, tmp_path / "missing" / "model.safetensors")

    (tmp_path / "directory.safetensors").mkdir()
    with pytest.raises(IsADirectoryError):
        save_safetensors({"a": np.zeros(2)}, tmp_path / "directory.safetensors")

    assert files_in(tmp_path) == ["directory.safetensors"]
    assert files_in(tmp_path / "directory.safetensors") == []


def test_writer_overrun_aborts(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    writer = SafetensorsWriter(path, [("a", np.uint8, (4,))])
    writer.write(b"abc")

    with pytest.raises(ValueError, match="writing 2 more bytes after 3 would overrun the 4-byte data section"):
        writer.write(b"de")

    assert files_in(tmp_path) == []
    with pytest.raises(ValueError, match="already aborted"):
        writer.write(b"d")
    with pytest.raises(ValueError, match="already aborted"):
        writer.commit()


def test_writer_short_commit_aborts(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    writer = SafetensorsWriter(path, [("a", np.uint8, (4,)), ("b", np.int64, (2,))])
    writer.write(b"abcd")

    with pytest.raises(ValueError, match="4 of 20 data bytes are written"):
        writer.commit()

    assert files_in(tmp_path) == []


def test_writer_context_exit_checks_length(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"

    with pytest.raises(ValueError, match="0 of 4 data bytes"):
        with SafetensorsWriter(path, [("a", np.uint8, (4,))]):
            pass

    assert files_in(tmp_path) == []


def test_writer_rejects_bad_array_pieces(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    strided = np.arange(8, dtype=np.uint8)[::2]

    for piece, phrase in [(strided, "not C-contiguous"), (np.arange(2, dtype=">u2"), "big-endian")]:
        writer = SafetensorsWriter(path, [("a", np.uint8, (4,))])
        with pytest.raises(ValueError, match=phrase):
            writer.write(piece)
        assert files_in(tmp_path) == []


def test_writer_abort_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    writer = SafetensorsWriter(path, [])

    writer.abort()
    writer.abort()

    assert files_in(tmp_path) == []
    committed = SafetensorsWriter(path, [])
    committed.commit()
    committed.abort()
    assert files_in(tmp_path) == ["model.safetensors"]
    assert index_file(path).entries == []


def test_writer_leaves_permissions_to_umask(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    previous_umask = os.umask(0o022)
    try:
        save_safetensors({"a": np.zeros(1)}, path)
    finally:
        os.umask(previous_umask)

    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("layout", "metadata", "error", "phrase"),
    [
        ([("__metadata__", np.uint8, (1,))], None, ValueError, "reserved for the header's metadata"),
        ([("a", np.uint8, (1,)), ("a", np.uint8, (1,))], None, ValueError, "'a' appears twice"),
        ([("a", np.uint8, (2, -1))], None, ValueError, "dimensions must be non-negative"),
        ([("a", np.complex128, (1,))], None, TypeError, "complex128 cannot be stored"),
        ([(5, np.uint8, (1,))], None, TypeError, "names must be strings"),
        ([], {"a": 1}, TypeError, "metadata must map strings to strings"),
        ([("bad\ud800name", np.uint8, (1,))], None, ValueError, "cannot be encoded as UTF-8"),
    ],
)
def test_writer_rejects_bad_layout(
    tmp_path: Path, layout: list[Any], metadata: Any, error: type[Exception], phrase: str
) -> None:
    with pytest.raises(error, match=phrase):
        SafetensorsWriter(tmp_path / "model.safetensors", layout, metadata=metadata)

    assert files_in(tmp_path) == []


def test_type_of_maps_every_dtype() -> None:
    for type_name, dtype in SAFETENSORS_DTYPES.items():
        assert safetensors_type_of(dtype) == type_name
        assert safetensors_type_of(dtype.newbyteorder(">")) == type_name
    assert safetensors_type_of("float32") == "F32"
    assert safetensors_type_of(ml_dtypes.bfloat16) == "BF16"
    assert safetensors_type_of(np.dtype(">i8")) == "I64"

    for unsupported in (np.complex128, np.object_, "U4", np.float128 if hasattr(np, "float128") else "V8"):
        with pytest.raises(TypeError, match="supported dtypes are bool"):
            safetensors_type_of(unsupported)


# ----------------------------------------------------------------------------------------------
# MindSpore metadata
# ----------------------------------------------------------------------------------------------


def mindspore_int4_index(tmp_path: Path) -> SafetensorsIndex:
    path = tmp_path / "int4.safetensors"
    path.write_bytes(MINDSPORE_INT4_FILE)
    return index_file(path)


def test_mindspore_crc_matches_mindspore_file(tmp_path: Path) -> None:
    index = mindspore_int4_index(tmp_path)
    tensors = [(entry.name, read_entry(entry)) for entry in index.entries]

    stored = stored_crc(index.metadata, index.entries[0].path)

    assert stored == MINDSPORE_INT4_CRC
    assert mindspore_crc(tensors) == MINDSPORE_INT4_CRC
    assert mindspore_crc(reversed(tensors)) == MINDSPORE_INT4_CRC
    assert mindspore_crc((name, array.tobytes()) for name, array in tensors) == MINDSPORE_INT4_CRC


def test_mindspore_crc_chains_sorted_names() -> None:
    tensors = {
        "β": np.arange(3, dtype=ml_dtypes.bfloat16),
        "b": np.arange(4, dtype=np.float32),
        "a.z": np.array([True, False]),
        "a": np.zeros((0, 2), dtype=np.int8),
    }
    expected = 0
    for name in ["a", "a.z", "b", "β"]:
        expected = zlib.crc32(name.encode("utf-8"), expected)
        expected = zlib.crc32(tensors[name].tobytes(), expected)

    assert mindspore_crc(tensors.items()) == expected
    assert mindspore_crc([]) == 0


def test_mindspore_crc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="'a' appears twice"):
        mindspore_crc([("a", b"1"), ("a", b"2")])
    with pytest.raises(ValueError, match="not C-contiguous"):
        mindspore_crc([("a", np.arange(4)[::2])])


def test_stored_crc_parses_decimal() -> None:
    assert stored_crc({"format": "ms"}, "model.safetensors") is None
    assert stored_crc({"crc_num": "0"}, "model.safetensors") == 0
    assert stored_crc({"crc_num": "4294967295"}, "model.safetensors") == 2**32 - 1
    assert stored_crc({"crc_num": "0012"}, "model.safetensors") == 12


@pytest.mark.parametrize("text", ["", "abc", "-1", "+1", " 12", "12 ", "1_2", "0x10", "4294967296", "１２", "1.5"])
def test_stored_crc_rejects_invalid(text: str) -> None:
    with pytest.raises(CheckpointError, match="crc_num is .*, not a decimal CRC32") as raised:
        stored_crc({"format": "ms", "crc_num": text}, "model.safetensors")

    assert raised.value.path == "model.safetensors"


def test_int4_entry_matches_mindspore(tmp_path: Path) -> None:
    index = mindspore_int4_index(tmp_path)
    entries = {entry.name: entry for entry in index.entries}

    names = int4_names(index.metadata)
    int4 = as_int4_entry(entries["w4"])

    assert names == {"w4"}
    (part,) = int4.parts
    assert part.type_name == "Int4"
    assert part.dtype == np.int8
    assert part.shape == (2, 3)
    assert part.ranges == entries["w4"].parts[0].ranges
    assert read_entry(int4).tobytes() == bytes.fromhex("12f37f8001ab")
    assert int4.name == "w4"
    assert int4.path == entries["w4"].path


def test_int4_entry_rejects_wide_storage(tmp_path: Path) -> None:
    index = mindspore_int4_index(tmp_path)
    entries = {entry.name: entry for entry in index.entries}

    with pytest.raises(CheckpointError, match="'b' is marked Int4 but stored as F32") as raised:
        as_int4_entry(entries["b"])

    assert raised.value.offset == entries["b"].parts[0].ranges[0][0]


def test_int4_names_ignore_other_metadata() -> None:
    metadata = {"format": "ms", "crc_num": "1", "a": "Int4", "b": "int4", "c": "Int8", "d": "Int4"}

    assert int4_names(metadata) == {"a", "d"}


def test_mindspore_metadata_round_trip(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "w": np.array([[0x21, -0x10]], dtype=np.int8),
        "bias": np.arange(3, dtype=np.float32),
    }
    metadata = mindspore_metadata(crc=mindspore_crc(arrays.items()), int4_tensor_names=["w"])
    path = tmp_path / "ms.safetensors"

    save_safetensors(arrays, path, metadata=metadata)
    index = index_file(path)

    assert index.metadata == {"format": "ms", "crc_num": str(mindspore_crc(arrays.items())), "w": "Int4"}
    file_crc = mindspore_crc((entry.name, read_entry(entry)) for entry in index.entries)
    assert stored_crc(index.metadata, str(path)) == file_crc
    assert int4_names(index.metadata) == {"w"}
    assert mindspore_metadata() == {"format": "ms"}


def test_mindspore_metadata_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="CRC32 value"):
        mindspore_metadata(crc=2**32)
    with pytest.raises(ValueError, match="CRC32 value"):
        mindspore_metadata(crc=-1)
    for reserved in ("format", "crc_num"):
        with pytest.raises(ValueError, match="cannot be marked Int4"):
            mindspore_metadata(crc=1, int4_tensor_names=[reserved])


# ----------------------------------------------------------------------------------------------
# Random layouts
# ----------------------------------------------------------------------------------------------

tensor_names = st.text(min_size=0, max_size=12).filter(lambda name: name != "__metadata__")
shapes = st.lists(st.integers(min_value=0, max_value=4), min_size=0, max_size=3).map(tuple)
layouts = st.dictionaries(
    tensor_names,
    st.tuples(st.sampled_from(sorted(SAFETENSORS_DTYPES)), shapes),
    min_size=0,
    max_size=6,
)
metadata_maps = st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts, metadata=metadata_maps, data=st.data())
def test_random_layouts_round_trip(
    tmp_path: Path, layout: dict[str, tuple[str, tuple[int, ...]]], metadata: dict[str, str] | None, data: Any
) -> None:
    arrays = {}
    for name, (type_name, shape) in layout.items():
        dtype = SAFETENSORS_DTYPES[type_name]
        count = int(np.prod(shape, dtype=np.int64))
        raw = data.draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
        array = np.frombuffer(raw, dtype=np.uint8).view(dtype).reshape(shape)
        arrays[name] = array.astype(np.bool_) if dtype == np.bool_ else array
    path = tmp_path / "random.safetensors"

    save_safetensors(arrays, path, metadata=metadata)
    index = index_file(path)

    assert index.metadata == (metadata or {})
    assert index.data_offset % 8 == 0
    assert {entry.name for entry in index.entries} == set(arrays)
    for entry in index.entries:
        (part,) = entry.parts
        original = arrays[entry.name]
        assert part.type_name == layout[entry.name][0]
        assert part.dtype == original.dtype
        assert part.shape == original.shape
        assert read_entry(entry).tobytes() == original.tobytes()
    assert dict(deserialize(path.read_bytes())).keys() == arrays.keys()
