"""Helpers for the cross-checks against a real MindSpore 2.10.

These tests need MindSpore installed beside mploader; each module skips itself when it is not.
MindSpore is imported inside the fixtures, so collecting this folder without it imports nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np
import pytest

Specs = dict[str, tuple[tuple[int, ...], str]]


@pytest.fixture(scope="session")
def ms() -> ModuleType:
    """The mindspore module."""
    return pytest.importorskip("mindspore")


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


@pytest.fixture
def to_numpy(ms: ModuleType) -> Callable[[Any], np.ndarray]:
    """Return a Tensor's values as numpy; bfloat16 comes back as float32.

    With numpy 2, MindSpore 2.10's ``asnumpy()`` raises TypeError for BFloat16 tensors, so those
    are cast to Float32 by MindSpore first.
    """

    def convert(tensor: Any) -> np.ndarray:
        if tensor.dtype == ms.bfloat16:
            return np.asarray(ms.ops.cast(tensor, ms.float32).asnumpy())
        return np.asarray(tensor.asnumpy())

    return convert


@pytest.fixture
def make_cell(ms: ModuleType) -> Callable[[Specs], Any]:
    """Return a factory of Cells whose parameters have the given names, shapes and dtypes.

    Every parameter starts filled with 5 (True for Bool), so a test can tell whether it changed.
    """

    def make(specs: Specs) -> Any:
        cell = ms.nn.Cell()
        for index, (name, (shape, dtype)) in enumerate(specs.items()):
            initial = np.full(shape, 5, dtype=np.float32).astype(numpy_dtype(dtype))
            setattr(cell, f"parameter_{index}", new_parameter(ms, name, initial))
        return cell

    return make


def new_parameter(ms: ModuleType, name: str, value: np.ndarray) -> Any:
    """Make a Parameter holding a copy of ``value``.

    ``Parameter(Tensor(value))`` goes through ``asnumpy()``, which fails for bfloat16 under numpy
    2, so a bfloat16 Parameter starts from a data-less ``meta`` tensor and gets its data from
    ``set_data``.
    """
    if value.dtype != np.dtype(ml_dtypes.bfloat16):
        return ms.Parameter(ms.Tensor(value.copy()), name=name)
    parameter = ms.Parameter(ms.Tensor(shape=value.shape, dtype=ms.bfloat16, device="meta"), name=name)
    parameter.set_data(ms.from_numpy(value.copy()))
    return parameter


@pytest.fixture
def make_parameter(ms: ModuleType) -> Callable[[str, np.ndarray], Any]:
    """Return a factory of named Parameters, as mindspore.load_checkpoint returns them."""

    def make(name: str, value: np.ndarray) -> Any:
        return new_parameter(ms, name, value)

    return make
