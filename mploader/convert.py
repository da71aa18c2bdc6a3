"""Inspect, convert and verify checkpoint files without holding all of their tensors in memory.

The three operations behind ``mploader inspect``, ``mploader convert`` and ``mploader verify``.
They print nothing. Progress goes to an optional ``progress(done_bytes, total_bytes)`` callback.

How the tensors are read:

- A plain ``.ckpt`` or ``.safetensors`` source is indexed once here. Then it is read in batches of
  at most :data:`BATCH_MAX_BYTES` tensor bytes, each batch through
  ``mploader.load_checkpoint(..., choice_func=<the batch's names>)``, so the worker pool reads it
  in parallel. Each batch is written and released before the next one is loaded.
- An encrypted ``.ckpt`` source is decrypted in this process one 64 MiB frame at a time, because
  the loader decrypts the whole file for every call and would do so once per batch. Frames are
  decrypted in file order, up to twice each for a conversion: once while indexing, if the frame
  contains a record header, and once while reading the tensors.

So memory stays near one batch plus one frame. The exception is an entry larger than
:data:`BATCH_MAX_BYTES`, which forms a batch of its own because a batch contains at least one entry.
"""

from __future__ import annotations

import bisect
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Union, cast

import numpy as np

from . import api
from .errors import CheckpointError, CrcMismatchError, DecryptionError
from .formats import ckpt as ckpt_format
from .formats import crc as crc_format
from .formats import crypto
from .formats import safetensors as safetensors_format
from .formats.dtypes import ckpt_type_of
from .formats.index import Entry, check_weight_map, merge_shard_entries

__all__ = [
    "BATCH_MAX_BYTES",
    "FORMATS",
    "CheckpointInfo",
    "ConversionResult",
    "VerificationResult",
    "convert",
    "describe",
    "info_as_dict",
    "verify",
]

logger = logging.getLogger("mploader")

# Tensor bytes loaded per batch during a conversion or a CRC computation. Larger batches mean
# fewer loads (each one indexes the source again) and more memory. Tests lower it to force
# several batches on small files.
BATCH_MAX_BYTES = 256 * 1024 * 1024

FORMATS = ("ckpt", "safetensors")

ProgressCallback = Callable[[int, int], None]
# One checkpoint file, or a sharded checkpoint: a directory, an index JSON or a list of files.
SourcePath = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]

_EXTENSIONS = {".ckpt": "ckpt", ".safetensors": "safetensors"}
_MAP_PART_NAMES = ("keys", "values", "status")


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file contains, found without reading tensor data.

    Attributes
    ----------
    path : str
        The file, as given.
    format : {"ckpt", "safetensors"}
    file_bytes : int
        Size of the file.
    entries : list of Entry
        Every entry in file order. For an encrypted file, the ranges refer to the plaintext.
    encryption : str or None
        The cipher (``"AES-GCM"``, ``"AES-CBC"``, ``"SM4-CBC"``) of an encrypted ``.ckpt``.
    frame_count : int
        Encrypted frames in the file, 0 for a plain file.
    metadata : dict of str to str or None
        The ``__metadata__`` of a safetensors file, None for a ``.ckpt`` file.
    crc_location : {"trailer", "metadata"} or None
        Where the file stores a CRC32: a ``.ckpt`` trailer or safetensors ``crc_num`` metadata.
    stored_crc : int or None
        The stored value. None when there is none, or when ``crc_num`` is not a decimal number.
    int4_names : frozenset of str
        safetensors tensors that MindSpore metadata marks as packed Int4.
    data_end : int
        Offset where a ``.ckpt`` record stream ends (before any trailer). For an encrypted file,
        the offset where the last frame ends.
    shards : tuple of CheckpointInfo
        Each file's own info for a sharded checkpoint (a directory, a list of files or an index
        JSON), and empty for one file. For a sharded checkpoint, the fields above describe the
        whole. ``path`` is the source as given, ``format`` is ``"mixed"`` when the files differ,
        and ``entries`` are all files' entries in order. ``metadata``, ``crc_location`` and
        ``stored_crc`` are None.
    """

    path: str
    format: str
    file_bytes: int
    entries: list[Entry]
    encryption: str | None = None
    frame_count: int = 0
    metadata: dict[str, str] | None = None
    crc_location: str | None = None
    stored_crc: int | None = None
    int4_names: frozenset[str] = frozenset()
    data_end: int = 0
    shards: tuple[CheckpointInfo, ...] = ()

    @property
    def tensor_bytes(self) -> int:
        """Content bytes of all entries."""
        return sum(entry.nbytes for entry in self.entries)


@dataclass(frozen=True)
class ConversionResult:
    """The outcome of :func:`convert`.

    Attributes
    ----------
    source, destination : str
    source_format, output_format : {"ckpt", "safetensors"}
    entry_count : int
        Entries written.
    tensor_bytes : int
        Content bytes written, without headers.
    output_bytes : int
        Size of the destination file.
    skipped : list of (name, reason)
        Entries left out because the output format cannot store them.
    batch_count : int
        Batches the tensors were read in, per pass over the source.
    passes : int
        Passes over the source: 2 for safetensors output with a CRC, which must be known before
        the header is written, else 1.
    """

    source: str
    destination: str
    source_format: str
    output_format: str
    entry_count: int
    tensor_bytes: int
    output_bytes: int
    skipped: list[tuple[str, str]]
    batch_count: int
    passes: int


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of a successful :func:`verify`.

    Attributes
    ----------
    info : CheckpointInfo
        The file's index.
    crc_status : {"verified", "absent", "zero", "partial"}
        ``"zero"`` is the 0 that MindSpore 2.10 writes in the trailer of an encrypted file in place
        of a CRC, which cannot be checked. ``"partial"`` means that some files of a sharded
        checkpoint store a CRC (all of which matched) and others do not.
    checked_bytes : int
        Bytes read and checked: the record stream of a ``.ckpt`` against its CRC trailer, the
        plaintext of an encrypted file by decrypting it (GCM tags or CBC padding), the tensors of
        a safetensors file against ``crc_num``. 0 when the file stores no CRC and is not
        encrypted.
    """

    info: CheckpointInfo
    crc_status: str
    checked_bytes: int
    shards: tuple[VerificationResult, ...] = ()


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def resolve_format(path: str, explicit: str | None, role: str = "file") -> str:
    """Return ``explicit`` if given, else the format that the extension of ``path`` names.

    Raises
    ------
    ValueError
        If ``explicit`` is not a known format, or it is None and the extension is neither
        ``.ckpt`` nor ``.safetensors``.
    """
    if explicit is not None:
        if explicit not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {explicit!r}")
        return explicit
    extension = os.path.splitext(path)[1].lower()
    if extension not in _EXTENSIONS:
        raise ValueError(
            f"the format of {role} {path!r} is unknown because its extension is neither .ckpt nor "
            ".safetensors; rename it, or give the format"
        )
    return _EXTENSIONS[extension]


def _encrypted_mode_of(first_bytes: bytes) -> str | None:
    if len(first_bytes) < 4:
        return None
    magic = int.from_bytes(first_bytes[:4], "little")
    for mode, mode_magic in crypto.MODES.items():
        if magic == mode_magic:
            return mode
    return None


class _PlainSource:
    """A plain ``.ckpt`` or ``.safetensors`` file, read in batches through the loader."""

    def __init__(self, path: str, file_format: str, workers: int | None) -> None:
        self.workers = workers
        with open(path, "rb", buffering=0) as file:
            size_bytes = os.fstat(file.fileno()).st_size
            if file_format == "ckpt":
                self.info = self._index_ckpt(path, file, size_bytes)
            else:
                self.info = self._index_safetensors(path, file, size_bytes)

    @staticmethod
    def _index_ckpt(path: str, file: BinaryIO, size_bytes: int) -> CheckpointInfo:
        mode = _encrypted_mode_of(file.read(4))
        if mode is not None:
            raise CheckpointError(
                path,
                f"the file is encrypted with {mode}; pass its key (dec_key, or --dec-key-hex on the "
                f"command line) and dec_mode {mode}",
                0,
            )
        index = ckpt_format.index_ckpt(path, file, size_bytes)
        return CheckpointInfo(
            path=path,
            format="ckpt",
            file_bytes=size_bytes,
            entries=index.entries,
            crc_location="trailer" if index.trailer_crc is not None else None,
            stored_crc=index.trailer_crc,
            data_end=index.data_end,
        )

    @staticmethod
    def _index_safetensors(path: str, file: BinaryIO, size_bytes: int) -> CheckpointInfo:
        index = safetensors_format.index_safetensors(path, file, size_bytes)
        int4 = safetensors_format.int4_names(index.metadata)
        for entry in index.entries:
            if entry.name in int4:
                safetensors_format.as_int4_entry(entry)  # raises unless the tensor is stored as bytes
        crc_text = index.metadata.get(safetensors_format.CRC_METADATA_KEY)
        try:
            crc = safetensors_format.stored_crc(index.metadata, path)
        except CheckpointError:
            crc = None  # verify reports it; inspect shows the raw metadata
        return CheckpointInfo(
            path=path,
            format="safetensors",
            file_bytes=size_bytes,
            entries=index.entries,
            metadata=index.metadata,
            crc_location="metadata" if crc_text is not None else None,
            stored_crc=crc,
            int4_names=frozenset(int4),
            data_end=size_bytes,
        )

    def load(self, entries: Sequence[Entry]) -> dict[str, Any]:
        names = {entry.name for entry in entries}
        loaded = api.load_checkpoint(
            self.info.path, choice_func=names.__contains__, workers=self.workers, format=self.info.format
        )
        _check_loaded(self.info.path, entries, loaded)
        return loaded


def _check_loaded(path: str, entries: Sequence[Entry], loaded: Mapping[str, Any]) -> None:
    """Raise if a batch does not match the index taken earlier, because the file changed."""
    for entry in entries:
        value = loaded.get(entry.name)
        if value is None:
            missing = True
        elif entry.kind == "tensor":
            missing = not isinstance(value, np.ndarray) or value.shape != entry.parts[0].shape
        else:
            missing = False
        if missing:
            raise CheckpointError(
                path,
                f"entry {entry.name!r} is missing or has changed since the file was indexed; the file "
                "changed during the operation, so run it again",
            )


class _PlaintextReader:
    """Seekable, read-only access to an encrypted checkpoint's plaintext, one frame at a time.

    Each frame is decrypted and authenticated whole when a read first touches it, and the last
    decrypted frame is cached, so sequential reads decrypt each frame once. The CRC32 of every
    decrypted frame's plaintext is kept in :attr:`frame_crcs`.
    """

    def __init__(self, path: str, fd: int, table: crypto.FrameTable, mode: str, key: bytes) -> None:
        self.path = path
        self.table = table
        self.size_bytes = table.plain_size_bytes
        self.frame_crcs: dict[int, int] = {}
        self._fd = fd
        self._mode = mode
        self._key = key
        self._frames = [frame for frame in table.frames if frame.plain_len_bytes > 0]
        self._starts = [frame.plain_offset for frame in self._frames]
        self._buffer = bytearray(max((frame.plain_len_bytes for frame in table.frames), default=0))
        self._cached_number = -1
        self._position = 0

    def __repr__(self) -> str:
        return f"_PlaintextReader(path={self.path!r}, mode={self._mode!r}, size_bytes={self.size_bytes})"

    def decrypt(self, frame: crypto.Frame) -> memoryview:
        """Decrypt ``frame`` into the cache unless it is there, and return its plaintext."""
        view = memoryview(self._buffer)[: frame.plain_len_bytes]
        if self._cached_number != frame.number:
            self._cached_number = -1
            crc = crypto.decrypt_frame_into(
                self._fd, self._mode, self._key, frame, view, path=self.path, want_crc=True
            )
            self.frame_crcs[frame.number] = crc or 0
            self._cached_number = frame.number
        return view

    def frame_at(self, plain_offset: int) -> crypto.Frame:
        """Return the frame whose plaintext contains ``plain_offset``."""
        position = bisect.bisect_right(self._starts, plain_offset) - 1
        return self._frames[max(position, 0)]

    def read_into(self, plain_offset: int, out: memoryview) -> None:
        """Fill ``out`` with the plaintext that starts at ``plain_offset``."""
        if plain_offset < 0 or plain_offset + len(out) > self.size_bytes:
            raise CheckpointError(
                self.path,
                f"plaintext range [{plain_offset}, {plain_offset + len(out)}) lies outside the "
                f"{self.size_bytes}-byte plaintext",
            )
        written = 0
        while written < len(out):
            offset = plain_offset + written
            frame = self.frame_at(offset)
            plaintext = self.decrypt(frame)
            start = offset - frame.plain_offset
            count = min(len(out) - written, frame.plain_len_bytes - start)
            out[written : written + count] = plaintext[start : start + count]
            written += count

    # The file protocol that index_ckpt uses: seek() and read().

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence == os.SEEK_END:
            offset += self.size_bytes
        self._position = max(offset, 0)
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        end = self.size_bytes if size is None or size < 0 else min(self.size_bytes, self._position + size)
        if end <= self._position:
            return b""
        out = bytearray(end - self._position)
        self.read_into(self._position, memoryview(out))
        self._position = end
        return bytes(out)


class _EncryptedSource:
    """An encrypted ``.ckpt`` file, indexed and read through a :class:`_PlaintextReader`."""

    def __init__(self, path: str, file: BinaryIO, dec_key: bytes, dec_mode: str) -> None:
        size_bytes = os.fstat(file.fileno()).st_size
        key = crypto.check_mode_and_key(path, dec_key, dec_mode)
        table = crypto.walk_frames(path, file, size_bytes, dec_mode, key)
        self.reader = _PlaintextReader(path, file.fileno(), table, dec_mode, key)
        try:
            index = ckpt_format.index_ckpt(path, cast(BinaryIO, self.reader), table.plain_size_bytes)
        except DecryptionError:
            raise
        except CheckpointError as exc:
            raise self._not_a_checkpoint(exc) from exc
        self.info = CheckpointInfo(
            path=path,
            format="ckpt",
            file_bytes=size_bytes,
            entries=index.entries,
            encryption=dec_mode,
            frame_count=len(table.frames),
            crc_location="trailer" if table.trailer_crc is not None else None,
            stored_crc=table.trailer_crc,
            data_end=table.data_end_offset,
        )

    def _not_a_checkpoint(self, exc: CheckpointError) -> DecryptionError:
        """Turn an error in the plaintext into one that names the frame in the file."""
        where = ""
        file_offset = None
        if exc.offset is not None and self.reader.size_bytes:
            frame = self.reader.frame_at(min(exc.offset, self.reader.size_bytes - 1))
            where = f" at plaintext byte {exc.offset} (frame {frame.number})"
            file_offset = frame.header_offset
        return DecryptionError(
            self.reader.path,
            f"the decrypted data is not a valid checkpoint{where}: {exc.reason}; the key is wrong or "
            "the file is damaged",
            file_offset,
        )

    def load(self, entries: Sequence[Entry]) -> dict[str, Any]:
        loaded: dict[str, Any] = {}
        for entry in entries:
            loaded[entry.name] = self._read_entry(entry)
        return loaded

    def _read_entry(self, entry: Entry) -> Any:
        arrays = []
        for part in entry.parts:
            raw = np.empty(part.nbytes, dtype=np.uint8)
            position = 0
            for start, length in part.ranges:
                self.reader.read_into(start, raw.data[position : position + length])
                position += length
            if entry.kind == "str":
                return _decode_string(self.reader, entry, raw)
            arrays.append(raw.view(part.dtype).reshape(part.shape))
        return arrays[0] if entry.kind == "tensor" else arrays


def _decode_string(reader: _PlaintextReader, entry: Entry, raw: np.ndarray) -> str:
    try:
        # MindSpore writes numpy U data, and numpy drops trailing NUL code points on reading.
        return raw.tobytes().decode("utf-32-le").rstrip("\x00")
    except UnicodeDecodeError as exc:
        plain_offset = entry.parts[0].ranges[0][0] if entry.parts[0].ranges else 0
        frame = reader.frame_at(plain_offset)
        raise CheckpointError(
            entry.path,
            f"string entry {entry.name!r} at plaintext byte {plain_offset} (frame {frame.number}) is not "
            f"valid UTF-32: {exc.reason}",
            frame.header_offset,
        ) from exc


class _ShardedSource:
    """Several plain files loaded as one checkpoint, as ``load_checkpoint`` loads them."""

    def __init__(self, source: SourcePath, file_format: str | None, workers: int | None) -> None:
        # The loader's own rule: a directory's .ckpt and .safetensors files in name order, the
        # files of an index JSON's weight_map, or the files of a list.
        display, files, weight_map = api._resolve_files(source)
        self.source = source
        self.file_format = file_format
        self.workers = workers
        self.sources = [_PlainSource(path, resolve_format(path, file_format), workers) for path in files]
        self.shards = [plain.info for plain in self.sources]
        entries = merge_shard_entries((shard.path, shard.entries) for shard in self.shards)
        if weight_map is not None:
            check_weight_map(display, weight_map, entries)
        formats = {shard.format for shard in self.shards}
        self.info = CheckpointInfo(
            path=display,
            format=formats.pop() if len(formats) == 1 else "mixed",
            file_bytes=sum(shard.file_bytes for shard in self.shards),
            entries=entries,
            int4_names=frozenset().union(*(shard.int4_names for shard in self.shards)),
            shards=tuple(self.shards),
        )

    def load(self, entries: Sequence[Entry]) -> dict[str, Any]:
        names = {entry.name for entry in entries}
        # load_checkpoint takes the same directory, index JSON or list that this source was given.
        source: Any = list(self.source) if isinstance(self.source, (list, tuple)) else self.source
        loaded = api.load_checkpoint(
            source, choice_func=names.__contains__, workers=self.workers, format=self.file_format
        )
        _check_loaded(self.info.path, entries, loaded)
        return loaded


def _is_sharded(source: SourcePath) -> bool:
    if isinstance(source, (list, tuple)):
        return True
    path = os.fspath(cast("str | os.PathLike[str]", source))
    return os.path.isdir(path) or path.endswith(".json")


@contextmanager
def _open_source(
    source: SourcePath,
    file_format: str | None,
    dec_key: bytes | None,
    dec_mode: str,
    workers: int | None,
) -> Iterator[_PlainSource | _EncryptedSource | _ShardedSource]:
    if _is_sharded(source):
        if dec_key is not None:
            raise ValueError(
                "a decryption key applies to a single .ckpt file; MindSpore does not shard encrypted files"
            )
        yield _ShardedSource(source, file_format, workers)
        return
    text_path = os.fspath(cast("str | os.PathLike[str]", source))
    resolved = resolve_format(text_path, file_format, "source")
    if dec_key is None:
        yield _PlainSource(text_path, resolved, workers)
        return
    if resolved != "ckpt":
        raise ValueError("a decryption key applies to .ckpt files only; MindSpore does not encrypt .safetensors files")
    with open(text_path, "rb", buffering=0) as file:
        yield _EncryptedSource(text_path, file, dec_key, dec_mode)


def describe(
    path: SourcePath,
    *,
    file_format: str | None = None,
    dec_key: bytes | None = None,
    dec_mode: str = "AES-GCM",
) -> CheckpointInfo:
    """Index a checkpoint file without reading tensor data.

    Parameters
    ----------
    path : str, os.PathLike or list of them
        A ``.ckpt`` (plain or encrypted) or ``.safetensors`` file, or a sharded checkpoint as
        :func:`mploader.load_checkpoint` takes it: a directory, an index JSON or a list of files.
    file_format : {"ckpt", "safetensors"}, optional
        The format of every file; by default taken from each extension.
    dec_key : bytes, optional
        Key of an encrypted ``.ckpt``. Indexing decrypts every frame that contains a record
        header, one frame at a time.
    dec_mode : {"AES-GCM", "AES-CBC", "SM4-CBC"}
        Cipher of an encrypted ``.ckpt``.

    Returns
    -------
    CheckpointInfo

    Raises
    ------
    CheckpointError
        If the file is invalid. :class:`DecryptionError` for a wrong key or mode.
    ValueError
        If the format is unknown, a key is given for a safetensors file, or the files of a
        sharded checkpoint repeat a name or disagree with its index JSON.
    OSError
        If the file cannot be read.
    """
    with _open_source(path, file_format, dec_key, dec_mode, None) as source:
        return source.info


def info_as_dict(info: CheckpointInfo) -> dict[str, Any]:
    """Describe a checkpoint as a JSON-ready dict: file, format, entries, metadata and CRC.

    Each entry has ``name``, ``kind``, ``dtype`` (the file's type name), ``numpy_dtype``,
    ``shape`` and ``bytes``. A string entry has shape None, and a map tensor has dtype and shape
    None and lists its ``parts`` (``keys``, ``values``, ``status``) with the same fields. For a
    sharded checkpoint, each entry also names its ``file``, and ``shards`` lists each file's
    fields without its entries. ``shards`` is None for a single file.
    """
    document = _file_fields(info)
    document["entries"] = [_entry_fields(entry, info.int4_names, bool(info.shards)) for entry in info.entries]
    document["shards"] = None
    if info.shards:
        document["shards"] = [_file_fields(shard) for shard in info.shards]
    return document


def _file_fields(info: CheckpointInfo) -> dict[str, Any]:
    return {
        "file": info.path,
        "format": info.format,
        "file_bytes": info.file_bytes,
        "encryption": None if info.encryption is None else {"mode": info.encryption, "frames": info.frame_count},
        "crc": None if info.crc_location is None else {"location": info.crc_location, "value": info.stored_crc},
        "metadata": info.metadata,
        "entry_count": len(info.entries),
        "tensor_bytes": info.tensor_bytes,
    }


def _entry_fields(entry: Entry, int4_names: frozenset[str], with_file: bool) -> dict[str, Any]:
    description: dict[str, Any] = {"name": entry.name, "kind": entry.kind}
    if entry.kind == "map":
        description.update(dtype=None, numpy_dtype=None, shape=None, bytes=entry.nbytes)
        description["parts"] = [
            {"part": part_name, **_part_fields(part)} for part_name, part in zip(_MAP_PART_NAMES, entry.parts)
        ]
    elif entry.kind == "str":
        description.update(dtype=entry.parts[0].type_name, numpy_dtype=None, shape=None, bytes=entry.nbytes)
    else:
        description.update(_part_fields(entry.parts[0]))
        if entry.name in int4_names:
            description["dtype"] = safetensors_format.INT4_TYPE_NAME
    if with_file:
        description["file"] = entry.path
    return description


def _part_fields(part: Any) -> dict[str, Any]:
    return {
        "dtype": part.type_name,
        "numpy_dtype": part.dtype.name,
        "shape": list(part.shape),
        "bytes": part.nbytes,
    }


# ----------------------------------------------------------------------------------------------
# Batches and CRCs
# ----------------------------------------------------------------------------------------------


def plan_batches(entries: Sequence[Entry], max_bytes: int) -> list[list[Entry]]:
    """Split ``entries``, in order, into batches of at most ``max_bytes`` content bytes.

    A batch contains at least one entry, so an entry larger than ``max_bytes`` is a batch alone.
    """
    batches: list[list[Entry]] = []
    current: list[Entry] = []
    current_bytes = 0
    for entry in entries:
        if current and current_bytes + entry.nbytes > max_bytes:
            batches.append(current)
            current = []
            current_bytes = 0
        current.append(entry)
        current_bytes += entry.nbytes
    if current:
        batches.append(current)
    return batches


def _byte_view(array: np.ndarray) -> memoryview:
    # ml_dtypes types such as bfloat16 do not export buffers, but a uint8 view does.
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------


class _CrcStream:
    """A binary sink that keeps the running CRC32 of what is written through it."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.crc = 0

    def write(self, data: bytes | memoryview) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self.sink.write(data)


class _CkptSink:
    """Write ``.ckpt`` records batch by batch to a temporary file, optionally encrypted."""

    def __init__(self, path: str, *, crc_check: bool, enc_key: bytes | None, enc_mode: str) -> None:
        self.path = path
        self._crc_check = crc_check
        self._output = ckpt_format.AtomicFile(path)
        self._encrypted: crypto.EncryptingWriter | None = None
        self._plain: _CrcStream | None = None
        try:
            if enc_key is not None:
                self._encrypted = crypto.EncryptingWriter(self._output.file, enc_mode, enc_key)
            else:
                self._plain = _CrcStream(self._output.file)
        except BaseException:
            self._output.abort()
            raise

    def write(self, entries: Sequence[Entry], values: Mapping[str, Any]) -> None:
        items = ckpt_format.normalize_save_obj({entry.name: values[entry.name] for entry in entries})
        ckpt_format.write_checkpoint(items, self._encrypted if self._encrypted is not None else self._plain)

    def commit(self) -> None:
        if self._encrypted is not None:
            self._encrypted.close()
            crc = self._encrypted.plaintext_crc32
        else:
            assert self._plain is not None
            crc = self._plain.crc
        if self._crc_check:
            # As in save_checkpoint, the trailer of an encrypted file contains the plaintext's CRC32.
            self._output.file.write(crc_format.make_trailer(crc))
        self._output.commit()

    def abort(self) -> None:
        self._output.abort()


class _SafetensorsSink:
    """Write a safetensors file batch by batch through :class:`SafetensorsWriter`."""

    def __init__(self, path: str, entries: Sequence[Entry], metadata: Mapping[str, str]) -> None:
        layout = [(entry.name, entry.parts[0].dtype, entry.parts[0].shape) for entry in entries]
        self._writer = safetensors_format.SafetensorsWriter(path, layout, metadata)

    def write(self, entries: Sequence[Entry], values: Mapping[str, Any]) -> None:
        for entry in entries:
            self._writer.write(np.ascontiguousarray(values[entry.name]))

    def commit(self) -> None:
        self._writer.commit()

    def abort(self) -> None:
        self._writer.abort()


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def _select(entries: Iterable[Entry], choice: Sequence[str] | None, exclude: Sequence[str] | None) -> list[Entry]:
    kept_prefixes = tuple(choice) if choice else None
    dropped_prefixes = tuple(exclude) if exclude else None
    selected = []
    for entry in entries:
        if kept_prefixes is not None and not entry.name.startswith(kept_prefixes):
            continue
        if dropped_prefixes is not None and entry.name.startswith(dropped_prefixes):
            continue
        selected.append(entry)
    return selected


def _unsupported_reason(entry: Entry, output_format: str, int4_names: frozenset[str]) -> str | None:
    """Return why ``output_format`` cannot store ``entry``, or None when it can."""
    part = entry.parts[0]
    if output_format == "safetensors":
        if entry.kind == "str":
            return "a string entry, and safetensors files store only tensors"
        if entry.kind == "map":
            return "a map tensor, and safetensors files store only tensors"
        try:
            safetensors_format.safetensors_type_of(part.dtype)
        except TypeError:
            return f"of type {part.type_name}, which safetensors has no type for"
        return None
    if entry.name in int4_names:
        return "marked Int4 (packed 4-bit) in the safetensors metadata, which mploader cannot write to a .ckpt"
    if entry.kind == "tensor":
        try:
            ckpt_type_of(part.dtype)
        except TypeError:
            return f"of type {part.type_name}, which MindSpore .ckpt files have no type for"
    return None


def _split_supported(
    entries: Sequence[Entry], output_format: str, int4_names: frozenset[str], skip_unsupported: bool, source: str
) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Return the entries to write and the skipped ones with reasons, or raise for unsupported ones."""
    kept: list[Entry] = []
    empty: list[tuple[str, str]] = []
    unsupported: list[tuple[str, str]] = []
    for entry in entries:
        if output_format == "ckpt" and entry.kind == "tensor" and 0 in entry.parts[0].shape:
            # save_checkpoint drops these too: MindSpore writes no record for a tensor without elements.
            shape = list(entry.parts[0].shape)
            empty.append((entry.name, f"empty (shape {shape}), and .ckpt files store no empty tensors"))
            continue
        reason = _unsupported_reason(entry, output_format, int4_names)
        if reason is None:
            kept.append(entry)
        else:
            unsupported.append((entry.name, reason))

    if unsupported and not skip_unsupported:
        name, reason = unsupported[0]
        more = f" (and {len(unsupported) - 1} more entries)" if len(unsupported) > 1 else ""
        raise ValueError(
            f"cannot convert {source} to {output_format}: entry {name!r} is {reason}{more}; exclude it, or "
            "skip unsupported entries (--skip-unsupported on the command line)"
        )
    skipped = empty + unsupported
    for name, reason in skipped:
        logger.warning("%s: skipping entry %r: it is %s", source, name, reason)
    return kept, skipped


def _output_metadata(info: CheckpointInfo, entries: Sequence[Entry], crc: int | None) -> dict[str, str]:
    """Return the safetensors metadata: a single safetensors source's, else MindSpore's.

    A stale ``crc_num`` and Int4 markers of entries not written are dropped.
    """
    written = {entry.name for entry in entries}
    if info.metadata is None:
        return safetensors_format.mindspore_metadata(crc=crc, int4_tensor_names=sorted(info.int4_names & written))
    metadata = {
        key: value
        for key, value in info.metadata.items()
        if key != safetensors_format.CRC_METADATA_KEY
        and not (key in info.int4_names and key not in written)
    }
    if crc is not None:
        metadata[safetensors_format.CRC_METADATA_KEY] = str(crc)
    return metadata


def _check_encryption_key(enc_key: bytes | None, enc_mode: str, output_format: str) -> None:
    if enc_key is None:
        return
    if output_format != "ckpt":
        raise ValueError(
            "an encryption key applies to .ckpt output only; MindSpore does not encrypt .safetensors files"
        )
    if enc_mode not in crypto.MODES:
        raise ValueError(f"enc_mode must be one of {', '.join(crypto.MODES)}, not {enc_mode!r}")
    allowed = crypto.KEY_SIZES_BYTES[enc_mode]
    if len(enc_key) not in allowed:
        lengths = " or ".join(str(length) for length in allowed)
        raise ValueError(
            f"the encryption key is {len(enc_key)} bytes long, but {enc_mode} takes keys of {lengths} bytes"
        )


class _ProgressCounter:
    """Report ``progress(done_bytes, total_bytes)`` as batches finish."""

    def __init__(self, progress: ProgressCallback | None, total_bytes: int) -> None:
        self._progress = progress
        self._total_bytes = total_bytes
        self._done_bytes = 0

    def advance(self, batch: Sequence[Entry]) -> None:
        self._done_bytes += sum(entry.nbytes for entry in batch)
        if self._progress is not None:
            self._progress(self._done_bytes, self._total_bytes)


def _mindspore_crc_of(
    opened: _PlainSource | _EncryptedSource | _ShardedSource,
    batches: Sequence[Sequence[Entry]],
    path: str,
    counter: _ProgressCounter,
) -> int:
    """Compute MindSpore's ``crc_num`` over the batches' tensors, one batch in memory at a time."""
    accumulator = safetensors_format.MindsporeCrc(path)
    for batch in batches:
        values = opened.load(batch)
        for entry in batch:
            accumulator.add(entry.name, values[entry.name])
        del values
        counter.advance(batch)
    return accumulator.value()


def convert(
    source: SourcePath,
    destination: str | os.PathLike[str],
    *,
    source_format: str | None = None,
    output_format: str | None = None,
    choice: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    dec_key: bytes | None = None,
    dec_mode: str = "AES-GCM",
    enc_key: bytes | None = None,
    enc_mode: str = "AES-GCM",
    crc_check: bool = False,
    skip_unsupported: bool = False,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> ConversionResult:
    """Convert a checkpoint between ``.ckpt`` and ``.safetensors``, streaming it in batches.

    Parameters
    ----------
    source : str, os.PathLike or list of them
        A ``.ckpt`` (plain, or encrypted with ``dec_key``) or ``.safetensors`` file, or a sharded
        checkpoint (a directory, an index JSON or a list of files), which becomes one file.
    destination : str or os.PathLike
        The file to write. It appears only when complete, replacing any file of that name. On any
        error, Ctrl-C included, no partial or temporary file remains.
    source_format, output_format : {"ckpt", "safetensors"}, optional
        By default taken from each file's extension.
    choice : sequence of str, optional
        Keep only entries whose names start with one of these prefixes.
    exclude : sequence of str, optional
        Drop entries whose names start with one of these prefixes (applied after ``choice``).
    dec_key : bytes, optional
        Key of an encrypted source.
    dec_mode : {"AES-GCM", "AES-CBC", "SM4-CBC"}
        Cipher of an encrypted source.
    enc_key : bytes, optional
        Encrypt a ``.ckpt`` destination with this key, in MindSpore's frames.
    enc_mode : {"AES-GCM", "AES-CBC", "SM4-CBC"}
        Cipher for ``enc_key``.
    crc_check : bool, default False
        Store a CRC32: the ``crc_num`` trailer of a ``.ckpt``, or MindSpore's ``crc_num`` metadata
        of a safetensors file. The latter must be in the header, so the source is read twice.
    skip_unsupported : bool, default False
        Leave out, with a warning, entries the output format cannot store (strings and map
        tensors in safetensors, F8 and complex types in ``.ckpt``) instead of raising.
    workers : int, optional
        Worker processes for reading a plain source, as in :func:`mploader.load_checkpoint`.
        An encrypted source is decrypted in this process.
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes)`` after each batch.

    Returns
    -------
    ConversionResult

    Raises
    ------
    ValueError
        If an entry cannot be stored in the output format (unless ``skip_unsupported``), no entry
        is selected, a format is unknown, or a key does not fit its mode.
        :class:`~mploader.errors.CheckpointError` if the source is invalid.
    OSError
        If a file cannot be read or written.

    Notes
    -----
    Entries keep the source's file order, which is the data order for a safetensors source.
    Tensors with zero elements are left out of a ``.ckpt``, with a warning, as MindSpore does.
    A safetensors output gets the metadata of a single safetensors source, else MindSpore's
    ``{"format": "ms"}`` and Int4 markers, plus ``crc_num`` with ``crc_check``.
    """
    destination_path = os.fspath(destination)
    resolved_output = resolve_format(destination_path, output_format, "destination")
    _check_encryption_key(enc_key, enc_mode, resolved_output)

    with _open_source(source, source_format, dec_key, dec_mode, workers) as opened:
        info = opened.info
        source_path = info.path
        selected = _select(info.entries, choice, exclude)
        if not selected:
            raise ValueError(
                f"no entry of {source_path} is selected ({len(info.entries)} entries before filtering); "
                "check the choice and exclude prefixes"
            )
        entries, skipped = _split_supported(selected, resolved_output, info.int4_names, skip_unsupported, source_path)
        if not entries:
            raise ValueError(f"no entry of {source_path} can be stored in {resolved_output} after skipping")

        batches = plan_batches(entries, BATCH_MAX_BYTES)
        tensor_bytes = sum(entry.nbytes for entry in entries)
        passes = 2 if crc_check and resolved_output == "safetensors" else 1
        counter = _ProgressCounter(progress, tensor_bytes * passes)
        logger.debug(
            "converting %s (%s) to %s (%s): %d entries, %d bytes, %d batches, %d passes",
            source_path, info.format, destination_path, resolved_output, len(entries), tensor_bytes,
            len(batches), passes,
        )

        crc = _mindspore_crc_of(opened, batches, source_path, counter) if passes == 2 else None
        sink: _CkptSink | _SafetensorsSink
        if resolved_output == "safetensors":
            sink = _SafetensorsSink(destination_path, entries, _output_metadata(info, entries, crc))
        else:
            sink = _CkptSink(destination_path, crc_check=crc_check, enc_key=enc_key, enc_mode=enc_mode)
        try:
            for batch in batches:
                values = opened.load(batch)
                sink.write(batch, values)
                del values
                counter.advance(batch)
            sink.commit()
        except BaseException:
            sink.abort()
            raise

    return ConversionResult(
        source=source_path,
        destination=destination_path,
        source_format=info.format,
        output_format=resolved_output,
        entry_count=len(entries),
        tensor_bytes=tensor_bytes,
        output_bytes=os.path.getsize(destination_path),
        skipped=skipped,
        batch_count=len(batches),
        passes=passes,
    )


# ----------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------


def verify(
    path: SourcePath,
    *,
    file_format: str | None = None,
    dec_key: bytes | None = None,
    dec_mode: str = "AES-GCM",
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> VerificationResult:
    """Check a checkpoint's structure, stored CRC and encryption without keeping its tensors.

    What is checked:

    - every format: the full index (lengths, offsets, types, shapes), and that string entries
      decode;
    - a ``.ckpt`` with a ``crc_num`` trailer: the CRC32 of every record byte, read through the
      loader with ``crc_check=True``;
    - an encrypted ``.ckpt``: every frame is decrypted, which checks each AES-GCM tag or CBC
      padding, and a non-zero trailer is compared with the CRC32 of the plaintext;
    - a safetensors file with ``crc_num`` metadata: MindSpore's CRC32 over names and tensors,
      computed in batches of :data:`BATCH_MAX_BYTES`.

    Tensor bytes that no CRC or tag covers are not read, because nothing could be compared. For a
    sharded checkpoint, every file is checked, and also that no name is in two files and that an
    index JSON matches the files.

    Parameters
    ----------
    path : str, os.PathLike or list of them
        The file to check, or a sharded checkpoint: a directory, an index JSON or a list of files.
    file_format : {"ckpt", "safetensors"}, optional
        By default taken from each extension.
    dec_key : bytes, optional
        Key of an encrypted ``.ckpt``.
    dec_mode : {"AES-GCM", "AES-CBC", "SM4-CBC"}
        Cipher of an encrypted ``.ckpt``.
    workers : int, optional
        Worker processes for reading a plain file. None uses the pool for files of 64 MiB or
        more.
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes)`` as the check proceeds.

    Returns
    -------
    VerificationResult
        Only for a valid file.

    Raises
    ------
    CheckpointError
        If the file is invalid, with the file's path and, where known, the byte offset.
        :class:`~mploader.errors.CrcMismatchError` for a CRC mismatch and
        :class:`~mploader.errors.DecryptionError` for a wrong key or a damaged frame.
    ValueError
        If the format is unknown, a key is given for a safetensors file, or the files of a
        sharded checkpoint repeat a name or disagree with its index JSON.
    OSError
        If the file cannot be read.
    """
    with _open_source(path, file_format, dec_key, dec_mode, workers) as opened:
        if isinstance(opened, _EncryptedSource):
            return _verify_encrypted(opened, progress)
        if isinstance(opened, _ShardedSource):
            return _verify_sharded(opened, workers, progress)
        return _verify_plain(opened, workers, progress)


def _verify_plain(source: _PlainSource, workers: int | None, progress: ProgressCallback | None) -> VerificationResult:
    if source.info.format == "ckpt":
        return _verify_ckpt(source, workers, progress)
    return _verify_safetensors(source, progress)


def _verify_sharded(
    source: _ShardedSource, workers: int | None, progress: ProgressCallback | None
) -> VerificationResult:
    all_bytes = source.info.file_bytes
    finished_bytes = 0
    results = []
    for plain in source.sources:
        file_progress = None
        if progress is not None:
            file_progress = _scaled_progress(progress, finished_bytes, plain.info.file_bytes, all_bytes)
        results.append(_verify_plain(plain, workers, file_progress))
        finished_bytes += plain.info.file_bytes
        if progress is not None:
            progress(finished_bytes, all_bytes)

    statuses = {result.crc_status for result in results}
    status = statuses.pop() if len(statuses) == 1 else "partial"
    checked_bytes = sum(result.checked_bytes for result in results)
    return VerificationResult(source.info, status, checked_bytes, tuple(results))


def _scaled_progress(
    progress: ProgressCallback, start_bytes: int, share_bytes: int, all_bytes: int
) -> ProgressCallback:
    """Map one file's progress onto its share (by file size) of the whole checkpoint's."""

    def report(done_bytes: int, total_bytes: int) -> None:
        if total_bytes:
            progress(start_bytes + share_bytes * done_bytes // total_bytes, all_bytes)

    return report


def _resolve_workers(workers: int | None, read_bytes: int) -> int:
    """Pick the worker count for reading ``read_bytes``, as the loader does for its own reads."""
    from .coordinator import INPROCESS_MAX_BYTES
    from .pool import default_worker_count

    if workers is not None:
        return workers
    return 0 if read_bytes < INPROCESS_MAX_BYTES else default_worker_count()


def _verify_ckpt(source: _PlainSource, workers: int | None, progress: ProgressCallback | None) -> VerificationResult:
    info = source.info
    # The loader reads every record byte for the CRC but keeps only the selected entries, so
    # select the strings (to decode them) and the smallest entry (a load needs one).
    keep = {entry.name for entry in info.entries if entry.kind == "str"}
    keep.add(min(info.entries, key=lambda entry: entry.nbytes).name)
    has_crc = info.stored_crc is not None
    read_bytes = info.data_end if has_crc else sum(entry.nbytes for entry in info.entries if entry.name in keep)
    checked_bytes = info.data_end if has_crc else 0
    try:
        api.load_checkpoint(
            info.path,
            choice_func=keep.__contains__,
            crc_check=has_crc,
            workers=_resolve_workers(workers, read_bytes),
            format="ckpt",
        )
    except CrcMismatchError as exc:
        raise CrcMismatchError(info.path, exc.reason, info.data_end) from exc
    if progress is not None:
        progress(read_bytes, read_bytes)
    return VerificationResult(info, "verified" if has_crc else "absent", checked_bytes)


def _verify_safetensors(source: _PlainSource, progress: ProgressCallback | None) -> VerificationResult:
    info = source.info
    assert info.metadata is not None
    stored = safetensors_format.stored_crc(info.metadata, info.path)
    if stored is None:
        return VerificationResult(info, "absent", 0)

    total_bytes = info.tensor_bytes
    batches = plan_batches(info.entries, BATCH_MAX_BYTES)
    computed = _mindspore_crc_of(source, batches, info.path, _ProgressCounter(progress, total_bytes))
    if computed != stored:
        raise CrcMismatchError(
            info.path,
            f"CRC32 mismatch: metadata crc_num stores {stored}, the tensors hash to {computed}; the file is "
            "corrupt or was modified after it was written",
            safetensors_format.LENGTH_FIELD_BYTES,
        )
    return VerificationResult(info, "verified", total_bytes)


def _verify_encrypted(source: _EncryptedSource, progress: ProgressCallback | None) -> VerificationResult:
    info = source.info
    reader = source.reader
    frames = reader.table.frames
    total_bytes = reader.size_bytes
    done_bytes = 0
    for frame in frames:
        if frame.number not in reader.frame_crcs:
            reader.decrypt(frame)
        done_bytes += frame.plain_len_bytes
        if progress is not None:
            progress(done_bytes, total_bytes)

    for entry in info.entries:
        if entry.kind == "str":
            source.load([entry])

    stored = reader.table.trailer_crc
    if stored is None:
        status = "absent"
    elif stored == 0:
        status = "zero"
    else:
        computed = crc_format.combine_crcs((reader.frame_crcs[frame.number], frame.plain_len_bytes) for frame in frames)
        if computed != stored:
            raise CrcMismatchError(
                info.path,
                f"CRC32 mismatch: the trailer stores {stored}, the plaintext hashes to {computed}; the file is "
                "corrupt or was modified after it was written",
                reader.table.data_end_offset,
            )
        status = "verified"
    return VerificationResult(info, status, total_bytes)

