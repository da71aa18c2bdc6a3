"""Faults during a load: dead workers, cancels, a full shared-memory filesystem, a file that
changes under the loader, concurrent loads, and processes that fork or use multiprocessing.

Timing-sensitive cases are made deterministic by stopping the pool's workers with SIGSTOP before
the load starts (see :func:`_stalled_load`). The workers are resumed with SIGCONT before each
test ends, whatever happens.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import mploader
from mploader import pool, worker
from mploader.arena import SEGMENT_PREFIX, shm_directory
from mploader.errors import CheckpointError, SharedMemoryFullError, WorkerCrashedError

MIB = 1024 * 1024
BIG_ENTRIES = 8
BIG_ENTRY_BYTES = 64 * MIB  # 512 MiB in all: eight 64 MiB tasks for two workers
SUBPROCESS_TIMEOUT_SECONDS = 120


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _big_arrays() -> dict[str, np.ndarray]:
    return {f"layer{i}.weight": np.full(BIG_ENTRY_BYTES, i + 1, dtype=np.uint8) for i in range(BIG_ENTRIES)}


def _check_big(loaded: dict[str, Any]) -> None:
    assert list(loaded) == [f"layer{i}.weight" for i in range(BIG_ENTRIES)]
    for i, array in enumerate(loaded.values()):
        assert array.shape == (BIG_ENTRY_BYTES,)
        assert array[0] == i + 1
        assert array[-1] == i + 1
        assert np.count_nonzero(array != i + 1) == 0


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "big.ckpt"
    mploader.save_checkpoint(_big_arrays(), path)
    return path


@pytest.fixture()
def small_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    arrays = {f"block{i}": rng.standard_normal((128, 256)).astype(np.float32) for i in range(6)}
    path = tmp_path / "small.ckpt"
    mploader.save_checkpoint(arrays, path)
    return path, arrays


def _own_segments(directory: str | None = None) -> list[str]:
    prefix = f"{SEGMENT_PREFIX}{os.getpid()}-"
    return [name for name in os.listdir(directory or shm_directory()) if name.startswith(prefix)]


def _wait_until(condition: Callable[[], bool], timeout_seconds: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")
        time.sleep(0.001)


def _stable(measure: Callable[[], int], interval_seconds: float = 0.3) -> bool:
    first = measure()
    time.sleep(interval_seconds)
    return measure() == first


def _wait_for_copying(future: Future[Any]) -> None:
    """Wait until a load has allocated pages of its segment, which each task does as it starts."""
    _wait_until(lambda: _segment_allocated_bytes() > 0 or future.done(), what="copying to start")


def _stalled_load(path: Path, directory: str | None = None, **kwargs: Any) -> Future[dict[str, Any]]:
    """Start a two-worker load while the workers are stopped; return once only they can go on.

    The loading thread copies tasks that no worker has taken yet itself, from the end of the
    queue, and stops at the first task a worker holds. The 512 MiB checkpoint has eight tasks and
    ProcessPoolExecutor hands up to three to its two workers at once, so when the segment stops
    filling, the load is stuck on the stopped workers' tasks. The half-second window is longer
    than one 64 MiB task takes to copy.
    """
    future = mploader.load_checkpoint_async(path, workers=2, **kwargs)
    _wait_until(lambda: bool(_own_segments(directory)) or future.done(), what="the load's segment")
    _wait_until(
        lambda: future.done() or _stable(lambda: _segment_allocated_bytes(directory), 0.5),
        what="the loading thread to finish its share",
    )
    assert not future.done(), f"the load ended while its workers were stopped: {future.exception()!r}"
    return future


def _wait_gone(pids: list[int]) -> None:
    """Wait until none of ``pids`` runs any more; a zombie counts as gone."""

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    _wait_until(lambda: all(gone(pid) for pid in pids), timeout_seconds=10, what=f"processes {pids} to exit")


def _warm_pool(path: Path) -> list[int]:
    """Start the shared pool with two workers and return their process ids."""
    mploader.load_checkpoint(path, workers=2)
    running = pool.current_pool()
    assert running is not None
    _wait_until(lambda: len(running.pids()) == 2, what="two workers")
    return running.pids()


@contextmanager
def _stopped(pids: list[int]) -> Iterator[None]:
    """Freeze the workers with SIGSTOP, and always resume the live ones on exit."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def _join_load_threads() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("mploader-load"):
            thread.join(timeout=30)
            assert not thread.is_alive()


def _segment_allocated_bytes(directory: str | None = None) -> int:
    total = 0
    for name in _own_segments(directory):
        try:
            total += os.stat(os.path.join(directory or shm_directory(), name)).st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def _read_chars(pids: list[int]) -> int:
    return sum(psutil.Process(pid).io_counters().read_chars for pid in pids)


@contextmanager
def _tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


# ----------------------------------------------------------------------------------------------
# Dead workers
# ----------------------------------------------------------------------------------------------

# NOTE: the loading thread runs some copy tasks itself and cancels their futures to claim them.
# When a worker then dies, the executor's management thread tries to fail those cancelled futures
# too, and on CPython 3.10 and 3.11 it dies with InvalidStateError. pytest reports that as an
# unhandled thread exception, so the kill tests filter it. The pool kills the remaining workers
# itself, which _wait_gone below checks.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_worker_killed_while_queued(big_checkpoint: Path) -> None:
    pids = _warm_pool(big_checkpoint)
    with _stopped(pids):
        future = _stalled_load(big_checkpoint)
        killed_at = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises(WorkerCrashedError, match="died while loading"):
            future.result(timeout=30)
    assert time.monotonic() - killed_at < 10
    _join_load_threads()
    assert _own_segments() == []
    _wait_gone(pids)  # the surviving worker of the broken pool too

    _check_big(mploader.load_checkpoint(big_checkpoint, workers=2))
    rebuilt = pool.current_pool()
    assert rebuilt is not None
    assert not set(rebuilt.pids()) & set(pids)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_worker_killed_while_copying(big_checkpoint: Path) -> None:
    # No SIGSTOP here, because the kill must land while a worker is inside preadv. Each task
    # allocates its pages of the segment as it starts, so allocated pages mean copying has begun.
    # The rest of the 512 MiB load takes hundreds of milliseconds, so the kill lands first.
    for _ in range(3):
        pids = _warm_pool(big_checkpoint)
        future = mploader.load_checkpoint_async(big_checkpoint, workers=2)
        _wait_for_copying(future)
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            future.result(timeout=30)
        except WorkerCrashedError:
            break
        # The load finished before the kill; the next attempt starts a new pool.
    else:
        pytest.fail("three loads finished before a worker could be killed")
    assert time.monotonic() - killed_at < 10
    _join_load_threads()
    assert _own_segments() == []
    _wait_gone(pids)
    _check_big(mploader.load_checkpoint(big_checkpoint, workers=2))


# ----------------------------------------------------------------------------------------------
# Cancel
# ----------------------------------------------------------------------------------------------


def test_cancel_while_queued(big_checkpoint: Path) -> None:
    pids = _warm_pool(big_checkpoint)
    read_before = _read_chars(pids)
    with _stopped(pids):
        future = _stalled_load(big_checkpoint)
        assert future.cancel()
        _join_load_threads()
        assert _own_segments() == []
    with pytest.raises(CancelledError):
        future.result(timeout=1)

    # The tasks the stopped workers held find the segment gone when they resume, and stop before
    # reading the checkpoint. Allow a few header reads of slack.
    _wait_until(lambda: _stable(lambda: _read_chars(pids)), what="workers to go idle")
    assert _read_chars(pids) - read_before < MIB
    _check_big(mploader.load_checkpoint(big_checkpoint, workers=2))


def test_cancel_while_copying(big_checkpoint: Path) -> None:
    pids = _warm_pool(big_checkpoint)
    free_before = _shm_free_bytes()
    for _ in range(3):
        future = mploader.load_checkpoint_async(big_checkpoint, workers=2)
        _wait_for_copying(future)
        read_at_cancel = _read_chars(pids)
        if future.cancel():
            break
        del future  # finished first: its arrays hold 512 MiB until dropped
    else:
        pytest.fail("three loads finished before one could be cancelled")
    _join_load_threads()
    assert _own_segments() == []

    # The workers finish the tasks they hold: one each plus one queued (ProcessPoolExecutor
    # queues max_workers + 1 calls), 64 MiB each. NOTE: the loading thread cancels the other
    # tasks only after the task it is copying itself, so the workers may take one more each
    # in that time.
    _wait_until(lambda: _stable(lambda: _read_chars(pids)), what="workers to go idle")
    assert _read_chars(pids) - read_at_cancel <= 5 * BIG_ENTRY_BYTES + MIB
    # The segment's pages are freed once the last worker unmaps them; allow for unrelated use.
    _wait_until(lambda: _shm_free_bytes() > free_before - 64 * MIB, timeout_seconds=10, what="memory to be freed")


def _shm_free_bytes() -> int:
    stats = os.statvfs(shm_directory())
    return stats.f_bavail * stats.f_frsize


# ----------------------------------------------------------------------------------------------
# Full shared-memory filesystem
# ----------------------------------------------------------------------------------------------


def test_shm_too_small(
    small_checkpoint: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, arrays = small_checkpoint  # 768 KiB of tensors
    with _tmpfs(tmp_path / "shm", "512k") as shm:
        monkeypatch.setenv("MPLOADER_SHM_DIR", str(shm))
        for _ in range(2):
            with pytest.raises(SharedMemoryFullError, match="bytes free"):
                mploader.load_checkpoint(path, workers=2)
            assert os.listdir(shm) == []
        # workers=0 needs no shared memory.
        loaded = mploader.load_checkpoint(path, workers=0)
        np.testing.assert_array_equal(loaded["block5"], arrays["block5"])


def _fill(directory: Path) -> Path:
    """Write a file that takes every free block of ``directory``'s filesystem."""
    filler = directory / "filler"
    with open(filler, "wb") as file:
        chunk = bytes(64 * 1024)
        try:
            while True:
                file.write(chunk)
                file.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_shm_fills_during_load(big_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The free-space check passes, then another writer takes the space before the workers
    # allocate their pages of the segment: they get ENOSPC from posix_fallocate, not SIGBUS.
    pids = _warm_pool(big_checkpoint)
    with _tmpfs(tmp_path / "shm", f"{BIG_ENTRIES * BIG_ENTRY_BYTES // MIB + 64}m") as shm:
        monkeypatch.setenv("MPLOADER_SHM_DIR", str(shm))
        with _stopped(pids):
            future = _stalled_load(big_checkpoint, str(shm))
            filler = _fill(shm)
        with pytest.raises(SharedMemoryFullError, match="ran out of space"):
            future.result(timeout=30)
        _join_load_threads()
        assert os.listdir(shm) == ["filler"]

        running = pool.current_pool()
        assert running is not None and running.pids() == pids  # no worker died of SIGBUS
        filler.unlink()
        _check_big(mploader.load_checkpoint(big_checkpoint, workers=2))
        assert _own_segments(str(shm)) == []


def test_concurrent_loads_overfill_shm(
    small_checkpoint: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each load fits alone, but four at once do not: every load either succeeds or raises
    # SharedMemoryFullError, whichever of the free-space check and the workers detects the shortage.
    path, arrays = small_checkpoint
    _warm_pool(path)
    with _tmpfs(tmp_path / "shm", "2m") as shm:
        monkeypatch.setenv("MPLOADER_SHM_DIR", str(shm))
        futures = [mploader.load_checkpoint_async(path, workers=2) for _ in range(4)]
        outcomes: list[Any] = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=60))
            except SharedMemoryFullError as error:
                outcomes.append(error)
        _join_load_threads()
        assert any(isinstance(outcome, SharedMemoryFullError) for outcome in outcomes)
        for outcome in outcomes:
            if isinstance(outcome, dict):
                np.testing.assert_array_equal(outcome["block3"], arrays["block3"])
        del outcomes
        running = pool.current_pool()
        assert running is not None and not running.is_broken()


# ----------------------------------------------------------------------------------------------
# The file changes while it is loaded
# ----------------------------------------------------------------------------------------------


def _other_content_same_size(path: Path, destination: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data), 4096):
        data[offset] ^= 0xFF
    destination.write_bytes(bytes(data))


@pytest.mark.parametrize("change", ["truncate", "replace", "rewrite in place"])
def test_file_changes_while_queued(
    big_checkpoint: Path, small_checkpoint: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, change: str
) -> None:
    path = tmp_path / "big.ckpt"
    if change == "replace":
        os.link(big_checkpoint, path)  # replacing the name leaves the shared file intact
    else:
        shutil.copyfile(big_checkpoint, path)
        os.utime(path, ns=(10**18, 10**18))  # so that a rewrite certainly changes the mtime
    pids = _warm_pool(path)
    with _stopped(pids):
        future = _stalled_load(path)
        if change == "truncate":
            os.truncate(path, path.stat().st_size // 2)
        elif change == "replace":
            os.replace(shutil.copyfile(small_checkpoint[0], tmp_path / "other.ckpt"), path)
        else:
            with open(path, "r+b") as file:
                file.seek(path.stat().st_size - 4096)
                file.write(bytes(4096))
    # The stopped workers' tasks check the file before they read it.
    with pytest.raises(CheckpointError, match="changed while it was being loaded") as caught:
        future.result(timeout=30)
    assert caught.value.path == str(path)
    _join_load_threads()
    assert _own_segments() == []


def test_file_truncated_while_copying(big_checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "big-copy.ckpt"
    shutil.copyfile(big_checkpoint, path)
    _warm_pool(path)
    future = mploader.load_checkpoint_async(path, workers=2)
    _wait_for_copying(future)
    os.truncate(path, path.stat().st_size // 3)
    try:
        loaded = future.result(timeout=30)
    except CheckpointError as error:
        assert error.path == str(path)
    else:
        # The load won the race: every byte came from before the truncation.
        _check_big(loaded)
        del loaded
    _join_load_threads()
    assert _own_segments() == []


def test_file_rewritten_in_place_in_process(
    small_checkpoint: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = small_checkpoint
    other = tmp_path / "other.ckpt"
    _other_content_same_size(path, other)
    os.utime(path, ns=(10**18, 10**18))
    real_preadv = os.preadv
    rewritten: list[bool] = []

    def rewrite_then_read(fd: int, buffers: list[Any], offset: int) -> int:
        # Another program rewrites the checkpoint in place just as the copy starts.
        if not rewritten:
            with open(path, "r+b") as file:
                file.write(other.read_bytes())
            rewritten.append(True)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(worker.os, "preadv", rewrite_then_read)
    with pytest.raises(CheckpointError, match="changed"):
        mploader.load_checkpoint(path, workers=0)


# ----------------------------------------------------------------------------------------------
# Concurrency
# ----------------------------------------------------------------------------------------------


def test_eight_threads_load_at_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    files = []
    for index in range(8):
        arrays = {f"t{index}.{i}": rng.standard_normal((64, 1024)).astype(np.float32) for i in range(4)}
        path = tmp_path / f"model{index}.ckpt"
        mploader.save_checkpoint(arrays, path, crc_check=index % 2 == 0)
        files.append((path, arrays))
    barrier = threading.Barrier(8)

    def load(index: int) -> dict[str, Any]:
        path, _ = files[index]
        barrier.wait(timeout=30)
        # Mix in-process loads, pool loads and futures, with and without CRC checks.
        if index % 4 == 3:
            return mploader.load_checkpoint_async(path, workers=2, crc_check=True).result(timeout=60)
        return mploader.load_checkpoint(path, workers=(0, 1, 2)[index % 3], crc_check=index % 2 == 0)

    with ThreadPoolExecutor(max_workers=8) as executor:
        results = list(executor.map(load, range(8)))
    for (_, arrays), loaded in zip(files, results):
        assert list(loaded) == list(arrays)
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded[name], array)


def test_eight_futures_share_the_pool(big_checkpoint: Path) -> None:
    _warm_pool(big_checkpoint)
    futures: list[Future[dict[str, Any]]] = [
        mploader.load_checkpoint_async(big_checkpoint, workers=2, specify_prefix=f"layer{i}.") for i in range(8)
    ]
    for i, future in enumerate(futures):
        loaded = future.result(timeout=120)
        assert list(loaded) == [f"layer{i}.weight"]
        assert np.count_nonzero(loaded[f"layer{i}.weight"] != i + 1) == 0
    _join_load_threads()


# ----------------------------------------------------------------------------------------------
# Processes that fork or use multiprocessing, run in a subprocess with a timeout
# ----------------------------------------------------------------------------------------------


def _run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        cwd=tmp_path,
    )


def _check_no_leftovers(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if psutil.pid_exists(pid)]
    leftover = [
        name for name in os.listdir(shm_directory()) if any(name.startswith(f"{SEGMENT_PREFIX}{pid}-") for pid in pids)
    ]
    assert leftover == []


def test_fork_after_load(small_checkpoint: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    path, _ = small_checkpoint
    result = _run_script(
        tmp_path,
        f"""
        import os, sys, threading
        import numpy as np
        import mploader
        from mploader import pool

        PATH = {str(path)!r}

        def check(params):
            assert params["block2"].shape == (128, 256), params["block2"].shape

        if __name__ == "__main__":
            check(mploader.load_checkpoint(PATH, workers=2))
            parent_workers = pool.current_pool().pids()
            # A load runs on another thread while the process forks.
            def load_repeatedly():
                for _ in range(20):
                    check(mploader.load_checkpoint(PATH, workers=2))

            busy = threading.Thread(target=load_repeatedly)
            busy.start()
            pid = os.fork()
            if pid == 0:
                check(mploader.load_checkpoint(PATH, workers=2))
                check(mploader.load_checkpoint(PATH, workers=0))
                check(mploader.load_checkpoint_async(PATH, workers=2).result(timeout=60))
                child_workers = pool.current_pool().pids()
                assert not set(child_workers) & set(parent_workers)
                print("child", os.getpid(), *child_workers, flush=True)
                sys.exit(0)
            busy.join()
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
            check(mploader.load_checkpoint(PATH, workers=2))
            assert pool.current_pool().pids() == parent_workers
            print("parent", os.getpid(), *parent_workers, flush=True)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr
    pids = [int(pid) for line in result.stdout.split("\n") if line for pid in line.split()[1:]]
    assert len(pids) == 6
    _check_no_leftovers(pids)


def test_multiprocessing_user(small_checkpoint: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    path, _ = small_checkpoint
    result = _run_script(
        tmp_path,
        f"""
        import multiprocessing, os, sys
        import mploader
        from mploader import pool

        PATH = {str(path)!r}

        def load_in_process(_):
            return float(mploader.load_checkpoint(PATH, workers=0)["block1"].sum())

        def load_with_pool(queue):
            params = mploader.load_checkpoint(PATH, workers=2)
            queue.put((float(params["block1"].sum()), os.getpid(), pool.current_pool().pids()))

        def pool_in_daemon(_):
            try:
                mploader.load_checkpoint(PATH, workers=2)
            except RuntimeError as error:
                return str(error)
            return "loaded"

        if __name__ == "__main__":
            expected = float(mploader.load_checkpoint(PATH, workers=2)["block1"].sum())
            seen = [os.getpid(), *pool.current_pool().pids()]
            for method in ("fork", "spawn", "forkserver"):
                context = multiprocessing.get_context(method)
                with context.Pool(2) as workers:
                    assert workers.map(load_in_process, range(4)) == [expected] * 4
                    messages = workers.map(pool_in_daemon, range(2))
                    assert all("daemonic" in message for message in messages), messages
                queue = context.Queue()
                child = context.Process(target=load_with_pool, args=(queue,))
                child.start()
                total, child_pid, child_workers = queue.get(timeout=60)
                child.join(timeout=60)
                assert child.exitcode == 0
                assert total == expected
                seen += [child_pid, *child_workers]
            assert float(mploader.load_checkpoint(PATH, workers=2)["block1"].sum()) == expected
            print(*seen, flush=True)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 3 + 3 * 3
    _check_no_leftovers(pids)


def test_daemonic_process_default_workers(tmp_path: Path) -> None:
    path = tmp_path / "large.ckpt"
    mploader.save_checkpoint({"w": np.ones(65 * MIB, np.uint8)}, path)
    result = _run_script(
        tmp_path,
        f"""
        import multiprocessing
        import mploader

        def load(_):
            return int(mploader.load_checkpoint({str(path)!r})["w"][-1])

        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(1) as workers:
                print(workers.map(load, [0]))
        """,
    )
    assert result.returncode == 0, result.stderr
