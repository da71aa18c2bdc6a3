"""Fuzz the checkpoint readers with atheris (libFuzzer for Python).

Every input is one hostile file. Its first byte chooses the code under test, its second byte an
option (cipher and key, or whether to check the CRC), and the rest is the file's content:

=====  ==========================================================================================
byte0  target
=====  ==========================================================================================
0      ``index_ckpt`` over an in-memory buffer, then checks of what the index claims
1      ``index_safetensors`` over ``io.BytesIO``, with the same checks
2      ``walk_frames`` and ``decrypt_frame_into`` on a temporary file, then ``index_ckpt`` over
       the plaintext, as a load does
3      ``load_checkpoint(workers=0)`` of a temporary ``.ckpt``, with or without ``crc_check``
4      ``load_checkpoint(workers=0)`` of a temporary ``.ckpt`` with ``dec_key`` and ``dec_mode``
5      ``load_checkpoint(workers=0)`` of a temporary ``.safetensors``
=====  ==========================================================================================

Only :class:`mploader.errors.CheckpointError` and its subclasses may escape. Any other exception
is a crash that atheris reports and saves, and so is an index that describes bytes the input does
not contain.

Run ``python fuzz/seed_corpus.py CORPUS`` first, then for example::

    python fuzz/fuzz_index.py CORPUS -runs=50000 -max_len=16384

The harness prints how many inputs reached each target every 5000 inputs; libFuzzer prints the
total at the end ("Done N runs").
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import atheris
from targets import TARGETS, cipher_for

with atheris.instrument_imports():
    import numpy as np

    import mploader
    from mploader.errors import CheckpointError
    from mploader.formats import crypto
    from mploader.formats.ckpt import index_ckpt
    from mploader.formats.index import Entry
    from mploader.formats.safetensors import index_safetensors

REPORT_EVERY = 5000

_counts = dict.fromkeys(TARGETS, 0)


def check_entries(entries: list[Entry], data_end: int) -> None:
    """Fail unless every range lies inside the data and every part's bytes match its shape."""
    for entry in entries:
        assert entry.kind in ("tensor", "str", "map"), entry
        assert len(entry.parts) == (3 if entry.kind == "map" else 1), entry
        for part in entry.parts:
            for start, length in part.ranges:
                assert start >= 0, (entry.name, start)
                assert length >= 0, (entry.name, length)
                assert start + length <= data_end, (entry.name, start, length, data_end)
            if entry.kind == "str":
                assert part.nbytes % 4 == 0, entry
            else:
                assert all(dim >= 0 for dim in part.shape), entry
                assert math.prod(part.shape) * part.dtype.itemsize == part.nbytes, entry


def check_loaded(parameters: dict[str, Any]) -> None:
    for name, value in parameters.items():
        assert isinstance(name, str)
        if isinstance(value, list):
            assert len(value) == 3 and all(isinstance(part, np.ndarray) for part in value), name
        else:
            assert isinstance(value, (np.ndarray, str)), (name, type(value))


@contextlib.contextmanager
def temporary_file(data: bytes, suffix: str) -> Iterator[str]:
    """Write ``data`` to a new temporary file and remove it afterwards.

    libFuzzer ends the process without running Python's exit handlers, so nothing may be left
    for them to clean up.
    """
    fd, path = tempfile.mkstemp(prefix="mploader-fuzz-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        yield path
    finally:
        os.unlink(path)


def fuzz_decrypt(path: str, data: bytes, option: int) -> None:
    mode, key = cipher_for(option)
    with open(path, "rb", buffering=0) as file:
        table = crypto.walk_frames(path, file, len(data), mode, key)
        assert table.plain_size_bytes <= len(data), table.plain_size_bytes
        plaintext = bytearray(table.plain_size_bytes)
        view = memoryview(plaintext)
        for frame in table.frames:
            out = view[frame.plain_offset : frame.plain_offset + frame.plain_len_bytes]
            crypto.decrypt_frame_into(file.fileno(), mode, key, frame, out, path=path, want_crc=bool(option & 0x80))
    if plaintext:
        index = index_ckpt(path, memoryview(plaintext), len(plaintext))
        check_entries(index.entries, index.data_end)


def test_one_input(raw: bytes) -> None:
    if len(raw) < 2:
        return
    target = TARGETS[raw[0] % len(TARGETS)]
    option = raw[1]
    data = raw[2:]
    _counts[target] += 1
    total = sum(_counts.values())
    if total % REPORT_EVERY == 0:
        report()
    try:
        if target == "index_ckpt":
            index = index_ckpt("fuzz.ckpt", memoryview(data), len(data))
            check_entries(index.entries, index.data_end)
        elif target == "index_safetensors":
            st_index = index_safetensors("fuzz.safetensors", io.BytesIO(data), len(data))
            check_entries(st_index.entries, len(data))
        else:
            with temporary_file(data, ".safetensors" if target == "load_safetensors" else ".ckpt") as path:
                load_file(target, path, data, option)
    except CheckpointError:
        pass
    except ValueError as error:
        # A safetensors header without tensors is a valid file, and loading it finds nothing to
        # return; that is the documented ValueError for an empty selection.
        if target != "load_safetensors" or "left after filtering" not in str(error):
            raise


def load_file(target: str, path: str, data: bytes, option: int) -> None:
    if target == "decrypt":
        fuzz_decrypt(path, data, option)
    elif target == "load_encrypted":
        mode, key = cipher_for(option)
        check_loaded(mploader.load_checkpoint(path, workers=0, dec_key=key, dec_mode=mode))
    else:
        check_loaded(mploader.load_checkpoint(path, workers=0, crc_check=bool(option & 1)))


def report() -> None:
    counts = ", ".join(f"{target} {count}" for target, count in _counts.items())
    print(f"mploader fuzz: {sum(_counts.values())} inputs: {counts}", file=sys.stderr, flush=True)


def main() -> None:
    # Hostile files make the loader log warnings (a missing CRC trailer, a repeated name).
    logging.getLogger("mploader").setLevel(logging.ERROR)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
