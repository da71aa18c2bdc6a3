"""The coordinator: index -> plan -> dispatch -> assemble, and the Future of each load.

One load runs on one thread, the caller's for :func:`load` and a new one for :func:`load_async`.
It indexes the file without reading tensor bytes, keeps the selected entries, lays them out in one
buffer, and fills the buffer either in-process or through the worker pool and a shared-memory
segment. The arrays it returns are views into that buffer; nothing is copied a second time.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import pool as pool_module
from .arena import Segment
from .errors import CheckpointError, SharedMemoryFullError, WorkerCrashedError
from .formats.ckpt import index_ckpt
from .formats.index import Entry
from .plan import Layout, layout, split_balanced, task_count_for
from .worker import CopyTask, copy_pieces, file_identity, run_copy_task

__all__ = ["INPROCESS_MAX_BYTES", "LoadRequest", "LoadResult", "load", "load_async"]

logger = logging.getLogger("mploader")

# With workers=None, a load of fewer bytes than this runs in-process: reading 64 MiB from the page
# cache takes tens of milliseconds, less than starting worker processes (a few hundred ms).
INPROCESS_MAX_BYTES = 64 * 1024 * 1024

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class LoadRequest:
    """A checked load request. ``select`` is the combined name filter, or None to keep all."""

    path: str
    select: Callable[[str], bool] | None = None
    workers: int | None = None
    crc_check: bool = False
    progress: ProgressCallback | None = None
    after_load: Callable[[dict[str, Any]], None] | None = None


@dataclass
class LoadResult:
    """The parameter dict and facts about how it was loaded."""

    parameters: dict[str, Any]
    entry_count: int
    bytes_loaded: int
    worker_count: int
    worker_pids: list[int]


class _Cancelled(Exception):
    pass


def load(request: LoadRequest, cancel: Future[None] | None = None) -> LoadResult:
    """Run one load on the calling thread.

    Parameters
    ----------
    request : LoadRequest
    cancel : Future, optional
        Completing it stops the load; the remaining tasks are cancelled and the memory freed.
    """
    path = request.path
    with open(path, "rb", buffering=0) as file:
        identity = file_identity(file.fileno())
        index = index_ckpt(path, file, identity.size_bytes)
    entries = index.entries
    if request.select is not None:
        entries = [entry for entry in entries if request.select(entry.name)]
    if not entries:
        raise ValueError(
            f"no entry of {path} is left after filtering by filter_prefix, specify_prefix or "
            f"choice_func ({len(index.entries)} entries before filtering); check the filters"
        )

    plan = layout(entries)
    worker_count = _resolve_worker_count(request.workers, plan.total_bytes)
    if worker_count == 0:
        buffer = np.empty(plan.total_bytes, dtype=np.uint8)
        with open(path, "rb", buffering=0) as file:
            if file_identity(file.fileno()) != identity:
                raise CheckpointError(path, "the file changed between indexing and reading; load it again")
            for pieces in plan.pieces_by_path.values():
                copy_pieces(file.fileno(), path, pieces, buffer.data, want_crc=False)
        if request.progress is not None:
            request.progress(plan.total_bytes)
        parameters = assemble(entries, plan, buffer)
        pids: list[int] = []
    else:
        parameters, pids = _load_with_pool(request, identity, entries, plan, worker_count, cancel)

    if request.after_load is not None:
        request.after_load(parameters)
    return LoadResult(parameters, len(entries), plan.total_bytes, worker_count, pids)


def _resolve_worker_count(requested: int | None, total_bytes: int) -> int:
    if requested is not None:
        return requested
    if total_bytes < INPROCESS_MAX_BYTES:
        return 0
    return pool_module.default_worker_count()


def _load_with_pool(
    request: LoadRequest,
    identity: Any,
    entries: Sequence[Entry],
    plan: Layout,
    worker_count: int,
    cancel: Future[None] | None,
) -> tuple[dict[str, Any], list[int]]:
    pool = pool_module.get_pool(worker_count)
    segment = Segment(plan.total_bytes)
    try:
        futures: list[Future[Any]] = []
        try:
            for path, pieces in plan.pieces_by_path.items():
                groups = split_balanced(pieces, task_count_for(plan.total_bytes, worker_count))
                for group in groups:
                    task = CopyTask(segment.path, segment.size_bytes, path, identity, group, False)
                    futures.append(pool.submit(run_copy_task, task))
        except BrokenProcessPool as exc:
            for future in futures:
                future.cancel()
            pool_module.discard(pool)
            raise _crashed(request.path) from exc
        pids = _wait_for_tasks(request, futures, cancel, pool)
        segment.unlink()
        assert segment.mapping is not None
        parameters = assemble(entries, plan, segment.mapping)
    finally:
        # On success the arrays keep the mapping alive; on failure this frees it.
        segment.close()
    return parameters, pids


def _crashed(path: str) -> WorkerCrashedError:
    return WorkerCrashedError(
        f"a worker process died while loading {path}; the pool will be restarted on the next load. "
        "If this repeats, check the system log for the out-of-memory killer"
    )


def _wait_for_tasks(
    request: LoadRequest,
    futures: list[Future[Any]],
    cancel: Future[None] | None,
    pool: pool_module.WorkerPool,
) -> list[int]:
    pending: set[Future[Any]] = set(futures)
    pids: set[int] = set()
    try:
        while pending:
            waiting = pending | {cancel} if cancel is not None else pending
            done, _ = wait(waiting, return_when=FIRST_COMPLETED)
            if cancel is not None and cancel in done:
                raise _Cancelled()
            for future in done:
                pending.discard(future)
                result = future.result()
                pids.add(result.pid)
                if request.progress is not None:
                    request.progress(result.bytes_read)
    except BrokenProcessPool as exc:
        pool_module.discard(pool)
        raise _crashed(request.path) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise SharedMemoryFullError(
                f"the shared-memory filesystem ran out of space while loading {request.path}; "
                "free space in it, set MPLOADER_SHM_DIR to a larger tmpfs, or pass workers=0"
            ) from exc
        raise
    finally:
        for future in pending:
            future.cancel()
    return sorted(pids)


def assemble(entries: Sequence[Entry], plan: Layout, buffer: Any) -> dict[str, Any]:
    """Build the parameter dict as views into ``buffer``, which holds the laid-out bytes.

    Tensors become numpy arrays that share ``buffer``'s memory, strings become ``str``, and map
    tensors become ``[keys, values, status]``.
    """
    base = np.frombuffer(buffer, dtype=np.uint8)
    parameters: dict[str, Any] = {}
    for entry, offsets in zip(entries, plan.part_offsets):
        arrays = []
        for part, offset in zip(entry.parts, offsets):
            raw = base[offset : offset + part.nbytes]
            if entry.kind == "str":
                parameters[entry.name] = _decode_string(entry, raw)
                break
            arrays.append(raw.view(part.dtype).reshape(part.shape))
        if entry.kind == "tensor":
            parameters[entry.name] = arrays[0]
        elif entry.kind == "map":
            parameters[entry.name] = arrays
    return parameters


def _decode_string(entry: Entry, raw: np.ndarray) -> str:
    try:
        # numpy's U type, which MindSpore writes, drops trailing NUL code points on reading.
        return raw.tobytes().decode("utf-32-le").rstrip("\x00")
    except UnicodeDecodeError as exc:
        offset = entry.parts[0].ranges[0][0] if entry.parts[0].ranges else None
        raise CheckpointError(
            entry.path, f"string entry {entry.name!r} is not valid UTF-32: {exc.reason}", offset
        ) from exc


def load_async(request: LoadRequest) -> Future[dict[str, Any]]:
    """Start a load on a new thread and return its Future.

    The future stays pending while the load runs, so ``cancel()`` succeeds until the result is
    set; a cancelled load stops dispatching work and frees its memory.
    """
    future: Future[dict[str, Any]] = Future()
    cancel: Future[None] = Future()

    def on_done(done: Future[dict[str, Any]]) -> None:
        if done.cancelled() and not cancel.done():
            cancel.set_result(None)

    future.add_done_callback(on_done)

    def run() -> None:
        try:
            result = load(request, cancel)
        except _Cancelled:
            logger.debug("load of %s was cancelled", request.path)
            return
        except BaseException as exc:  # noqa: BLE001 - every failure belongs to the future
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)
            return
        if future.set_running_or_notify_cancel():
            future.set_result(result.parameters)

    threading.Thread(target=run, name=f"mploader-load-{os.path.basename(request.path)}").start()
    return future

