"""Files written by mploader.save_checkpoint load in MindSpore 2.10 to the same values."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import mploader
from mploader.formats.dtypes import ckpt_type_of

pytest.importorskip("mindspore")


def all_dtype_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays: dict[str, np.ndarray] = {}
    for name in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"):
        arrays[f"net.{name}"] = rng.integers(0, 100, size=(3, 5)).astype(name)
    for name in ("float16", "float32", "float64"):
        arrays[f"net.{name}"] = rng.standard_normal((3, 5)).astype(name)
    arrays["net.bfloat16"] = rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16)
    arrays["net.flag"] = rng.integers(0, 2, size=(3, 5)).astype(bool)
    arrays["net.scalar"] = np.array(2.5, np.float32)
    arrays["net.vector1"] = np.array([7], np.int32)
    return arrays


def assert_loaded_equal(loaded: dict[str, Any], arrays: dict[str, np.ndarray], to_numpy: Any) -> None:
    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        value = loaded[name]
        assert str(value.dtype) == ckpt_type_of(array.dtype), name
        assert tuple(value.shape) == array.shape, name
        if array.dtype == np.dtype(ml_dtypes.bfloat16):
            np.testing.assert_array_equal(to_numpy(value), array.astype(np.float32), err_msg=name)
        else:
            assert to_numpy(value).tobytes() == array.tobytes(), name


@pytest.mark.parametrize("crc_check", [False, True])
def test_all_dtypes_load_in_mindspore(ms: ModuleType, to_numpy: Any, tmp_path: Path, crc_check: bool) -> None:
    arrays = all_dtype_arrays()
    path = tmp_path / "all.ckpt"

    mploader.save_checkpoint(arrays, path, crc_check=crc_check)
    loaded = ms.load_checkpoint(str(path), crc_check=crc_check)

    assert_loaded_equal(loaded, arrays, to_numpy)


def test_append_dict_types(ms: ModuleType, to_numpy: Any, tmp_path: Path) -> None:
    path = tmp_path / "append.ckpt"

    mploader.save_checkpoint(
        {"w": np.ones(2, np.float32)},
        path,
        append_dict={"epoch": 3, "lr": 0.5, "done": True, "note": "résumé-模型"},
    )
    loaded = ms.load_checkpoint(str(path))

    assert list(loaded) == ["w", "epoch", "lr", "done", "note"]
    assert loaded["epoch"].dtype == ms.int64
    assert to_numpy(loaded["epoch"]).tolist() == 3
    assert loaded["lr"].dtype == ms.float32
    assert to_numpy(loaded["lr"]).tolist() == 0.5
    assert loaded["done"].dtype == ms.bool_
    assert to_numpy(loaded["done"]).tolist() is True
    assert loaded["note"] == "résumé-模型"


def test_list_form_with_choice_func(ms: ModuleType, to_numpy: Any, tmp_path: Path) -> None:
    path = tmp_path / "list.ckpt"
    save_obj = [
        {"name": "fc.weight", "data": np.ones((2, 3), np.float32)},
        {"name": "moments.fc.weight", "data": np.zeros((2, 3), np.float32)},
        {"name": "fc.bias", "data": np.arange(2, dtype=np.float32)},
    ]

    mploader.save_checkpoint(save_obj, path, choice_func=lambda name: not name.startswith("moments."))
    loaded = ms.load_checkpoint(str(path))

    assert list(loaded) == ["fc.weight", "fc.bias"]
    np.testing.assert_array_equal(to_numpy(loaded["fc.bias"]), [0.0, 1.0])


def test_round_trip_into_dense(ms: ModuleType, to_numpy: Any, tmp_path: Path) -> None:
    path = tmp_path / "dense.ckpt"
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    net = ms.nn.Dense(3, 2)

    mploader.save_checkpoint({"weight": weight, "bias": np.ones(2, np.float32)}, path)
    ms.load_checkpoint(str(path), net=net)

    np.testing.assert_array_equal(to_numpy(net.weight), weight)
    np.testing.assert_array_equal(to_numpy(net.bias), np.ones(2, np.float32))
