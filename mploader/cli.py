"""The ``mploader`` command: load, inspect, convert, verify and demo.

Errors go to stderr as one line with exit status 1 (2 for bad usage), without a traceback.
The work of ``inspect``, ``convert`` and ``verify`` is in :mod:`mploader.convert`; this module
only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from .formats import crypto

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


class _UsageError(Exception):
    """Invalid command-line arguments that argparse cannot check; exit status 2."""


class _ProgressBar:
    """A tqdm bar on stderr fed by ``progress(done_bytes, total_bytes)`` callbacks."""

    def __init__(self, description: str) -> None:
        self._description = description
        self._bar: Any = None
        self._done = 0

    def __call__(self, done_bytes: int, total_bytes: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            # disable=None turns the bar off when stderr is not a terminal.
            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=self._description,
                             file=sys.stderr, leave=False, disable=None)
        self._bar.total = total_bytes
        self._bar.update(done_bytes - self._done)
        self._done = done_bytes

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _read_key(value: str | None, option: str) -> bytes | None:
    """Decode a key given in hex, or read from stdin when ``value`` is ``-``. Never echo it."""
    if value is None:
        return None
    text = sys.stdin.readline() if value == "-" else value
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise _UsageError(
            f"{option} is not a hexadecimal key; give an even number of hex digits such as 000102...0f, "
            "or - to read them from standard input"
        ) from None
    if not key:
        raise _UsageError(f"{option} is empty; give the key as hex digits")
    return key


def _file_format(path: str, explicit: str | None, role: str, option: str = "--format") -> str:
    from .convert import resolve_format

    try:
        return resolve_format(path, explicit, role)
    except ValueError as exc:
        raise _UsageError(f"{exc} with {option}") from None


def _source(paths: list[str]) -> str | list[str]:
    """Return one path as it is, and several as the list of a sharded checkpoint."""
    return paths[0] if len(paths) == 1 else paths


def _is_sharded(source: str | list[str]) -> bool:
    return isinstance(source, list) or os.path.isdir(source) or source.endswith(".json")


def _source_format(source: str | list[str], explicit: str | None, role: str) -> str | None:
    """Return the format of a single file; None or ``explicit`` for a sharded checkpoint."""
    if isinstance(source, list) or _is_sharded(source):
        return explicit
    return _file_format(source, explicit, role)


def _source_key(args: argparse.Namespace, source: str | list[str], file_format: str | None) -> bytes | None:
    key = _read_key(args.dec_key_hex, "--dec-key-hex")
    if key is None:
        return None
    if _is_sharded(source):
        raise _UsageError("--dec-key-hex applies to a single .ckpt file; MindSpore does not shard encrypted files")
    if file_format != "ckpt":
        raise _UsageError("--dec-key-hex applies to .ckpt files only; MindSpore does not encrypt .safetensors files")
    return key


def _entry_columns(entry: Any, int4_names: frozenset[str]) -> tuple[str, str]:
    """Return the dtype and shape columns of one inspect row."""
    if entry.kind == "map":
        dtype = "map:" + ",".join(part.type_name for part in entry.parts)
        shape = " ".join(str(list(part.shape)) for part in entry.parts)
    elif entry.kind == "str":
        dtype, shape = entry.parts[0].type_name, "-"
    else:
        dtype = "Int4" if entry.name in int4_names else entry.parts[0].type_name
        shape = str(list(entry.parts[0].shape))
    return dtype, shape


def _command_inspect(args: argparse.Namespace) -> int:
    from .convert import describe, info_as_dict

    source = _source(args.files)
    file_format = _source_format(source, args.format, "file")
    key = _source_key(args, source, file_format)
    info = describe(source, file_format=file_format, dec_key=key, dec_mode=args.dec_mode)
    if args.json:
        print(json.dumps(info_as_dict(info), indent=2, ensure_ascii=False))
        return 0

    print(f"{'name':<48} {'dtype':<10} {'shape':<20} {'bytes':>14}")
    for entry in info.entries:
        dtype, shape = _entry_columns(entry, info.int4_names)
        print(f"{entry.name:<48} {dtype:<10} {shape:<20} {entry.nbytes:>14}")
    details = [f"{len(info.entries)} entries", f"{info.tensor_bytes} bytes", f"format: {info.format}"]
    if info.encryption is not None:
        details.append(f"encrypted: {info.encryption}, frames: {info.frame_count}")
    if info.format == "ckpt":
        details.append(f"CRC trailer: {'yes' if info.crc_location else 'no'}")
    else:
        details.append(f"crc_num: {'yes' if info.crc_location else 'no'}")
    if info.shards:
        details.append(f"files: {len(info.shards)}")
    print(", ".join(details))
    if info.metadata:
        print("metadata: " + json.dumps(info.metadata, ensure_ascii=False))
    for shard in info.shards:
        crc = f", CRC: {shard.crc_location}" if shard.crc_location else ""
        print(f"file {shard.path}: {shard.format}, {len(shard.entries)} entries, {shard.tensor_bytes} bytes{crc}")
    return 0


def _command_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    source = _source(args.sources)
    source_format = _source_format(source, args.format, "source")
    output_format = _file_format(args.destination, args.output_format, "destination", "--output-format")
    if args.dec_key_hex == "-" and args.enc_key_hex == "-":
        raise _UsageError("only one of --dec-key-hex and --enc-key-hex can be read from standard input")
    dec_key = _source_key(args, source, source_format)
    enc_key = _read_key(args.enc_key_hex, "--enc-key-hex")
    if enc_key is not None and output_format != "ckpt":
        raise _UsageError("--enc-key-hex applies to .ckpt output only; MindSpore does not encrypt .safetensors files")

    with _ProgressBar("converting") as bar:
        result = convert(
            source,
            args.destination,
            source_format=source_format,
            output_format=output_format,
            choice=args.choice,
            exclude=args.exclude,
            dec_key=dec_key,
            dec_mode=args.dec_mode,
            enc_key=enc_key,
            enc_mode=args.enc_mode,
            crc_check=args.crc,
            skip_unsupported=args.skip_unsupported,
            workers=args.workers,
            progress=bar,
        )
    skipped = f", {len(result.skipped)} skipped" if result.skipped else ""
    print(
        f"wrote {result.destination}: {result.output_format}, {result.entry_count} entries{skipped}, "
        f"{result.tensor_bytes} tensor bytes, {result.output_bytes} bytes on disk"
    )
    return 0


def _crc_summary(result: Any) -> str:
    info = result.info
    if info.shards:
        verified = sum(1 for shard in result.shards if shard.crc_status == "verified")
        if verified == 0:
            return "no file stores a CRC, so tensor bytes were not checked"
        return f"CRC32 verified in {verified} of {len(info.shards)} files, over {result.checked_bytes} bytes"
    if info.encryption is not None:
        checks = "GCM tags" if info.encryption == "AES-GCM" else "CBC padding"
        text = f"every frame decrypted ({info.frame_count} in all, {checks} checked)"
        if result.crc_status == "verified":
            return text + ", CRC32 trailer verified"
        if result.crc_status == "zero":
            return text + ", CRC trailer holds MindSpore's placeholder 0, which cannot be checked"
        return text + ", no CRC trailer"
    if result.crc_status == "verified":
        where = "trailer" if info.format == "ckpt" else "crc_num"
        return f"CRC32 {where} verified over {result.checked_bytes} bytes"
    return "no CRC stored, so tensor bytes were not checked"


def _command_verify(args: argparse.Namespace) -> int:
    from .convert import verify

    source = _source(args.files)
    file_format = _source_format(source, args.format, "file")
    key = _source_key(args, source, file_format)
    with _ProgressBar("verifying") as bar:
        result = verify(source, file_format=file_format, dec_key=key, dec_mode=args.dec_mode,
                        workers=args.workers, progress=bar)
    info = result.info
    files = f"{len(info.shards)} files, " if info.shards else ""
    print(f"OK {info.path}: {info.format}, {files}{len(info.entries)} entries, {info.tensor_bytes} tensor bytes; "
          f"{_crc_summary(result)}")
    return 0


def _command_bench(args: argparse.Namespace) -> int:
    from .benchmark import run_bench_cli

    return run_bench_cli(args.arguments)


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


_MODES = tuple(crypto.MODES)
_FORMATS = ("ckpt", "safetensors")
_FORMAT_HELP = "file format (default: from the extension)"
_SOURCE_HELP = (
    "a .ckpt (plain or encrypted) or .safetensors file; a directory, an index JSON (such as "
    "model.safetensors.index.json) or several files are one sharded checkpoint"
)


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}; use an integer >= 0") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"invalid worker count {count}; use 0 (in-process) or more")
    return count


def _add_format_option(parser: argparse.ArgumentParser, text: str = _FORMAT_HELP) -> None:
    parser.add_argument("--format", choices=_FORMATS, default=None, help=text)


def _add_decryption_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dec-key-hex", metavar="HEX", default=None,
                        help="key of an encrypted .ckpt, in hex; - reads it from stdin, which keeps it out of "
                        "the process list")
    parser.add_argument("--dec-mode", choices=_MODES, default="AES-GCM",
                        help="cipher of an encrypted .ckpt (default: AES-GCM)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mploader", description="Load MindSpore checkpoints in parallel through shared memory."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    load = commands.add_parser("load", help="load a checkpoint and print what it took")
    load.add_argument("file", help="a .ckpt or .safetensors file, a directory of shards, or an index JSON")
    load.add_argument("--workers", type=_worker_count, default=None,
                      help="worker processes (0: in-process; default: automatic)")
    load.set_defaults(run=_command_load)

    inspect = commands.add_parser(
        "inspect",
        help="list entries without reading tensor data",
        description="List each entry's name, dtype, shape and bytes without reading tensor data. For an "
        "encrypted .ckpt, the frames that hold record headers are decrypted (one 64 MiB frame at a "
        "time, in memory) because the index is inside the ciphertext.",
    )
    inspect.add_argument("files", nargs="+", metavar="FILE", help=_SOURCE_HELP)
    inspect.add_argument("--json", action="store_true",
                         help="print one JSON document: file, format, entries, metadata, CRC")
    _add_format_option(inspect)
    _add_decryption_options(inspect)
    inspect.set_defaults(run=_command_inspect)

    convert = commands.add_parser(
        "convert",
        help="convert between .ckpt and .safetensors, in bounded memory",
        description="Convert a checkpoint between .ckpt and .safetensors (or .ckpt to .ckpt, to decrypt or "
        "encrypt it). Tensors are read in batches of at most 256 MiB (mploader.convert.BATCH_MAX_BYTES) and "
        "written as they arrive; an entry larger than that is a batch of its own. The output appears only "
        "when complete, and a failed or interrupted conversion leaves no file.",
    )
    convert.add_argument("sources", nargs="+", metavar="SOURCE",
                         help="the .ckpt or .safetensors file to read; a directory, an index JSON or several "
                         "files are a sharded checkpoint, written as one file")
    convert.add_argument("destination", help="the file to write; its extension selects the output format")
    convert.add_argument("--choice", action="extend", nargs="+", metavar="PREFIX",
                         help="keep only entries whose names start with one of these prefixes")
    convert.add_argument("--exclude", action="extend", nargs="+", metavar="PREFIX",
                         help="drop entries whose names start with one of these prefixes")
    _add_format_option(convert, "format of the source (default: from its extension)")
    convert.add_argument("--output-format", choices=_FORMATS, default=None,
                         help="format of the destination (default: from its extension)")
    _add_decryption_options(convert)
    convert.add_argument("--enc-key-hex", metavar="HEX", default=None,
                         help="encrypt a .ckpt destination with this key, in hex (- reads it from stdin)")
    convert.add_argument("--enc-mode", choices=_MODES, default="AES-GCM",
                         help="cipher for --enc-key-hex (default: AES-GCM)")
    convert.add_argument("--crc", action="store_true",
                         help="store a CRC32: the crc_num trailer of a .ckpt, or MindSpore's crc_num metadata "
                         "of a .safetensors file (which reads the source twice). MindSpore 2.10 cannot load an "
                         "encrypted .ckpt with a CRC trailer")
    convert.add_argument("--skip-unsupported", action="store_true",
                         help="leave out, with a warning, entries the output format cannot store (strings and "
                         "map tensors in .safetensors, F8 and complex types in .ckpt) instead of failing")
    convert.add_argument("--workers", type=_worker_count, default=None,
                         help="worker processes for reading a plain source (0: in-process; default: automatic)")
    convert.set_defaults(run=_command_convert)

    verify = commands.add_parser(
        "verify",
        help="check a file's structure, CRC and encryption",
        description="Check the full index, the CRC trailer or crc_num metadata where present, and for an "
        "encrypted .ckpt every frame's GCM tag or CBC padding, without keeping the tensors. Exit status: "
        "0 valid, 1 invalid or unreadable, 2 bad usage.",
    )
    verify.add_argument("files", nargs="+", metavar="FILE", help=_SOURCE_HELP)
    _add_format_option(verify)
    _add_decryption_options(verify)
    verify.add_argument("--workers", type=_worker_count, default=None,
                        help="worker processes for reading a plain file (0: in-process; default: automatic)")
    verify.set_defaults(run=_command_verify)

    demo = commands.add_parser(
        "demo", help="write an LLM-shaped checkpoint to a temporary directory, load it, remove it"
    )
    demo.add_argument("--size", type=parse_size, default=512 * 2**20,
                      help="checkpoint size, such as 512MiB or 2GiB (default: 512MiB)")
    demo.add_argument("--workers", type=_worker_count, default=None,
                      help="worker processes (0: in-process; default: automatic)")
    demo.set_defaults(run=_command_demo)
    # prefix_chars="\0" hands every argument, options included, to the benchmark's own parser.
    bench = commands.add_parser(
        "bench",
        add_help=False,
        prefix_chars="\0",
        help="time mploader against plain reads of a synthetic checkpoint (see: mploader bench --help)",
    )
    bench.add_argument("arguments", nargs=argparse.REMAINDER)
    bench.set_defaults(run=_command_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mploader`` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    # Warnings, such as skipped entries, go to stderr as one line each. No-op when the root logger
    # is already configured.
    logging.basicConfig(format="mploader: %(levelname)s: %(message)s")
    try:
        return int(args.run(args))
    except _UsageError as exc:
        print(f"mploader: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mploader: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout, such as `head`, exited. Point stdout at /dev/null so that the
        # interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except FileNotFoundError as exc:
        print(f"mploader: error: {exc.filename}: no such file or directory", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError, RuntimeError, MemoryError, NotImplementedError) as exc:
        print(f"mploader: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
