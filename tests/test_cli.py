"""The mploader command line, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import FIXTURES


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
