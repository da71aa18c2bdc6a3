"""Files written by mploader load in real MindSpore 2.10, run from its own interpreter.

MindSpore is a 2.8 GB install and never a dependency of mploader, so these tests run only when
``MPLOADER_MINDSPORE_PYTHON`` names an interpreter that can import it, and skip otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import mploader

MINDSPORE_PYTHON = os.environ.get("MPLOADER_MINDSPORE_PYTHON", "")

_LOAD_SCRIPT = """
import json, sys
import mindspore as ms
path, key, mode = sys.argv[1], sys.argv[2], sys.argv[3]
kwargs = {"dec_key": bytes.fromhex(key), "dec_mode": mode} if key else {}
params = ms.load_checkpoint(path, **kwargs)
out = {}
for name, value in params.items():
    if isinstance(value, str):
        out[name] = value
    else:
        array = value.astype(ms.float32).asnumpy() if value.dtype == ms.bfloat16 else value.asnumpy()
        out[name] = [str(array.dtype), list(array.shape), array.astype("float64").ravel().tolist()]
print(json.dumps(out))
"""


def _mindspore_load(path: Path, key: bytes | None = None, mode: str = "AES-GCM") -> dict[str, object]:
    if not MINDSPORE_PYTHON or not Path(MINDSPORE_PYTHON).exists():
        pytest.skip("set MPLOADER_MINDSPORE_PYTHON to an interpreter with MindSpore 2.10 to run this check")
    result = subprocess.run(
        [MINDSPORE_PYTHON, "-c", _LOAD_SCRIPT, str(path), key.hex() if key else "", mode],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _arrays() -> dict[str, object]:
    rng = np.random.default_rng(5)
    return {
        "conv.weight": rng.standard_normal((6, 1, 5, 5)).astype(np.float32),
        "dense.weight": rng.standard_normal((10, 84)).astype(np.float16),
        "step": np.array(7, dtype=np.int64),
        "note": "résumé-模型",
    }


def _check(loaded: dict[str, object], arrays: dict[str, object]) -> None:
    assert list(loaded) == list(arrays)
    for name, value in arrays.items():
        if isinstance(value, str):
            assert loaded[name] == value
            continue
        assert isinstance(value, np.ndarray)
        dtype, shape, data = loaded[name]  # type: ignore[misc]
        assert shape == list(value.shape), name
        np.testing.assert_array_equal(np.array(data).reshape(value.shape), value.astype(np.float64))


@pytest.mark.parametrize(
    ("mode", "key"),
    [
        ("AES-GCM", bytes(range(16))),
        ("AES-GCM", bytes(range(32))),
        ("AES-CBC", bytes(range(24))),
        ("SM4-CBC", bytes(range(16))),
    ],
)
def test_encrypted_file_loads_in_mindspore(tmp_path: Path, mode: str, key: bytes) -> None:
    arrays = _arrays()
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint(arrays, path, enc_key=key, enc_mode=mode)
    _check(_mindspore_load(path, key, mode), arrays)


def test_plain_file_with_crc_loads_in_mindspore(tmp_path: Path) -> None:
    arrays = _arrays()
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint(arrays, path, crc_check=True)
    _check(_mindspore_load(path), arrays)
