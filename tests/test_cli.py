"""The mploader command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from helpers import FIXTURES

import mploader


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mploader", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_load_prints_summary() -> None:
    result = _run("load", str(FIXTURES / "lenet5_momentum.ckpt"), "--workers", "2")
    assert result.returncode == 0, result.stderr
    for field in ("entries: 21", "bytes:", "seconds:", "GB/s:", "workers: 2", "peak RSS"):
        assert field in result.stdout


def test_inspect_lists_entries() -> None:
    result = _run("inspect", str(FIXTURES / "all_dtypes.ckpt"))
    assert result.returncode == 0, result.stderr
    assert "dtypes.bf16" in result.stdout
    assert "BFloat16" in result.stdout
    assert "[3, 5]" in result.stdout
    assert "18 entries" in result.stdout


def test_demo_small(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "mploader", "demo", "--size", "8MiB", "--workers", "2"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "entries:" in result.stdout
    assert "workers: 2" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_error_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_text("hello\n")
    result = _run("load", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(bad) in result.stderr


def test_missing_file_error() -> None:
    result = _run("inspect", "/nonexistent/model.ckpt")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------
# inspect, convert and verify
# ----------------------------------------------------------------------------------------------

GCM_KEY_HEX = "000102030405060708090a0b0c0d0e0f"


def _assert_clean_failure(result: subprocess.CompletedProcess[str], status: int) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("mploader") or "usage:" in result.stderr


@pytest.mark.parametrize(
    ("name", "extra", "entry_count"),
    [
        ("all_dtypes.ckpt", [], 18),
        ("all_dtypes_crc.ckpt", [], 15),
        ("map_tensor.ckpt", [], 2),
        ("lenet5_momentum.safetensors", [], 19),
        ("lenet5_aes_gcm_k16.ckpt", ["--dec-key-hex", GCM_KEY_HEX], 19),
        ("lenet5_sm4_cbc_k16.ckpt", ["--dec-key-hex", GCM_KEY_HEX, "--dec-mode", "SM4-CBC"], 19),
    ],
)
def test_inspect_json(name: str, extra: list[str], entry_count: int) -> None:
    result = _run("inspect", str(FIXTURES / name), "--json", *extra)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["file"] == str(FIXTURES / name)
    assert document["format"] == ("safetensors" if name.endswith(".safetensors") else "ckpt")
    assert document["entry_count"] == entry_count
    assert len(document["entries"]) == entry_count
    for entry in document["entries"]:
        assert set(entry) >= {"name", "kind", "dtype", "shape", "bytes"}
    assert (document["encryption"] is not None) == bool(extra)
    assert GCM_KEY_HEX not in result.stdout
    assert GCM_KEY_HEX not in result.stderr


def test_inspect_json_crc_and_metadata() -> None:
    crc = json.loads(_run("inspect", str(FIXTURES / "all_dtypes_crc.ckpt"), "--json").stdout)
    assert crc["crc"]["location"] == "trailer"
    assert crc["metadata"] is None
    metadata = json.loads(_run("inspect", str(FIXTURES / "lenet5_momentum.safetensors"), "--json").stdout)
    assert metadata["metadata"] == {"format": "ms"}
    assert metadata["crc"] is None
    table = json.loads(_run("inspect", str(FIXTURES / "map_tensor.ckpt"), "--json").stdout)["entries"][0]
    assert [part["part"] for part in table["parts"]] == ["keys", "values", "status"]


def test_inspect_safetensors_table() -> None:
    result = _run("inspect", str(FIXTURES / "lenet5_momentum.safetensors"))
    assert result.returncode == 0, result.stderr
    assert "conv1.weight" in result.stdout
    assert "F32" in result.stdout
    assert "19 entries" in result.stdout
    assert "format: safetensors" in result.stdout


def test_inspect_encrypted_without_key() -> None:
    result = _run("inspect", str(FIXTURES / "lenet5_aes_gcm_k16.ckpt"))
    _assert_clean_failure(result, 1)
    assert "--dec-key-hex" in result.stderr


def test_inspect_key_from_stdin() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mploader", "inspect", str(FIXTURES / "lenet5_aes_gcm_k16.ckpt"), "--dec-key-hex", "-"],
        input=GCM_KEY_HEX + "\n", capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "19 entries" in result.stdout


def test_convert_and_verify(tmp_path: Path) -> None:
    middle = tmp_path / "model.safetensors"
    back = tmp_path / "model.ckpt"
    first = _run("convert", str(FIXTURES / "lenet5_momentum.ckpt"), str(middle), "--crc")
    assert first.returncode == 0, first.stderr
    assert f"wrote {middle}" in first.stdout
    second = _run("convert", str(middle), str(back), "--workers", "2")
    assert second.returncode == 0, second.stderr
    assert back.read_bytes() == (FIXTURES / "lenet5_momentum.ckpt").read_bytes()

    verified = _run("verify", str(middle))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"OK {middle}")
    assert "verified" in verified.stdout
    assert len(verified.stdout.strip().splitlines()) == 1


def test_convert_choice_and_skip(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    failed = _run("convert", str(FIXTURES / "map_tensor.ckpt"), str(target))
    _assert_clean_failure(failed, 1)
    assert "'embedding.table' is a map tensor" in failed.stderr
    assert list(tmp_path.iterdir()) == []

    result = _run("convert", str(FIXTURES / "all_dtypes.ckpt"), str(target), "--skip-unsupported",
                  "--choice", "dtypes.", "tag_", "--exclude", "dtypes.f64")
    assert result.returncode == 0, result.stderr
    assert "skipping entry 'tag_text'" in result.stderr
    names = set(mploader.load_checkpoint(target))
    assert "dtypes.f16" in names
    assert "dtypes.f64" not in names
    assert "epoch_num" not in names


def test_convert_reencrypt(tmp_path: Path) -> None:
    encrypted = tmp_path / "secret.ckpt"
    result = _run("convert", str(FIXTURES / "lenet5_aes_cbc_k24.ckpt"), str(encrypted),
                  "--dec-key-hex", "000102030405060708090a0b0c0d0e0f1011121314151617", "--dec-mode", "AES-CBC",
                  "--enc-key-hex", GCM_KEY_HEX, "--enc-mode", "SM4-CBC", "--crc")
    assert result.returncode == 0, result.stderr
    verified = _run("verify", str(encrypted), "--dec-key-hex", GCM_KEY_HEX, "--dec-mode", "SM4-CBC")
    assert verified.returncode == 0, verified.stderr
    assert "CRC32 trailer verified" in verified.stdout
    assert GCM_KEY_HEX not in verified.stdout + verified.stderr


def test_verify_fixtures_ok() -> None:
    for name in ("all_dtypes_crc.ckpt", "all_dtypes.ckpt", "map_tensor.ckpt", "lenet5_momentum.safetensors"):
        result = _run("verify", str(FIXTURES / name))
        assert result.returncode == 0, (name, result.stderr)
        assert result.stdout.startswith("OK ")


def test_verify_corrupted_byte(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    data = bytearray((FIXTURES / "lenet5_momentum.ckpt").read_bytes())
    data[1] ^= 0x40  # the first record's length no longer matches the records
    path.write_bytes(bytes(data))
    result = _run("verify", str(path))
    _assert_clean_failure(result, 1)
    assert str(path) in result.stderr
    assert "at byte" in result.stderr


def test_verify_crc_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    data = bytearray((FIXTURES / "all_dtypes_crc.ckpt").read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = _run("verify", str(path))
    _assert_clean_failure(result, 1)
    assert "CRC32 mismatch" in result.stderr
    assert f"{path} at byte {len(data) - 17}" in result.stderr


def test_verify_wrong_key() -> None:
    result = _run("verify", str(FIXTURES / "lenet5_aes_gcm_k16.ckpt"), "--dec-key-hex", "ff" * 16)
    _assert_clean_failure(result, 1)
    assert "lenet5_aes_gcm_k16.ckpt" in result.stderr
    assert "ff" * 16 not in result.stderr


def test_verify_usage_errors(tmp_path: Path) -> None:
    bad_hex = _run("verify", str(FIXTURES / "lenet5_aes_gcm_k16.ckpt"), "--dec-key-hex", "xyz")
    _assert_clean_failure(bad_hex, 2)
    assert "xyz" not in bad_hex.stderr
    key_for_safetensors = _run("verify", str(FIXTURES / "lenet5_momentum.safetensors"), "--dec-key-hex", "00")
    _assert_clean_failure(key_for_safetensors, 2)
    unknown_extension = _run("verify", str(tmp_path / "model.bin"))
    _assert_clean_failure(unknown_extension, 2)
    _assert_clean_failure(_run("verify"), 2)
    _assert_clean_failure(_run("verify", str(FIXTURES / "all_dtypes.ckpt"), "--workers", "-1"), 2)


def test_verify_sharded_directory(tmp_path: Path) -> None:
    for shard in range(2):
        tensors = {f"layers.{shard}.weight": np.full((3, 2), shard, dtype=np.float32)}
        safetensors.numpy.save_file(tensors, str(tmp_path / f"model-{shard}.safetensors"))
    result = _run("verify", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "2 files" in result.stdout
    inspected = json.loads(_run("inspect", str(tmp_path), "--json").stdout)
    assert inspected["entry_count"] == 2
    assert len(inspected["shards"]) == 2
    merged = tmp_path / "merged" / "model.ckpt"
    merged.parent.mkdir()
    converted = _run("convert", str(tmp_path / "model-0.safetensors"), str(tmp_path / "model-1.safetensors"),
                     str(merged))
    assert converted.returncode == 0, converted.stderr
    assert sorted(mploader.load_checkpoint(merged)) == ["layers.0.weight", "layers.1.weight"]
