"""The ``mploader`` command: load, inspect and demo.

Errors go to stderr as one line with exit status 1 (2 for bad usage), without a traceback.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1000, "KIB": 1024, "M": 1024**2, "MB": 1000**2,
               "MIB": 1024**2, "G": 1024**3, "GB": 1000**3, "GIB": 1024**3}


def parse_size(text: str) -> int:
    """Parse a byte count such as ``512MiB``, ``1GiB``, ``300MB`` or ``1048576``."""
    stripped = text.strip().upper().replace(" ", "")
    number = stripped.rstrip("KMGIB")
    unit = stripped[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use a number with B, KiB, MiB or GiB") from None
    if unit not in _SIZE_UNITS or value <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use a positive number with B, KiB, MiB or GiB")
    return int(value * _SIZE_UNITS[unit])


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux. It counts the shared-memory pages this process touched.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _summary(parameters: dict[str, Any], seconds: float, workers: str) -> str:
    import numpy as np

    total_bytes = 0
    for value in parameters.values():
        if isinstance(value, np.ndarray):
            total_bytes += value.nbytes
        elif isinstance(value, list):
            total_bytes += sum(part.nbytes for part in value)
    rate = total_bytes / seconds / 1e9 if seconds > 0 else float("inf")
    return (
        f"entries: {len(parameters)}\n"
        f"bytes: {total_bytes}\n"
        f"seconds: {seconds:.3f}\n"
        f"GB/s: {rate:.2f}\n"
        f"workers: {workers}\n"
        f"peak RSS of this process: {_peak_rss_bytes() / 2**20:.1f} MiB"
    )


def _load_with_progress(path: str, workers: int | None, use_async: bool) -> tuple[dict[str, Any], float, str]:
    from tqdm import tqdm

    from . import api, pool

    with tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="loading",
              file=sys.stderr, leave=False) as bar:
        start = time.perf_counter()
        request = api._build_request(path, None, False, None, None, "AES-GCM", None, None, False,
                                     workers, progress=bar.update)
        from . import coordinator

        if use_async:
            future = coordinator.load_async(request)
            parameters = future.result()
            seconds = time.perf_counter() - start
            running = pool.current_pool()
            worker_text = str(running.worker_count) if running else "0 (in-process)"
        else:
            result = coordinator.load(request)
            parameters = result.parameters
            seconds = time.perf_counter() - start
            worker_text = str(result.worker_count) if result.worker_count else "0 (in-process)"
    return parameters, seconds, worker_text


def _command_load(args: argparse.Namespace) -> int:
    parameters, seconds, workers = _load_with_progress(args.file, args.workers, use_async=False)
    print(_summary(parameters, seconds, workers))
    return 0


def _command_inspect(args: argparse.Namespace) -> int:
    from .formats.ckpt import index_ckpt

    path = args.file
    with open(path, "rb", buffering=0) as file:
        index = index_ckpt(path, file, os.fstat(file.fileno()).st_size)
    print(f"{'name':<48} {'dtype':<10} {'shape':<20} {'bytes':>14}")
    for entry in index.entries:
        if entry.kind == "map":
            dtype = "map:" + ",".join(part.type_name for part in entry.parts)
            shape = " ".join(str(list(part.shape)) for part in entry.parts)
        else:
            dtype = entry.parts[0].type_name
            shape = str(list(entry.parts[0].shape)) if entry.kind == "tensor" else "-"
        print(f"{entry.name:<48} {dtype:<10} {shape:<20} {entry.nbytes:>14}")
    trailer = "yes" if index.trailer_crc is not None else "no"
    print(f"{len(index.entries)} entries, {sum(e.nbytes for e in index.entries)} bytes, CRC trailer: {trailer}")
    return 0


def _command_demo(args: argparse.Namespace) -> int:
    from .testing.synthetic import write_llm_checkpoint

    with tempfile.TemporaryDirectory(prefix="mploader-demo-") as directory:
        path = os.path.join(directory, "demo.ckpt")
        print(f"writing an LLM-shaped float16 checkpoint of about {args.size / 2**20:.0f} MiB to {path}",
              file=sys.stderr)
        size_bytes = write_llm_checkpoint(path, args.size)
        print(f"file: {size_bytes} bytes", file=sys.stderr)
        parameters, seconds, workers = _load_with_progress(path, args.workers, use_async=True)
        print(_summary(parameters, seconds, workers))
        del parameters
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mploader", description="Load MindSpore checkpoints in parallel through shared memory."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    load = commands.add_parser("load", help="load a checkpoint and print what it took")
    load.add_argument("file", help="a .ckpt file")
    load.add_argument("--workers", type=int, default=None,
                      help="worker processes (0: in-process; default: automatic)")
    load.set_defaults(run=_command_load)

    inspect = commands.add_parser("inspect", help="list entries without reading tensor data")
    inspect.add_argument("file", help="a .ckpt file")
    inspect.set_defaults(run=_command_inspect)

    demo = commands.add_parser(
        "demo", help="write an LLM-shaped checkpoint to a temporary directory, load it, remove it"
    )
    demo.add_argument("--size", type=parse_size, default=512 * 2**20,
                      help="checkpoint size, such as 512MiB or 2GiB (default: 512MiB)")
    demo.add_argument("--workers", type=int, default=None,
                      help="worker processes (0: in-process; default: automatic)")
    demo.set_defaults(run=_command_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mploader`` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("mploader: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, RuntimeError, MemoryError, NotImplementedError) as exc:
        print(f"mploader: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
