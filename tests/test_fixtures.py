"""Checkpoints written by MindSpore 2.10 load to exactly what MindSpore itself read from them."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from ckpt_proto import parse_checkpoint
from helpers import FIXTURES

import mploader
from mploader.formats import crc

PLAIN_FIXTURES = [
    "all_dtypes.ckpt",
    "all_dtypes_crc.ckpt",
    "encoder_fp16.ckpt",
    "lenet5_momentum.ckpt",
    "map_tensor.ckpt",
]
# The map tensor fixture was built by hand with its entry split over two records. A writer given
# the loaded dict cannot know where that split was, so this fixture is compared by value instead.
BYTE_IDENTICAL_FIXTURES = [name for name in PLAIN_FIXTURES if name != "map_tensor.ckpt"]


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _file_order(name: str) -> list[str]:
    data = (FIXTURES / name).read_bytes()
    if crc.parse_trailer(data[-crc.TRAILER_SIZE_BYTES :]) is not None:
        data = data[: -crc.TRAILER_SIZE_BYTES]
    order: list[str] = []
    for value in parse_checkpoint(data).value:
        if value.tag not in order:
            order.append(value.tag)
    return order


def _check_against_manifest(loaded: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(loaded) == set(expected)
    for name, entry in expected.items():
        value = loaded[name]
        if entry["kind"] == "str":
            assert value == entry["value"], name
        elif entry["kind"] == "map":
            assert isinstance(value, list) and len(value) == 3, name
            for part, part_expected in zip(value, entry["parts"]):
                assert str(part.dtype) == part_expected["dtype"], name
                assert list(part.shape) == part_expected["shape"], name
                assert _sha256(part) == part_expected["sha256"], name
        else:
            assert isinstance(value, np.ndarray), name
            assert list(value.shape) == entry["shape"], name
            assert _sha256(value) == entry["sha256"], name
            type_name = mploader.formats.dtypes.ckpt_type_of(value.dtype)
            assert type_name == entry["dtype"], name


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
@pytest.mark.parametrize("name", PLAIN_FIXTURES)
def test_fixture_matches_manifest(name: str, workers: int, manifest: dict[str, Any]) -> None:
    kwargs = {"crc_check": True} if manifest[name]["load_kwargs"].get("crc_check") else {}
    loaded = mploader.load_checkpoint(FIXTURES / name, workers=workers, **kwargs)
    _check_against_manifest(loaded, manifest[name]["entries"])
    assert list(loaded) == _file_order(name)


@pytest.mark.parametrize("name", PLAIN_FIXTURES)
def test_async_fixture_matches_manifest(name: str, manifest: dict[str, Any]) -> None:
    future = mploader.load_checkpoint_async(str(FIXTURES / name), workers=2)
    _check_against_manifest(future.result(timeout=60), manifest[name]["entries"])


@pytest.mark.parametrize("name", BYTE_IDENTICAL_FIXTURES)
def test_resave_is_byte_identical(name: str, tmp_path: Any, manifest: dict[str, Any]) -> None:
    crc_check = bool(manifest[name]["load_kwargs"].get("crc_check"))
    loaded = mploader.load_checkpoint(FIXTURES / name)
    target = tmp_path / name
    mploader.save_checkpoint(loaded, target, crc_check=crc_check)
    assert target.read_bytes() == (FIXTURES / name).read_bytes()


def test_map_tensor_resave_round_trips(tmp_path: Any, manifest: dict[str, Any]) -> None:
    loaded = mploader.load_checkpoint(FIXTURES / "map_tensor.ckpt")
    mploader.save_checkpoint(loaded, tmp_path / "map.ckpt")
    again = mploader.load_checkpoint(tmp_path / "map.ckpt", workers=2)
    _check_against_manifest(again, manifest["map_tensor.ckpt"]["entries"])
    assert list(again) == list(loaded)
