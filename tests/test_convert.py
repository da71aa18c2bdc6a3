"""Conversion, inspection and verification of checkpoint files (mploader.convert)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from helpers import FIXTURES

import mploader
from mploader import api
from mploader import convert as convert_module
from mploader.convert import convert, describe, info_as_dict, verify
from mploader.errors import CheckpointError, CrcMismatchError, DecryptionError
from mploader.formats import ckpt as ckpt_format
from mploader.formats import crc as crc_format
from mploader.formats import crypto
from mploader.formats import safetensors as safetensors_format

KEY16 = bytes(range(16))
ENCRYPTED_FIXTURES = {
    "lenet5_aes_gcm_k16.ckpt": (bytes(range(16)), "AES-GCM"),
    "lenet5_aes_gcm_k32.ckpt": (bytes(range(32)), "AES-GCM"),
    "lenet5_aes_cbc_k24.ckpt": (bytes(range(24)), "AES-CBC"),
    "lenet5_sm4_cbc_k16.ckpt": (bytes(range(16)), "SM4-CBC"),
}
TENSOR_ONLY_FIXTURES = ["encoder_fp16.ckpt", "lenet5_momentum.ckpt"]


def _every_ckpt_dtype() -> dict[str, np.ndarray]:
    """One array per .ckpt element type, plus 0-d scalars, a bool tensor and odd shapes."""
    rng = np.random.default_rng(11)
    arrays: dict[str, np.ndarray] = {}
    for dtype in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"):
        arrays[f"int.{dtype}"] = rng.integers(0, 100, size=(3, 4)).astype(dtype)
    for dtype in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16):
        arrays[f"float.{np.dtype(dtype).name}"] = rng.standard_normal((2, 3, 5)).astype(dtype)
    arrays["bool.flags"] = rng.integers(0, 2, size=7).astype(bool)
    arrays["scalar.f32"] = np.array(0.125, dtype=np.float32)
    arrays["scalar.step"] = np.array(12, dtype=np.int64)
    arrays["vector.one"] = np.array([3], dtype=np.int32)
    return arrays


def _assert_same_arrays(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        if isinstance(value, str):
            assert actual[name] == value, name
            continue
        assert actual[name].dtype == value.dtype, name
        assert actual[name].shape == value.shape, name
        assert actual[name].tobytes() == value.tobytes(), name


def _leftovers(directory: Path, *expected: str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name not in expected)


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TENSOR_ONLY_FIXTURES)
def test_ckpt_safetensors_ckpt_identical(tmp_path: Path, name: str) -> None:
    # A tensor-only .ckpt has no information that safetensors loses: names, order, dtypes, shapes
    # and bytes all survive, and the .ckpt writer reproduces MindSpore's bytes.
    middle = tmp_path / "model.safetensors"
    back = tmp_path / "back.ckpt"
    first = convert(FIXTURES / name, middle)
    second = convert(middle, back)
    assert first.skipped == []
    assert second.entry_count == first.entry_count
    assert back.read_bytes() == (FIXTURES / name).read_bytes()


def test_every_dtype_ckpt_round_trip(tmp_path: Path) -> None:
    arrays = _every_ckpt_dtype()
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint(arrays, source, crc_check=True)
    middle = tmp_path / "middle.safetensors"
    back = tmp_path / "back.ckpt"

    convert(source, middle, crc_check=True)
    convert(middle, back, crc_check=True)

    assert back.read_bytes() == source.read_bytes()
    _assert_same_arrays(safetensors.numpy.load_file(str(middle)), arrays)
    _assert_same_arrays(mploader.load_checkpoint(middle), arrays)
    assert verify(middle).crc_status == "verified"


def test_mindspore_safetensors_round_trip_identical(tmp_path: Path) -> None:
    # MindSpore writes {"format": "ms"} metadata, compact JSON and data in name order, which is
    # what convert writes for a .ckpt source, so the file comes back byte for byte.
    source = FIXTURES / "lenet5_momentum.safetensors"
    middle = tmp_path / "model.ckpt"
    back = tmp_path / "back.safetensors"
    convert(source, middle)
    convert(middle, back)
    assert back.read_bytes() == source.read_bytes()


def test_safetensors_round_trip_with_crc_identical(tmp_path: Path) -> None:
    first = tmp_path / "first.safetensors"
    middle = tmp_path / "middle.ckpt"
    back = tmp_path / "back.safetensors"
    convert(FIXTURES / "lenet5_momentum.ckpt", first, crc_check=True)
    convert(first, middle)
    convert(middle, back, crc_check=True)
    assert back.read_bytes() == first.read_bytes()


def test_package_safetensors_round_trip_same_tensors(tmp_path: Path) -> None:
    # A file written by the safetensors package has no metadata and its own data order. The
    # round trip through .ckpt keeps every tensor, but writes MindSpore's {"format": "ms"}
    # metadata, so the bytes differ from the original.
    arrays = {
        "z.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "a.bias": np.ones(5, dtype=ml_dtypes.bfloat16),
        "m.mask": np.array([True, False]),
        "scalar": np.array(7, dtype=np.int64),
    }
    source = tmp_path / "package.safetensors"
    safetensors.numpy.save_file(arrays, str(source))
    middle = tmp_path / "middle.ckpt"
    back = tmp_path / "back.safetensors"
    convert(source, middle)
    convert(middle, back)

    _assert_same_arrays(safetensors.numpy.load_file(str(back)), arrays)
    with open(back, "rb") as file:
        index = safetensors_format.index_safetensors(str(back), file, os.path.getsize(back))
    assert index.metadata == {"format": "ms"}
    assert [entry.name for entry in index.entries] == [entry.name for entry in describe(source).entries]


def test_safetensors_source_keeps_data_order(tmp_path: Path) -> None:
    arrays = {"b": np.zeros(4, np.float32), "a": np.ones(2, np.float64), "c": np.arange(3, dtype=np.int16)}
    source = tmp_path / "ordered.safetensors"
    safetensors_format.save_safetensors(arrays, source)
    target = tmp_path / "ordered.ckpt"
    convert(source, target)
    assert [entry.name for entry in describe(target).entries] == ["b", "a", "c"]


def test_map_and_strings_to_ckpt(tmp_path: Path) -> None:
    for name in ("map_tensor.ckpt", "all_dtypes.ckpt"):
        target = tmp_path / name
        convert(FIXTURES / name, target)
        expected = mploader.load_checkpoint(FIXTURES / name)
        loaded = mploader.load_checkpoint(target)
        assert list(loaded) == list(expected)
        for entry_name, value in expected.items():
            if isinstance(value, list):
                for part, expected_part in zip(loaded[entry_name], value):
                    np.testing.assert_array_equal(part, expected_part)
            elif isinstance(value, str):
                assert loaded[entry_name] == value
            else:
                assert loaded[entry_name].tobytes() == value.tobytes()


def test_all_dtypes_fixture_identical_as_ckpt(tmp_path: Path) -> None:
    # ckpt to ckpt copies MindSpore's bytes, strings and the CRC trailer included.
    target = tmp_path / "copy.ckpt"
    convert(FIXTURES / "all_dtypes_crc.ckpt", target, crc_check=True)
    assert target.read_bytes() == (FIXTURES / "all_dtypes_crc.ckpt").read_bytes()


# ----------------------------------------------------------------------------------------------
# Types the output format cannot store
# ----------------------------------------------------------------------------------------------


def test_strings_to_safetensors_rejected(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match="'tag_text' is a string entry"):
        convert(FIXTURES / "all_dtypes.ckpt", target)
    assert _leftovers(tmp_path) == []


def test_map_to_safetensors_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'embedding.table' is a map tensor"):
        convert(FIXTURES / "map_tensor.ckpt", tmp_path / "out.safetensors")


def test_skip_unsupported_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "out.safetensors"
    with caplog.at_level(logging.WARNING, logger="mploader"):
        result = convert(FIXTURES / "map_tensor.ckpt", target, skip_unsupported=True)
    assert [name for name, _ in result.skipped] == ["embedding.table"]
    assert "embedding.table" in caplog.text
    assert list(safetensors.numpy.load_file(str(target))) == ["dense.weight"]


@pytest.mark.parametrize(
    "dtype",
    [
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2fnuz,
        np.complex64,
    ],
)
def test_safetensors_only_dtype_to_ckpt(tmp_path: Path, dtype: Any) -> None:
    source = tmp_path / "source.safetensors"
    safetensors_format.save_safetensors(
        {"keep": np.arange(6, dtype=np.float32), "odd": np.ones(4, dtype=dtype)}, source
    )
    target = tmp_path / "out.ckpt"
    with pytest.raises(ValueError, match="'odd' is of type"):
        convert(source, target)
    assert _leftovers(tmp_path, "source.safetensors") == []

    result = convert(source, target, skip_unsupported=True)
    assert result.skipped[0][0] == "odd"
    assert list(mploader.load_checkpoint(target)) == ["keep"]


def test_int4_to_ckpt_rejected(tmp_path: Path) -> None:
    source = tmp_path / "int4.safetensors"
    metadata = safetensors_format.mindspore_metadata(int4_tensor_names=["packed"])
    safetensors_format.save_safetensors({"packed": np.arange(4, dtype=np.int8)}, source, metadata=metadata)
    with pytest.raises(ValueError, match="'packed' is marked Int4"):
        convert(source, tmp_path / "out.ckpt")


def test_int4_marker_kept_in_safetensors(tmp_path: Path) -> None:
    source = tmp_path / "int4.safetensors"
    metadata = safetensors_format.mindspore_metadata(int4_tensor_names=["packed", "gone"])
    safetensors_format.save_safetensors(
        {"packed": np.arange(4, dtype=np.int8), "gone": np.ones(2, np.int8)}, source, metadata=metadata
    )
    target = tmp_path / "out.safetensors"
    convert(source, target, exclude=["gone"])
    info = describe(target)
    assert info.metadata == {"format": "ms", "packed": "Int4"}
    assert info_as_dict(info)["entries"][0]["dtype"] == "Int4"


def test_empty_tensor_skipped_for_ckpt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "empty.safetensors"
    safetensors_format.save_safetensors({"w": np.ones(3, np.float32), "none": np.zeros((0, 2), np.float32)}, source)
    with caplog.at_level(logging.WARNING, logger="mploader"):
        result = convert(source, tmp_path / "out.ckpt")
    assert [name for name, _ in result.skipped] == ["none"]
    assert "none" in caplog.text


# ----------------------------------------------------------------------------------------------
# Filters
# ----------------------------------------------------------------------------------------------


def test_choice_and_exclude(tmp_path: Path) -> None:
    target = tmp_path / "weights.safetensors"
    result = convert(
        FIXTURES / "lenet5_momentum.ckpt", target, choice=["conv", "fc1."], exclude=["fc1.bias"]
    )
    assert sorted(safetensors.numpy.load_file(str(target))) == ["conv1.weight", "conv2.weight", "fc1.weight"]
    assert result.entry_count == 3


def test_choice_matches_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no entry .* is selected"):
        convert(FIXTURES / "lenet5_momentum.ckpt", tmp_path / "x.ckpt", choice=["missing."])
    assert _leftovers(tmp_path) == []


def test_choice_keeps_unsupported_out(tmp_path: Path) -> None:
    # Excluding the string entries is enough to convert all_dtypes.ckpt to safetensors.
    target = tmp_path / "out.safetensors"
    convert(FIXTURES / "all_dtypes.ckpt", target, exclude=["tag_"])
    assert "dtypes.bf16" in safetensors.numpy.load_file(str(target))


# ----------------------------------------------------------------------------------------------
# Batches and atomic writes
# ----------------------------------------------------------------------------------------------


class _LoadSpy:
    """Wrap api.load_checkpoint and record the tensor bytes each call selected."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_on_call: int | None = None,
                 error: BaseException | None = None) -> None:
        self.batches: list[list[str]] = []
        self.batch_bytes: list[int] = []
        self._real = api.load_checkpoint
        self._fail_on_call = fail_on_call
        self._error = error
        monkeypatch.setattr(api, "load_checkpoint", self)

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self._fail_on_call is not None and len(self.batches) + 1 == self._fail_on_call:
            assert self._error is not None
            raise self._error
        loaded = self._real(*args, **kwargs)
        self.batches.append(list(loaded))
        self.batch_bytes.append(sum(value.nbytes for value in loaded.values() if isinstance(value, np.ndarray)))
        return loaded


def _layers(count: int, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {f"layer{index}.weight": rng.standard_normal((rows, 256)).astype(np.float32) for index in range(count)}


@pytest.mark.parametrize("output", ["out.safetensors", "out.ckpt"])
def test_conversion_runs_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str) -> None:
    arrays = _layers(12, 64)  # 64 KiB each
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint(arrays, source)
    reference = tmp_path / f"reference{Path(output).suffix}"
    convert(source, reference)

    limit = 200 * 1024
    monkeypatch.setattr(convert_module, "BATCH_MAX_BYTES", limit)
    spy = _LoadSpy(monkeypatch)
    result = convert(source, tmp_path / output)

    assert result.batch_count == 4
    assert len(spy.batches) == 4
    assert all(batch_bytes <= limit for batch_bytes in spy.batch_bytes)
    assert [name for batch in spy.batches for name in batch] == list(arrays)
    assert (tmp_path / output).read_bytes() == reference.read_bytes()


def test_entry_larger_than_batch_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = {"small.a": np.ones(10, np.float32), "big": np.ones(5000, np.float32), "small.b": np.ones(10, np.float32)}
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint(arrays, source)
    monkeypatch.setattr(convert_module, "BATCH_MAX_BYTES", 1024)
    spy = _LoadSpy(monkeypatch)
    convert(source, tmp_path / "out.safetensors")
    assert spy.batches == [["small.a"], ["big"], ["small.b"]]


def test_safetensors_crc_reads_source_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint(_layers(6, 64), source)
    monkeypatch.setattr(convert_module, "BATCH_MAX_BYTES", 150 * 1024)
    spy = _LoadSpy(monkeypatch)
    result = convert(source, tmp_path / "out.safetensors", crc_check=True)
    assert result.passes == 2
    assert len(spy.batches) == 2 * result.batch_count
    assert mploader.load_checkpoint(tmp_path / "out.safetensors", crc_check=True)


def test_batches_through_worker_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _layers(8, 1024)  # 1 MiB each
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint(arrays, source)
    monkeypatch.setattr(convert_module, "BATCH_MAX_BYTES", 3 * 2**20)
    middle = tmp_path / "middle.safetensors"
    back = tmp_path / "back.ckpt"
    assert convert(source, middle, workers=2).batch_count == 3
    convert(middle, back, workers=2)
    assert back.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("output", ["out.safetensors", "out.ckpt"])
@pytest.mark.parametrize("error", [OSError("disk failed"), KeyboardInterrupt()])
def test_failed_conversion_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, error: BaseException
) -> None:
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint(_layers(6, 64), source)
    monkeypatch.setattr(convert_module, "BATCH_MAX_BYTES", 100 * 1024)
    _LoadSpy(monkeypatch, fail_on_call=3, error=error)
    with pytest.raises(type(error)):
        convert(source, tmp_path / output)
    assert _leftovers(tmp_path, "source.ckpt") == []


def test_failed_conversion_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint(_layers(4, 64), source)
    target = tmp_path / "out.ckpt"
    target.write_bytes(b"previous contents")
    monkeypatch.setattr(convert_module, "BATCH_MAX_BYTES", 100 * 1024)
    _LoadSpy(monkeypatch, fail_on_call=2, error=OSError("disk failed"))
    with pytest.raises(OSError, match="disk failed"):
        convert(source, target, enc_key=KEY16)
    assert target.read_bytes() == b"previous contents"
    assert _leftovers(tmp_path, "source.ckpt", "out.ckpt") == []


def test_unsupported_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"previous contents")
    with pytest.raises(ValueError):
        convert(FIXTURES / "map_tensor.ckpt", target)
    assert target.read_bytes() == b"previous contents"


# ----------------------------------------------------------------------------------------------
# CRCs and encryption
# ----------------------------------------------------------------------------------------------


def test_ckpt_crc_trailer(tmp_path: Path) -> None:
    target = tmp_path / "out.ckpt"
    convert(FIXTURES / "lenet5_momentum.safetensors", target, crc_check=True)
    data = target.read_bytes()
    assert crc_format.parse_trailer(data) == zlib.crc32(data[: -crc_format.TRAILER_SIZE_BYTES])
    assert mploader.load_checkpoint(target, crc_check=True)


def test_safetensors_crc_matches_mindspore_rule(tmp_path: Path) -> None:
    arrays = {"w": np.arange(6, dtype=np.float32), "flag": np.array(True), "lr": np.array(0.5, np.float32)}
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint(arrays, source)
    target = tmp_path / "out.safetensors"
    convert(source, target, crc_check=True)
    expected = safetensors_format.mindspore_crc((name, value) for name, value in arrays.items())
    assert describe(target).stored_crc == expected


def test_safetensors_crc_of_integer_scalar(tmp_path: Path) -> None:
    # MindSpore 2.10 hashes bytes(array), which for a 0-d integer array is `value` zero bytes.
    arrays = {"step": np.array(5, dtype=np.int32), "w": np.arange(3, dtype=np.float32)}
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint(arrays, source)
    target = tmp_path / "out.safetensors"
    convert(source, target, crc_check=True)
    expected = zlib.crc32(b"step")
    expected = zlib.crc32(bytes(5), expected)
    expected = zlib.crc32(b"w", expected)
    expected = zlib.crc32(arrays["w"].tobytes(), expected)
    assert describe(target).stored_crc == expected
    assert verify(target).crc_status == "verified"


def test_loader_crc_of_integer_scalar(tmp_path: Path) -> None:
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint({"step": np.array(5, dtype=np.int32)}, source)
    target = tmp_path / "out.safetensors"
    convert(source, target, crc_check=True)
    assert mploader.load_checkpoint(target, crc_check=True)


def test_safetensors_crc_negative_scalar_rejected(tmp_path: Path) -> None:
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint({"offset": np.array(-2, dtype=np.int64)}, source)
    with pytest.raises(CheckpointError, match="negative 0-d integer"):
        convert(source, tmp_path / "out.safetensors", crc_check=True)
    assert _leftovers(tmp_path, "source.ckpt") == []


@pytest.mark.parametrize("name", sorted(ENCRYPTED_FIXTURES))
def test_decrypt_fixture(tmp_path: Path, name: str) -> None:
    key, mode = ENCRYPTED_FIXTURES[name]
    target = tmp_path / "plain.ckpt"
    convert(FIXTURES / name, target, dec_key=key, dec_mode=mode)
    expected = mploader.load_checkpoint(FIXTURES / name, dec_key=key, dec_mode=mode)
    _assert_same_arrays(mploader.load_checkpoint(target), expected)


@pytest.mark.parametrize("mode", sorted(crypto.MODES))
def test_encrypt_and_decrypt_identical(tmp_path: Path, mode: str) -> None:
    key = KEY16
    encrypted = tmp_path / "secret.ckpt"
    back = tmp_path / "back.ckpt"
    convert(FIXTURES / "lenet5_momentum.ckpt", encrypted, enc_key=key, enc_mode=mode, crc_check=True)
    assert encrypted.read_bytes()[:4] == crypto.MODES[mode].to_bytes(4, "little")
    assert mploader.load_checkpoint(encrypted, dec_key=key, dec_mode=mode, crc_check=True)
    convert(encrypted, back, dec_key=key, dec_mode=mode)
    assert back.read_bytes() == (FIXTURES / "lenet5_momentum.ckpt").read_bytes()


def _write_small_frames(path: Path, arrays: dict[str, Any], frame_bytes: int, *, crc_check: bool = False) -> None:
    """Write an AES-GCM checkpoint with frames of ``frame_bytes`` plaintext, so records span frames."""
    items = ckpt_format.normalize_save_obj(arrays)
    with open(path, "wb") as file:
        with crypto.EncryptingWriter(file, "AES-GCM", KEY16, frame_plaintext_bytes=frame_bytes) as writer:
            ckpt_format.write_checkpoint(items, writer)
        if crc_check:
            file.write(crc_format.make_trailer(writer.plaintext_crc32))


def test_records_spanning_frames(tmp_path: Path) -> None:
    arrays: dict[str, Any] = dict(_every_ckpt_dtype())
    arrays["note"] = "text across frames"
    source = tmp_path / "frames.ckpt"
    _write_small_frames(source, arrays, 97, crc_check=True)
    info = describe(source, dec_key=KEY16)
    assert info.frame_count > 10
    assert [entry.name for entry in info.entries] == list(arrays)

    target = tmp_path / "plain.ckpt"
    convert(source, target, dec_key=KEY16)
    _assert_same_arrays(mploader.load_checkpoint(target), arrays)
    assert verify(source, dec_key=KEY16).crc_status == "verified"


def test_wrong_key_rejected(tmp_path: Path) -> None:
    with pytest.raises(DecryptionError):
        convert(FIXTURES / "lenet5_aes_gcm_k16.ckpt", tmp_path / "x.ckpt", dec_key=bytes(16))
    with pytest.raises(DecryptionError):
        describe(FIXTURES / "lenet5_sm4_cbc_k16.ckpt", dec_key=bytes(16), dec_mode="SM4-CBC")
    assert _leftovers(tmp_path) == []


def test_encrypted_without_key_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="encrypted with AES-GCM; pass its key"):
        describe(FIXTURES / "lenet5_aes_gcm_k16.ckpt")


def test_key_for_safetensors_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="\\.ckpt files only"):
        describe(FIXTURES / "lenet5_momentum.safetensors", dec_key=KEY16)
    with pytest.raises(ValueError, match="\\.ckpt output only"):
        convert(FIXTURES / "lenet5_momentum.ckpt", tmp_path / "x.safetensors", enc_key=KEY16)
    with pytest.raises(ValueError, match="takes keys of 16 bytes"):
        convert(FIXTURES / "lenet5_momentum.ckpt", tmp_path / "x.ckpt", enc_key=bytes(5), enc_mode="SM4-CBC")
    assert _leftovers(tmp_path) == []


def test_unknown_extension_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is unknown because its extension"):
        convert(FIXTURES / "lenet5_momentum.ckpt", tmp_path / "model.bin")
    result = convert(FIXTURES / "lenet5_momentum.ckpt", tmp_path / "model.bin", output_format="safetensors")
    assert result.output_format == "safetensors"
    assert len(safetensors.numpy.load_file(str(tmp_path / "model.bin"))) == 21


# ----------------------------------------------------------------------------------------------
# describe and info_as_dict
# ----------------------------------------------------------------------------------------------


def test_describe_every_format(manifest: dict[str, Any]) -> None:
    for name, fixture in manifest.items():
        key_hex = fixture["load_kwargs"].get("dec_key")
        key = bytes.fromhex(key_hex) if key_hex else None
        mode = fixture["load_kwargs"].get("dec_mode", "AES-GCM")
        info = describe(FIXTURES / name, dec_key=key, dec_mode=mode)
        document = json.loads(json.dumps(info_as_dict(info)))
        assert document["entry_count"] == len(fixture["entries"]), name
        assert {entry["name"] for entry in document["entries"]} == set(fixture["entries"]), name
        for entry in document["entries"]:
            expected = fixture["entries"][entry["name"]]
            assert entry["kind"] == expected["kind"], name
            if entry["kind"] == "tensor":
                assert entry["shape"] == expected["shape"], (name, entry["name"])
        assert document["format"] == ("safetensors" if name.endswith(".safetensors") else "ckpt")
        assert (document["encryption"] is not None) == (key is not None)


def test_describe_json_fields() -> None:
    document = info_as_dict(describe(FIXTURES / "all_dtypes_crc.ckpt"))
    assert document["crc"]["location"] == "trailer"
    assert document["metadata"] is None
    by_name = {entry["name"]: entry for entry in document["entries"]}
    assert by_name["dtypes.bf16"] == {
        "name": "dtypes.bf16", "kind": "tensor", "dtype": "BFloat16", "numpy_dtype": "bfloat16",
        "shape": [3, 5], "bytes": 30,
    }
    assert by_name["dtypes.scalar_f32"]["shape"] == []

    document = info_as_dict(describe(FIXTURES / "map_tensor.ckpt"))
    table = document["entries"][0]
    assert table["kind"] == "map"
    assert [part["part"] for part in table["parts"]] == ["keys", "values", "status"]
    assert table["bytes"] == sum(part["bytes"] for part in table["parts"])

    document = info_as_dict(describe(FIXTURES / "lenet5_momentum.safetensors"))
    assert document["metadata"] == {"format": "ms"}
    assert document["crc"] is None


def test_describe_reads_no_tensor_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "big.ckpt"
    mploader.save_checkpoint(_layers(4, 1024), source)
    spy = _LoadSpy(monkeypatch)
    info = describe(source)
    assert spy.batches == []
    assert info.tensor_bytes == 4 * 1024 * 256 * 4


# ----------------------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------------------


def test_verify_valid_fixtures(manifest: dict[str, Any]) -> None:
    for name, fixture in manifest.items():
        key_hex = fixture["load_kwargs"].get("dec_key")
        key = bytes.fromhex(key_hex) if key_hex else None
        result = verify(FIXTURES / name, dec_key=key, dec_mode=fixture["load_kwargs"].get("dec_mode", "AES-GCM"))
        expected = "verified" if name == "all_dtypes_crc.ckpt" else "absent"
        assert result.crc_status == expected, name


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_ckpt_crc_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    shutil.copy(FIXTURES / "all_dtypes_crc.ckpt", path)
    entry = next(entry for entry in describe(path).entries if entry.name == "dtypes.f32")
    _flip_byte(path, entry.parts[0].ranges[0][0] + 3)
    with pytest.raises(CrcMismatchError) as caught:
        verify(path)
    assert caught.value.offset == os.path.getsize(path) - crc_format.TRAILER_SIZE_BYTES
    assert str(path) in str(caught.value)


def test_verify_ckpt_crc_mismatch_with_pool(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint(_layers(4, 1024), path, crc_check=True)
    assert verify(path, workers=2).crc_status == "verified"
    _flip_byte(path, os.path.getsize(path) // 2)
    with pytest.raises(CrcMismatchError):
        verify(path, workers=2)


def test_verify_ckpt_structure_error(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    data = bytearray((FIXTURES / "lenet5_momentum.ckpt").read_bytes())
    data[1] = 0x7F  # the first record's length now ends inside the next record
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as caught:
        verify(path)
    assert caught.value.offset is not None


def test_verify_truncated_ckpt(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes((FIXTURES / "lenet5_momentum.ckpt").read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        verify(path)


def test_verify_encrypted_damage(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    shutil.copy(FIXTURES / "lenet5_aes_gcm_k16.ckpt", path)
    _flip_byte(path, os.path.getsize(path) - 10)
    with pytest.raises(DecryptionError, match="authentication") as caught:
        verify(path, dec_key=KEY16)
    assert caught.value.offset == 0


def test_verify_detects_damage_in_skipped_frame(tmp_path: Path) -> None:
    # A frame holding only tensor content is never decrypted to index the file, but verify
    # decrypts every frame.
    path = tmp_path / "frames.ckpt"
    _write_small_frames(path, {"big": np.arange(4096, dtype=np.float32), "tail": np.ones(2, np.float32)}, 4096)
    info = describe(path, dec_key=KEY16)
    assert info.frame_count == 5
    with open(path, "rb") as file:
        frames = crypto.walk_frames(str(path), file, os.path.getsize(path), "AES-GCM", KEY16).frames
    _flip_byte(path, frames[2].cipher_offset + 100)
    describe(path, dec_key=KEY16)
    with pytest.raises(DecryptionError, match="frame 2") as caught:
        verify(path, dec_key=KEY16)
    assert caught.value.offset == frames[2].header_offset


def test_verify_encrypted_crc_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint({"w": np.arange(10, dtype=np.float32)}, path, enc_key=KEY16, crc_check=True)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CrcMismatchError) as caught:
        verify(path, dec_key=KEY16)
    assert caught.value.offset == len(data) - crc_format.TRAILER_SIZE_BYTES


def test_verify_mindspore_zero_trailer(tmp_path: Path) -> None:
    # MindSpore 2.10 writes a trailer of 0 after the frames of an encrypted file.
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint({"w": np.arange(10, dtype=np.float32)}, path, enc_key=KEY16)
    with open(path, "ab") as file:
        file.write(crc_format.make_trailer(0))
    assert verify(path, dec_key=KEY16).crc_status == "zero"


def test_verify_wrong_key(tmp_path: Path) -> None:
    for name, (key, mode) in ENCRYPTED_FIXTURES.items():
        wrong = bytes(len(key))
        with pytest.raises(DecryptionError):
            verify(FIXTURES / name, dec_key=wrong, dec_mode=mode)


def test_verify_safetensors_crc(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    convert(FIXTURES / "lenet5_momentum.ckpt", path, crc_check=True)
    result = verify(path)
    assert result.crc_status == "verified"
    assert result.checked_bytes == describe(path).tensor_bytes

    entry = describe(path).entries[0]
    _flip_byte(path, entry.parts[0].ranges[0][0])
    with pytest.raises(CrcMismatchError, match="crc_num"):
        verify(path)


def test_verify_safetensors_crc_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"
    mploader.save_checkpoint(_layers(6, 64), tmp_path / "source.ckpt")
    convert(tmp_path / "source.ckpt", path, crc_check=True)
    monkeypatch.setattr(convert_module, "BATCH_MAX_BYTES", 100 * 1024)
    spy = _LoadSpy(monkeypatch)
    assert verify(path).crc_status == "verified"
    assert len(spy.batches) == 6


def test_verify_invalid_crc_metadata(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    safetensors_format.save_safetensors({"w": np.ones(2, np.float32)}, path, metadata={"crc_num": "12ab"})
    with pytest.raises(CheckpointError, match="not a decimal CRC32"):
        verify(path)


def test_verify_reports_progress(tmp_path: Path) -> None:
    path = tmp_path / "frames.ckpt"
    _write_small_frames(path, {"w": np.arange(1000, dtype=np.float32)}, 1024)
    calls: list[tuple[int, int]] = []
    verify(path, dec_key=KEY16, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == describe(path, dec_key=KEY16).frame_count
    assert calls[-1][0] == calls[-1][1]


# ----------------------------------------------------------------------------------------------
# Sharded checkpoints
# ----------------------------------------------------------------------------------------------


def _write_shards(directory: Path, *, crc_first: bool = False) -> dict[str, np.ndarray]:
    """Write three safetensors shards and their index JSON; return every tensor."""
    everything: dict[str, np.ndarray] = {}
    weight_map: dict[str, str] = {}
    for shard in range(3):
        rng = np.random.default_rng(shard)
        tensors = {
            f"layers.{shard}.{index}.weight": rng.standard_normal((8, 4)).astype(np.float32) for index in range(2)
        }
        file_name = f"model-{shard + 1:05d}-of-00003.safetensors"
        crc = safetensors_format.mindspore_crc(tensors.items()) if crc_first and shard == 0 else None
        safetensors_format.save_safetensors(
            tensors, directory / file_name, metadata=safetensors_format.mindspore_metadata(crc=crc)
        )
        everything.update(tensors)
        weight_map.update({name: file_name for name in tensors})
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return everything


def test_sharded_sources_described(tmp_path: Path) -> None:
    arrays = _write_shards(tmp_path)
    files = sorted(str(path) for path in tmp_path.glob("*.safetensors"))
    for source in (tmp_path, tmp_path / "model.safetensors.index.json", files):
        info = describe(source)  # type: ignore[arg-type]
        assert [entry.name for entry in info.entries] == list(arrays)
        assert len(info.shards) == 3
        document = info_as_dict(info)
        assert document["entries"][0]["file"] == files[0]
        assert [shard["file"] for shard in document["shards"]] == files


def test_sharded_convert_to_one_file(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    arrays = _write_shards(shards)
    target = tmp_path / "merged.ckpt"
    result = convert(shards / "model.safetensors.index.json", target, crc_check=True)
    assert result.entry_count == 6
    _assert_same_arrays(mploader.load_checkpoint(target, crc_check=True), arrays)
    assert [entry.name for entry in describe(target).entries] == list(arrays)


def test_sharded_verify_partial_crc(tmp_path: Path) -> None:
    _write_shards(tmp_path, crc_first=True)
    result = verify(tmp_path)
    assert result.crc_status == "partial"
    assert [shard.crc_status for shard in result.shards] == ["verified", "absent", "absent"]

    first = tmp_path / "model-00001-of-00003.safetensors"
    _flip_byte(first, os.path.getsize(first) - 1)
    with pytest.raises(CrcMismatchError) as caught:
        verify(tmp_path / "model.safetensors.index.json")
    assert caught.value.path == str(first)


def test_sharded_duplicate_name_rejected(tmp_path: Path) -> None:
    _write_shards(tmp_path)
    shutil.copy(tmp_path / "model-00002-of-00003.safetensors", tmp_path / "model-extra.safetensors")
    with pytest.raises(ValueError, match="'layers.1.0.weight' is in both"):
        verify(tmp_path)


def test_sharded_index_mismatch_rejected(tmp_path: Path) -> None:
    _write_shards(tmp_path)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["layers.0.0.weight"] = "model-00002-of-00003.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="the index and the shards do not match"):
        describe(index_path)


def test_sharded_key_rejected(tmp_path: Path) -> None:
    _write_shards(tmp_path)
    with pytest.raises(ValueError, match="single .ckpt file"):
        verify(tmp_path, dec_key=KEY16)


# ----------------------------------------------------------------------------------------------
# MindSpore
# ----------------------------------------------------------------------------------------------

MINDSPORE_PYTHON = os.environ.get("MPLOADER_MINDSPORE_PYTHON", "")

_MINDSPORE_SCRIPT = """
import json, sys
import mindspore as ms
path, file_format, crc = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
params = ms.load_checkpoint(path, format=file_format, crc_check=crc)
print(json.dumps({name: value.asnumpy().astype("float64").ravel().tolist() for name, value in params.items()}))
"""


@pytest.mark.parametrize("output", ["out.ckpt", "out.safetensors"])
@pytest.mark.parametrize("crc_check", [False, True])
def test_converted_files_load_in_mindspore(tmp_path: Path, output: str, crc_check: bool) -> None:
    if not MINDSPORE_PYTHON or not Path(MINDSPORE_PYTHON).exists():
        pytest.skip("set MPLOADER_MINDSPORE_PYTHON to an interpreter with MindSpore 2.10 to run this check")
    arrays = _every_ckpt_dtype()
    # MindSpore 2.10 built for numpy 1.x cannot read bfloat16 from safetensors under numpy 2.
    arrays.pop("float.bfloat16")
    source = tmp_path / "source.ckpt"
    mploader.save_checkpoint(arrays, source)
    target = tmp_path / output
    convert(source, target, crc_check=crc_check)

    file_format = "safetensors" if output.endswith(".safetensors") else "ckpt"
    result = subprocess.run(
        [MINDSPORE_PYTHON, "-c", _MINDSPORE_SCRIPT, str(target), file_format, "1" if crc_check else "0"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(loaded) == sorted(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(np.array(loaded[name]), array.astype(np.float64).ravel(), err_msg=name)
