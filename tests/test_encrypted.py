"""Encrypted checkpoints through the loader: MindSpore's fixtures, parallel frames, bad keys."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import FIXTURES
from test_fixtures import _check_against_manifest

import mploader
from mploader import api, coordinator
from mploader.formats import crc, crypto

ENCRYPTED = ["lenet5_aes_gcm_k16.ckpt", "lenet5_aes_gcm_k32.ckpt", "lenet5_aes_cbc_k24.ckpt", "lenet5_sm4_cbc_k16.ckpt"]
KEY = bytes(range(16))


def _kwargs(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    kwargs = dict(manifest[name]["load_kwargs"])
    kwargs["dec_key"] = bytes.fromhex(kwargs["dec_key"])
    return kwargs


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("name", ENCRYPTED)
def test_encrypted_fixture_matches_manifest(name: str, workers: int, manifest: dict[str, Any]) -> None:
    loaded = mploader.load_checkpoint(FIXTURES / name, workers=workers, **_kwargs(manifest, name))
    _check_against_manifest(loaded, manifest[name]["entries"])


@pytest.mark.parametrize("mode", ["AES-GCM", "AES-CBC", "SM4-CBC"])
def test_encrypted_round_trip(tmp_path: Path, mode: str) -> None:
    arrays = {"a": np.arange(1000, dtype=np.float32), "b": np.ones((3, 4), dtype=np.int8), "note": "text"}
    path = tmp_path / "enc.ckpt"
    mploader.save_checkpoint(arrays, path, enc_key=KEY, enc_mode=mode)
    assert path.read_bytes()[:4] == crypto.MODES[mode].to_bytes(4, "little")
    for workers in (0, 2):
        loaded = mploader.load_checkpoint(path, dec_key=KEY, dec_mode=mode, workers=workers)
        np.testing.assert_array_equal(loaded["a"], arrays["a"])
        np.testing.assert_array_equal(loaded["b"], arrays["b"])
        assert loaded["note"] == "text"


def test_large_file_uses_every_worker(tmp_path: Path) -> None:
    # 136 MiB of plaintext: three 64 MiB frames, decrypted by both workers.
    rng = np.random.default_rng(0)
    arrays = {f"layer{i}": rng.integers(0, 2**16, size=(17, 2**20), dtype=np.uint16) for i in range(4)}
    path = tmp_path / "big.ckpt"
    mploader.save_checkpoint(arrays, path, enc_key=KEY, crc_check=True)
    with open(path, "rb") as file:
        frames = crypto.walk_frames(str(path), file, os.path.getsize(path), "AES-GCM", KEY).frames
    assert len(frames) == 3

    request = api._build_request(path, None, False, None, KEY, "AES-GCM", None, None, True, 2)
    result = coordinator.load(request)
    assert len(result.worker_pids) == 2
    for name, array in arrays.items():
        np.testing.assert_array_equal(result.parameters[name], array)


def test_mindspore_zero_trailer_is_ignored(tmp_path: Path, manifest: dict[str, Any]) -> None:
    # MindSpore 2.10 appends a trailer of value 0 after the frames when asked for a CRC.
    name = "lenet5_aes_gcm_k16.ckpt"
    path = tmp_path / name
    path.write_bytes((FIXTURES / name).read_bytes() + crc.make_trailer(0))
    for crc_check in (False, True):
        loaded = mploader.load_checkpoint(path, crc_check=crc_check, workers=2, **_kwargs(manifest, name))
        _check_against_manifest(loaded, manifest[name]["entries"])


def test_encrypted_crc_is_verified(tmp_path: Path) -> None:
    path = tmp_path / "enc.ckpt"
    mploader.save_checkpoint({"a": np.arange(100, dtype=np.int64)}, path, enc_key=KEY, crc_check=True)
    data = bytearray(path.read_bytes())
    stored = crc.parse_trailer(bytes(data[-crc.TRAILER_SIZE_BYTES :]))
    assert stored is not None and stored != 0
    data[-crc.TRAILER_SIZE_BYTES :] = crc.make_trailer(stored ^ 1)
    path.write_bytes(bytes(data))
    with pytest.raises(mploader.CrcMismatchError, match=str(path)):
        mploader.load_checkpoint(path, dec_key=KEY, crc_check=True)
    mploader.load_checkpoint(path, dec_key=KEY)  # without crc_check the trailer is only stripped


@pytest.fixture()
def gcm_file(tmp_path: Path) -> Path:
    path = tmp_path / "gcm.ckpt"
    mploader.save_checkpoint({"w": np.arange(4096, dtype=np.float32)}, path, enc_key=KEY)
    return path


def _expect_decryption_error(path: Path, match: str, **kwargs: Any) -> mploader.DecryptionError:
    for workers in (0, 2):
        with pytest.raises(mploader.DecryptionError, match=match) as caught:
            mploader.load_checkpoint(path, workers=workers, **kwargs)
        message = str(caught.value)
        assert str(path) in message
        key = kwargs.get("dec_key", b"")
        assert key.hex() not in message
        assert repr(key) not in message
    return caught.value


def test_wrong_key_length(gcm_file: Path) -> None:
    _expect_decryption_error(gcm_file, "bytes", dec_key=b"short")


def test_mode_mismatch(gcm_file: Path) -> None:
    _expect_decryption_error(gcm_file, "AES-GCM", dec_key=KEY, dec_mode="AES-CBC")


def test_not_encrypted() -> None:
    _expect_decryption_error(FIXTURES / "lenet5_momentum.ckpt", "not encrypted", dec_key=KEY)


def test_wrong_key_gcm(gcm_file: Path) -> None:
    _expect_decryption_error(gcm_file, "key", dec_key=bytes(16))


@pytest.mark.parametrize("mode", ["AES-CBC", "SM4-CBC"])
def test_wrong_keys_cbc(tmp_path: Path, mode: str) -> None:
    arrays = {"w": np.arange(2048, dtype=np.float32)}
    path = tmp_path / "cbc.ckpt"
    mploader.save_checkpoint(arrays, path, enc_key=KEY, enc_mode=mode)
    rng = np.random.default_rng(1)
    # About 1 wrong key in 16 yields valid-looking padding; 64 keys exercise that path too.
    for _ in range(64):
        wrong = rng.bytes(16)
        with pytest.raises(mploader.DecryptionError) as caught:
            mploader.load_checkpoint(path, dec_key=wrong, dec_mode=mode, workers=0)
        assert wrong.hex() not in str(caught.value)


def test_flipped_tag_bit(gcm_file: Path) -> None:
    data = bytearray(gcm_file.read_bytes())
    data[4] ^= 0x01  # the tag follows the 4-byte magic
    gcm_file.write_bytes(bytes(data))
    _expect_decryption_error(gcm_file, "modified|damaged", dec_key=KEY)


def test_flipped_ciphertext_bit(gcm_file: Path) -> None:
    data = bytearray(gcm_file.read_bytes())
    data[-100] ^= 0x10
    gcm_file.write_bytes(bytes(data))
    _expect_decryption_error(gcm_file, "modified|damaged", dec_key=KEY)


def test_truncated_frame(gcm_file: Path) -> None:
    data = gcm_file.read_bytes()
    gcm_file.write_bytes(data[:-10])
    _expect_decryption_error(gcm_file, "truncat", dec_key=KEY)


def test_key_never_logged(gcm_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mploader")
    secret = bytes(range(100, 116))
    with pytest.raises(mploader.DecryptionError):
        mploader.load_checkpoint(gcm_file, dec_key=secret, workers=2)
    mploader.load_checkpoint(gcm_file, dec_key=KEY, workers=2)
    for text in (secret.hex(), repr(secret), KEY.hex(), repr(KEY)):
        assert text not in caplog.text
    request = api._build_request(gcm_file, None, False, None, KEY, "AES-GCM", None, None, False, 2)
    assert KEY.hex() not in repr(request)
    assert repr(KEY) not in repr(request)
