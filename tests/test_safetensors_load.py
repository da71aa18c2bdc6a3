"""safetensors files through the same pool and shared memory as .ckpt files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from helpers import FIXTURES
from test_fixtures import _check_against_manifest

import mploader
from mploader.formats import safetensors as safetensors_format


@pytest.mark.parametrize("workers", [0, 2])
def test_mindspore_fixture_matches_manifest(workers: int, manifest: dict[str, Any]) -> None:
    name = "lenet5_momentum.safetensors"
    loaded = mploader.load_checkpoint(FIXTURES / name, workers=workers, **manifest[name]["load_kwargs"])
    _check_against_manifest(loaded, manifest[name]["entries"])


@pytest.mark.parametrize("workers", [0, 2])
def test_safetensors_package_file(tmp_path: Path, workers: int) -> None:
    rng = np.random.default_rng(2)
    arrays = {
        "z.weight": rng.standard_normal((33, 7)).astype(np.float32),
        "a.bias": rng.standard_normal(5).astype(ml_dtypes.bfloat16),
        "flag": np.array([True, False, True]),
        "empty": np.zeros((0, 4), dtype=np.float16),
        "scalar": np.array(3, dtype=np.int64),
    }
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(arrays, str(path))
    loaded = mploader.load_checkpoint(path, workers=workers)
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype, name
        np.testing.assert_array_equal(loaded[name], array)


def test_choice_func_and_format_override(tmp_path: Path) -> None:
    arrays = {"keep": np.arange(6, dtype=np.int32), "drop": np.ones(3, dtype=np.float32)}
    path = tmp_path / "model.ckpt"  # a safetensors file with the wrong extension
    safetensors.numpy.save_file(arrays, str(path))
    loaded = mploader.load_checkpoint(path, format="safetensors", choice_func=lambda name: name == "keep")
    assert list(loaded) == ["keep"]
    with pytest.raises(mploader.CheckpointError):
        mploader.load_checkpoint(path)


def test_crc_num_verified(tmp_path: Path) -> None:
    arrays = {"b": np.arange(10, dtype=np.float32), "a": np.ones((2, 2), dtype=np.int8)}
    crc = safetensors_format.mindspore_crc(arrays.items())
    path = tmp_path / "model.safetensors"
    safetensors_format.save_safetensors(arrays, path, metadata=safetensors_format.mindspore_metadata(crc=crc))
    for workers in (0, 2):
        mploader.load_checkpoint(path, crc_check=True, workers=workers)
        mploader.load_checkpoint(path, crc_check=True, workers=workers, choice_func=lambda name: name == "a")

    bad = tmp_path / "bad.safetensors"
    metadata = safetensors_format.mindspore_metadata(crc=crc ^ 1)
    safetensors_format.save_safetensors(arrays, bad, metadata=metadata)
    with pytest.raises(mploader.CrcMismatchError, match=str(bad)):
        mploader.load_checkpoint(bad, crc_check=True)
    mploader.load_checkpoint(bad)  # unchecked without crc_check, as in MindSpore


def test_hostile_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes((2**63).to_bytes(8, "little") + b"{}")
    with pytest.raises(mploader.CheckpointError, match=str(path)):
        mploader.load_checkpoint(path, workers=2)
