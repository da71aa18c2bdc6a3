"""The .ckpt index: encodings MindSpore never writes but protobuf allows, and hostile bytes.

Most checkpoints here are built by hand from protobuf pieces, so that a bug in the writer of
``mploader.formats.ckpt`` cannot hide one in its reader. Only the slicing and CRC trailer cases use
the writer. ``ckpt_proto.parse_checkpoint`` confirms that the valid cases are valid protobuf.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import shutil
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from ckpt_proto import MESSAGES, TensorProto, parse_checkpoint
from helpers import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from mploader.errors import CheckpointError
from mploader.formats import ckpt as ckpt_format
from mploader.formats.ckpt import CkptIndex, index_ckpt
from mploader.formats.crc import TRAILER_SIZE_BYTES, make_trailer
from mploader.formats.dtypes import CKPT_DTYPES
from mploader.formats.index import Entry, TensorIndex

MapTensorProto = MESSAGES["MapTensorProto"]

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LENGTH_DELIMITED = 2
WIRE_FIXED32 = 5

# Hostile inputs must fail without allocating anywhere near their declared sizes.
MAX_PEAK_BYTES = 4 * 1024 * 1024


# ----------------------------------------------------------------------------------------------
# Encoding helpers, independent of the writer under test
# ----------------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Encode ``value`` as a protobuf varint, and a negative value as its int64 two's complement."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def delimited(number: int, payload: bytes) -> bytes:
    return key(number, WIRE_LENGTH_DELIMITED) + varint(len(payload)) + payload


def record(value: bytes) -> bytes:
    """Wrap a serialized Value as one record: a Checkpoint message with one value field."""
    return delimited(1, value)


def tensor_proto(dims: list[int], type_name: str, content: bytes) -> bytes:
    return TensorProto(dims=dims, tensor_type=type_name, tensor_content=content).SerializeToString()


def tensor_value(name: str | bytes, tensor: bytes) -> bytes:
    tag = name.encode("utf-8") if isinstance(name, str) else name
    return delimited(1, tag) + delimited(2, tensor)


def tensor_record(name: str | bytes, dims: list[int], type_name: str, content: bytes) -> bytes:
    return record(tensor_value(name, tensor_proto(dims, type_name, content)))


def map_record(name: str, parts: list[np.ndarray]) -> bytes:
    message = MapTensorProto()
    for part in parts:
        message.tensor.add(dims=list(part.shape), tensor_type=part.dtype.name, tensor_content=part.tobytes())
    return record(delimited(1, name.encode("utf-8")) + delimited(3, message.SerializeToString()))


def value_offset(data: bytes, record_offset: int = 0) -> int:
    """Return where the Value of the record at ``record_offset`` starts."""
    position = record_offset + 1
    while data[position] & 0x80:
        position += 1
    return position + 1


# ----------------------------------------------------------------------------------------------
# Checking helpers
# ----------------------------------------------------------------------------------------------


def index_file(tmp_path: Path, data: bytes, name: str = "model.ckpt") -> tuple[Path, CkptIndex]:
    """Write ``data`` to a file and index it through a file object and through a memoryview."""
    path = tmp_path / name
    path.write_bytes(data)
    with open(path, "rb") as file:
        from_file = index_ckpt(str(path), file, len(data))
    from_buffer = index_ckpt(str(path), memoryview(data), len(data))
    assert from_buffer == from_file
    return path, from_file


def read_part(path: Path, part: TensorIndex) -> bytes:
    """Read a part's ranges from the file and join them."""
    chunks = []
    with open(path, "rb") as file:
        for offset, length_bytes in part.ranges:
            file.seek(offset)
            chunks.append(file.read(length_bytes))
    return b"".join(chunks)


def names(index: CkptIndex) -> list[str]:
    return [entry.name for entry in index.entries]


def check_tensor(path: Path, entry: Entry, expected: np.ndarray) -> None:
    assert entry.kind == "tensor", entry.name
    assert len(entry.parts) == 1, entry.name
    part = entry.parts[0]
    assert part.dtype == expected.dtype, entry.name
    assert part.shape == expected.shape, entry.name
    assert read_part(path, part) == expected.tobytes(), entry.name


def check_map(path: Path, entry: Entry, expected: list[np.ndarray]) -> None:
    assert entry.kind == "map", entry.name
    assert len(entry.parts) == 3, entry.name
    for part, array in zip(entry.parts, expected):
        assert part.dtype == array.dtype, entry.name
        assert part.type_name == array.dtype.name, entry.name
        assert part.shape == array.shape, entry.name
        assert read_part(path, part) == array.tobytes(), entry.name


def check_consistent(index: CkptIndex, size_bytes: int) -> None:
    """Check that every range lies inside the records and every size matches its shape."""
    assert index.data_end in (size_bytes, size_bytes - TRAILER_SIZE_BYTES)
    assert len(set(names(index))) == len(index.entries)
    for entry in index.entries:
        for part in entry.parts:
            for offset, length_bytes in part.ranges:
                assert offset >= 0, entry.name
                assert offset + length_bytes <= index.data_end, entry.name
            if entry.kind == "str":
                assert part.shape == (part.nbytes,), entry.name
                assert part.nbytes % 4 == 0, entry.name
            else:
                assert math.prod(part.shape) * part.dtype.itemsize == part.nbytes, entry.name


def expect_error(tmp_path: Path, data: bytes, name: str = "bad.ckpt") -> CheckpointError:
    """Index ``data`` as a file and as a buffer, and check that both raise the same CheckpointError."""
    path = tmp_path / name
    path.write_bytes(data)
    with open(path, "rb") as file, pytest.raises(CheckpointError) as from_file:
        index_ckpt(str(path), file, len(data))
    with pytest.raises(CheckpointError) as from_buffer:
        index_ckpt(str(path), memoryview(data), len(data))
    error = from_file.value
    assert str(path) in str(error)
    assert error.path == str(path)
    assert error.offset is not None
    # The offset equals the size when a message that needs more bytes meets the end of the data.
    assert 0 <= error.offset <= len(data)
    assert str(from_buffer.value) == str(error)
    return error


def write_items(save_obj: dict[str, object], crc_check: bool = False) -> bytes:
    sink = io.BytesIO()
    ckpt_format.write_checkpoint(ckpt_format.normalize_save_obj(save_obj), sink, crc_check=crc_check)
    return sink.getvalue()


# ----------------------------------------------------------------------------------------------
# Valid encodings
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag_last", [False, True], ids=["tag-first", "tag-last"])
@pytest.mark.parametrize("order", list(itertools.permutations(("dims", "type", "content"))), ids="-".join)
def test_index_field_order(tmp_path: Path, order: tuple[str, ...], tag_last: bool) -> None:
    array = np.arange(6, dtype=np.int16).reshape(2, 3) - 3
    fields = {
        "dims": TensorProto(dims=[2, 3]).SerializeToString(),
        "type": TensorProto(tensor_type="Int16").SerializeToString(),
        "content": TensorProto(tensor_content=array.tobytes()).SerializeToString(),
    }
    tensor = b"".join(fields[name] for name in order)
    tag = delimited(1, b"weight")
    value = delimited(2, tensor) + tag if tag_last else tag + delimited(2, tensor)
    following = np.array([7, 8], dtype=np.int8)
    data = record(value) + tensor_record("next", [2], "Int8", following.tobytes())

    parsed = parse_checkpoint(data)
    assert list(parsed.value[0].tensor.dims) == [2, 3]

    path, index = index_file(tmp_path, data)
    assert names(index) == ["weight", "next"]
    check_tensor(path, index.entries[0], array)
    check_tensor(path, index.entries[1], following)


@pytest.mark.parametrize(
    "dims_bytes",
    [
        delimited(1, varint(2) + varint(300)),
        delimited(1, varint(2)) + delimited(1, varint(300)),
        delimited(1, varint(2)) + key(1, WIRE_VARINT) + varint(300),
        key(1, WIRE_VARINT) + varint(2) + delimited(1, varint(300)),
    ],
    ids=["packed", "two-packed-runs", "packed-then-unpacked", "unpacked-then-packed"],
)
def test_index_packed_dims(tmp_path: Path, dims_bytes: bytes) -> None:
    array = np.arange(600, dtype=np.float32).reshape(2, 300)
    tensor = dims_bytes + TensorProto(tensor_type="Float32", tensor_content=array.tobytes()).SerializeToString()
    data = record(tensor_value("packed", tensor))

    assert list(parse_checkpoint(data).value[0].tensor.dims) == [2, 300]

    path, index = index_file(tmp_path, data)
    check_tensor(path, index.entries[0], array)


UNKNOWN_FIELDS = {
    "varint": key(100, WIRE_VARINT) + varint(2**64 - 1),
    "fixed64": key(101, WIRE_FIXED64) + b"\x0a\x12\x1a\x08\x0a\x12\x1a\x08",
    "length-delimited": delimited(102, b"\x0a\x12\x1a\x08\xff"),
    "empty-length-delimited": delimited(103, b""),
    "fixed32": key(2**29 - 1, WIRE_FIXED32) + b"\x0a\x12\x1a\x08",
    # A known field number with another wire type is an unknown field to protobuf.
    "field-3-as-varint": key(3, WIRE_VARINT) + varint(1000),
}


def build_with_unknown(level: str, unknown: bytes) -> tuple[bytes, np.ndarray, list[np.ndarray]]:
    """Build a tensor record and a map record, with ``unknown`` around every field at ``level``."""
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    map_parts = [
        np.array([5, 9], dtype=np.int64),
        np.arange(6, dtype=np.float16).reshape(2, 3),
        np.array([1, 0], dtype=np.int32),
    ]

    extra = unknown if level == "tensor" else b""
    tensor = b"".join(
        extra + TensorProto(**{name: field_value}).SerializeToString()
        for name, field_value in (("dims", [3, 4]), ("tensor_type", "Float32"), ("tensor_content", weight.tobytes()))
    ) + extra

    extra = unknown if level == "value" else b""
    value = extra + delimited(1, b"weight") + extra + delimited(2, tensor) + extra

    extra = unknown if level == "map" else b""
    map_body = b"".join(extra + delimited(1, tensor_proto(list(p.shape), p.dtype.name, p.tobytes())) for p in map_parts)
    map_value = delimited(1, b"table") + delimited(3, map_body + extra)

    # An unknown field may not come first in the file: the reader takes a first byte other than
    # 0x0a as proof that the file is not a plain checkpoint.
    extra = unknown if level == "record" else b""
    data = record(value) + extra + record(map_value) + extra
    return data, weight, map_parts


@pytest.mark.parametrize("kind", list(UNKNOWN_FIELDS))
@pytest.mark.parametrize("level", ["record", "value", "tensor", "map"])
def test_index_unknown_fields(tmp_path: Path, level: str, kind: str) -> None:
    data, weight, map_parts = build_with_unknown(level, UNKNOWN_FIELDS[kind])

    parsed = parse_checkpoint(data)
    assert [value.tag for value in parsed.value] == ["weight", "table"]

    path, index = index_file(tmp_path, data)
    assert names(index) == ["weight", "table"]
    check_tensor(path, index.entries[0], weight)
    check_map(path, index.entries[1], map_parts)


@pytest.mark.parametrize("dims", [[], [0]], ids=["no-dims", "dims-0"])
@pytest.mark.parametrize("type_name", ["Float32", "Float64", "Int64", "Bool", "BFloat16", "UInt8"])
def test_index_scalar(tmp_path: Path, type_name: str, dims: list[int]) -> None:
    scalar = np.array(1, dtype=CKPT_DTYPES[type_name])
    data = tensor_record("step", dims, type_name, scalar.tobytes())

    path, index = index_file(tmp_path, data)
    check_tensor(path, index.entries[0], scalar)


def test_index_dims_zero_without_content(tmp_path: Path) -> None:
    data = tensor_record("empty", [0], "Float32", b"")

    _, index = index_file(tmp_path, data)
    part = index.entries[0].parts[0]
    assert part.shape == (0,)
    assert part.nbytes == 0


@pytest.mark.parametrize("shape", [(0, 3), (3, 0, 5), (2, 0)])
def test_index_zero_elements(tmp_path: Path, shape: tuple[int, ...]) -> None:
    data = tensor_record("empty", list(shape), "Float32", b"")

    _, index = index_file(tmp_path, data)
    part = index.entries[0].parts[0]
    assert part.shape == shape
    assert part.nbytes == 0


@pytest.mark.parametrize(
    "text",
    ["", "weight", "héllo wörld", "emoji 😀 and 𝄞, outside the BMP", "中文 checkpoint"],
    ids=["empty", "ascii", "latin", "non-bmp", "cjk"],
)
def test_index_string(tmp_path: Path, text: str) -> None:
    content = np.array(text, dtype=np.str_).tobytes()
    data = tensor_record("note", [0], "str", content) + tensor_record("after", [1], "Int8", b"\x01")

    path, index = index_file(tmp_path, data)
    entry = index.entries[0]
    assert entry.kind == "str"
    part = entry.parts[0]
    assert part.type_name == "str"
    assert part.dtype == np.uint8
    assert part.shape == (len(content),)
    raw = read_part(path, part)
    assert raw == content
    assert raw.decode("utf-32-le").rstrip("\0") == text


def test_index_map_over_three_records(tmp_path: Path) -> None:
    rows = [2, 1, 3]
    chunks = []
    start = 0
    for count in rows:
        chunks.append(
            [
                np.arange(start, start + count, dtype=np.int64),
                np.arange(start * 4, (start + count) * 4, dtype=np.float32).reshape(count, 4),
                np.full(count, start, dtype=np.int32),
            ]
        )
        start += count
    data = b"".join(map_record("embedding.table", chunk) for chunk in chunks)
    data += tensor_record("dense", [1], "Int8", b"\x02")

    path, index = index_file(tmp_path, data)
    assert names(index) == ["embedding.table", "dense"]
    expected = [np.concatenate([chunk[number] for chunk in chunks]) for number in range(3)]
    check_map(path, index.entries[0], expected)
    for part in index.entries[0].parts:
        assert len(part.ranges) == 3


def test_index_map_fixture(tmp_path: Path) -> None:
    data = (FIXTURES / "map_tensor.ckpt").read_bytes()

    _, index = index_file(tmp_path, data)
    assert names(index) == ["embedding.table", "dense.weight"]
    assert [part.shape for part in index.entries[0].parts] == [(3,), (3, 3), (3,)]


def test_index_slices_cut_inside_element(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt_format, "SLICE_BYTES", 11)
    array = np.arange(4, dtype=np.float64).reshape(2, 2) + 0.25
    following = np.array(3, dtype=np.int8)
    data = write_items({"weight": array, "after": following})

    parsed = parse_checkpoint(data)
    assert [value.tag for value in parsed.value] == ["weight", "weight", "weight", "after"]
    assert [list(value.tensor.dims) for value in parsed.value[:3]] == [[2, 2]] * 3

    path, index = index_file(tmp_path, data)
    assert names(index) == ["weight", "after"]
    part = index.entries[0].parts[0]
    assert [length_bytes for _, length_bytes in part.ranges] == [11, 11, 10]
    check_tensor(path, index.entries[0], array)
    check_tensor(path, index.entries[1], following)


def test_index_crc_trailer_stripped(tmp_path: Path) -> None:
    save_obj = {"weight": np.arange(5, dtype=np.float32), "note": "text"}
    plain = write_items(save_obj)
    with_trailer = write_items(save_obj, crc_check=True)
    assert with_trailer[: len(plain)] == plain

    path, index = index_file(tmp_path, with_trailer)
    assert index.data_end == len(plain)
    assert index.trailer_crc == zlib.crc32(plain)
    plain_index = index_ckpt(str(path), memoryview(plain), len(plain))
    assert index.entries == plain_index.entries
    check_tensor(path, index.entries[0], save_obj["weight"])


def test_index_wrong_crc_still_stripped(tmp_path: Path) -> None:
    plain = tensor_record("weight", [2], "Int16", b"\x01\x00\x02\x00")
    _, index = index_file(tmp_path, plain + make_trailer(12345))
    assert index.data_end == len(plain)
    assert index.trailer_crc == 12345


def test_index_without_trailer(tmp_path: Path) -> None:
    plain = tensor_record("weight", [2], "Int16", b"\x01\x00\x02\x00")
    _, index = index_file(tmp_path, plain)
    assert index.data_end == len(plain)
    assert index.trailer_crc is None


def test_index_repeated_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = np.arange(3, dtype=np.int32)
    second = np.arange(5, dtype=np.int32) + 100
    data = (
        tensor_record("a", [3], "Int32", first.tobytes())
        + tensor_record("b", [1], "Int8", b"\x01")
        + tensor_record("a", [5], "Int32", second.tobytes())
    )

    with caplog.at_level(logging.WARNING, logger="mploader"):
        path, index = index_file(tmp_path, data)
    assert names(index) == ["a", "b"]
    check_tensor(path, index.entries[0], second)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings
    assert "'a'" in warnings[0].getMessage()


LONG_NAMES = {
    "cjk": "模型.层.0.权重",
    "emoji": "emoji.😀.𝄞.weight",
    "ascii-5000": "a" * 5000,
    # Over 6000 bytes of 2-byte and 4-byte UTF-8 characters, longer than the 4 KiB header window.
    "mixed-over-window": "layer." + "é" * 2500 + "😀" * 300,
}


@pytest.mark.parametrize("name", list(LONG_NAMES.values()), ids=list(LONG_NAMES))
def test_index_names(tmp_path: Path, name: str) -> None:
    before = np.arange(3000, dtype=np.uint8)
    middle = np.arange(6, dtype=np.float16)
    data = (
        tensor_record("before", [3000], "UInt8", before.tobytes())
        + tensor_record(name, [6], "Float16", middle.tobytes())
        + tensor_record("after", [], "Int64", np.int64(-9).tobytes())
    )

    path, index = index_file(tmp_path, data)
    assert names(index) == ["before", name, "after"]
    check_tensor(path, index.entries[0], before)
    check_tensor(path, index.entries[1], middle)
    check_tensor(path, index.entries[2], np.array(-9, dtype=np.int64))


@pytest.mark.parametrize("type_name", sorted(CKPT_DTYPES))
def test_index_every_dtype(tmp_path: Path, type_name: str) -> None:
    dtype = CKPT_DTYPES[type_name]
    if dtype == np.bool_:
        array = (np.arange(12) % 3 == 0).reshape(3, 4)
    else:
        array = np.arange(12 * dtype.itemsize, dtype=np.uint8).view(dtype).reshape(3, 4)
    data = tensor_record("x", [3, 4], type_name, array.tobytes())

    path, index = index_file(tmp_path, data)
    assert index.entries[0].parts[0].type_name == type_name
    check_tensor(path, index.entries[0], array)


def test_index_fixture_all_dtypes(tmp_path: Path) -> None:
    data = (FIXTURES / "all_dtypes_crc.ckpt").read_bytes()
    parsed = parse_checkpoint(data[:-TRAILER_SIZE_BYTES])

    path, index = index_file(tmp_path, data)
    assert names(index) == [value.tag for value in parsed.value]
    for entry, value in zip(index.entries, parsed.value):
        assert read_part(path, entry.parts[0]) == value.tensor.tensor_content, entry.name


# ----------------------------------------------------------------------------------------------
# Not a checkpoint
# ----------------------------------------------------------------------------------------------


def test_error_empty_file(tmp_path: Path) -> None:
    error = expect_error(tmp_path, b"")
    assert error.offset == 0
    assert "empty" in error.reason


def test_error_text_file(tmp_path: Path) -> None:
    error = expect_error(tmp_path, b"model weights, version 2\nlayer1 0.5 0.25\n")
    assert error.offset == 0
    assert "not a MindSpore .ckpt" in error.reason


def test_error_text_starting_with_newline(tmp_path: Path) -> None:
    # 0x0a is also the record key, so this text gets as far as a record length: 'h' (104 bytes).
    error = expect_error(tmp_path, b"\nhello\n")
    assert error.offset in (0, 1)


def test_error_safetensors_renamed(tmp_path: Path) -> None:
    source = FIXTURES / "lenet5_momentum.safetensors"
    target = tmp_path / "lenet5_momentum.ckpt"
    shutil.copyfile(source, target)

    error = expect_error(tmp_path, target.read_bytes(), name=target.name)
    assert error.offset == 0


def test_error_lfs_pointer(tmp_path: Path) -> None:
    pointer = (
        b"version https://git-lfs.github.com/spec/v1\n"
        b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        b"size 1234567\n"
    )
    error = expect_error(tmp_path, pointer)
    assert error.offset == 0
    assert "not a MindSpore .ckpt" in error.reason


# ----------------------------------------------------------------------------------------------
# Truncation and bit flips
# ----------------------------------------------------------------------------------------------


def sliced_parameter() -> bytes:
    """Return one float32 (3, 2) parameter cut into 7-byte records, as the writer slices."""
    raw = (np.arange(6, dtype=np.float32) + 0.5).tobytes()
    return b"".join(tensor_record("weight", [3, 2], "Float32", raw[start : start + 7]) for start in range(0, 24, 7))


def sample_entries() -> list[bytes]:
    """Return the records of a small checkpoint with every kind of entry, one item per entry."""
    return [
        sliced_parameter(),
        tensor_record("note", [0], "str", np.array("héllo 😀", dtype=np.str_).tobytes()),
        map_record("table", [np.arange(2, dtype=np.int32), np.ones((2, 3), np.float32), np.zeros(2, np.int32)]),
        tensor_record("step", [], "Int64", np.int64(5).tobytes()),
    ]


SAMPLE_NAMES = ["weight", "note", "table", "step"]
SAMPLE_PLAIN = b"".join(sample_entries())
SAMPLE = SAMPLE_PLAIN + make_trailer(zlib.crc32(SAMPLE_PLAIN))


def test_truncated_slices_every_byte() -> None:
    data = sliced_parameter()
    for cut in range(len(data)):
        for source in (memoryview(data[:cut]), io.BytesIO(data[:cut])):
            with pytest.raises(CheckpointError) as caught:
                index_ckpt("cut.ckpt", source, cut)
            assert caught.value.offset is not None, cut
            assert 0 <= caught.value.offset <= cut, cut


def test_truncated_sample_every_byte() -> None:
    # A cut right after a whole entry leaves a valid, shorter checkpoint. Every other cut must
    # raise, including one between two slices of a parameter.
    ends = itertools.accumulate(len(entry) for entry in sample_entries())
    names_before = {end: SAMPLE_NAMES[: count + 1] for count, end in enumerate(ends)}
    for cut in range(len(SAMPLE)):
        data = SAMPLE[:cut]
        for source in (memoryview(data), io.BytesIO(data)):
            if cut in names_before:
                index = index_ckpt("cut.ckpt", source, cut)
                assert names(index) == names_before[cut], cut
                continue
            with pytest.raises(CheckpointError) as caught:
                index_ckpt("cut.ckpt", source, cut)
            assert caught.value.offset is not None, cut
            assert 0 <= caught.value.offset <= cut, cut


def test_sample_indexes() -> None:
    index = index_ckpt("sample.ckpt", memoryview(SAMPLE), len(SAMPLE))
    assert names(index) == SAMPLE_NAMES
    assert index.data_end == len(SAMPLE_PLAIN)


def flip_and_index(data: bytes, bit: int) -> None:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    for source in (memoryview(bytes(flipped)), io.BytesIO(bytes(flipped))):
        try:
            index = index_ckpt("flipped.ckpt", source, len(flipped))
        except CheckpointError as error:
            assert error.offset is not None
            assert 0 <= error.offset <= len(flipped)
            continue
        check_consistent(index, len(flipped))


def test_bit_flip_sample_every_bit() -> None:
    for bit in range(len(SAMPLE) * 8):
        flip_and_index(SAMPLE, bit)


checkpoint_arrays = st.lists(
    st.tuples(
        st.sampled_from(["Float16", "Float32", "Int8", "Int64", "Bool", "BFloat16"]),
        st.lists(st.integers(0, 3), max_size=3),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(arrays=checkpoint_arrays, position=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_bit_flip_random_checkpoint(arrays: list[tuple[str, list[int]]], position: float, bit: int) -> None:
    data = b""
    for number, (type_name, dims) in enumerate(arrays):
        dtype = CKPT_DTYPES[type_name]
        content = bytes(range(256)) * 4
        data += tensor_record(f"p{number}", dims, type_name, content[: math.prod(dims) * dtype.itemsize])
    flip_and_index(data, int(position * len(data)) * 8 + bit)


# ----------------------------------------------------------------------------------------------
# Hostile lengths, dims and types
# ----------------------------------------------------------------------------------------------


def peak_while_indexing(data: bytes) -> tuple[CheckpointError, int]:
    """Index ``data`` through a file object, and return the error and the peak traced allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as caught:
            index_ckpt("hostile.ckpt", io.BytesIO(data), len(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return caught.value, peak


def test_error_record_length_max_varint(tmp_path: Path) -> None:
    data = b"\x0a" + varint(2**64 - 1) + b"\x0a\x01w" * 10
    error = expect_error(tmp_path, data)
    assert error.offset == 0

    _, peak = peak_while_indexing(data)
    assert peak < MAX_PEAK_BYTES


def test_error_record_length_eleven_bytes(tmp_path: Path) -> None:
    data = b"\x0a" + b"\xff" * 10 + b"\x01" + b"\x00" * 20
    error = expect_error(tmp_path, data)
    assert error.offset == 1
    assert "varint" in error.reason


def test_error_tensor_length_eleven_bytes(tmp_path: Path) -> None:
    tensor = tensor_proto([2], "Int8", b"\x01\x02")
    value = delimited(1, b"w") + b"\x12" + b"\x80" * 10 + bytes([len(tensor)]) + tensor
    data = record(value)
    error = expect_error(tmp_path, data)
    assert error.offset == value_offset(data) + 4


def test_error_second_record_length_too_large(tmp_path: Path) -> None:
    first = tensor_record("a", [1], "Int8", b"\x01")
    data = first + b"\x0a" + varint(2**40) + b"\x00" * 8
    error = expect_error(tmp_path, data)
    assert error.offset == len(first)


@pytest.mark.parametrize("declared", [30, 2**40, 2**64 - 1])
def test_error_content_length_past_file(tmp_path: Path, declared: int) -> None:
    # Every enclosing length is honest. Only tensor_content claims more bytes than exist.
    head = TensorProto(dims=[2], tensor_type="Int32").SerializeToString()
    tensor = head + b"\x1a" + varint(declared) + b"\x00" * 8
    data = record(tensor_value("weight", tensor))
    error = expect_error(tmp_path, data)
    content_key = data.index(b"\x1a" + varint(declared))
    assert error.offset in (content_key, content_key + 1)

    _, peak = peak_while_indexing(data)
    assert peak < MAX_PEAK_BYTES


def test_error_content_length_consistent_lie(tmp_path: Path) -> None:
    # The record, Value and TensorProto lengths all agree with a content of 2**40 bytes.
    content_length = 2**40
    head = TensorProto(dims=[2**38], tensor_type="Int32").SerializeToString() + b"\x1a" + varint(content_length)
    tensor_length = len(head) + content_length
    value_head = delimited(1, b"weight") + b"\x12" + varint(tensor_length)
    data = b"\x0a" + varint(len(value_head) + tensor_length) + value_head + head + b"\x00" * 64
    error = expect_error(tmp_path, data)
    assert error.offset == 0

    _, peak = peak_while_indexing(data)
    assert peak < MAX_PEAK_BYTES


@pytest.mark.parametrize("level", ["record", "value", "tensor"])
def test_error_unknown_field_length_too_large(tmp_path: Path, level: str) -> None:
    unknown = key(50, WIRE_LENGTH_DELIMITED) + varint(2**63)
    tensor = tensor_proto([1], "Int8", b"\x01") + (unknown if level == "tensor" else b"")
    value = tensor_value("w", tensor) + (unknown if level == "value" else b"")
    data = record(value) + (unknown if level == "record" else b"") + b"\x00" * 16
    error = expect_error(tmp_path, data)
    unknown_offset = data.index(unknown)
    assert unknown_offset <= error.offset <= unknown_offset + len(unknown)

    _, peak = peak_while_indexing(data)
    assert peak < MAX_PEAK_BYTES


def test_error_tag_length_too_large(tmp_path: Path) -> None:
    value = b"\x0a" + varint(2**62) + b"w" * 8
    data = record(value)
    error = expect_error(tmp_path, data)
    assert error.offset == value_offset(data) + 1

    _, peak = peak_while_indexing(data)
    assert peak < MAX_PEAK_BYTES


@pytest.mark.parametrize("dims", [[2**40, 2**40], [2**62, 4], [2**32, 2**32, 2**32], [2**63 - 1]])
def test_error_dims_overflow(tmp_path: Path, dims: list[int]) -> None:
    data = tensor_record("weight", dims, "Float32", b"\x00" * 16)
    error = expect_error(tmp_path, data)
    assert error.offset == value_offset(data)
    assert "dims" in error.reason

    _, peak = peak_while_indexing(data)
    assert peak < MAX_PEAK_BYTES


def test_error_negative_dim(tmp_path: Path) -> None:
    data = tensor_record("weight", [2, -1], "Float32", b"\x00" * 8)
    error = expect_error(tmp_path, data)
    assert error.offset == data.index(b"\x08" + varint(-1))
    assert "negative" in error.reason


def test_error_negative_packed_dim(tmp_path: Path) -> None:
    packed = varint(2) + varint(-3)
    tensor = delimited(1, packed) + TensorProto(tensor_type="Int8", tensor_content=b"\x00" * 6).SerializeToString()
    data = record(tensor_value("weight", tensor))
    error = expect_error(tmp_path, data)
    assert error.offset == data.index(varint(-3))
    assert "negative" in error.reason


@pytest.mark.parametrize(
    ("dims", "type_name", "content_bytes"),
    [([2, 3], "Float32", 20), ([2, 3], "Float32", 28), ([], "Float64", 4), ([0], "Int32", 8), ([4], "Bool", 0)],
)
def test_error_content_size_mismatch(tmp_path: Path, dims: list[int], type_name: str, content_bytes: int) -> None:
    data = tensor_record("weight", dims, type_name, b"\x01" * content_bytes)
    error = expect_error(tmp_path, data)
    assert error.offset == value_offset(data)
    assert "content bytes" in error.reason


@pytest.mark.parametrize("type_name", ["Float8", "Int4", "float32", "", "STR"])
def test_error_unknown_tensor_type(tmp_path: Path, type_name: str) -> None:
    data = tensor_record("weight", [2], type_name, b"\x00" * 8)
    error = expect_error(tmp_path, data)
    assert error.offset == value_offset(data)
    assert "tensor_type" in error.reason


def test_error_string_not_utf32_length(tmp_path: Path) -> None:
    data = tensor_record("note", [0], "str", b"abcdef")
    error = expect_error(tmp_path, data)
    assert error.offset == value_offset(data)


@pytest.mark.parametrize("part_count", [0, 2, 4])
def test_error_map_part_count(tmp_path: Path, part_count: int) -> None:
    parts = [np.arange(2, dtype=np.int32)] * part_count
    data = map_record("table", parts)
    error = expect_error(tmp_path, data)
    map_offset = value_offset(data) + len(delimited(1, b"table")) + 2
    assert error.offset == map_offset
    assert "parts" in error.reason


def test_error_map_unknown_part_type(tmp_path: Path) -> None:
    parts = [np.arange(2, dtype=np.int32), np.ones((2, 2), np.complex64), np.zeros(2, np.int32)]
    data = map_record("table", parts)
    error = expect_error(tmp_path, data)
    assert value_offset(data) <= error.offset < len(data)


def test_error_map_trailing_dims_differ(tmp_path: Path) -> None:
    first = map_record("table", [np.arange(2, dtype=np.int32), np.ones((2, 3), np.float32), np.zeros(2, np.int32)])
    second = map_record("table", [np.arange(1, dtype=np.int32), np.ones((1, 4), np.float32), np.zeros(1, np.int32)])
    error = expect_error(tmp_path, first + second)
    assert len(first) < error.offset < len(first) + len(second)


@pytest.mark.parametrize(
    ("second_dims", "second_type"),
    [([4, 2], "Float32"), ([8], "Float32"), ([2, 4], "Int32"), ([2, 4], "str")],
    ids=["dims-swapped", "dims-flat", "type-int", "type-str"],
)
def test_error_slices_disagree(tmp_path: Path, second_dims: list[int], second_type: str) -> None:
    first = tensor_record("weight", [2, 4], "Float32", b"\x00" * 16)
    second = tensor_record("weight", second_dims, second_type, b"\x00" * 16)
    error = expect_error(tmp_path, first + second)
    assert error.offset == value_offset(first + second, len(first))


def test_error_tensor_then_map_same_name(tmp_path: Path) -> None:
    first = tensor_record("table", [2], "Int32", b"\x00" * 8)
    second = map_record("table", [np.arange(2, dtype=np.int32), np.ones((2, 3), np.float32), np.zeros(2, np.int32)])
    error = expect_error(tmp_path, first + second)
    assert error.offset == value_offset(first)


@pytest.mark.parametrize(
    "name_bytes",
    [b"\xff\xfe", b"w\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc3"],
    ids=["ff-fe", "lone-continuation", "surrogate", "above-max", "cut-sequence"],
)
def test_error_invalid_utf8_name(tmp_path: Path, name_bytes: bytes) -> None:
    data = tensor_record(name_bytes, [1], "Int8", b"\x01")
    error = expect_error(tmp_path, data)
    assert error.offset == value_offset(data) + 2
    assert "UTF-8" in error.reason


def test_error_invalid_utf8_tensor_type(tmp_path: Path) -> None:
    tensor = (
        TensorProto(dims=[1]).SerializeToString()
        + delimited(2, b"\xc3\x28")
        + TensorProto(tensor_content=b"\x01").SerializeToString()
    )
    data = record(tensor_value("w", tensor))
    error = expect_error(tmp_path, data)
    assert error.offset == data.index(b"\xc3\x28")


@pytest.mark.parametrize("wire_type", [3, 4, 6, 7])
@pytest.mark.parametrize("level", ["file-start", "record", "value", "tensor", "map"])
def test_error_invalid_wire_type(tmp_path: Path, level: str, wire_type: int) -> None:
    bad_key = key(9, wire_type)
    payload = bad_key + b"\x00" * 8
    if level == "file-start":
        data = payload + tensor_record("w", [1], "Int8", b"\x01")
        error = expect_error(tmp_path, data)
        assert error.offset == 0
        return
    tensor = tensor_proto([1], "Int8", b"\x01") + (payload if level == "tensor" else b"")
    value = tensor_value("w", tensor) + (payload if level == "value" else b"")
    if level == "map":
        parts = b"".join(delimited(1, tensor_proto([1], "int32", b"\x00" * 4)) for _ in range(3))
        value = delimited(1, b"m") + delimited(3, parts + payload)
    data = record(value) + (payload if level == "record" else b"") + tensor_record("z", [1], "Int8", b"\x02")
    error = expect_error(tmp_path, data)
    key_offset = data.index(payload)
    assert error.offset in (key_offset, key_offset + len(bad_key))
    assert f"wire type {wire_type}" in error.reason


def test_error_record_without_tag(tmp_path: Path) -> None:
    data = record(delimited(2, tensor_proto([1], "Int8", b"\x01")))
    error = expect_error(tmp_path, data)
    assert error.offset == value_offset(data)


def test_error_record_without_tensor(tmp_path: Path) -> None:
    data = record(delimited(1, b"w"))
    error = expect_error(tmp_path, data)
    assert error.offset == value_offset(data)


@pytest.mark.parametrize("missing", ["tensor_type", "tensor_content"])
def test_error_tensor_field_missing(tmp_path: Path, missing: str) -> None:
    fields = {"dims": [1], "tensor_type": "Int8", "tensor_content": b"\x01"}
    del fields[missing]
    tensor = TensorProto(**fields).SerializeToString()
    data = record(tensor_value("w", tensor))
    error = expect_error(tmp_path, data)
    assert error.offset == data.index(tensor)
    assert missing in error.reason


def test_error_two_tensors_in_record(tmp_path: Path) -> None:
    tensor = tensor_proto([1], "Int8", b"\x01")
    data = record(tensor_value("w", tensor) + delimited(2, tensor))
    error = expect_error(tmp_path, data)
    assert value_offset(data) < error.offset < len(data)


def test_error_key_varint_over_64_bits(tmp_path: Path) -> None:
    first = tensor_record("a", [1], "Int8", b"\x01")
    data = first + b"\xff" * 10 + b"\x01" + b"\x00" * 4
    error = expect_error(tmp_path, data)
    assert error.offset == len(first)


@pytest.mark.parametrize("dims", [[0, 2**40], [2**40, 0], [0, 2**62], [3, 0, 2**62]])
def test_error_zero_elements_huge_dims(tmp_path: Path, dims: list[int]) -> None:
    # numpy cannot build (0, 2**62) even with no elements, so any order of such dims is rejected.
    data = tensor_record("empty", dims, "Float32", b"")
    error = expect_error(tmp_path, data)
    assert error.offset == value_offset(data)
