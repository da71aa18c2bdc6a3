"""save_checkpoint: the records it writes, what loads back, and what it rejects."""

from __future__ import annotations

import logging
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from ckpt_proto import parse_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

import mploader
from mploader.formats import ckpt as ckpt_format
from mploader.formats.crc import TRAILER_SIZE_BYTES, make_trailer
from mploader.formats.dtypes import CKPT_DTYPES


def save_and_parse(tmp_path: Path, save_obj: Any, **kwargs: Any) -> Any:
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint(save_obj, path, **kwargs)
    return parse_checkpoint(path.read_bytes())


def load(path: Path) -> dict[str, Any]:
    return mploader.load_checkpoint(path, workers=0)


def sample_array(type_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Return an array of distinct values of ``type_name`` that round trips bit for bit."""
    dtype = CKPT_DTYPES[type_name]
    count = int(np.prod(shape))
    if dtype == np.bool_:
        return (np.arange(count) % 3 == 1).reshape(shape)
    if dtype.kind == "f" or dtype == ml_dtypes.bfloat16:
        return (np.arange(count, dtype=np.float32) * -0.75 + 0.5).astype(dtype).reshape(shape)
    return (np.arange(count) * 37 % 251 - (100 if dtype.kind == "i" else 0)).astype(dtype).reshape(shape)


def directory_listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ----------------------------------------------------------------------------------------------
# Inputs and records
# ----------------------------------------------------------------------------------------------


def test_save_dict_equals_list(tmp_path: Path) -> None:
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    bias = np.ones(3, dtype=np.float16)
    as_dict = tmp_path / "dict.ckpt"
    as_list = tmp_path / "list.ckpt"

    mploader.save_checkpoint({"weight": weight, "bias": bias}, as_dict, append_dict={"epoch": 3})
    mploader.save_checkpoint(
        [{"name": "weight", "data": weight}, {"name": "bias", "data": bias}], as_list, append_dict={"epoch": 3}
    )
    assert as_dict.read_bytes() == as_list.read_bytes()


def test_save_append_dict_types(tmp_path: Path) -> None:
    save_obj = {"weight": np.arange(4, dtype=np.float32), "skipped": np.zeros(2, np.int8)}
    append_dict = {"epoch": 7, "lr": 0.125, "frozen": True, "tag": "run 😀"}

    parsed = save_and_parse(
        tmp_path, save_obj, append_dict=append_dict, choice_func=lambda name: name == "weight"
    )
    values = {value.tag: value.tensor for value in parsed.value}
    assert [value.tag for value in parsed.value] == ["weight", "epoch", "lr", "frozen", "tag"]
    assert values["epoch"].tensor_type == "Int64"
    assert list(values["epoch"].dims) == []
    assert values["epoch"].tensor_content == np.int64(7).tobytes()
    assert values["lr"].tensor_type == "Float32"
    assert list(values["lr"].dims) == []
    assert values["lr"].tensor_content == np.float32(0.125).tobytes()
    assert values["frozen"].tensor_type == "Bool"
    assert list(values["frozen"].dims) == []
    assert values["frozen"].tensor_content == b"\x01"
    assert values["tag"].tensor_type == "str"
    assert list(values["tag"].dims) == [0]
    assert values["tag"].tensor_content == "run 😀".encode("utf-32-le")

    loaded = load(tmp_path / "model.ckpt")
    assert loaded["epoch"].dtype == np.int64
    assert loaded["lr"].dtype == np.float32
    assert loaded["frozen"].dtype == np.bool_
    assert loaded["tag"] == "run 😀"


def test_save_choice_func_not_on_append(tmp_path: Path) -> None:
    parsed = save_and_parse(
        tmp_path, {"a": np.zeros(1, np.int8)}, append_dict={"b": 1}, choice_func=lambda name: False
    )
    assert [value.tag for value in parsed.value] == ["b"]


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (np.float64(0.1), "Float64"),
        (np.float32(0.1), "Float32"),
        (np.float16(0.5), "Float16"),
        (np.int32(-4), "Int32"),
        (np.bool_(True), "Bool"),
        (0.1, "Float32"),
        (-4, "Int64"),
    ],
    ids=["np-float64", "np-float32", "np-float16", "np-int32", "np-bool", "float", "int"],
)
def test_save_scalar_types(tmp_path: Path, value: Any, type_name: str) -> None:
    # numpy.float64 is a subclass of float, but keeps its own precision.
    parsed = save_and_parse(tmp_path, {"x": value})
    tensor = parsed.value[0].tensor
    assert tensor.tensor_type == type_name
    assert list(tensor.dims) == []
    assert tensor.tensor_content == np.asarray(value, dtype=CKPT_DTYPES[type_name]).tobytes()


def test_save_zero_elements_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_obj = {"empty": np.zeros((3, 0), np.float32), "kept": np.ones(2, np.float32), "none": np.array([])}

    with caplog.at_level(logging.WARNING, logger="mploader"):
        parsed = save_and_parse(tmp_path, save_obj)
    assert [value.tag for value in parsed.value] == ["kept"]
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("'empty'" in message for message in messages)
    assert any("'none'" in message for message in messages)


@pytest.mark.parametrize("shape", [(2, 3), (), (1,), (2, 1, 4)], ids=["2x3", "scalar", "1", "2x1x4"])
@pytest.mark.parametrize("type_name", sorted(CKPT_DTYPES))
def test_save_every_dtype_round_trip(tmp_path: Path, type_name: str, shape: tuple[int, ...]) -> None:
    array = sample_array(type_name, shape)
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint({"x": array}, path)

    tensor = parse_checkpoint(path.read_bytes()).value[0].tensor
    assert tensor.tensor_type == type_name
    assert tuple(tensor.dims) == shape
    loaded = load(path)["x"]
    assert loaded.dtype == array.dtype
    assert loaded.shape == shape
    assert loaded.tobytes() == array.tobytes()


@pytest.mark.parametrize("type_name", ["Int16", "UInt32", "Int64", "Float16", "Float32", "Float64"])
def test_save_big_endian_input(tmp_path: Path, type_name: str) -> None:
    little = sample_array(type_name, (3, 4))
    big = little.astype(little.dtype.newbyteorder(">"))
    assert big.tobytes() != little.tobytes()

    parsed = save_and_parse(tmp_path, {"x": big, "scalar": big[1, 2]})
    assert parsed.value[0].tensor.tensor_content == little.tobytes()
    assert parsed.value[0].tensor.tensor_type == type_name
    assert parsed.value[1].tensor.tensor_content == little[1, 2].tobytes()
    loaded = load(tmp_path / "model.ckpt")
    assert loaded["x"].dtype == little.dtype
    assert np.array_equal(loaded["x"], little)


def test_save_non_contiguous_input(tmp_path: Path) -> None:
    base = np.arange(60, dtype=np.int32).reshape(6, 10)
    views = {
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "reversed": base[::-1, ::-1],
        "column": base[:, 4],
        "big-endian-transposed": base.astype(">i4").T,
    }
    for view in views.values():
        assert not view.flags.c_contiguous

    parsed = save_and_parse(tmp_path, views)
    for value, (name, view) in zip(parsed.value, views.items()):
        assert value.tag == name
        assert value.tensor.tensor_content == np.ascontiguousarray(view, dtype="<i4").tobytes(), name
        assert list(value.tensor.dims) == list(view.shape), name
    loaded = load(tmp_path / "model.ckpt")
    for name, view in views.items():
        assert np.array_equal(loaded[name], view), name


def test_save_strings_round_trip(tmp_path: Path) -> None:
    texts = {"empty": "", "ascii": "adam", "non-bmp": "𝄞 clef and 😀", "cjk": "优化器"}
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint({"w": np.ones(1, np.float32)}, path, append_dict=texts)

    loaded = load(path)
    for name, text in texts.items():
        assert loaded[name] == text, name


def test_save_map_tensor_round_trip(tmp_path: Path) -> None:
    parts = [np.array([3, 1, 2], np.int64), np.arange(6, dtype=np.float32).reshape(3, 2), np.zeros(3, np.int32)]
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint({"table": parts}, path)

    maptensor = parse_checkpoint(path.read_bytes()).value[0].maptensor
    assert [part.tensor_type for part in maptensor.tensor] == ["int64", "float32", "int32"]
    loaded = load(path)["table"]
    assert len(loaded) == 3
    for got, expected in zip(loaded, parts):
        assert got.dtype == expected.dtype
        assert np.array_equal(got, expected)


# ----------------------------------------------------------------------------------------------
# Slicing
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slice_bytes", [1, 5, 7, 16, 40])
def test_save_slices_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_bytes: int) -> None:
    monkeypatch.setattr(ckpt_format, "SLICE_BYTES", slice_bytes)
    array = np.arange(10, dtype=np.float32).reshape(2, 5) - 4.5
    raw = array.tobytes()

    parsed = save_and_parse(tmp_path, {"w": array, "b": np.int8(1)})
    records = [value for value in parsed.value if value.tag == "w"]
    assert len(records) == -(-len(raw) // slice_bytes)
    for value in records:
        assert list(value.tensor.dims) == [2, 5]
        assert value.tensor.tensor_type == "Float32"
    assert b"".join(value.tensor.tensor_content for value in records) == raw
    assert [len(value.tensor.tensor_content) for value in records[:-1]] == [slice_bytes] * (len(records) - 1)
    assert parsed.value[-1].tag == "b"

    loaded = load(tmp_path / "model.ckpt")
    assert np.array_equal(loaded["w"], array)


def test_save_slices_string_unsliced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt_format, "SLICE_BYTES", 3)
    parsed = save_and_parse(tmp_path, {"w": np.ones(1, np.int8)}, append_dict={"note": "a longer note"})
    assert [value.tag for value in parsed.value] == ["w", "note"]
    assert load(tmp_path / "model.ckpt")["note"] == "a longer note"


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def test_save_appends_extension(tmp_path: Path) -> None:
    mploader.save_checkpoint({"w": np.ones(2, np.int8)}, tmp_path / "model")
    mploader.save_checkpoint({"w": np.ones(2, np.int8)}, str(tmp_path / "other.CKPT"))
    assert directory_listing(tmp_path) == ["model.ckpt", "other.CKPT.ckpt"]


def test_save_crc_trailer(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    save_obj = {"w": np.arange(100, dtype=np.float64), "note": "text"}
    mploader.save_checkpoint(save_obj, path, crc_check=True)
    mploader.save_checkpoint(save_obj, tmp_path / "plain.ckpt")

    data = path.read_bytes()
    records = data[:-TRAILER_SIZE_BYTES]
    assert data[-TRAILER_SIZE_BYTES:] == make_trailer(zlib.crc32(records))
    assert data[-TRAILER_SIZE_BYTES:].startswith(b"crc_num")
    assert records == (tmp_path / "plain.ckpt").read_bytes()
    loaded = mploader.load_checkpoint(path, workers=0, crc_check=True)
    assert np.array_equal(loaded["w"], save_obj["w"])


def test_save_file_mode_follows_umask(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint({"w": np.ones(2, np.int8)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    save_obj = {
        "a": np.ones(3, np.float32),
        "b": np.ones(3, np.int32),
        "c": np.array([object(), 1], dtype=object),
        "d": np.ones(3, np.int8),
    }
    with pytest.raises(TypeError, match="object"):
        mploader.save_checkpoint(save_obj, tmp_path / "model.ckpt")
    assert directory_listing(tmp_path) == []


def test_save_failure_keeps_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"previous checkpoint")
    save_obj = {"a": np.ones(3, np.float32), "b": np.ones(3, np.int32), "c": np.array([None], dtype=object)}

    with pytest.raises(TypeError):
        mploader.save_checkpoint(save_obj, path)
    assert directory_listing(tmp_path) == ["model.ckpt"]
    assert path.read_bytes() == b"previous checkpoint"


def test_save_failure_midway_through_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"previous checkpoint")
    real_record_header = ckpt_format.record_header
    calls = []

    def failing_record_header(*args: Any) -> bytes:
        calls.append(args[0])
        if len(calls) == 3:
            raise OSError("disk full")
        return real_record_header(*args)

    monkeypatch.setattr(ckpt_format, "record_header", failing_record_header)
    save_obj = {name: np.full(1000, index, np.float64) for index, name in enumerate("abcd")}
    with pytest.raises(OSError, match="disk full"):
        mploader.save_checkpoint(save_obj, path)
    assert calls == ["a", "b", "c"]
    assert directory_listing(tmp_path) == ["model.ckpt"]
    assert path.read_bytes() == b"previous checkpoint"


# ----------------------------------------------------------------------------------------------
# Rejected arguments
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**100])
def test_save_int_outside_int64(tmp_path: Path, value: int) -> None:
    with pytest.raises(ValueError, match="'step'"):
        mploader.save_checkpoint({"w": np.ones(1)}, tmp_path / "model.ckpt", append_dict={"step": value})
    assert directory_listing(tmp_path) == []


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63)])
def test_save_int_at_int64_limits(tmp_path: Path, value: int) -> None:
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint({"w": np.ones(1)}, path, append_dict={"step": value})
    assert int(load(path)["step"]) == value


def test_save_duplicate_names(tmp_path: Path) -> None:
    entries = [{"name": "w", "data": np.ones(1, np.int8)}, {"name": "w", "data": np.zeros(1, np.int8)}]
    with pytest.raises(ValueError, match="'w'"):
        mploader.save_checkpoint(entries, tmp_path / "model.ckpt")
    with pytest.raises(ValueError, match="'w'"):
        mploader.save_checkpoint({"w": np.ones(1, np.int8)}, tmp_path / "model.ckpt", append_dict={"w": 1})
    assert directory_listing(tmp_path) == []


@pytest.mark.parametrize(
    ("save_obj", "kwargs"),
    [
        ("weights", {}),
        (np.ones(3), {}),
        ([np.ones(3)], {}),
        ([{"name": "w"}], {}),
        ([{"data": np.ones(1)}], {}),
        ({1: np.ones(1)}, {}),
        ({"w": object()}, {}),
        ({"w": [1, 2, 3]}, {}),
        ({"w": [np.ones(2), np.ones(2)]}, {}),
        ({"w": np.ones(2, np.complex64)}, {}),
        ({"w": np.array(["text"])}, {}),
        ({"w": None}, {}),
        ({"w": b"bytes"}, {}),
        ({"w": np.ones(1)}, {"append_dict": [("x", 1)]}),
        ({"w": np.ones(1)}, {"choice_func": "w"}),
    ],
    ids=[
        "str-save-obj",
        "array-save-obj",
        "list-of-arrays",
        "missing-data",
        "missing-name",
        "int-name",
        "object-value",
        "list-of-ints",
        "map-of-two-parts",
        "complex",
        "unicode-array",
        "none",
        "bytes",
        "append-dict-list",
        "choice-func-str",
    ],
)
def test_save_bad_types(tmp_path: Path, save_obj: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        mploader.save_checkpoint(save_obj, tmp_path / "model.ckpt", **kwargs)
    assert directory_listing(tmp_path) == []


@pytest.mark.parametrize("path", [b"model.ckpt", 42, None], ids=["bytes", "int", "none"])
def test_save_bad_path_type(path: Any) -> None:
    with pytest.raises(TypeError):
        mploader.save_checkpoint({"w": np.ones(1)}, path)


# ----------------------------------------------------------------------------------------------
# Round trip of random checkpoints
# ----------------------------------------------------------------------------------------------


entry_lists = st.lists(
    st.tuples(
        st.sampled_from(sorted(CKPT_DTYPES)),
        st.lists(st.integers(1, 4), max_size=3).map(tuple),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=40, deadline=None)
@given(entries=entry_lists, slice_bytes=st.sampled_from([3, 8, 1000]))
def test_save_load_random(entries: list[tuple[str, tuple[int, ...]]], slice_bytes: int) -> None:
    save_obj = {f"p{number}": sample_array(type_name, shape) for number, (type_name, shape) in enumerate(entries)}
    with tempfile.TemporaryDirectory() as directory, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(ckpt_format, "SLICE_BYTES", slice_bytes)
        path = Path(directory) / "model.ckpt"
        mploader.save_checkpoint(save_obj, path)
        loaded = load(path)
        assert list(loaded) == list(save_obj)
        for name, array in save_obj.items():
            assert loaded[name].dtype == array.dtype, name
            assert loaded[name].shape == array.shape, name
            assert loaded[name].tobytes() == array.tobytes(), name
