"""The public functions: argument rules, filters, and the Future they return."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import FIXTURES

import mploader
from mploader import coordinator, worker
from mploader.formats.ckpt import index_ckpt

LENET = FIXTURES / "lenet5_momentum.ckpt"


def _write_small(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {
        "encoder.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "encoder.bias": rng.standard_normal(64).astype(np.float32),
        "decoder.weight": rng.standard_normal((32, 64)).astype(np.float16),
        "head.weight": rng.integers(0, 100, (16, 16), dtype=np.int32),
    }
    mploader.save_checkpoint(arrays, path)
    return arrays


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "small.ckpt"
    return path, _write_small(path)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_load_values_and_order(small: Any, workers: int) -> None:
    path, arrays = small
    loaded = mploader.load_checkpoint(path, workers=workers)
    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"filter_prefix": "encoder"}, ["decoder.weight", "head.weight"]),
        ({"filter_prefix": ["encoder", "head"]}, ["decoder.weight"]),
        ({"specify_prefix": "encoder"}, ["encoder.weight", "encoder.bias"]),
        ({"specify_prefix": ("encoder", "head")}, ["encoder.weight", "encoder.bias", "head.weight"]),
        ({"specify_prefix": "encoder", "filter_prefix": "encoder.b"}, ["encoder.weight"]),
        ({"choice_func": lambda name: name.endswith("weight")},
         ["encoder.weight", "decoder.weight", "head.weight"]),
        # choice_func is ignored when a prefix filter is set, as in MindSpore.
        ({"specify_prefix": "head", "choice_func": lambda name: False}, ["head.weight"]),
    ],
)
def test_filters(small: Any, kwargs: dict[str, Any], expected: list[str]) -> None:
    path, _ = small
    assert list(mploader.load_checkpoint(path, **kwargs)) == expected


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"filter_prefix": []}, ValueError),
        ({"filter_prefix": ()}, ValueError),
        ({"filter_prefix": ["encoder", ""]}, ValueError),
        ({"specify_prefix": ""}, ValueError),
        ({"filter_prefix": 3}, TypeError),
        ({"specify_prefix": {"encoder"}}, TypeError),
        ({"specify_prefix": ["encoder", 1]}, TypeError),
        ({"choice_func": "encoder"}, TypeError),
        ({"workers": -1}, ValueError),
        ({"workers": 1.5}, TypeError),
        ({"specify_prefix": "nothing"}, ValueError),
        ({"choice_func": lambda name: False}, ValueError),
    ],
)
def test_bad_arguments(small: Any, kwargs: dict[str, Any], error: type[Exception]) -> None:
    path, _ = small
    with pytest.raises(error):
        mploader.load_checkpoint(path, **kwargs)
    with pytest.raises(error):
        mploader.load_checkpoint_async(path, **kwargs).result(timeout=30)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        mploader.load_checkpoint(tmp_path / "absent.ckpt")


def test_wrong_extension(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(LENET.read_bytes())
    with pytest.raises(ValueError, match=r"\.ckpt or \.safetensors"):
        mploader.load_checkpoint(path)


@pytest.mark.parametrize("workers", [0, 2])
def test_net_loaded_through_future(small: Any, workers: int) -> None:
    path, arrays = small
    net = {"ema.encoder.weight": np.zeros((64, 32), np.float64)}
    # The checkpoint names lack the "ema." prefix of the net's names, so no exact name matches.
    params = mploader.load_checkpoint_async(path, net=net, workers=workers).result(timeout=60)
    assert list(params) == list(arrays)
    np.testing.assert_array_equal(net["ema.encoder.weight"], np.zeros((64, 32)))

    target = {"encoder.weight": np.zeros((64, 32), np.float64)}
    mploader.load_checkpoint_async(path, net=target, workers=workers).result(timeout=60)
    assert target["encoder.weight"].dtype == np.float64
    np.testing.assert_array_equal(target["encoder.weight"], arrays["encoder.weight"].astype(np.float64))


def test_net_error_reaches_future(small: Any) -> None:
    path, _ = small
    net = {"encoder.weight": np.zeros((3, 3), np.float32)}
    future = mploader.load_checkpoint_async(path, net=net, workers=2)
    with pytest.raises(RuntimeError, match="encoder.weight"):
        future.result(timeout=60)
    with pytest.raises(RuntimeError, match="encoder.weight"):
        mploader.load_checkpoint(path, net=net, strict_load=True)
    np.testing.assert_array_equal(net["encoder.weight"], np.zeros((3, 3)))


def test_choice_func_reads_only_selected(small: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = small
    with open(path, "rb") as file:
        index = index_ckpt(str(path), file, os.path.getsize(path))
    ranges = {entry.name: entry.parts[0].ranges[0] for entry in index.entries}

    reads: list[tuple[int, int]] = []
    real_preadv = os.preadv

    def recording_preadv(fd: int, buffers: list[Any], offset: int) -> int:
        reads.append((offset, sum(len(buffer) for buffer in buffers)))
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(worker.os, "preadv", recording_preadv)
    loaded = mploader.load_checkpoint(path, choice_func=lambda name: name == "decoder.weight", workers=0)

    assert list(loaded) == ["decoder.weight"]
    assert reads == [ranges["decoder.weight"]]
    for name, (start, length) in ranges.items():
        if name == "decoder.weight":
            continue
        for offset, count in reads:
            assert offset + count <= start or offset >= start + length, name


def test_header_reads_skip_other_tensors(small: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = small
    with open(path, "rb") as file:
        index = index_ckpt(str(path), file, os.path.getsize(path))
    contents = [entry.parts[0].ranges[0] for entry in index.entries]

    class RecordingFile:
        def __init__(self, file: Any) -> None:
            self.file = file
            self.reads: list[tuple[int, int]] = []

        def seek(self, offset: int) -> None:
            self.file.seek(offset)

        def read(self, count: int) -> bytes:
            offset = self.file.tell()
            data = self.file.read(count)
            self.reads.append((offset, len(data)))
            return data

    with open(path, "rb") as file:
        recording = RecordingFile(file)
        index_ckpt(str(path), recording, os.path.getsize(path))  # type: ignore[arg-type]
    # Each header read may run into its own record's content, but never into another record's.
    for offset, count in recording.reads:
        touched = [
            index
            for index, (start, length) in enumerate(contents)
            if offset < start + length and start < offset + count
        ]
        assert len(touched) <= 1


def test_future_interface(small: Any) -> None:
    path, arrays = small
    future = mploader.load_checkpoint_async(path, workers=2)
    assert isinstance(future, Future)
    result = future.result(timeout=60)
    assert future.done()
    assert future.exception() is None
    assert list(result) == list(arrays)

    called = threading.Event()
    future.add_done_callback(lambda done: called.set())
    assert called.wait(5)


def test_future_with_asyncio(small: Any) -> None:
    path, arrays = small

    async def main() -> dict[str, Any]:
        return await asyncio.wrap_future(mploader.load_checkpoint_async(path, workers=2))

    loaded = asyncio.run(main())
    assert list(loaded) == list(arrays)


def test_future_carries_file_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"this is not a checkpoint\n")
    future = mploader.load_checkpoint_async(path)
    error = future.exception(timeout=30)
    assert isinstance(error, mploader.CheckpointError)
    assert str(path) in str(error)


def test_cancel_before_result(small: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = small
    started = threading.Event()
    release = threading.Event()
    real_load = coordinator.load

    def slow_load(request: Any, cancel: Any = None) -> Any:
        started.set()
        release.wait(10)
        return real_load(request, cancel)

    monkeypatch.setattr(coordinator, "load", slow_load)
    future = mploader.load_checkpoint_async(path, workers=2)
    assert started.wait(10)
    assert future.cancel()
    release.set()
    with pytest.raises(CancelledError):
        future.result(timeout=30)


def test_arrays_outlive_segment(small: Any) -> None:
    path, arrays = small
    loaded = mploader.load_checkpoint(path, workers=2)
    weight = loaded["encoder.weight"]
    del loaded
    np.testing.assert_array_equal(weight, arrays["encoder.weight"])
    weight[0, 0] = 42.0  # the mapping is private to this process and writable
    assert weight[0, 0] == 42.0


def test_format_overrides_extension(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(LENET.read_bytes())
    loaded = mploader.load_checkpoint(path, format="ckpt")
    assert "conv1.weight" in loaded


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        mploader.load_checkpoint(str(tmp_path / "nodir") + "/")


@pytest.mark.parametrize("mode", ["AES-GCM", "AES-CBC", "SM4-CBC"])
def test_encrypted_without_key(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "secret.ckpt"
    mploader.save_checkpoint({"w": np.ones(4, np.float32)}, path, enc_key=bytes(16), enc_mode=mode)
    with pytest.raises(mploader.CheckpointError, match=f"encrypted with {mode}") as caught:
        mploader.load_checkpoint(path)
    assert caught.value.offset == 0
