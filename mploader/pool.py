"""The persistent pool of worker processes that every load shares.

Data flow
---------
::

    coordinator ──CopyTask tuples──▶ call queue ──▶ worker processes
        │                                             │ preadv / decrypt into
        │                                             ▼
        │                                  shared-memory segment (one per load)
        ◀──TaskResult (pid, crc, byte count)──────────┘
        │
        └─▶ arrays over the segment ─▶ the load's Future

The pool is a :class:`concurrent.futures.ProcessPoolExecutor` started on first use and reused by
later loads. Its processes are started by the ``forkserver`` method on POSIX (``spawn`` elsewhere):
forking a process that already runs threads, as every caller of ``load_checkpoint_async`` does, can
copy a lock held by another thread and deadlock the child. Workers ignore SIGINT; Ctrl-C reaches the
caller, whose load is then cancelled.

Cancel
    The coordinator cancels the load's tasks that have not started, and unlinks and unmaps the
    segment without waiting for the running ones. Those finish in their workers (each task is at
    most 64 MiB), or stop at once if they had not opened the segment yet, and the segment's pages
    are freed when the last worker unmaps them.

Dead worker
    If a worker dies (SIGKILL, out-of-memory killer, crash), the executor fails every task in flight
    with ``BrokenProcessPool``. Each affected load raises :class:`~mploader.errors.WorkerCrashedError`
    through its future and frees its segment. The broken pool is discarded and its other workers are
    killed, and the next load starts a new one.

Exit
    The pool stops when the interpreter exits, and also in processes started by multiprocessing,
    which join their children before exiting without running atexit handlers. A forked child
    drops its references to the parent's pool and forkserver, and starts its own on its first load.

Workers do not import the caller's ``__main__`` module, as multiprocessing children normally do:
tasks refer only to functions in :mod:`mploader.worker`. So a worker starts in tens of
milliseconds even when the caller's script imports MindSpore, and a script without an
``if __name__ == "__main__":`` guard still works.

The default size is the number of CPUs this process may run on (its affinity mask), or
``MPLOADER_WORKERS`` when set.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.util
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import spawn as multiprocessing_spawn
from typing import Any

from . import worker

__all__ = ["WorkerPool", "default_worker_count", "get_pool", "shutdown"]

logger = logging.getLogger("mploader")

WORKERS_ENV = "MPLOADER_WORKERS"


def default_worker_count() -> int:
    """Return the pool size: ``MPLOADER_WORKERS`` if set, else the CPUs this process may use."""
    configured = os.environ.get(WORKERS_ENV)
    if configured:
        try:
            count = int(configured)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV}={configured!r} is not an integer") from None
        if count < 1:
            raise ValueError(f"{WORKERS_ENV}={configured!r} must be at least 1")
        return count
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# multiprocessing sends every child the instructions to re-import the parent's __main__ module,
# built by spawn.get_preparation_data(). While this thread starts one of our workers, they are dropped.
_starting_worker = threading.local()
_original_preparation_data = multiprocessing_spawn.get_preparation_data


def _preparation_data(name: str) -> dict[str, Any]:
    data = _original_preparation_data(name)
    if getattr(_starting_worker, "active", False):
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
    return data


try:
    from multiprocessing import popen_forkserver
except ImportError:  # platforms without fork, such as Windows
    popen_forkserver = None  # type: ignore[assignment]


if popen_forkserver is not None:

    class _WorkerPopen(popen_forkserver.Popen):
        def _launch(self, process_obj: Any) -> None:
            _starting_worker.active = True
            try:
                super()._launch(process_obj)  # type: ignore[misc]
            finally:
                _starting_worker.active = False

    # The process object is pickled to the fork server, so these classes live at module level.
    class _WorkerProcess(multiprocessing.context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> Any:
            return _WorkerPopen(process_obj)

    class _WorkerContext(multiprocessing.context.ForkServerContext):
        Process = _WorkerProcess


_context: multiprocessing.context.BaseContext | None = None


def _worker_context() -> multiprocessing.context.BaseContext:
    """Return the multiprocessing context that starts workers without the caller's __main__."""
    global _context
    if _context is None:
        if popen_forkserver is None or sys.platform == "darwin":
            _context = multiprocessing.get_context("spawn")
        else:
            multiprocessing_spawn.get_preparation_data = _preparation_data
            _context = _WorkerContext()
    return _context


class WorkerPool:
    """A process pool of ``worker_count`` workers. Closing it is safe twice."""

    def __init__(self, worker_count: int) -> None:
        self.worker_count = worker_count
        self.broken = False
        context = _worker_context()
        self._executor = ProcessPoolExecutor(
            max_workers=worker_count, mp_context=context, initializer=worker.initialize_worker
        )
        logger.debug(
            "started worker pool of %d processes (%s)", worker_count, context.get_start_method()
        )

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._executor.submit(function, *args)

    def is_broken(self) -> bool:
        """Return True once a worker has died; the executor then accepts no more work."""
        # ProcessPoolExecutor sets _broken when it notices a dead worker, even between loads.
        return self.broken or bool(getattr(self._executor, "_broken", False))

    def pids(self) -> list[int]:
        """Return the process ids of the workers started so far."""
        processes = getattr(self._executor, "_processes", None) or {}
        return sorted(processes)

    def close(self, wait: bool = True) -> None:
        # shutdown() clears the executor's table of worker processes, so copy it first.
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=wait, cancel_futures=True)
        if self.is_broken():
            _kill_workers(processes)
        logger.debug("stopped worker pool of %d processes", self.worker_count)


def _kill_workers(processes: list[Any]) -> None:
    """Kill and reap the workers that outlive a broken pool.

    The executor normally terminates them, but in CPython 3.10 and 3.11 its management thread
    dies with InvalidStateError when a task's future was already cancelled, and the other
    workers then run on until this process exits.
    """
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=5)


_lock = threading.Lock()
_pool: WorkerPool | None = None


def get_pool(worker_count: int) -> WorkerPool:
    """Return the shared pool, starting it, or a larger one, when needed.

    A request for fewer workers than the pool has reuses it (the caller then submits fewer tasks);
    a request for more replaces it, and a broken pool is always replaced.

    Raises
    ------
    RuntimeError
        If a pool must be started and this process is daemonic, as ``multiprocessing.Pool``
        workers are.
    """
    global _pool
    with _lock:
        old = _pool
        if old is not None and not old.is_broken() and old.worker_count >= worker_count:
            return old
        if multiprocessing.current_process().daemon:
            # ProcessPoolExecutor would fail later, at the first submit, with a bare AssertionError.
            raise RuntimeError(
                "cannot start worker processes from a daemonic process, such as a multiprocessing.Pool "
                "worker, because daemonic processes may not have children; pass workers=0 to load in-process"
            )
        broken = old is not None and old.is_broken()
        _pool = WorkerPool(worker_count)
        _register_exit_hook()
    if old is not None:
        old.close(wait=not broken)
    return _pool


_exit_hook_pid: int | None = None


def _register_exit_hook() -> None:
    """Stop the pool before multiprocessing waits for this process's children at exit.

    A process started by multiprocessing runs its finalizers and then joins every child process
    before it exits, without running atexit handlers. Workers of a running pool never exit on
    their own, so without this hook such a process would hang at exit once it had loaded with
    the pool. The hook is registered once in each process that starts a pool.
    """
    global _exit_hook_pid
    if _exit_hook_pid != os.getpid():
        multiprocessing.util.Finalize(None, shutdown, exitpriority=100)
        _exit_hook_pid = os.getpid()


def discard(pool: WorkerPool) -> None:
    """Mark ``pool`` broken so that the next load starts a new one, and shut it down."""
    global _pool
    with _lock:
        pool.broken = True
        if _pool is pool:
            _pool = None
    pool.close(wait=False)


def current_pool() -> WorkerPool | None:
    """Return the running pool, if any, without starting one."""
    return _pool


def shutdown() -> None:
    """Stop the shared pool and wait for its workers to exit. A later load starts a new pool."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close(wait=True)


def _forget_pool_in_child() -> None:
    # A forked child shares no processes with the pool it inherited a reference to.
    global _pool, _lock
    inherited, _pool = _pool, None
    _lock = threading.Lock()
    if inherited is not None:
        _disown_workers(inherited)
    _forget_forkserver()


def _disown_workers(inherited: WorkerPool) -> None:
    """Drop the parent's workers from this child's list of multiprocessing children.

    Otherwise multiprocessing's exit handler in the child tries to join them and fails with
    "can only join a child process".
    """
    children = getattr(multiprocessing.process, "_children", None)
    processes = getattr(inherited._executor, "_processes", None) or {}
    if children is not None:
        for process in list(processes.values()):
            children.discard(process)


def _forget_forkserver() -> None:
    """Make a forked child start its own forkserver instead of using its parent's.

    multiprocessing checks that the server is alive with ``waitpid``, which raises
    ChildProcessError in a child of the process that started it, so the child's first load
    would fail. The attributes reset here are those of CPython 3.10 to 3.13.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    alive_fd = server._forkserver_alive_fd
    server._forkserver_pid = None
    server._forkserver_address = None
    server._forkserver_alive_fd = None
    server._lock = threading.Lock()
    if alive_fd is not None:
        # The parent's server exits when the last copy of this pipe end closes; this child
        # must not keep it running.
        try:
            os.close(alive_fd)
        except OSError:
            pass


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)
