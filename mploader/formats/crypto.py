"""Encrypted MindSpore ``.ckpt`` files: locate, decrypt and write their frames.

MindSpore (checked against 2.10) encrypts the plain ``.ckpt`` record stream in blocks of
64 MiB (67,108,864 bytes, the last block shorter). Each block is encrypted on its own with a fresh
random 16-byte IV and stored as one frame, and the file is the frames back to back. Every integer
is a little-endian uint32::

    AES-GCM  magic 0x7F3A5ED8 | tag (16) | frame_len | iv_len | IV (16) | cipher_len | ciphertext
    AES-CBC  magic 0x7F3A5ED9 |            frame_len | iv_len | IV (16) | cipher_len | ciphertext
    SM4-CBC  magic 0x7F3A5EDA |            frame_len | iv_len | IV (16) | cipher_len | ciphertext

- ``iv_len`` is 16, and ``frame_len = 4 + iv_len + 4 + cipher_len`` counts the bytes after it.
- A GCM header is 48 bytes and a CBC header is 32 bytes.
- AES-GCM uses the first 12 bytes of the IV as its nonce, no associated data and a 16-byte tag.
  Its ciphertext is as long as its plaintext. AES keys are 16, 24 or 32 bytes long.
- AES-CBC and SM4-CBC pad each frame's plaintext with PKCS#7, so ``cipher_len`` is a positive
  multiple of 16 and exceeds the plaintext by 1 to 16 bytes. SM4 keys are 16 bytes long.
- With ``crc_check=True`` and a key, MindSpore 2.10 appends a 17-byte CRC trailer of value 0 after
  the last frame (``b"crc_num"`` and a 10-byte big-endian integer). It is not a frame.

Frames are independent, so :func:`walk_frames` reads only their headers and
:func:`decrypt_frame_into` lets several processes decrypt them into one plaintext buffer.
This module imports ``cryptography`` on first use and never imports numpy, because worker
processes import it.
"""

from __future__ import annotations

import logging
import os
import struct
import types
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, TypeAlias, final

from mploader.errors import CheckpointError, DecryptionError
from mploader.formats.crc import TRAILER_MAGIC, TRAILER_SIZE_BYTES, parse_trailer

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext

__all__ = [
    "FRAME_PLAINTEXT_BYTES",
    "KEY_SIZES_BYTES",
    "MODES",
    "EncryptingWriter",
    "Frame",
    "FrameTable",
    "check_mode_and_key",
    "decrypt_frame_into",
    "decrypt_prefix",
    "walk_frames",
]

logger = logging.getLogger("mploader")

BytesLike: TypeAlias = "bytes | bytearray | memoryview"
PathLike: TypeAlias = "str | os.PathLike[str]"

FRAME_PLAINTEXT_BYTES = 64 * 1024 * 1024

MODES: Mapping[str, int] = types.MappingProxyType(
    {"AES-GCM": 0x7F3A5ED8, "AES-CBC": 0x7F3A5ED9, "SM4-CBC": 0x7F3A5EDA}
)
KEY_SIZES_BYTES: Mapping[str, tuple[int, ...]] = types.MappingProxyType(
    {"AES-GCM": (16, 24, 32), "AES-CBC": (16, 24, 32), "SM4-CBC": (16,)}
)

_MODE_BY_MAGIC = {magic: mode for mode, magic in MODES.items()}
_GCM = "AES-GCM"
_IV_BYTES = 16
_GCM_NONCE_BYTES = 12
_GCM_TAG_BYTES = 16
_CIPHER_BLOCK_BYTES = 16
_MAGIC_BYTES = 4
_UINT32 = struct.Struct("<I")
# magic, tag, frame_len, iv_len, IV, cipher_len
_GCM_HEADER = struct.Struct(f"<I{_GCM_TAG_BYTES}sII{_IV_BYTES}sI")
# magic, frame_len, iv_len, IV, cipher_len
_CBC_HEADER = struct.Struct(f"<III{_IV_BYTES}sI")
# Bytes that frame_len counts besides the ciphertext: iv_len, the IV and cipher_len.
_FRAME_LEN_OVERHEAD_BYTES = 4 + _IV_BYTES + 4
_PLAIN_CHECKPOINT_FIRST_BYTE = 0x0A
# frame_len is a uint32 and counts the ciphertext, which CBC padding makes up to a block longer.
_MAX_FRAME_PLAINTEXT_BYTES = 2**32 - 1 - _FRAME_LEN_OVERHEAD_BYTES - _CIPHER_BLOCK_BYTES

# Ciphertext read per os.pread call while decrypting a frame. Larger chunks mean fewer system
# calls, and smaller ones mean less memory per worker. Each decrypting call allocates one buffer.
_READ_CHUNK_BYTES = 4 * 1024 * 1024
# cryptography's update_into requires an output buffer of at least len(data) + block size - 1
# bytes, even when it writes only len(data). Output closer than this to the end of the caller's
# buffer goes through a small scratch buffer instead.
_UPDATE_INTO_SLACK_BYTES = _CIPHER_BLOCK_BYTES - 1


class Frame(NamedTuple):
    """One encrypted frame of a checkpoint.

    A plain tuple of ints and bytes, so it pickles small and workers can rebuild it from a tuple
    with ``Frame._make``.

    Attributes
    ----------
    number : int
        Position of the frame in the file, from 0. The field is not called ``index`` because that
        name would hide ``tuple.index``.
    header_offset : int
        Absolute offset of the frame's magic.
    cipher_offset : int
        Absolute offset of the ciphertext.
    cipher_len_bytes : int
        Length of the ciphertext.
    iv : bytes
        The 16-byte IV stored in the header. AES-GCM uses its first 12 bytes as the nonce.
    tag : bytes
        The 16-byte AES-GCM tag, or ``b""`` for the CBC modes.
    plain_offset : int
        Offset of this frame's plaintext in the whole plaintext stream.
    plain_len_bytes : int
        Length of the frame's plaintext. For the CBC modes this comes from the padding of the
        last cipher block, which a wrong key can fake, see :func:`walk_frames`.
    """

    number: int
    header_offset: int
    cipher_offset: int
    cipher_len_bytes: int
    iv: bytes
    tag: bytes
    plain_offset: int
    plain_len_bytes: int


class FrameTable(NamedTuple):
    """The frames of an encrypted checkpoint and what follows them.

    Attributes
    ----------
    frames : list of Frame
        All frames in file order. Their plaintexts are contiguous in this order.
    plain_size_bytes : int
        Length of the whole plaintext, the sum of the frames' ``plain_len_bytes``.
    trailer_crc : int or None
        The value of a CRC trailer found after the last frame, or None if there is none.
        MindSpore 2.10 stores 0 there, not a CRC of anything.
    data_end_offset : int
        Absolute offset just after the last frame, where a trailer starts if there is one.
    """

    frames: list[Frame]
    plain_size_bytes: int
    trailer_crc: int | None
    data_end_offset: int


def check_mode_and_key(path: PathLike, key: BytesLike, mode: str) -> bytes:
    """Validate a decryption mode and key for one file.

    Parameters
    ----------
    path : str or os.PathLike
        The file the key is for, named in errors.
    key : bytes, bytearray or memoryview
        The key. It never appears in an error message.
    mode : str
        One of :data:`MODES`: ``"AES-GCM"``, ``"AES-CBC"`` or ``"SM4-CBC"``.

    Returns
    -------
    bytes
        The key as an immutable ``bytes`` copy.

    Raises
    ------
    TypeError
        If ``mode`` is not a str or ``key`` is not bytes-like.
    ValueError
        If ``mode`` is not one of :data:`MODES`.
    DecryptionError
        If the key length does not fit the mode.
    """
    _check_mode(mode, "dec_mode")
    key_bytes = _key_to_bytes(key, "dec_key")
    allowed = KEY_SIZES_BYTES[mode]
    if len(key_bytes) not in allowed:
        raise DecryptionError(
            path,
            f"dec_key is {len(key_bytes)} bytes long, but {mode} takes keys of "
            f"{_format_lengths(allowed)} bytes; pass the key the file was encrypted with",
        )
    return key_bytes


def walk_frames(
    path: PathLike,
    fileobj: BinaryIO,
    file_size_bytes: int,
    mode: str,
    key: BytesLike,
) -> FrameTable:
    """Locate every frame of an encrypted checkpoint by reading only the frame headers.

    Parameters
    ----------
    path : str or os.PathLike
        The file's path, named in errors.
    fileobj : binary file object
        The open file. It must support ``seek`` and ``read``. Its position changes.
    file_size_bytes : int
        The file's size, for example from ``os.fstat``. Every header field is checked against it.
    mode : str
        The mode the caller expects: ``"AES-GCM"``, ``"AES-CBC"`` or ``"SM4-CBC"``.
    key : bytes-like
        The key. The CBC modes use it to read the padding of each frame's last block.

    Returns
    -------
    FrameTable
        The frames with their plaintext offsets, the plaintext size and any CRC trailer.

    Raises
    ------
    TypeError, ValueError, DecryptionError
        As :func:`check_mode_and_key` raises them.
    DecryptionError
        If the file is empty, not encrypted, encrypted with another mode or truncated. Also if a
        header field is invalid, or a CRC trailer is not the last 17 bytes. For the CBC modes,
        also if a frame's last block has invalid PKCS#7 padding, which means a wrong key or a
        damaged frame.
    CheckpointError
        If the file is shorter than ``file_size_bytes`` when read.

    Notes
    -----
    A wrong AES-GCM key is not detected here, because only decrypting a whole frame checks its
    tag. A wrong CBC key makes the last block's padding look valid in about 1 of 256 frames, so
    a single-frame file can pass this walk with a wrong key and wrong ``plain_len_bytes``.
    :func:`decrypt_frame_into` then returns garbage without an error for that frame. Callers must
    therefore check that the decrypted plaintext parses as a checkpoint and report a failure as a
    wrong key or a damaged file. :func:`decrypt_prefix` gives a cheap early check of the first
    bytes before all frames are decrypted.
    """
    key_bytes = check_mode_and_key(path, key, mode)
    if file_size_bytes <= 0:
        raise DecryptionError(
            path, f"the file is empty, so it is not an encrypted checkpoint for dec_mode {mode}; check the path", 0
        )

    header_bytes = _header_size_bytes(mode)
    frames: list[Frame] = []
    offset = 0
    plain_offset = 0
    trailer_crc: int | None = None
    while offset < file_size_bytes:
        remaining_bytes = file_size_bytes - offset
        head = _read_exact(path, fileobj, offset, min(header_bytes, remaining_bytes), "frame header")

        if head.startswith(TRAILER_MAGIC) and frames:
            trailer_crc = _read_trailer(path, fileobj, offset, remaining_bytes)
            break

        _check_magic(path, head, offset, len(frames), mode)
        if remaining_bytes < header_bytes:
            raise DecryptionError(
                path,
                f"frame {len(frames)} is truncated: its {mode} header needs {header_bytes} bytes, but "
                f"the file ends {remaining_bytes} bytes after its start; the file is incomplete, "
                f"so copy or save it again",
                offset,
            )

        frame = _parse_header(path, head, offset, len(frames), plain_offset, mode, file_size_bytes)
        if mode != _GCM:
            frame = frame._replace(plain_len_bytes=_cbc_plain_len(path, fileobj, mode, key_bytes, frame))
        frames.append(frame)
        offset = frame.cipher_offset + frame.cipher_len_bytes
        plain_offset += frame.plain_len_bytes

    logger.debug(
        "walked %d %s frames of %s: %d plaintext bytes, CRC trailer %s",
        len(frames), mode, os.fspath(path), plain_offset, "present" if trailer_crc is not None else "absent",
    )
    return FrameTable(frames, plain_offset, trailer_crc, offset)


def decrypt_frame_into(
    fd: int,
    mode: str,
    key: BytesLike,
    frame: Frame,
    out: memoryview,
    *,
    path: PathLike,
    want_crc: bool,
) -> int | None:
    """Decrypt one frame straight into a caller's buffer.

    Parameters
    ----------
    fd : int
        An open file descriptor of the encrypted file. It is read with ``os.pread``, so its
        position does not change and several threads may share it.
    mode : str
        ``"AES-GCM"``, ``"AES-CBC"`` or ``"SM4-CBC"``.
    key : bytes-like
        The key.
    frame : Frame
        A frame from :func:`walk_frames` on the same file.
    out : memoryview
        Writable, C-contiguous buffer of exactly ``frame.plain_len_bytes`` bytes, usually a slice
        of a larger shared buffer. Nothing outside it is written.
    path : str or os.PathLike
        The file's path, named in errors.
    want_crc : bool
        Whether to compute the CRC32 of the frame's plaintext.

    Returns
    -------
    int or None
        ``zlib.crc32`` of the plaintext written to ``out`` when ``want_crc`` is true, else None.

    Raises
    ------
    ValueError
        If ``out`` is not ``frame.plain_len_bytes`` bytes long, or as :func:`check_mode_and_key`.
    DecryptionError
        If the AES-GCM tag does not match (wrong key or modified frame), or the CBC padding is
        invalid or gives another length than ``frame.plain_len_bytes``.
    CheckpointError
        If the file ends before the frame does.
    OSError
        If reading the file fails.

    Notes
    -----
    The ciphertext is read in chunks of a few MiB into one reused buffer. When an exception is
    raised, ``out`` may hold partial or unauthenticated plaintext and must be discarded.
    For the CBC modes a wrong key passes with a probability of about 1/256 per frame, see the
    notes of :func:`walk_frames`.
    """
    key_bytes = check_mode_and_key(path, key, mode)
    target = out.cast("B") if out.format != "B" or out.ndim != 1 else out
    if target.readonly:
        raise ValueError("out is read-only; pass a writable slice of the plaintext buffer")
    if len(target) != frame.plain_len_bytes:
        raise ValueError(
            f"out is {len(target)} bytes long, but frame {frame.number} of {os.fspath(path)} decrypts to "
            f"{frame.plain_len_bytes} bytes; pass a slice of exactly that length"
        )

    decryptor = _make_decryptor(mode, key_bytes, frame)
    chunk_buffer = bytearray(min(_READ_CHUNK_BYTES, frame.cipher_len_bytes))
    chunk_view = memoryview(chunk_buffer)
    written_bytes = 0
    crc = 0
    # Plaintext that could not go straight into target because it is too near target's end.
    # For the CBC modes it contains the padding. It stays under 3 cipher blocks long.
    tail = bytearray()

    read_offset = 0
    while read_offset < frame.cipher_len_bytes:
        chunk_bytes = min(len(chunk_buffer), frame.cipher_len_bytes - read_offset)
        chunk = chunk_view[:chunk_bytes]
        _pread_exact(path, fd, chunk, frame.cipher_offset + read_offset, frame)
        read_offset += chunk_bytes

        direct_bytes = _direct_output_bytes(len(target) - written_bytes, chunk_bytes)
        if direct_bytes:
            produced = decryptor.update_into(chunk[:direct_bytes], target[written_bytes:])
            if want_crc:
                crc = zlib.crc32(target[written_bytes:written_bytes + produced], crc)
            written_bytes += produced
        if direct_bytes < chunk_bytes:
            tail += decryptor.update(chunk[direct_bytes:])

    tail += _finalize(decryptor, mode, path, frame)
    if mode != _GCM:
        del tail[len(tail) - _strip_padding_bytes(path, mode, frame, tail):]

    if written_bytes + len(tail) != len(target):
        raise DecryptionError(
            path,
            f"frame {frame.number} decrypts to {written_bytes + len(tail)} bytes, but walking the file "
            f"found {len(target)}; the file changed while it was read, so load it again",
            frame.header_offset,
        )
    target[written_bytes:] = tail
    if want_crc:
        crc = zlib.crc32(tail, crc)
    return crc if want_crc else None


def decrypt_prefix(
    path: PathLike,
    fileobj: BinaryIO,
    mode: str,
    key: BytesLike,
    frame: Frame,
    length_bytes: int,
) -> bytes:
    """Decrypt the first bytes of a frame without authenticating them.

    A cheap check before decrypting a whole file: with a wrong key the first plaintext bytes are
    random, so comparing them with the expected start of a checkpoint rejects most wrong keys.

    Parameters
    ----------
    path : str or os.PathLike
        The file's path, named in errors.
    fileobj : binary file object
        The open file, with ``seek`` and ``read``. Its position changes.
    mode : str
        ``"AES-GCM"``, ``"AES-CBC"`` or ``"SM4-CBC"``.
    key : bytes-like
        The key.
    frame : Frame
        A frame from :func:`walk_frames`.
    length_bytes : int
        How many plaintext bytes to return at most.

    Returns
    -------
    bytes
        The first ``min(length_bytes, frame.plain_len_bytes)`` bytes of the frame's plaintext.
        For AES-GCM they are not authenticated, so they prove nothing about the key when they
        look right.

    Raises
    ------
    ValueError
        If ``length_bytes`` is negative, or as :func:`check_mode_and_key`.
    CheckpointError
        If the file ends before the requested bytes.
    """
    key_bytes = check_mode_and_key(path, key, mode)
    if length_bytes < 0:
        raise ValueError(f"length_bytes must be 0 or more, but it is {length_bytes}")
    prefix_bytes = min(length_bytes, frame.plain_len_bytes)
    if mode == _GCM:
        read_bytes = prefix_bytes
    else:
        whole_blocks = -(-prefix_bytes // _CIPHER_BLOCK_BYTES)
        read_bytes = whole_blocks * _CIPHER_BLOCK_BYTES
    ciphertext = _read_exact(path, fileobj, frame.cipher_offset, read_bytes, f"ciphertext of frame {frame.number}")
    # The decryptor is dropped without finalize, so the GCM tag is not checked here.
    plaintext = _make_decryptor(mode, key_bytes, frame).update(ciphertext)
    return plaintext[:prefix_bytes]


@final
class EncryptingWriter:
    """Encrypt a plaintext stream into MindSpore frames and write them to a binary file.

    Parameters
    ----------
    fileobj : binary file object
        Where frames are written, from its current position. It needs only ``write``.
    mode : str
        ``"AES-GCM"``, ``"AES-CBC"`` or ``"SM4-CBC"``.
    key : bytes-like
        The key: 16, 24 or 32 bytes for AES, 16 bytes for SM4.
    frame_plaintext_bytes : int, optional
        Plaintext per frame. Every frame but the last contains exactly this many bytes.
        MindSpore writes 64 MiB frames, and other sizes are only for tests.

    Raises
    ------
    TypeError
        If ``mode`` is not a str or ``key`` is not bytes-like.
    ValueError
        If ``mode`` is unknown, the key length does not fit the mode, or
        ``frame_plaintext_bytes`` is less than 1 or too large for the 32-bit ``frame_len``.

    Notes
    -----
    Call :meth:`close` (or leave a ``with`` block without an exception) to write the last frame.
    An empty plaintext becomes one frame with empty plaintext, so the output is a valid encrypted
    file. The writer does not close ``fileobj``, so the caller can append a CRC trailer over the
    plaintext from :attr:`plaintext_crc32`. Each frame gets a fresh IV from ``os.urandom``.
    Input that fills whole frames is encrypted straight from the caller's buffer without a copy.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        mode: str,
        key: BytesLike,
        *,
        frame_plaintext_bytes: int = FRAME_PLAINTEXT_BYTES,
    ) -> None:
        _check_mode(mode, "enc_mode")
        key_bytes = _key_to_bytes(key, "enc_key")
        allowed = KEY_SIZES_BYTES[mode]
        if len(key_bytes) not in allowed:
            raise ValueError(
                f"enc_key is {len(key_bytes)} bytes long, but {mode} takes keys of "
                f"{_format_lengths(allowed)} bytes; pass a key of one of those lengths"
            )
        if not 1 <= frame_plaintext_bytes <= _MAX_FRAME_PLAINTEXT_BYTES:
            raise ValueError(
                f"frame_plaintext_bytes must be between 1 and {_MAX_FRAME_PLAINTEXT_BYTES}, but it is "
                f"{frame_plaintext_bytes}; use the default of {FRAME_PLAINTEXT_BYTES}"
            )

        self._fileobj = fileobj
        self._mode = mode
        self._key = key_bytes
        self._frame_plaintext_bytes = frame_plaintext_bytes
        self._pending = bytearray()
        self._cipher_buffer = bytearray()
        self._closed = False
        self.plaintext_size_bytes = 0
        """Plaintext bytes accepted by :meth:`write` so far."""
        self.plaintext_crc32 = 0
        """Running ``zlib.crc32`` of the plaintext accepted so far."""
        self.written_bytes = 0
        """Bytes written to ``fileobj`` so far: frame headers and ciphertext."""
        self.frame_count = 0
        """Frames written so far."""

    def __repr__(self) -> str:
        return (
            f"EncryptingWriter(mode={self._mode!r}, frame_plaintext_bytes={self._frame_plaintext_bytes}, "
            f"plaintext_size_bytes={self.plaintext_size_bytes}, frame_count={self.frame_count}, "
            f"closed={self._closed})"
        )

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, exc_type: object, exc_value: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            # The output is incomplete anyway, so do not make it look finished with a last frame.
            self._closed = True

    @property
    def closed(self) -> bool:
        """Whether the last frame has been written."""
        return self._closed

    def write(self, data: BytesLike) -> int:
        """Encrypt and write plaintext, buffering less than one frame.

        Parameters
        ----------
        data : bytes-like
            Any C-contiguous buffer, such as bytes or a numpy array's memoryview.

        Returns
        -------
        int
            The number of plaintext bytes accepted, which is all of ``data``.

        Raises
        ------
        ValueError
            If the writer is closed.
        TypeError
            If ``data`` is not a C-contiguous buffer.
        """
        if self._closed:
            raise ValueError("write to a closed EncryptingWriter")
        view = memoryview(data)
        if not view.c_contiguous:
            raise TypeError(
                "data must be a C-contiguous buffer; pass a contiguous copy such as numpy.ascontiguousarray(data)"
            )
        view = view.cast("B")
        self.plaintext_size_bytes += len(view)
        self.plaintext_crc32 = zlib.crc32(view, self.plaintext_crc32)

        frame_bytes = self._frame_plaintext_bytes
        position = 0
        if self._pending:
            fill_bytes = min(frame_bytes - len(self._pending), len(view))
            self._pending += view[:fill_bytes]
            position = fill_bytes
            if len(self._pending) == frame_bytes:
                self._write_pending_frame()

        while len(view) - position >= frame_bytes:
            self._write_frame(view[position:position + frame_bytes])
            position += frame_bytes

        self._pending += view[position:]
        return len(view)

    def flush_final(self) -> None:
        """Write the last, shorter frame and close the writer. Calling it again does nothing.

        Writes nothing when the plaintext so far filled whole frames exactly, and one frame with
        empty plaintext when there was no plaintext at all.
        """
        if self._closed:
            return
        if self._pending or self.frame_count == 0:
            self._write_pending_frame()
        self._cipher_buffer = bytearray()
        self._closed = True

    def close(self) -> None:
        """Write the last frame, as :meth:`flush_final` does. The file object stays open."""
        self.flush_final()

    def _write_pending_frame(self) -> None:
        # The view is released before clear(), because a bytearray cannot resize while exported.
        with memoryview(self._pending) as pending:
            self._write_frame(pending)
        self._pending.clear()

    def _write_frame(self, plaintext: memoryview) -> None:
        iv = os.urandom(_IV_BYTES)
        magic = MODES[self._mode]
        if self._mode == _GCM:
            ciphertext, tag = self._encrypt_gcm(iv, plaintext)
            frame_len = _FRAME_LEN_OVERHEAD_BYTES + len(ciphertext)
            header = _GCM_HEADER.pack(magic, tag, frame_len, _IV_BYTES, iv, len(ciphertext))
        else:
            ciphertext = self._encrypt_cbc(iv, plaintext)
            frame_len = _FRAME_LEN_OVERHEAD_BYTES + len(ciphertext)
            header = _CBC_HEADER.pack(magic, frame_len, _IV_BYTES, iv, len(ciphertext))
        self._fileobj.write(header)
        self._fileobj.write(ciphertext)
        self.written_bytes += len(header) + len(ciphertext)
        self.frame_count += 1

    def _output_buffer(self, ciphertext_bytes: int) -> memoryview:
        # One buffer is reused for every frame's ciphertext, with room for update_into's slack.
        needed_bytes = ciphertext_bytes + _UPDATE_INTO_SLACK_BYTES
        if len(self._cipher_buffer) < needed_bytes:
            self._cipher_buffer = bytearray(needed_bytes)
        return memoryview(self._cipher_buffer)

    def _encrypt_gcm(self, iv: bytes, plaintext: memoryview) -> tuple[memoryview, bytes]:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(iv[:_GCM_NONCE_BYTES])).encryptor()
        output = self._output_buffer(len(plaintext))
        produced = encryptor.update_into(plaintext, output)
        encryptor.finalize()
        return output[:produced], encryptor.tag

    def _encrypt_cbc(self, iv: bytes, plaintext: memoryview) -> memoryview:
        whole_bytes = len(plaintext) - len(plaintext) % _CIPHER_BLOCK_BYTES
        padding_bytes = _CIPHER_BLOCK_BYTES - len(plaintext) % _CIPHER_BLOCK_BYTES
        last_block = bytes(plaintext[whole_bytes:]) + bytes([padding_bytes]) * padding_bytes

        encryptor = _make_cipher(self._mode, self._key, iv, b"").encryptor()
        output = self._output_buffer(whole_bytes + _CIPHER_BLOCK_BYTES)
        produced = encryptor.update_into(plaintext[:whole_bytes], output)
        produced += encryptor.update_into(last_block, output[produced:])
        encryptor.finalize()
        return output[:produced]


def _check_mode(mode: str, parameter: str) -> None:
    if not isinstance(mode, str):
        raise TypeError(f"{parameter} must be a str, not {type(mode).__name__}")
    if mode not in MODES:
        supported = ", ".join(repr(name) for name in MODES)
        raise ValueError(f"{parameter} {mode!r} is not supported; use one of {supported}")


def _key_to_bytes(key: BytesLike, parameter: str) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        hint = "; for a hex string use bytes.fromhex(...)" if isinstance(key, str) else ""
        raise TypeError(f"{parameter} must be bytes, bytearray or memoryview, not {type(key).__name__}{hint}")
    return bytes(key)


def _format_lengths(lengths: tuple[int, ...]) -> str:
    if len(lengths) == 1:
        return str(lengths[0])
    return ", ".join(str(length) for length in lengths[:-1]) + f" or {lengths[-1]}"


def _header_size_bytes(mode: str) -> int:
    return _GCM_HEADER.size if mode == _GCM else _CBC_HEADER.size


def _make_cipher(mode: str, key: bytes, iv: bytes, tag: bytes) -> Cipher[Any]:
    # Imported on first use, so that processes that never decrypt do not pay for the import.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if mode == _GCM:
        return Cipher(algorithms.AES(key), modes.GCM(iv[:_GCM_NONCE_BYTES], tag or None))
    algorithm = algorithms.AES(key) if mode == "AES-CBC" else algorithms.SM4(key)
    return Cipher(algorithm, modes.CBC(iv))


def _make_decryptor(mode: str, key: bytes, frame: Frame) -> CipherContext:
    decryptor: CipherContext = _make_cipher(mode, key, frame.iv, frame.tag).decryptor()
    return decryptor


def _read_exact(path: PathLike, fileobj: BinaryIO, offset: int, length_bytes: int, part: str) -> bytes:
    fileobj.seek(offset)
    data = fileobj.read(length_bytes)
    if len(data) != length_bytes:
        raise CheckpointError(
            path,
            f"the file is truncated: reading the {part} expected {length_bytes} bytes but received "
            f"{len(data)}; the file is shorter than when its size was taken, so load it again",
            offset,
        )
    return data


def _pread_exact(path: PathLike, fd: int, chunk: memoryview, offset: int, frame: Frame) -> None:
    received_bytes = 0
    while received_bytes < len(chunk):
        count = _pread_into(fd, chunk[received_bytes:], offset + received_bytes)
        if count == 0:
            raise CheckpointError(
                path,
                f"the file is truncated: reading the ciphertext of frame {frame.number} expected "
                f"{len(chunk)} bytes but received {received_bytes}; the file is incomplete, so copy "
                f"or save it again",
                offset,
            )
        received_bytes += count


if hasattr(os, "preadv"):

    def _pread_into(fd: int, buffer: memoryview, offset: int) -> int:
        return os.preadv(fd, [buffer], offset)

else:  # NOTE: without preadv (macOS before 11), each read allocates a new bytes object.

    def _pread_into(fd: int, buffer: memoryview, offset: int) -> int:
        data = os.pread(fd, len(buffer), offset)
        buffer[: len(data)] = data
        return len(data)


def _direct_output_bytes(room_bytes: int, chunk_bytes: int) -> int:
    """Return how much of a chunk update_into can decrypt straight into ``room_bytes`` of output.

    The result is a multiple of the cipher block, so the CBC decryptor outputs exactly as many bytes
    as it takes and the padding block is never written into the caller's buffer.
    """
    usable_bytes = min(chunk_bytes, room_bytes - _UPDATE_INTO_SLACK_BYTES)
    if usable_bytes <= 0:
        return 0
    return usable_bytes - usable_bytes % _CIPHER_BLOCK_BYTES


def _finalize(decryptor: CipherContext, mode: str, path: PathLike, frame: Frame) -> bytes:
    from cryptography.exceptions import InvalidTag

    try:
        return decryptor.finalize()
    except InvalidTag:
        raise DecryptionError(
            path,
            f"frame {frame.number} failed {mode} authentication: wrong key, or the frame was modified; "
            f"check dec_key and dec_mode, or use an intact copy of the file",
            frame.header_offset,
        ) from None


def _padding_size_bytes(last_block: bytes | bytearray) -> int | None:
    """Return the PKCS#7 padding length of a decrypted last block, or None if it is invalid."""
    if len(last_block) != _CIPHER_BLOCK_BYTES:
        return None
    padding_bytes = last_block[-1]
    if not 1 <= padding_bytes <= _CIPHER_BLOCK_BYTES:
        return None
    if last_block[-padding_bytes:] != bytes([padding_bytes]) * padding_bytes:
        return None
    return padding_bytes


def _strip_padding_bytes(path: PathLike, mode: str, frame: Frame, plaintext_tail: bytearray) -> int:
    padding_bytes = _padding_size_bytes(plaintext_tail[-_CIPHER_BLOCK_BYTES:])
    if padding_bytes is None:
        raise _bad_padding_error(path, mode, frame)
    return padding_bytes


def _bad_padding_error(path: PathLike, mode: str, frame: Frame) -> DecryptionError:
    return DecryptionError(
        path,
        f"frame {frame.number} has invalid PKCS#7 padding after {mode} decryption: the key is wrong, "
        f"or the frame is damaged; check dec_key and dec_mode, or use an intact copy of the file",
        frame.header_offset,
    )


def _check_magic(path: PathLike, head: bytes, offset: int, frame_number: int, mode: str) -> None:
    """Raise unless ``head`` starts with the frame magic of ``mode``."""
    if frame_number == 0 and head[0] == _PLAIN_CHECKPOINT_FIRST_BYTE:
        raise DecryptionError(
            path,
            f"the file is not encrypted: it starts with byte 0x0A like a plain checkpoint, not with "
            f"the {mode} frame magic 0x{MODES[mode]:08X}; load it without dec_key",
            offset,
        )
    if frame_number == 0 and head.startswith(TRAILER_MAGIC):
        raise DecryptionError(
            path,
            f"the file starts with a CRC trailer and contains no encrypted frames; it is not an "
            f"encrypted checkpoint for dec_mode {mode}, so check the path",
            offset,
        )
    if len(head) < _MAGIC_BYTES:
        where = "the file is" if frame_number == 0 else f"the {len(head)} bytes after frame {frame_number - 1} are"
        raise DecryptionError(
            path,
            f"{where} too short for a {mode} frame magic ({_MAGIC_BYTES} bytes); the file is truncated "
            f"or not an encrypted checkpoint",
            offset,
        )

    (magic,) = _UINT32.unpack_from(head)
    if magic == MODES[mode]:
        return
    other_mode = _MODE_BY_MAGIC.get(magic)
    if other_mode is not None and frame_number == 0:
        raise DecryptionError(
            path,
            f"the file is encrypted with {other_mode}, but dec_mode is {mode}; pass dec_mode='{other_mode}'",
            offset,
        )
    if other_mode is not None:
        raise DecryptionError(
            path,
            f"frame {frame_number} has the {other_mode} magic, but the frames before it are {mode}; "
            f"the file is damaged, so use an intact copy",
            offset,
        )
    if frame_number == 0:
        raise DecryptionError(
            path,
            f"the file is not an encrypted checkpoint: it starts with 0x{magic:08X}, not the {mode} "
            f"frame magic 0x{MODES[mode]:08X}; check the path and dec_mode",
            offset,
        )
    raise DecryptionError(
        path,
        f"unknown frame magic 0x{magic:08X} after frame {frame_number - 1}, where frame {frame_number} or "
        f"a CRC trailer should start; the file is damaged or has extra bytes, so use an intact copy",
        offset,
    )


def _parse_header(
    path: PathLike,
    head: bytes,
    offset: int,
    frame_number: int,
    plain_offset: int,
    mode: str,
    file_size_bytes: int,
) -> Frame:
    """Check a complete frame header against itself and the file size, and build its Frame."""
    if mode == _GCM:
        _, tag, frame_len, iv_len, iv, cipher_len = _GCM_HEADER.unpack(head)
    else:
        _, frame_len, iv_len, iv, cipher_len = _CBC_HEADER.unpack(head)
        tag = b""

    if iv_len != _IV_BYTES:
        raise DecryptionError(
            path,
            f"frame {frame_number} has iv_len {iv_len}, but {mode} frames store a {_IV_BYTES}-byte IV; "
            f"the file is damaged or not a MindSpore checkpoint",
            offset,
        )
    if frame_len != _FRAME_LEN_OVERHEAD_BYTES + cipher_len:
        raise DecryptionError(
            path,
            f"frame {frame_number} has frame_len {frame_len}, but its cipher_len {cipher_len} requires "
            f"frame_len {_FRAME_LEN_OVERHEAD_BYTES + cipher_len}; the frame header is damaged",
            offset,
        )

    cipher_offset = offset + len(head)
    available_bytes = file_size_bytes - cipher_offset
    if cipher_len > available_bytes:
        raise DecryptionError(
            path,
            f"frame {frame_number} is truncated: its ciphertext needs {cipher_len} bytes, but the file "
            f"ends {available_bytes} bytes after its start at byte {cipher_offset}; the file is "
            f"incomplete, so copy or save it again",
            offset,
        )
    if mode != _GCM and (cipher_len == 0 or cipher_len % _CIPHER_BLOCK_BYTES):
        raise DecryptionError(
            path,
            f"frame {frame_number} has cipher_len {cipher_len}, but {mode} ciphertext is a positive "
            f"multiple of {_CIPHER_BLOCK_BYTES} bytes; the frame header is damaged",
            offset,
        )

    return Frame(frame_number, offset, cipher_offset, cipher_len, iv, tag, plain_offset, cipher_len)


def _cbc_plain_len(path: PathLike, fileobj: BinaryIO, mode: str, key: bytes, frame: Frame) -> int:
    """Read a CBC frame's plaintext length from the padding of its last block.

    Only the last block is decrypted. Its CBC predecessor is the previous cipher block, or the IV
    when the frame has one block.
    """
    part = f"last cipher blocks of frame {frame.number}"
    if frame.cipher_len_bytes == _CIPHER_BLOCK_BYTES:
        previous_block = frame.iv
        last_block = _read_exact(path, fileobj, frame.cipher_offset, _CIPHER_BLOCK_BYTES, part)
    else:
        two_blocks_offset = frame.cipher_offset + frame.cipher_len_bytes - 2 * _CIPHER_BLOCK_BYTES
        two_blocks = _read_exact(path, fileobj, two_blocks_offset, 2 * _CIPHER_BLOCK_BYTES, part)
        previous_block = two_blocks[:_CIPHER_BLOCK_BYTES]
        last_block = two_blocks[_CIPHER_BLOCK_BYTES:]

    decryptor = _make_cipher(mode, key, previous_block, b"").decryptor()
    plain_block = decryptor.update(last_block) + decryptor.finalize()
    padding_bytes = _padding_size_bytes(plain_block)
    if padding_bytes is None:
        raise _bad_padding_error(path, mode, frame)
    return frame.cipher_len_bytes - padding_bytes


def _read_trailer(path: PathLike, fileobj: BinaryIO, offset: int, remaining_bytes: int) -> int:
    """Return the value of the CRC trailer at ``offset``, which must end the file."""
    if remaining_bytes < TRAILER_SIZE_BYTES:
        raise DecryptionError(
            path,
            f"the CRC trailer after the last frame is truncated: it has {remaining_bytes} of "
            f"{TRAILER_SIZE_BYTES} bytes; the file is incomplete, so copy or save it again",
            offset,
        )
    if remaining_bytes > TRAILER_SIZE_BYTES:
        raise DecryptionError(
            path,
            f"a CRC trailer starts after the last frame but is followed by "
            f"{remaining_bytes - TRAILER_SIZE_BYTES} more bytes; a trailer must be the last "
            f"{TRAILER_SIZE_BYTES} bytes, so the file is damaged or has extra bytes appended",
            offset,
        )
    crc = parse_trailer(_read_exact(path, fileobj, offset, TRAILER_SIZE_BYTES, "CRC trailer"))
    if crc is None:
        raise CheckpointError(path, "the CRC trailer changed while it was read; load the file again", offset)
    return crc
