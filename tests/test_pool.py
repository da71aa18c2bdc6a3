"""The persistent worker pool: reuse, sizing, dead workers, shared memory, and leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import mploader
from mploader import pool
from mploader.arena import Segment


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    arrays = {f"layer{i}.weight": rng.standard_normal((256, 256)).astype(np.float32) for i in range(8)}
    path = tmp_path / "model.ckpt"
    mploader.save_checkpoint(arrays, path)
    return path, arrays


def test_pool_reused_between_loads(checkpoint: Any) -> None:
    path, _ = checkpoint
    mploader.load_checkpoint(path, workers=2)
    first = pool.current_pool()
    assert first is not None
    pids = first.pids()
    mploader.load_checkpoint(path, workers=2)
    mploader.load_checkpoint(path, workers=1)
    assert pool.current_pool() is first
    assert first.pids() == pids


def test_pool_start_method_is_thread_safe() -> None:
    running = pool.get_pool(1)
    context = running._executor._mp_context  # type: ignore[attr-defined]
    assert context.get_start_method() in ("forkserver", "spawn")


def test_default_worker_count_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pool.WORKERS_ENV, "3")
    assert pool.default_worker_count() == 3
    monkeypatch.setenv(pool.WORKERS_ENV, "zero")
    with pytest.raises(ValueError, match=pool.WORKERS_ENV):
        pool.default_worker_count()
    monkeypatch.delenv(pool.WORKERS_ENV)
    assert pool.default_worker_count() == len(os.sched_getaffinity(0))


def test_large_tensor_shared_among_workers(tmp_path: Path) -> None:
    # One tensor of 24 MiB, split into balanced ranges for two workers.
    array = np.arange(6 * 2**20, dtype=np.float32).reshape(3 * 2**10, 2**11)
    path = tmp_path / "one.ckpt"
    mploader.save_checkpoint({"big": array}, path)
    np.testing.assert_array_equal(mploader.load_checkpoint(path, workers=2)["big"], array)


def test_dead_worker_between_loads(checkpoint: Any) -> None:
    path, arrays = checkpoint
    mploader.load_checkpoint(path, workers=2)
    running = pool.current_pool()
    assert running is not None
    victim = running.pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not running.is_broken() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.is_broken()

    loaded = mploader.load_checkpoint(path, workers=2)
    np.testing.assert_array_equal(loaded["layer0.weight"], arrays["layer0.weight"])
    assert pool.current_pool() is not running
    assert victim not in pool.current_pool().pids()


def test_segment_is_private_and_unlinked(tmp_path: Path) -> None:
    segment = Segment(4096, directory=str(tmp_path))
    try:
        assert os.stat(segment.path).st_mode & 0o777 == 0o600
    finally:
        segment.close()
        segment.close()
    assert not os.path.exists(segment.path)


def test_segment_needs_free_space(tmp_path: Path) -> None:
    free_bytes = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(mploader.SharedMemoryFullError, match="bytes free"):
        Segment(free_bytes + 2**30, directory=str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.fixture()
def small_tmpfs(tmp_path: Path) -> Any:
    mount_point = tmp_path / "shm"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_small_shm_gives_clear_error(
    checkpoint: Any, small_tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = checkpoint  # 2 MiB of tensors, more than the 1 MiB tmpfs
    monkeypatch.setenv("MPLOADER_SHM_DIR", str(small_tmpfs))
    with pytest.raises(mploader.SharedMemoryFullError) as caught:
        mploader.load_checkpoint(path, workers=2)
    message = str(caught.value)
    assert "bytes of shared memory" in message
    assert "MPLOADER_SHM_DIR" in message
    assert os.listdir(small_tmpfs) == []


def test_no_orphans_after_interpreter_exit(checkpoint: Any) -> None:
    path, _ = checkpoint
    script = (
        "import sys, mploader, mploader.pool as p\n"
        "if __name__ == '__main__':\n"
        f"    mploader.load_checkpoint({str(path)!r}, workers=2)\n"
        "    print(' '.join(map(str, p.current_pool().pids())))\n"
    )
    program = Path(path).parent / "child.py"
    program.write_text(script)
    result = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(pid) for pid in pids)


def test_workers_skip_callers_main(tmp_path: Path, checkpoint: Any) -> None:
    path, _ = checkpoint
    marker = tmp_path / "imports.txt"
    # No __main__ guard: a worker that re-imported this script would load again and append a line.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import mploader\n"
        f"with open({str(marker)!r}, 'a') as out:\n"
        "    out.write('imported\\n')\n"
        f"params = mploader.load_checkpoint({str(path)!r}, workers=2)\n"
        "print(len(params))\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8"
    assert marker.read_text().splitlines() == ["imported"]
