"""Run one loader once in a fresh process and write what it took as JSON to stdout.

Started by the harness (:mod:`mploader.benchmark`) as ``PYTHON _runner.py CONFIG_JSON``, by the
path of this file. The file must run with only numpy and the standard library, because the
MindSpore loaders run under another interpreter that has no mploader. mploader, MindSpore and
safetensors are imported only by the loaders that use them.

Steps: import the loader's modules, then warm the page cache by reading the file once, or evict the
file when the workload is cold. Time the first load call, which for mploader includes starting the
pool. Hold the result for ``hold_seconds`` so that the harness's memory sampler records the final
state, and check it against the expected tensor count, byte count and digest. Optionally, time a
second call in the same process the same way.

The top level imports only the standard library because, under CPython 3.11, every pool worker
executes the main module of the process that started the pool again when it starts. Heavy imports
here would be paid again in each worker, inside the timed first call.
"""

from __future__ import annotations

import gc
import json
import mmap
import os
import resource
import secrets
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

SHM_DIRECTORY = "/dev/shm"
# The harness removes files left with this prefix by a runner that was killed.
FLOOR_PREFIX = "mploader-bench-floor-"


class MploaderCall(NamedTuple):
    """Arguments of an mploader loader's call. ``workers`` None lets mploader choose."""

    workers: int | None
    decrypt: bool = False  # pass the config's dec_key_hex and dec_mode
    choice: bool = False  # pass a choice_func that keeps the config's keep_names
    sync: bool = False  # mploader.load_checkpoint instead of load_checkpoint_async(...).result()


MPLOADER_LOADERS = {
    "mploader-w1": MploaderCall(1),
    "mploader-w2": MploaderCall(2),
    "mploader-default": MploaderCall(None),
    "mploader-inprocess": MploaderCall(0),
    "mploader-safetensors-default": MploaderCall(None),
    "mploader-choice10": MploaderCall(None, choice=True),
    # The harness points MPLOADER_SHM_DIR at a tmpfs mounted with huge=always for this loader.
    "mploader-hugeshm": MploaderCall(None),
    "mploader-aes-w1": MploaderCall(1, decrypt=True),
    "mploader-aes-w2": MploaderCall(2, decrypt=True),
    "mploader-aes-default": MploaderCall(None, decrypt=True),
    # Synchronous, like the mindspore.load_checkpoint call it is compared with.
    "mploader-lenet": MploaderCall(None, sync=True),
}
MINDSPORE_LOADERS = ("mindspore", "mindspore-async", "mindspore-aes", "mindspore-lenet")
RAW_LOADERS = ("shm-floor", "readinto", "sequential-read")
SAFETENSORS_LOADERS = ("safetensors",)
LOADERS = (*MPLOADER_LOADERS, *RAW_LOADERS, *MINDSPORE_LOADERS, *SAFETENSORS_LOADERS)

# The digests hash this many leading bytes of each tensor, or of each end of a raw file.
_TENSOR_HEAD_BYTES = 64
_FILE_END_BYTES = 1024 * 1024
_WARM_READ_BYTES = 16 * 1024 * 1024
# Buffer of the sequential-read baseline, reused for every read call.
_SEQUENTIAL_READ_BYTES = 64 * 1024 * 1024
# Linux transfers at most 0x7ffff000 bytes per read call; stay below it in each preadv.
_MAX_PREADV_BYTES = 1 << 30


def tensor_digest(heads: Iterable[tuple[str, bytes]]) -> int:
    """Return a CRC32 over (name, leading bytes) pairs, in name order."""
    crc = 0
    for name, head in sorted(heads):
        crc = zlib.crc32(name.encode("utf-8"), crc)
        crc = zlib.crc32(head, crc)
    return crc


def array_head(array: Any) -> bytes:
    """Return the first bytes of a numpy array's data, without copying the rest."""
    import numpy as np

    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return flat[:_TENSOR_HEAD_BYTES].tobytes()


def file_digest(head: bytes, tail: bytes) -> int:
    """Return a CRC32 over the first and last ``_FILE_END_BYTES`` of a file's contents."""
    return zlib.crc32(tail, zlib.crc32(head))


def read_file_ends(path: str) -> tuple[bytes, bytes]:
    """Return the first and last ``_FILE_END_BYTES`` of the file at ``path``."""
    size_bytes = os.path.getsize(path)
    with open(path, "rb") as file:
        head = file.read(_FILE_END_BYTES)
        file.seek(max(0, size_bytes - _FILE_END_BYTES))
        tail = file.read()
    return head, tail


def file_ends(buffer: Any, size_bytes: int) -> tuple[bytes, bytes]:
    """Return the first and last ``_FILE_END_BYTES`` of a one-dimensional byte buffer."""
    with memoryview(buffer) as view:
        head = bytes(view[: min(_FILE_END_BYTES, size_bytes)])
        tail = bytes(view[max(0, size_bytes - _FILE_END_BYTES) : size_bytes])
    return head, tail


# Loaders. Each returns the loaded object; ``summarize`` turns it into (count, bytes, digest).


def _load_shm_floor(path: str, size_bytes: int) -> mmap.mmap:
    """Read the whole file with two threads of ``os.preadv`` into a new shared-memory file.

    The file is created with O_EXCL and mode 0600, sized with ftruncate, mapped, filled (each thread
    one half, split at a page boundary) and unlinked before returning, also on error. The mapping
    keeps the pages alive.
    """
    shm_path = os.path.join(SHM_DIRECTORY, f"{FLOOR_PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
    shm_fd = os.open(shm_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.ftruncate(shm_fd, size_bytes)
            mapping = mmap.mmap(shm_fd, size_bytes)
        finally:
            os.close(shm_fd)
        try:
            _read_in_two_threads(path, mapping, size_bytes)
        except BaseException:
            mapping.close()
            raise
    finally:
        os.unlink(shm_path)
    return mapping


def _read_range(fd: int, path: str, view: memoryview, start: int, end: int, errors: list[BaseException]) -> None:
    """Fill ``view[start:end]`` from the same offsets of ``fd``; append a failure to ``errors``."""
    try:
        position = start
        while position < end:
            count = os.preadv(fd, [view[position : min(end, position + _MAX_PREADV_BYTES)]], position)
            if count == 0:
                raise OSError(f"{path} ended at byte {position}, expected {end} bytes")
            position += count
    except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
        errors.append(exc)


def _read_in_two_threads(path: str, mapping: mmap.mmap, size_bytes: int) -> None:
    half = size_bytes // 2 // mmap.PAGESIZE * mmap.PAGESIZE
    errors: list[BaseException] = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    view = memoryview(mapping)
    try:
        threads = [
            threading.Thread(target=_read_range, args=(fd, path, view, 0, half, errors)),
            threading.Thread(target=_read_range, args=(fd, path, view, half, size_bytes, errors)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        view.release()
        os.close(fd)
    if errors:
        raise errors[0]


def _load_readinto(path: str, size_bytes: int) -> Any:
    """Read the whole file with one ``readinto`` call into a new numpy buffer."""
    import numpy as np

    buffer = np.empty(size_bytes, dtype=np.uint8)
    with open(path, "rb") as file:
        count = file.readinto(buffer.data)
    if count != size_bytes:
        raise OSError(f"readinto of {path} returned {count} bytes, expected {size_bytes}")
    return buffer


class SequentialRead(NamedTuple):
    """The file's length and both ends, as kept by the sequential-read baseline."""

    bytes_read: int
    head: bytes
    tail: bytes


def _load_sequential(path: str) -> SequentialRead:
    """Read the whole file front to back with ``readinto`` calls into one reused 64 MiB buffer.

    Only the first and last ``_FILE_END_BYTES`` are kept, for the check, so the time is that of
    reading the file, without filling memory of the file's size.
    """
    import numpy as np

    # numpy.empty leaves the pages untouched until the first read fills them; bytearray would zero them.
    view = np.empty(_SEQUENTIAL_READ_BYTES, dtype=np.uint8).data
    head = b""
    tail = b""
    bytes_read = 0
    with open(path, "rb", buffering=0) as file:
        while True:
            count = file.readinto(view)
            if not count:
                break
            bytes_read += count
            if len(head) < _FILE_END_BYTES:
                head += bytes(view[: min(count, _FILE_END_BYTES - len(head))])
            # The last MiB can span the end of one read and the start of the next.
            tail = (tail + bytes(view[max(0, count - _FILE_END_BYTES) : count]))[-_FILE_END_BYTES:]
    return SequentialRead(bytes_read, head, tail)


def _prepare_mploader(loader: str, config: dict[str, Any], versions: dict[str, Any]) -> Callable[[], Any]:
    import mploader
    import mploader.api  # noqa: F401 - imported now so that the timed call does not import it
    import mploader.pool  # noqa: F401

    path = config["path"]
    call = MPLOADER_LOADERS[loader]
    options: dict[str, Any] = {"workers": call.workers}
    if call.decrypt:
        options["dec_key"] = bytes.fromhex(config["dec_key_hex"])
        options["dec_mode"] = config["dec_mode"]
    if call.choice:
        options["choice_func"] = frozenset(config["keep_names"]).__contains__
    if loader == "mploader-hugeshm" and not os.environ.get("MPLOADER_SHM_DIR"):
        raise RuntimeError("mploader-hugeshm needs MPLOADER_SHM_DIR set to a tmpfs mounted with huge=always")
    versions["mploader"] = mploader.__version__
    if call.sync:
        load_sync = mploader.load_checkpoint
        return lambda: load_sync(path, **options)
    load_async = mploader.load_checkpoint_async
    return lambda: load_async(path, **options).result()


def _prepare_mindspore(loader: str, config: dict[str, Any], versions: dict[str, Any]) -> Callable[[], Any]:
    import mindspore

    path = config["path"]
    versions["mindspore"] = mindspore.__version__
    load_sync = mindspore.load_checkpoint
    if loader == "mindspore-async":
        load_ms_async = mindspore.load_checkpoint_async
        return lambda: load_ms_async(path).result()
    if loader == "mindspore-aes":
        key = bytes.fromhex(config["dec_key_hex"])
        mode = config["dec_mode"]
        return lambda: load_sync(path, dec_key=key, dec_mode=mode)
    return lambda: load_sync(path)


def _prepare_loader(loader: str, config: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Import what ``loader`` needs; return its load function and the library versions."""
    import numpy as np

    path = config["path"]
    size_bytes = config["expected"]["file_bytes"]
    versions: dict[str, Any] = {"numpy": np.__version__}
    if loader in MPLOADER_LOADERS:
        return _prepare_mploader(loader, config, versions), versions
    if loader in MINDSPORE_LOADERS:
        return _prepare_mindspore(loader, config, versions), versions
    if loader == "safetensors":
        import safetensors
        from safetensors.numpy import load_file

        versions["safetensors"] = safetensors.__version__
        return lambda: load_file(path), versions
    if loader == "shm-floor":
        return lambda: _load_shm_floor(path, size_bytes), versions
    if loader == "readinto":
        return lambda: _load_readinto(path, size_bytes), versions
    if loader == "sequential-read":
        return lambda: _load_sequential(path), versions
    raise ValueError(f"unknown loader {loader!r}; expected one of {', '.join(LOADERS)}")


def summarize(loader: str, result: Any, size_bytes: int) -> dict[str, Any]:
    """Return the tensor count, bytes loaded and digest of a loader's result."""
    if isinstance(result, SequentialRead):
        digest = file_digest(result.head, result.tail)
        return {"tensor_count": None, "bytes_loaded": result.bytes_read, "digest": digest}
    if loader in RAW_LOADERS:
        with memoryview(result) as view:
            bytes_loaded = view.nbytes
        head, tail = file_ends(result, size_bytes)
        return {"tensor_count": None, "bytes_loaded": bytes_loaded, "digest": file_digest(head, tail)}
    heads = []
    total_bytes = 0
    for name, value in result.items():
        array = value.asnumpy() if loader in MINDSPORE_LOADERS else value
        total_bytes += int(array.nbytes)
        heads.append((name, array_head(array)))
    return {"tensor_count": len(result), "bytes_loaded": total_bytes, "digest": tensor_digest(heads)}


def _check(loader: str, summary: dict[str, Any], expected: dict[str, Any]) -> None:
    if loader in RAW_LOADERS:
        expected_values = {"bytes_loaded": expected["file_bytes"], "digest": expected["file_digest"]}
    else:
        expected_values = {
            "tensor_count": expected["tensor_count"],
            "bytes_loaded": expected["tensor_bytes"],
            "digest": expected["tensor_digest"],
        }
    for key, value in expected_values.items():
        if summary[key] != value:
            raise RuntimeError(f"{loader} returned {key}={summary[key]}, expected {value}")


def _warm_cache(path: str) -> None:
    buffer = bytearray(_WARM_READ_BYTES)
    with open(path, "rb", buffering=0) as file:
        while file.readinto(buffer):
            pass


def _evict_cache(path: str) -> None:
    # DONTNEED drops only clean pages, so flush any dirty ones first.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _system_counters() -> dict[str, float]:
    """Return machine-wide counters that explain a slow call: CPU steal and idle time, disk reads,
    and the bytes of shared memory in transparent huge pages.

    They cover every process on the machine, including the load's workers and other tenants.
    """
    counters: dict[str, float] = {}
    try:
        with open("/proc/stat", encoding="ascii") as file:
            cpu = [int(value) for value in file.readline().split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
        counters["idle_seconds"] = cpu[3] / ticks
        counters["steal_seconds"] = cpu[7] / ticks if len(cpu) > 7 else 0.0
        with open("/proc/vmstat", encoding="ascii") as file:
            for line in file:
                if line.startswith("pgpgin "):
                    # pgpgin counts KiB read from block devices.
                    counters["disk_read_bytes"] = int(line.split()[1]) * 1024
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("ShmemHugePages:"):
                    counters["shmem_huge_bytes"] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return counters


def _release(result: Any) -> None:
    if isinstance(result, mmap.mmap):
        result.close()


def _shutdown_mploader_pool() -> None:
    pool_module = sys.modules.get("mploader.pool")
    if pool_module is not None:
        pool_module.shutdown()


def _pool_worker_count() -> int:
    pool_module = sys.modules.get("mploader.pool")
    pool = pool_module.current_pool() if pool_module is not None else None
    return pool.worker_count if pool is not None else 0


def _timed_call(config: dict[str, Any], load: Callable[[], Any]) -> dict[str, Any]:
    """Time one call of ``load``, hold its result, check it and release it."""
    loader = config["loader"]
    path = config["path"]
    hold_seconds = config["hold_seconds"]
    cache_start = time.perf_counter()
    if config["cold"]:
        _evict_cache(path)
    else:
        _warm_cache(path)
    cache_seconds = time.perf_counter() - cache_start
    gc.collect()

    # The harness takes the memory baseline from the samples between baseline_start and start.
    baseline_start = time.monotonic()
    time.sleep(hold_seconds)
    counters_before = _system_counters()
    times_before = os.times()
    start = time.monotonic()
    counter_start = time.perf_counter()
    result = load()
    seconds = time.perf_counter() - counter_start
    end = time.monotonic()
    times_after = os.times()
    counters_after = _system_counters()
    time.sleep(hold_seconds)
    hold_end = time.monotonic()

    call: dict[str, Any] = {
        "seconds": seconds,
        "baseline_start": baseline_start,
        "start": start,
        "end": end,
        "hold_end": hold_end,
        "cache_seconds": cache_seconds,
        "runner_user_seconds": times_after.user - times_before.user,
        "runner_system_seconds": times_after.system - times_before.system,
    }
    for key, value in counters_after.items():
        call[f"system_{key}"] = value - counters_before[key]
    if loader in MPLOADER_LOADERS:
        call["workers"] = _pool_worker_count()
    call.update(summarize(loader, result, config["expected"]["file_bytes"]))
    _check(loader, call, config["expected"])
    _release(result)
    del result
    gc.collect()
    return call


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run the loader named in ``config`` and return the report."""
    loader = config["loader"]
    load, versions = _prepare_loader(loader, config)
    calls = []
    try:
        calls.append(_timed_call(config, load))
        if config["warm_pool"]:
            calls.append(_timed_call(config, load))
    finally:
        _shutdown_mploader_pool()
    return {
        "loader": loader,
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "versions": versions,
        "calls": calls,
        # ru_maxrss is in KiB on Linux and covers this process only. RUSAGE_CHILDREN would not cover
        # the workers, because the pool's forkserver runs until this process exits.
        "ru_maxrss_self_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main(argv: list[str]) -> int:
    # Run by path, this file's directory is sys.path[0]. The runner imports nothing from there, and
    # the harness's modules in it must not shadow a library module of the same name.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    if len(argv) != 1:
        print("usage: _runner.py CONFIG_JSON", file=sys.stderr)
        return 2
    config = json.loads(argv[0])
    # Keep stdout for the report: anything a library prints goes to stderr instead.
    report_fd = os.dup(1)
    os.dup2(2, 1)
    report = run(config)
    with os.fdopen(report_fd, "w", encoding="utf-8") as output:
        json.dump(report, output)
        output.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
