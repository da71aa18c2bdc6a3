"""Sharded checkpoints: a directory, a list of files, or an index JSON, loaded as one job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import mploader


def _tensors(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layers.{seed}.{i}.weight": rng.standard_normal((64, 48)).astype(np.float32) for i in range(count)}


@pytest.fixture()
def safetensors_shards(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    everything: dict[str, np.ndarray] = {}
    weight_map: dict[str, str] = {}
    for shard in range(3):
        tensors = _tensors(4, shard)
        file_name = f"model-{shard + 1:05d}-of-00003.safetensors"
        safetensors.numpy.save_file(tensors, str(tmp_path / file_name))
        everything.update(tensors)
        weight_map.update({name: file_name for name in tensors})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index, everything


@pytest.mark.parametrize("workers", [0, 2])
def test_index_json_three_shards(safetensors_shards: tuple[Path, dict[str, np.ndarray]], workers: int) -> None:
    index, expected = safetensors_shards
    loaded = mploader.load_checkpoint(index, workers=workers)
    assert set(loaded) == set(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_index_json_with_filter(safetensors_shards: tuple[Path, dict[str, np.ndarray]]) -> None:
    index, expected = safetensors_shards
    loaded = mploader.load_checkpoint_async(index, specify_prefix="layers.1.", workers=2).result(timeout=60)
    assert sorted(loaded) == sorted(name for name in expected if name.startswith("layers.1."))


def test_index_json_missing_file(safetensors_shards: tuple[Path, dict[str, np.ndarray]]) -> None:
    index, _ = safetensors_shards
    (index.parent / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ValueError, match="model-00002-of-00003.safetensors"):
        mploader.load_checkpoint(index)


def test_index_json_wrong_file(safetensors_shards: tuple[Path, dict[str, np.ndarray]]) -> None:
    index, _ = safetensors_shards
    document = json.loads(index.read_text())
    document["weight_map"]["layers.0.0.weight"] = "model-00002-of-00003.safetensors"
    index.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="layers.0.0.weight"):
        mploader.load_checkpoint(index)


def test_index_json_not_json(tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        mploader.load_checkpoint(index)


@pytest.mark.parametrize("workers", [0, 2])
def test_directory_of_ckpt_shards(tmp_path: Path, workers: int) -> None:
    expected: dict[str, np.ndarray] = {}
    for shard in range(3):
        tensors = _tensors(3, shard)
        mploader.save_checkpoint(tensors, tmp_path / f"rank_{shard}.ckpt", crc_check=True)
        expected.update(tensors)
    loaded = mploader.load_checkpoint(tmp_path, workers=workers, crc_check=True)
    assert list(loaded) == list(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_list_of_files_mixed_formats(tmp_path: Path) -> None:
    first, second = _tensors(2, 0), _tensors(2, 1)
    mploader.save_checkpoint(first, tmp_path / "a.ckpt")
    safetensors.numpy.save_file(second, str(tmp_path / "b.safetensors"))
    loaded = mploader.load_checkpoint([tmp_path / "a.ckpt", tmp_path / "b.safetensors"], workers=2)
    assert set(loaded) == set(first) | set(second)


def test_duplicate_name_across_shards(tmp_path: Path) -> None:
    tensors = _tensors(2, 0)
    mploader.save_checkpoint(tensors, tmp_path / "a.ckpt")
    mploader.save_checkpoint(tensors, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match="in both"):
        mploader.load_checkpoint(tmp_path)


def test_crc_mismatch_names_shard(tmp_path: Path) -> None:
    for shard in range(2):
        mploader.save_checkpoint(_tensors(2, shard), tmp_path / f"rank_{shard}.ckpt", crc_check=True)
    damaged = tmp_path / "rank_1.ckpt"
    data = bytearray(damaged.read_bytes())
    data[200] ^= 0x01
    damaged.write_bytes(bytes(data))
    for workers in (0, 2):
        with pytest.raises(mploader.CrcMismatchError, match="rank_1.ckpt"):
            mploader.load_checkpoint(tmp_path, crc_check=True, workers=workers)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no .ckpt or .safetensors"):
        mploader.load_checkpoint(tmp_path)


def test_encrypted_shards_rejected(tmp_path: Path) -> None:
    for shard in range(2):
        mploader.save_checkpoint(_tensors(1, shard), tmp_path / f"rank_{shard}.ckpt")
    with pytest.raises(ValueError, match="single .ckpt"):
        mploader.load_checkpoint(tmp_path, dec_key=bytes(16))
