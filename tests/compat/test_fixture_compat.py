"""Every fixture loads to the same dict through mploader as through mindspore.load_checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import mploader
import mploader.mindspore as mploader_mindspore
from mploader.formats.dtypes import ckpt_type_of

pytest.importorskip("mindspore")

FIXTURES = Path(__file__).parent.parent / "fixtures"

with open(FIXTURES / "manifest.json", encoding="utf-8") as _file:
    FIXTURE_NAMES = sorted(json.load(_file)["fixtures"])


def mploader_kwargs(load_kwargs: dict[str, Any]) -> dict[str, Any]:
    """mploader picks the format from the file name, so it takes no ``format`` argument."""
    kwargs = {key: value for key, value in load_kwargs.items() if key != "format"}
    if "dec_key" in kwargs:
        kwargs["dec_key"] = bytes.fromhex(kwargs["dec_key"])
    return kwargs


def mindspore_kwargs(load_kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(load_kwargs)
    if "dec_key" in kwargs:
        kwargs["dec_key"] = bytes.fromhex(kwargs["dec_key"])
    return kwargs


@pytest.fixture
def expected(request: pytest.FixtureRequest, ms: ModuleType, manifest: dict[str, Any]) -> Any:
    name = request.param
    return name, ms.load_checkpoint(str(FIXTURES / name), **mindspore_kwargs(manifest[name]["load_kwargs"]))


def assert_same_numpy_entry(name: str, value: Any, reference: Any, to_numpy: Callable[[Any], np.ndarray]) -> None:
    if isinstance(reference, str):
        assert value == reference, name
        return
    if isinstance(reference, list):
        assert isinstance(value, list), name
        assert len(value) == len(reference), name
        for part, reference_part in zip(value, reference):
            assert part.dtype == reference_part.dtype, name
            assert part.shape == reference_part.shape, name
            np.testing.assert_array_equal(part, reference_part, err_msg=name)
        return
    assert isinstance(value, np.ndarray), name
    assert ckpt_type_of(value.dtype) == str(reference.dtype), name
    assert value.shape == tuple(reference.shape), name
    reference_values = to_numpy(reference)
    if value.dtype == np.dtype(ml_dtypes.bfloat16):
        np.testing.assert_array_equal(value.astype(np.float32), reference_values, err_msg=name)
    else:
        assert value.tobytes() == np.ascontiguousarray(reference_values).tobytes(), name


def assert_same_parameter_entry(
    ms: ModuleType, name: str, value: Any, reference: Any, to_numpy: Callable[[Any], np.ndarray]
) -> None:
    if not isinstance(reference, ms.Parameter):
        assert_same_numpy_entry(name, value, reference, to_numpy)
        return
    assert isinstance(value, ms.Parameter), name
    # MindSpore 2.10 leaves Parameters loaded from .safetensors with default names such as
    # "Parameter#2"; mploader names every Parameter after its entry.
    expected_name = name if reference.name.startswith("Parameter#") else reference.name
    assert value.name == expected_name, name
    assert value.dtype == reference.dtype, name
    assert value.shape == reference.shape, name
    assert value.requires_grad == reference.requires_grad, name
    assert to_numpy(value).tobytes() == to_numpy(reference).tobytes(), name


@pytest.mark.parametrize("expected", FIXTURE_NAMES, indirect=True)
def test_numpy_dict_matches(expected: Any, manifest: dict[str, Any], to_numpy: Callable[[Any], np.ndarray]) -> None:
    name, reference = expected

    loaded = mploader.load_checkpoint(FIXTURES / name, **mploader_kwargs(manifest[name]["load_kwargs"]))

    assert list(loaded) == list(reference)
    for key, value in loaded.items():
        assert_same_numpy_entry(key, value, reference[key], to_numpy)


@pytest.mark.parametrize("expected", FIXTURE_NAMES, indirect=True)
def test_numpy_dict_async_matches(
    expected: Any, manifest: dict[str, Any], to_numpy: Callable[[Any], np.ndarray]
) -> None:
    name, reference = expected

    future = mploader.load_checkpoint_async(FIXTURES / name, **mploader_kwargs(manifest[name]["load_kwargs"]))
    loaded = future.result(timeout=120)

    assert list(loaded) == list(reference)
    for key, value in loaded.items():
        assert_same_numpy_entry(key, value, reference[key], to_numpy)


@pytest.mark.parametrize("expected", FIXTURE_NAMES, indirect=True)
def test_parameter_dict_matches(
    expected: Any, ms: ModuleType, manifest: dict[str, Any], to_numpy: Callable[[Any], np.ndarray]
) -> None:
    name, reference = expected

    loaded = mploader_mindspore.load_checkpoint(
        str(FIXTURES / name), **mploader_kwargs(manifest[name]["load_kwargs"])
    )

    assert list(loaded) == list(reference)
    for key, value in loaded.items():
        assert_same_parameter_entry(ms, key, value, reference[key], to_numpy)


@pytest.mark.parametrize("expected", FIXTURE_NAMES, indirect=True)
def test_parameter_dict_async_matches(
    expected: Any, ms: ModuleType, manifest: dict[str, Any], to_numpy: Callable[[Any], np.ndarray]
) -> None:
    name, reference = expected

    future = mploader_mindspore.load_checkpoint_async(
        str(FIXTURES / name), **mploader_kwargs(manifest[name]["load_kwargs"])
    )
    loaded = future.result(timeout=120)

    assert list(loaded) == list(reference)
    for key, value in loaded.items():
        assert_same_parameter_entry(ms, key, value, reference[key], to_numpy)


def test_async_cancel(ms: ModuleType, to_numpy: Callable[[Any], np.ndarray]) -> None:
    path = str(FIXTURES / "lenet5_momentum.ckpt")

    future = mploader_mindspore.load_checkpoint_async(path)
    cancelled = future.cancel()

    assert future.cancelled() == cancelled
    if not cancelled:
        loaded = future.result(timeout=120)
        assert to_numpy(loaded["fc1.bias"]).shape == (120,)


def test_async_error_raised_by_result(tmp_path: Any) -> None:
    future = mploader_mindspore.load_checkpoint_async(str(tmp_path / "missing.ckpt"))

    with pytest.raises(ValueError):
        future.result(timeout=60)
