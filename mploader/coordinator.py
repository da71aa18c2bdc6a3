"""The coordinator: index -> plan -> dispatch -> assemble, and the Future of each load.

One load runs on one thread, the caller's for :func:`load` and a new one for :func:`load_async`.
It indexes the file without reading tensor bytes, keeps the selected entries, lays them out in one
buffer, and fills the buffer either in-process or through the worker pool and a shared-memory
segment. The arrays it returns are views into that buffer; nothing is copied a second time.
"""

from __future__ import annotations

import errno
import logging
import mmap
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import pool as pool_module
from .arena import Segment
from .errors import CheckpointError, CrcMismatchError, DecryptionError, SharedMemoryFullError, WorkerCrashedError
from .formats import crc as crc_format
from .formats import crypto
from .formats import safetensors as safetensors_format
from .formats.ckpt import index_ckpt
from .formats.index import Entry, check_weight_map, merge_shard_entries
from .plan import Layout, Piece, cover_span, layout, split_balanced, task_count_for
from .worker import (
    CopyTask,
    DecryptTask,
    FileIdentity,
    TaskResult,
    copy_pieces,
    file_identity,
    run_copy_task,
    run_decrypt_task,
)

__all__ = ["INPROCESS_MAX_BYTES", "LoadRequest", "LoadResult", "load", "load_async"]

logger = logging.getLogger("mploader")

# With workers=None, a load of fewer bytes than this runs in-process. Starting the pool and a fresh
# segment costs a fixed 0.1 to 0.2 s (measured on a 2-core VM), about the time one thread needs to
# read this much from the page cache into private memory.
INPROCESS_MAX_BYTES = 256 * 1024 * 1024

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class LoadRequest:
    """A checked load request. ``select`` is the combined name filter, or None to keep all."""

    path: str
    select: Callable[[str], bool] | None = None
    workers: int | None = None
    crc_check: bool = False
    dec_key: bytes | None = field(default=None, repr=False)
    dec_mode: str = "AES-GCM"
    file_format: str = "ckpt"
    shards: tuple[tuple[str, str], ...] = ()  # (path, format) of each file of a sharded checkpoint
    weight_map: dict[str, str] | None = None  # entry name -> file, from a sharded checkpoint's index JSON
    progress: ProgressCallback | None = None
    after_load: Callable[[dict[str, Any]], None] | None = None

    def shard_files(self) -> tuple[tuple[str, str], ...]:
        """Return the (path, format) of every file to load."""
        return self.shards or ((self.path, self.file_format),)


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


@dataclass
class _Shard:
    """One indexed file of a load: its identity, entries, and what its CRC must be."""

    path: str
    identity: FileIdentity
    entries: list[Entry]
    data_end: int
    trailer_crc: int | None = None  # .ckpt trailer value, set only when crc_check is requested
    safetensors_crc: int | None = None  # MindSpore's crc_num metadata, likewise


def load(request: LoadRequest, cancel: Future[None] | None = None) -> LoadResult:
    """Run one load on the calling thread.

    Parameters
    ----------
    request : LoadRequest
    cancel : Future, optional
        Completing it stops the load; the remaining tasks are cancelled and the memory freed.
    """
    if request.dec_key is not None:
        with open(request.path, "rb", buffering=0) as file:
            return _load_encrypted(request, file, file_identity(file.fileno()), cancel)

    shards = [_index_shard(request, path, file_format) for path, file_format in request.shard_files()]
    merged = merge_shard_entries((shard.path, shard.entries) for shard in shards)
    if request.weight_map is not None:
        check_weight_map(request.path, request.weight_map, merged)
    entries = _select(request, merged)
    plan = layout(entries)
    pieces_by_path: dict[str, list[Piece]] = {}
    for shard in shards:
        pieces = plan.pieces_by_path.get(shard.path, [])
        if shard.trailer_crc is not None:
            # Every byte before the trailer feeds the CRC, so the gaps are read too, but not stored.
            pieces = cover_span(pieces, shard.data_end)
        if pieces:
            pieces_by_path[shard.path] = pieces

    worker_count = _resolve_worker_count(request.workers, plan.total_bytes)
    if worker_count == 0:
        buffer = _anonymous_buffer(plan.total_bytes)
        crcs = {}
        for shard in shards:
            with open(shard.path, "rb", buffering=0) as file:
                if file_identity(file.fileno()) != shard.identity:
                    raise CheckpointError(shard.path, "the file changed between indexing and reading; load it again")
                pieces = pieces_by_path.get(shard.path, [])
                crcs[shard.path] = copy_pieces(
                    file.fileno(), shard.path, pieces, memoryview(buffer), want_crc=shard.trailer_crc is not None
                )
                if file_identity(file.fileno()) != shard.identity:
                    raise CheckpointError(shard.path, "the file changed while it was being read; load it again")
        if request.progress is not None:
            request.progress(plan.total_bytes)
        for shard in shards:
            _check_crc(shard.path, shard.trailer_crc, crcs[shard.path])
        parameters = assemble(entries, plan, buffer)
        pids: list[int] = []
    else:
        parameters, pids = _load_with_pool(request, shards, entries, plan, pieces_by_path, worker_count, cancel)

    for shard in shards:
        if shard.safetensors_crc is not None:
            _check_safetensors_crc(shard, parameters)
    if request.after_load is not None:
        request.after_load(parameters)
    return LoadResult(parameters, len(entries), plan.total_bytes, worker_count, pids)


def _index_shard(request: LoadRequest, path: str, file_format: str) -> _Shard:
    with open(path, "rb", buffering=0) as file:
        identity = file_identity(file.fileno())
        if file_format == "safetensors":
            return _index_safetensors(request, path, file, identity)
        index = index_ckpt(path, file, identity.size_bytes)
    if request.crc_check and index.trailer_crc is None:
        logger.warning("%s has no CRC trailer, so crc_check=True cannot verify it", path)
    trailer_crc = index.trailer_crc if request.crc_check else None
    return _Shard(path, identity, index.entries, index.data_end, trailer_crc=trailer_crc)


def _index_safetensors(request: LoadRequest, path: str, file: Any, identity: FileIdentity) -> _Shard:
    """Index a ``.safetensors`` file, with MindSpore's Int4 markers and stored CRC."""
    index = safetensors_format.index_safetensors(path, file, identity.size_bytes)
    int4 = safetensors_format.int4_names(index.metadata)
    entries = [safetensors_format.as_int4_entry(entry) if entry.name in int4 else entry for entry in index.entries]
    # MindSpore 2.10 returns safetensors entries sorted by name; the planner still reads in file order.
    entries.sort(key=lambda entry: entry.name)
    stored = None
    if request.crc_check:
        stored = safetensors_format.stored_crc(index.metadata, path)
        if stored is None:
            logger.warning("%s has no crc_num metadata, so crc_check=True cannot verify it", path)
    return _Shard(path, identity, entries, identity.size_bytes, safetensors_crc=stored)


def _check_safetensors_crc(shard: _Shard, parameters: dict[str, Any]) -> None:
    """Verify MindSpore's ``crc_num``: a CRC32 chained over every name and its bytes, in name order.

    Loaded tensors are hashed where they lie; tensors left out by a filter are read for it.
    """
    accumulator = safetensors_format.MindsporeCrc(shard.path)
    with open(shard.path, "rb", buffering=0) as file:
        for entry in shard.entries:
            array = parameters.get(entry.name)
            if array is None:
                # Left out by a filter: read it, one tensor at a time, only for the CRC.
                part = entry.parts[0]
                start, length = part.ranges[0] if part.ranges else (0, 0)
                raw = np.frombuffer(os.pread(file.fileno(), length, start), dtype=np.uint8)
                array = raw.view(part.dtype).reshape(part.shape)
            accumulator.add(entry.name, array)
    computed = accumulator.value()
    if computed != shard.safetensors_crc:
        raise CrcMismatchError(
            shard.path,
            f"CRC32 mismatch: crc_num stores {shard.safetensors_crc}, the tensors hash to {computed}; the file "
            "is corrupt or was modified after it was written",
        )


def _select(request: LoadRequest, entries: list[Entry]) -> list[Entry]:
    selected = entries
    if request.select is not None:
        selected = [entry for entry in entries if request.select(entry.name)]
    if not selected:
        raise ValueError(
            f"no entry of {request.path} is left after filtering by filter_prefix, specify_prefix or "
            f"choice_func ({len(entries)} entries before filtering); check the filters"
        )
    return selected


def _check_crc(path: str, stored: int | None, computed: int | None) -> None:
    if stored is not None and computed != stored:
        raise CrcMismatchError(
            path,
            f"CRC32 mismatch: the trailer stores {stored}, the contents hash to {computed}; the file "
            "is corrupt or was modified after it was written",
        )


def _anonymous_buffer(size_bytes: int) -> mmap.mmap:
    """Return fresh private memory for an in-process load.

    It is an anonymous mapping, not ``numpy.empty``, because numpy requests transparent huge pages
    for large arrays. On a VM that returns free memory to its host, faulting those in took 1.6 to
    2.4 s for 1 GiB against 0.77 s with 4 KiB pages (measured on a 2-core VM).
    """
    return mmap.mmap(-1, max(1, size_bytes))


def _resolve_worker_count(requested: int | None, total_bytes: int) -> int:
    if requested is not None:
        return requested
    if multiprocessing.current_process().daemon:
        # A daemonic process, such as a multiprocessing.Pool worker, may not start children.
        return 0
    if total_bytes < INPROCESS_MAX_BYTES:
        return 0
    return pool_module.default_worker_count()


def _load_with_pool(
    request: LoadRequest,
    shards: Sequence[_Shard],
    entries: Sequence[Entry],
    plan: Layout,
    pieces_by_path: dict[str, list[Piece]],
    worker_count: int,
    cancel: Future[None] | None,
) -> tuple[dict[str, Any], list[int]]:
    pool = pool_module.get_pool(worker_count)
    segment = Segment(plan.total_bytes)
    try:
        # All shards are one job: each file gets a share of the tasks in proportion to its bytes.
        read_bytes = sum(piece.length_bytes for pieces in pieces_by_path.values() for piece in pieces)
        task_count = task_count_for(read_bytes, worker_count)
        tasks: list[CopyTask] = []
        for shard in shards:
            pieces = pieces_by_path.get(shard.path)
            if not pieces:
                continue
            share_bytes = sum(piece.length_bytes for piece in pieces)
            share_count = max(1, round(task_count * share_bytes / read_bytes)) if read_bytes else 1
            want_crc = shard.trailer_crc is not None
            for group in split_balanced(pieces, share_count):
                tasks.append(CopyTask(segment.path, segment.size_bytes, shard.path, shard.identity, group, want_crc))
        results = _run_tasks(request, pool, run_copy_task, tasks, cancel, help_in_process=True)
        segment.unlink()

        for shard in shards:
            if shard.trailer_crc is None:
                continue
            pairs = [
                (result.crc or 0, sum(piece[1] for piece in task.pieces))
                for task, result in zip(tasks, results)
                if task.file_path == shard.path
            ]
            _check_crc(shard.path, shard.trailer_crc, crc_format.combine_crcs(pairs))
        assert segment.mapping is not None
        parameters = assemble(entries, plan, segment.mapping)
    finally:
        # On success the arrays keep the mapping alive; on failure this frees it.
        segment.close()
    return parameters, sorted({result.pid for result in results})


def _run_tasks(
    request: LoadRequest,
    pool: pool_module.WorkerPool,
    function: Callable[[Any], TaskResult],
    tasks: Sequence[Any],
    cancel: Future[None] | None,
    *,
    help_in_process: bool = False,
) -> list[TaskResult]:
    """Submit ``tasks`` to the pool and return their results in task order.

    With ``help_in_process``, this thread also runs tasks, taking them from the tail of the queue
    while no worker has started them. That keeps the load going while new workers start. It is
    meant for copy tasks, whose ``preadv`` calls release the GIL; decryption holds the GIL and would
    stall the caller's other threads.
    """
    futures: list[Future[TaskResult]] = []
    try:
        for task in tasks:
            futures.append(pool.submit(function, task))
    except BrokenProcessPool as exc:
        # A broken executor fails its own futures; cancelling them as well would crash its thread.
        pool_module.discard(pool)
        raise _crashed(request.path) from exc

    def cancel_pending(_: Future[None]) -> None:
        if not pool.is_broken():
            for future in futures:
                future.cancel()

    if cancel is not None:
        # A cancelled load stops handing out tasks at once, not only when this thread next looks.
        cancel.add_done_callback(cancel_pending)
    results: list[TaskResult | None] = [None] * len(tasks)
    try:
        if help_in_process:
            for index in reversed(range(len(futures))):
                if cancel is not None and cancel.done():
                    raise _Cancelled()
                # cancel() succeeds only for a task that no worker has taken yet.
                if not futures[index].cancel():
                    break
                try:
                    results[index] = function(tasks[index])
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise _shm_full(request.path) from exc
                    raise
                if request.progress is not None:
                    request.progress(results[index].bytes_read)  # type: ignore[union-attr]
        remaining = [future for future, result in zip(futures, results) if result is None]
        _wait_for_tasks(request, remaining, cancel, pool)
    finally:
        if not pool.is_broken():
            for future in futures:
                future.cancel()
    return [result if result is not None else future.result() for future, result in zip(futures, results)]


def _shm_full(path: str) -> SharedMemoryFullError:
    return SharedMemoryFullError(
        f"the shared-memory filesystem ran out of space while loading {path}; free space in it, set "
        "MPLOADER_SHM_DIR to a larger tmpfs, or pass workers=0"
    )


def _crashed(path: str) -> WorkerCrashedError:
    return WorkerCrashedError(
        f"a worker process died while loading {path}; the pool will be restarted on the next load. "
        "If this repeats, check the system log for the out-of-memory killer"
    )


def _wait_for_tasks(
    request: LoadRequest,
    futures: list[Future[TaskResult]],
    cancel: Future[None] | None,
    pool: pool_module.WorkerPool,
) -> None:
    pending: set[Future[Any]] = set(futures)
    try:
        while pending:
            waiting = pending | {cancel} if cancel is not None else pending
            done, _ = wait(waiting, return_when=FIRST_COMPLETED)
            if cancel is not None and cancel in done:
                raise _Cancelled()
            for future in done:
                pending.discard(future)
                result = future.result()
                if request.progress is not None:
                    request.progress(result.bytes_read)
    except BrokenProcessPool as exc:
        pool_module.discard(pool)
        raise _crashed(request.path) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _shm_full(request.path) from exc
        raise
    finally:
        if not pool.is_broken():
            for future in pending:
                future.cancel()


def _load_encrypted(
    request: LoadRequest, file: Any, identity: FileIdentity, cancel: Future[None] | None
) -> LoadResult:
    """Decrypt every frame into a staging buffer, index the plaintext, and view tensors in place."""
    path = request.path
    assert request.dec_key is not None
    key = crypto.check_mode_and_key(path, request.dec_key, request.dec_mode)
    table = crypto.walk_frames(path, file, identity.size_bytes, request.dec_mode, key)
    if table.frames and table.frames[0].plain_len_bytes:
        # With a wrong key the first plaintext byte is random; catch most wrong keys before
        # decrypting the whole file.
        first = crypto.decrypt_prefix(path, file, request.dec_mode, key, table.frames[0], 1)
        if first[:1] != b"\x0a":
            raise DecryptionError(
                path,
                f"the key does not decrypt this file with {request.dec_mode}: the plaintext does not "
                "start like a checkpoint; check dec_key and dec_mode",
                table.frames[0].header_offset,
            )
    if request.crc_check and table.trailer_crc is None:
        logger.warning("%s has no CRC trailer, so crc_check=True cannot verify it", path)
    # MindSpore 2.10 writes 0 in the trailer of an encrypted file instead of a CRC.
    want_crc = request.crc_check and bool(table.trailer_crc)

    plain_bytes = table.plain_size_bytes
    worker_count = _resolve_worker_count(request.workers, plain_bytes)
    frames = table.frames
    segment: Segment | None = None
    try:
        if worker_count == 0:
            staging: Any = _anonymous_buffer(plain_bytes)
            crcs = []
            for frame in frames:
                out = memoryview(staging)[frame.plain_offset : frame.plain_offset + frame.plain_len_bytes]
                crcs.append(
                    crypto.decrypt_frame_into(
                        file.fileno(), request.dec_mode, key, frame, out, path=path, want_crc=want_crc
                    )
                )
                if request.progress is not None:
                    request.progress(frame.cipher_len_bytes)
            pids: list[int] = []
        else:
            pool = pool_module.get_pool(worker_count)
            segment = Segment(plain_bytes)
            tasks = [
                DecryptTask(segment.path, segment.size_bytes, path, identity, request.dec_mode, key, frame, want_crc)
                for frame in frames
            ]
            results = _run_tasks(request, pool, run_decrypt_task, tasks, cancel)
            segment.unlink()
            staging = segment.mapping
            crcs = [result.crc for result in results]
            pids = sorted({result.pid for result in results})

        plaintext = memoryview(staging)[:plain_bytes]
        try:
            index = index_ckpt(path, plaintext, plain_bytes)
        except CheckpointError as exc:
            raise _garbled_plaintext(path, exc) from exc
        finally:
            plaintext.release()
        if want_crc:
            crc = crc_format.combine_crcs(zip((value or 0 for value in crcs), (f.plain_len_bytes for f in frames)))
            _check_crc(path, table.trailer_crc, crc)
        entries = _select(request, index.entries)
        try:
            parameters = _assemble_in_place(entries, staging, plain_bytes)
        except CheckpointError as exc:
            raise _garbled_plaintext(path, exc) from exc
    finally:
        if segment is not None:
            segment.close()

    if request.after_load is not None:
        request.after_load(parameters)
    loaded_bytes = sum(entry.nbytes for entry in entries)
    return LoadResult(parameters, len(entries), loaded_bytes, worker_count, pids)


def _garbled_plaintext(path: str, error: CheckpointError) -> DecryptionError:
    # Offsets in the plaintext are not file bytes, so the error carries none. A wrong CBC key can
    # pass the padding check and only show here, as plaintext that is not a checkpoint.
    return DecryptionError(
        path,
        f"the decrypted data is not a valid checkpoint ({error.reason}); the key is wrong or the file is damaged",
    )


def _assemble_in_place(entries: Sequence[Entry], staging: Any, plain_bytes: int) -> dict[str, Any]:
    """Build the dict from the decrypted plaintext, viewing each array where it lies.

    An array stored in several records is joined with one copy. When the selected entries are
    less than half of the plaintext, every array is copied out so that the rest is freed.
    """
    base = np.frombuffer(staging, dtype=np.uint8, count=plain_bytes)
    compact = sum(entry.nbytes for entry in entries) * 2 < plain_bytes
    parameters: dict[str, Any] = {}
    for entry in entries:
        arrays = []
        for part in entry.parts:
            if len(part.ranges) == 1:
                start, length = part.ranges[0]
                raw = base[start : start + length]
            else:
                raw = np.concatenate([base[start : start + length] for start, length in part.ranges])
            if entry.kind == "str":
                parameters[entry.name] = _decode_string(entry, raw)
                break
            array = raw.view(part.dtype).reshape(part.shape)
            arrays.append(array.copy() if compact else array)
        if entry.kind == "tensor":
            parameters[entry.name] = arrays[0]
        elif entry.kind == "map":
            parameters[entry.name] = arrays
    return parameters


def assemble(entries: Sequence[Entry], plan: Layout, buffer: Any) -> dict[str, Any]:
    """Build the parameter dict as views into ``buffer``, which contains the laid-out bytes.

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
        # surrogatepass: numpy stores a lone surrogate code point as it is, so it reads back too.
        return raw.tobytes().decode("utf-32-le", "surrogatepass").rstrip("\x00")
    except UnicodeDecodeError as exc:
        offset = entry.parts[0].ranges[0][0] if entry.parts[0].ranges else None
        raise CheckpointError(
            entry.path, f"string entry {entry.name!r} is not valid UTF-32: {exc.reason}", offset
        ) from exc


def load_async(request: LoadRequest) -> Future[dict[str, Any]]:
    """Start a load on a new thread and return its Future.

    The future stays pending while the load runs, so ``cancel()`` succeeds until the result is
    set. A cancelled load stops dispatching work and frees its memory.
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

