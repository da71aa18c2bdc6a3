"""Tests of encrypted .ckpt frames: walking, decrypting and writing them."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from mploader.errors import CheckpointError, DecryptionError
from mploader.formats.crc import combine_crcs, make_trailer
from mploader.formats.crypto import (
    FRAME_PLAINTEXT_BYTES,
    KEY_SIZES_BYTES,
    MODES,
    EncryptingWriter,
    Frame,
    FrameTable,
    check_mode_and_key,
    decrypt_frame_into,
    decrypt_prefix,
    walk_frames,
)

FIXTURES = Path(__file__).parent / "fixtures"
ENCRYPTED_FIXTURES = [
    "lenet5_aes_gcm_k16.ckpt",
    "lenet5_aes_gcm_k32.ckpt",
    "lenet5_aes_cbc_k24.ckpt",
    "lenet5_sm4_cbc_k16.ckpt",
]
ALL_MODES = ["AES-GCM", "AES-CBC", "SM4-CBC"]
CBC_MODES = ["AES-CBC", "SM4-CBC"]
KEY_16 = bytes(range(16))
TINY_FRAME_BYTES = 64
# Offsets of header fields, from the frame's magic.
GCM_TAG_OFFSET = 4
GCM_IV_LEN_OFFSET = 24
CBC_FRAME_LEN_OFFSET = 4
CBC_IV_LEN_OFFSET = 8
CBC_CIPHER_LEN_OFFSET = 28
GCM_HEADER_BYTES = 48
CBC_HEADER_BYTES = 32


def fixture_key_and_mode(name: str) -> tuple[bytes, str]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    load_kwargs = manifest["fixtures"][name]["load_kwargs"]
    return bytes.fromhex(load_kwargs["dec_key"]), load_kwargs["dec_mode"]


def walk(path: Path, mode: str, key: bytes) -> FrameTable:
    with open(path, "rb") as file:
        return walk_frames(path, file, os.fstat(file.fileno()).st_size, mode, key)


def decrypt_all(path: Path, mode: str, key: bytes, table: FrameTable) -> tuple[bytes, list[int]]:
    """Decrypt every frame into one buffer, and return the plaintext and each frame's CRC32."""
    plaintext = bytearray(table.plain_size_bytes)
    view = memoryview(plaintext)
    crcs = []
    with open(path, "rb") as file:
        for frame in table.frames:
            out = view[frame.plain_offset:frame.plain_offset + frame.plain_len_bytes]
            crc = decrypt_frame_into(file.fileno(), mode, key, frame, out, path=str(path), want_crc=True)
            assert crc is not None
            crcs.append(crc)
    return bytes(plaintext), crcs


def write_encrypted(
    path: Path, mode: str, key: bytes, plaintext: bytes, frame_bytes: int = TINY_FRAME_BYTES
) -> EncryptingWriter:
    with open(path, "wb") as file, EncryptingWriter(file, mode, key, frame_plaintext_bytes=frame_bytes) as writer:
        writer.write(plaintext)
    return writer


def record_framing_end(plaintext: bytes) -> int | None:
    """Walk the top-level records (0x0A, varint length, payload) and return where the walk stops.

    Returns None when a record key is not 0x0A, a varint is unterminated, or a payload runs past
    the end. A well-formed plain checkpoint returns ``len(plaintext)``.
    """
    position = 0
    while position < len(plaintext):
        if plaintext[position] != 0x0A:
            return None
        position += 1
        length = 0
        shift = 0
        while True:
            if position >= len(plaintext) or shift > 63:
                return None
            byte = plaintext[position]
            position += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        position += length
        if position > len(plaintext):
            return None
    return position


def plaintext_parses(plaintext: bytes) -> bool:
    return len(plaintext) > 0 and record_framing_end(plaintext) == len(plaintext)


def assert_key_hidden(error: BaseException, key: bytes) -> None:
    if not key:
        return
    for text in (str(error), repr(error)):
        assert key.hex() not in text
        assert key.hex().upper() not in text
        assert repr(key) not in text
        assert str(list(key)) not in text


def patch_bytes(path: Path, offset: int, new: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(new)


def flip_bit(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def fake_checkpoint(record_count: int, payload_bytes: int, seed: int = 0) -> bytes:
    """Build a record stream with valid top-level framing and random payloads."""
    rng = random.Random(seed)
    records = []
    for _ in range(record_count):
        payload = rng.randbytes(payload_bytes)
        records.append(b"\x0a" + encode_varint(len(payload)) + payload)
    return b"".join(records)


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# ---------------------------------------------------------------------------------------------
# Files written by MindSpore 2.10


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_fixture_walks_and_decrypts(name: str) -> None:
    path = FIXTURES / name
    key, mode = fixture_key_and_mode(name)

    table = walk(path, mode, key)
    plaintext, crcs = decrypt_all(path, mode, key, table)

    assert len(table.frames) >= 1
    assert table.trailer_crc is None
    assert table.data_end_offset == path.stat().st_size
    assert len(plaintext) == table.plain_size_bytes
    assert plaintext[0] == 0x0A
    assert record_framing_end(plaintext) == len(plaintext)
    assert combine_crcs(zip(crcs, (frame.plain_len_bytes for frame in table.frames))) == zlib.crc32(plaintext)


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_fixture_frame_fields(name: str) -> None:
    path = FIXTURES / name
    key, mode = fixture_key_and_mode(name)

    table = walk(path, mode, key)
    frame = table.frames[0]

    header_bytes = GCM_HEADER_BYTES if mode == "AES-GCM" else CBC_HEADER_BYTES
    assert frame.number == 0
    assert frame.header_offset == 0
    assert frame.cipher_offset == header_bytes
    assert len(frame.iv) == 16
    assert len(frame.tag) == (16 if mode == "AES-GCM" else 0)
    assert frame.plain_offset == 0
    if mode == "AES-GCM":
        assert frame.plain_len_bytes == frame.cipher_len_bytes
    else:
        assert frame.cipher_len_bytes % 16 == 0
        assert 1 <= frame.cipher_len_bytes - frame.plain_len_bytes <= 16


def test_fixtures_share_one_plaintext() -> None:
    plaintexts = set()
    for name in ENCRYPTED_FIXTURES:
        key, mode = fixture_key_and_mode(name)
        table = walk(FIXTURES / name, mode, key)
        plaintexts.add(decrypt_all(FIXTURES / name, mode, key, table)[0])

    assert len(plaintexts) == 1


@pytest.mark.parametrize("name", ENCRYPTED_FIXTURES)
def test_fixture_prefix_starts_like_checkpoint(name: str) -> None:
    path = FIXTURES / name
    key, mode = fixture_key_and_mode(name)
    table = walk(path, mode, key)

    with open(path, "rb") as file:
        prefix = decrypt_prefix(path, file, mode, key, table.frames[0], 20)
        whole = decrypt_prefix(path, file, mode, key, table.frames[0], 10**9)

    assert prefix[0] == 0x0A
    assert len(prefix) == 20
    assert len(whole) == table.frames[0].plain_len_bytes
    assert whole[:20] == prefix


# ---------------------------------------------------------------------------------------------
# Round trips through EncryptingWriter


ROUND_TRIP_SIZES = [
    0, 1, 15, 16, 17, 63, TINY_FRAME_BYTES, 3 * TINY_FRAME_BYTES, 3 * TINY_FRAME_BYTES + 1, 5 * TINY_FRAME_BYTES + 37,
]


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("plain_bytes", ROUND_TRIP_SIZES)
def test_round_trip_tiny_frames(tmp_path: Path, mode: str, plain_bytes: int) -> None:
    path = tmp_path / "model.ckpt"
    plaintext = random.Random(plain_bytes).randbytes(plain_bytes)

    writer = write_encrypted(path, mode, KEY_16, plaintext)
    table = walk(path, mode, KEY_16)
    decrypted, crcs = decrypt_all(path, mode, KEY_16, table)

    expected_frame_count = max(1, -(-plain_bytes // TINY_FRAME_BYTES))
    assert decrypted == plaintext
    assert len(table.frames) == expected_frame_count
    assert writer.frame_count == expected_frame_count
    assert table.plain_size_bytes == plain_bytes
    assert table.trailer_crc is None
    assert table.data_end_offset == path.stat().st_size
    assert writer.written_bytes == path.stat().st_size
    assert writer.plaintext_size_bytes == plain_bytes
    assert writer.plaintext_crc32 == zlib.crc32(plaintext)
    assert [frame.number for frame in table.frames] == list(range(expected_frame_count))
    assert [frame.plain_offset for frame in table.frames] == [TINY_FRAME_BYTES * i for i in range(expected_frame_count)]
    assert combine_crcs(zip(crcs, (frame.plain_len_bytes for frame in table.frames))) == zlib.crc32(plaintext)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_round_trip_every_key_size(tmp_path: Path, mode: str) -> None:
    plaintext = fake_checkpoint(record_count=9, payload_bytes=40)
    for key_bytes in KEY_SIZES_BYTES[mode]:
        key = bytes(range(100, 100 + key_bytes))
        path = tmp_path / f"model_{key_bytes}.ckpt"

        write_encrypted(path, mode, key, plaintext)
        table = walk(path, mode, key)

        assert len(table.frames) >= 3
        assert decrypt_all(path, mode, key, table)[0] == plaintext


@pytest.mark.parametrize("mode", ALL_MODES)
def test_writer_accepts_pieces_and_numpy_buffers(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.ckpt"
    floats = np.arange(50, dtype=np.float32)
    matrix = np.arange(12, dtype=np.int16).reshape(3, 4)
    pieces: list[bytes | bytearray | memoryview] = [
        b"a" * 5,
        floats.data,
        bytearray(b"b" * 130),
        matrix.data,
        b"",
        memoryview(bytes(range(64))),
    ]
    plaintext = b"".join(bytes(memoryview(piece).cast("B")) for piece in pieces)

    with open(path, "wb") as file:
        with EncryptingWriter(file, mode, KEY_16, frame_plaintext_bytes=TINY_FRAME_BYTES) as writer:
            accepted = [writer.write(piece) for piece in pieces]
    table = walk(path, mode, KEY_16)

    assert accepted == [memoryview(piece).nbytes for piece in pieces]
    assert decrypt_all(path, mode, KEY_16, table)[0] == plaintext
    assert writer.plaintext_crc32 == zlib.crc32(plaintext)
    assert all(frame.plain_len_bytes == TINY_FRAME_BYTES for frame in table.frames[:-1])


def test_writer_rejects_non_contiguous_buffer(tmp_path: Path) -> None:
    strided = np.arange(20, dtype=np.uint8)[::2]

    with open(tmp_path / "model.ckpt", "wb") as file:
        writer = EncryptingWriter(file, "AES-GCM", KEY_16)
        with pytest.raises(TypeError, match="C-contiguous"):
            writer.write(strided.data)


# Sizes around the 4 MiB read chunk of decrypt_frame_into, in one default-size frame.
CHUNK_EDGE_SIZES = [4 * 2**20 - 16, 4 * 2**20 - 1, 4 * 2**20, 4 * 2**20 + 1, 8 * 2**20 + 20]


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("plain_bytes", CHUNK_EDGE_SIZES)
def test_decrypt_stays_inside_output(tmp_path: Path, mode: str, plain_bytes: int) -> None:
    path = tmp_path / "model.ckpt"
    plaintext = np.random.default_rng(plain_bytes).integers(0, 256, plain_bytes, dtype=np.uint8).tobytes()
    guard_bytes = 64
    write_encrypted(path, mode, KEY_16, plaintext, frame_bytes=FRAME_PLAINTEXT_BYTES)
    table = walk(path, mode, KEY_16)
    (frame,) = table.frames
    shared = bytearray(b"\xee" * (guard_bytes + plain_bytes + guard_bytes))

    with open(path, "rb") as file:
        out = memoryview(shared)[guard_bytes:guard_bytes + plain_bytes]
        crc = decrypt_frame_into(file.fileno(), mode, KEY_16, frame, out, path=str(path), want_crc=True)

    assert shared[guard_bytes:guard_bytes + plain_bytes] == plaintext
    assert shared[:guard_bytes] == b"\xee" * guard_bytes
    assert shared[guard_bytes + plain_bytes:] == b"\xee" * guard_bytes
    assert crc == zlib.crc32(plaintext)


def test_decrypt_without_crc_returns_none(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, "AES-CBC", KEY_16, b"x" * 100)
    frame = walk(path, "AES-CBC", KEY_16).frames[0]
    out = bytearray(frame.plain_len_bytes)

    with open(path, "rb") as file:
        fd = file.fileno()
        result = decrypt_frame_into(fd, "AES-CBC", KEY_16, frame, memoryview(out), path=str(path), want_crc=False)

    assert result is None
    assert out == b"x" * TINY_FRAME_BYTES


def test_decrypt_rejects_wrong_output_length(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, "AES-GCM", KEY_16, b"x" * 100)
    frame = walk(path, "AES-GCM", KEY_16).frames[0]

    out = memoryview(bytearray(10))

    with open(path, "rb") as file, pytest.raises(ValueError, match="exactly that length"):
        decrypt_frame_into(file.fileno(), "AES-GCM", KEY_16, frame, out, path=str(path), want_crc=False)


def test_frame_pickles_as_tuple(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, "AES-GCM", KEY_16, b"x" * 100)
    frame = walk(path, "AES-GCM", KEY_16).frames[1]

    fields = tuple(frame)

    assert pickle.loads(pickle.dumps(frame)) == frame
    assert pickle.loads(pickle.dumps(fields)) == fields
    assert Frame._make(fields) == frame
    assert len(fields) == 8
    assert all(isinstance(field, (int, bytes)) for field in fields)


def test_writer_close_twice_and_write_after(tmp_path: Path) -> None:
    with open(tmp_path / "model.ckpt", "wb") as file:
        writer = EncryptingWriter(file, "AES-GCM", KEY_16, frame_plaintext_bytes=TINY_FRAME_BYTES)
        writer.write(b"abc")
        writer.close()
        size_after_close = file.tell()
        writer.close()
        writer.flush_final()

        assert file.tell() == size_after_close
        assert writer.closed
        assert not file.closed
        with pytest.raises(ValueError, match="closed"):
            writer.write(b"more")


def test_writer_skips_last_frame_on_error(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"

    with open(path, "wb") as file, pytest.raises(RuntimeError):
        with EncryptingWriter(file, "AES-GCM", KEY_16, frame_plaintext_bytes=TINY_FRAME_BYTES) as writer:
            writer.write(b"y" * (TINY_FRAME_BYTES + 10))
            raise RuntimeError("stop")

    assert path.stat().st_size == GCM_HEADER_BYTES + TINY_FRAME_BYTES
    assert writer.closed


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    key_10 = bytes(range(10))
    with open(tmp_path / "model.ckpt", "wb") as file:
        with pytest.raises(ValueError, match="16, 24 or 32 bytes") as key_error:
            EncryptingWriter(file, "AES-GCM", key_10)
        with pytest.raises(ValueError, match="'AES-GCM', 'AES-CBC', 'SM4-CBC'"):
            EncryptingWriter(file, "AES-CTR", KEY_16)
        with pytest.raises(TypeError, match="bytes.fromhex"):
            EncryptingWriter(file, "AES-GCM", KEY_16.hex())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="frame_plaintext_bytes"):
            EncryptingWriter(file, "AES-GCM", KEY_16, frame_plaintext_bytes=0)
        with pytest.raises(ValueError, match="frame_plaintext_bytes"):
            EncryptingWriter(file, "AES-CBC", KEY_16, frame_plaintext_bytes=2**32)

    assert_key_hidden(key_error.value, key_10)


def test_writer_repr_hides_key(tmp_path: Path) -> None:
    key = bytes(range(200, 232))
    with open(tmp_path / "model.ckpt", "wb") as file:
        writer = EncryptingWriter(file, "AES-GCM", key)

        text = repr(writer)

    assert "AES-GCM" in text
    assert key.hex() not in text
    assert repr(key) not in text


def test_walk_log_hides_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "model.ckpt"
    key = bytes(range(200, 216))
    write_encrypted(path, "SM4-CBC", key, b"z" * 200)

    with caplog.at_level(logging.DEBUG, logger="mploader"):
        walk(path, "SM4-CBC", key)

    assert caplog.records
    assert key.hex() not in caplog.text
    assert repr(key) not in caplog.text


# ---------------------------------------------------------------------------------------------
# CRC trailers after the frames


@pytest.mark.parametrize("mode", ALL_MODES)
def test_mindspore_zero_trailer_recognised(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.ckpt"
    plaintext = fake_checkpoint(record_count=6, payload_bytes=50)
    write_encrypted(path, mode, KEY_16, plaintext)
    frames_end = path.stat().st_size
    with open(path, "ab") as file:
        file.write(b"crc_num" + bytes(10))

    table = walk(path, mode, KEY_16)

    assert table.trailer_crc == 0
    assert table.data_end_offset == frames_end
    assert table.plain_size_bytes == len(plaintext)
    assert decrypt_all(path, mode, KEY_16, table)[0] == plaintext


def test_plaintext_crc_trailer_reported(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    plaintext = fake_checkpoint(record_count=3, payload_bytes=30)
    with open(path, "wb") as file:
        with EncryptingWriter(file, "AES-GCM", KEY_16, frame_plaintext_bytes=TINY_FRAME_BYTES) as writer:
            writer.write(plaintext)
        file.write(make_trailer(writer.plaintext_crc32))

    table = walk(path, "AES-GCM", KEY_16)

    assert table.trailer_crc == zlib.crc32(plaintext)


def test_trailer_not_at_end_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, "AES-GCM", KEY_16, b"q" * 100)
    frames_end = path.stat().st_size
    with open(path, "ab") as file:
        file.write(make_trailer(0) + b"extra")

    with pytest.raises(DecryptionError, match="last 17 bytes") as error:
        walk(path, "AES-GCM", KEY_16)

    assert str(path) in str(error.value)
    assert error.value.offset == frames_end
    assert_key_hidden(error.value, KEY_16)


def test_truncated_trailer_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, "AES-CBC", KEY_16, b"q" * 100)
    with open(path, "ab") as file:
        file.write(make_trailer(0)[:12])

    with pytest.raises(DecryptionError, match="trailer after the last frame is truncated") as error:
        walk(path, "AES-CBC", KEY_16)

    assert str(path) in str(error.value)


# ---------------------------------------------------------------------------------------------
# Rejected modes, keys and files


def test_check_mode_and_key_accepts_buffers() -> None:
    key_24 = bytes(range(24))

    assert check_mode_and_key("model.ckpt", key_24, "AES-CBC") == key_24
    assert check_mode_and_key("model.ckpt", bytearray(KEY_16), "SM4-CBC") == KEY_16
    assert check_mode_and_key("model.ckpt", memoryview(KEY_16), "AES-GCM") == KEY_16
    assert set(MODES) == {"AES-GCM", "AES-CBC", "SM4-CBC"}


@pytest.mark.parametrize(
    ("mode", "key_bytes", "allowed"),
    [
        ("AES-GCM", 15, "16, 24 or 32"),
        ("AES-CBC", 33, "16, 24 or 32"),
        ("SM4-CBC", 24, "16"),
        ("AES-GCM", 0, "16, 24 or 32"),
    ],
)
def test_wrong_key_length_rejected(tmp_path: Path, mode: str, key_bytes: int, allowed: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, mode, KEY_16, b"data" * 10)
    key = bytes(range(1, key_bytes + 1))

    with pytest.raises(DecryptionError) as error:
        walk(path, mode, key)

    message = str(error.value)
    assert str(path) in message
    assert mode in message
    assert f"{allowed} bytes" in message
    assert f"{key_bytes} bytes long" in message
    assert_key_hidden(error.value, key)


def test_unknown_mode_lists_modes() -> None:
    with pytest.raises(ValueError, match="'AES-GCM', 'AES-CBC', 'SM4-CBC'") as error:
        check_mode_and_key("model.ckpt", KEY_16, "aes-gcm")

    assert not isinstance(error.value, DecryptionError)


def test_wrong_key_type_rejected() -> None:
    with pytest.raises(TypeError, match="dec_key must be bytes"):
        check_mode_and_key("model.ckpt", KEY_16.hex(), "AES-GCM")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dec_key must be bytes"):
        check_mode_and_key("model.ckpt", list(KEY_16), "AES-GCM")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dec_mode must be a str"):
        check_mode_and_key("model.ckpt", KEY_16, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("written_mode", "requested_mode"), [("AES-CBC", "AES-GCM"), ("AES-GCM", "SM4-CBC"), ("SM4-CBC", "AES-CBC")]
)
def test_mode_mismatch_rejected(tmp_path: Path, written_mode: str, requested_mode: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, written_mode, KEY_16, b"data" * 10)

    with pytest.raises(DecryptionError) as error:
        walk(path, requested_mode, KEY_16)

    message = str(error.value)
    assert f"encrypted with {written_mode}, but dec_mode is {requested_mode}" in message
    assert str(path) in message
    assert error.value.offset == 0
    assert_key_hidden(error.value, KEY_16)


def test_plain_checkpoint_rejected(tmp_path: Path) -> None:
    path = tmp_path / "plain.ckpt"
    path.write_bytes((FIXTURES / "lenet5_momentum.ckpt").read_bytes())

    with pytest.raises(DecryptionError, match="not encrypted") as error:
        walk(path, "AES-GCM", KEY_16)

    assert str(path) in str(error.value)
    assert "without dec_key" in str(error.value)
    assert error.value.offset == 0
    assert_key_hidden(error.value, KEY_16)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"\xd8\x5e", "too short"),
        (b"PK\x03\x04 not a checkpoint at all", "not an encrypted checkpoint"),
        (b"crc_num" + bytes(10), "no encrypted frames"),
    ],
)
def test_non_encrypted_content_rejected(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)

    with pytest.raises(DecryptionError, match=expected) as error:
        walk(path, "AES-GCM", KEY_16)

    assert str(path) in str(error.value)
    assert_key_hidden(error.value, KEY_16)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_truncated_header_rejected(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, mode, KEY_16, b"data" * 10)
    path.write_bytes(path.read_bytes()[:20])

    with pytest.raises(DecryptionError, match="frame 0 is truncated") as error:
        walk(path, mode, KEY_16)

    assert str(path) in str(error.value)
    assert "header needs" in str(error.value)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_truncated_frame_rejected(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, mode, KEY_16, b"data" * 50)
    table = walk(path, mode, KEY_16)
    last = table.frames[-1]
    path.write_bytes(path.read_bytes()[:last.cipher_offset + 5])

    with pytest.raises(DecryptionError, match=f"frame {last.number} is truncated") as error:
        walk(path, mode, KEY_16)

    assert str(path) in str(error.value)
    assert error.value.offset == last.header_offset
    assert_key_hidden(error.value, KEY_16)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_file_shrunk_after_walk(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, mode, KEY_16, b"data" * 50)
    table = walk(path, mode, KEY_16)
    first = table.frames[0]
    os.truncate(path, first.cipher_offset + 16)
    out = bytearray(first.plain_len_bytes)

    with open(path, "rb") as file, pytest.raises(CheckpointError, match="truncated") as error:
        decrypt_frame_into(file.fileno(), mode, KEY_16, first, memoryview(out), path=str(path), want_crc=True)

    message = str(error.value)
    assert str(path) in message
    assert f"expected {first.cipher_len_bytes} bytes but received 16" in message
    assert error.value.offset == first.cipher_offset


def test_unknown_magic_after_frames_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, "AES-GCM", KEY_16, b"data" * 40)
    frames_end = path.stat().st_size
    with open(path, "ab") as file:
        file.write(bytes(64))

    with pytest.raises(DecryptionError, match="unknown frame magic 0x00000000") as error:
        walk(path, "AES-GCM", KEY_16)

    assert str(path) in str(error.value)
    assert error.value.offset == frames_end


def test_other_mode_frame_mid_file_rejected(tmp_path: Path) -> None:
    gcm_path = tmp_path / "gcm.ckpt"
    cbc_path = tmp_path / "cbc.ckpt"
    mixed_path = tmp_path / "mixed.ckpt"
    write_encrypted(gcm_path, "AES-GCM", KEY_16, b"data" * 10)
    write_encrypted(cbc_path, "AES-CBC", KEY_16, b"data" * 10)
    mixed_path.write_bytes(gcm_path.read_bytes() + cbc_path.read_bytes())

    with pytest.raises(DecryptionError, match="has the AES-CBC magic, but the frames before it are AES-GCM") as error:
        walk(mixed_path, "AES-GCM", KEY_16)

    assert str(mixed_path) in str(error.value)
    assert error.value.offset == gcm_path.stat().st_size


@pytest.mark.parametrize("mode", ALL_MODES)
def test_bad_iv_len_rejected(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, mode, KEY_16, b"data" * 10)
    iv_len_offset = GCM_IV_LEN_OFFSET if mode == "AES-GCM" else CBC_IV_LEN_OFFSET
    patch_bytes(path, iv_len_offset, struct.pack("<I", 12))

    with pytest.raises(DecryptionError, match="iv_len 12") as error:
        walk(path, mode, KEY_16)

    assert str(path) in str(error.value)
    assert error.value.offset == 0


@pytest.mark.parametrize("mode", CBC_MODES)
def test_inconsistent_frame_len_rejected(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, mode, KEY_16, b"data" * 10)
    patch_bytes(path, CBC_FRAME_LEN_OFFSET, struct.pack("<I", 4 + 16 + 4 + 32))

    with pytest.raises(DecryptionError, match="frame_len 56, but its cipher_len 48 requires frame_len 72") as error:
        walk(path, mode, KEY_16)

    assert str(path) in str(error.value)


@pytest.mark.parametrize(("cipher_len", "expected"), [(47, "cipher_len 47"), (0, "cipher_len 0")])
def test_cbc_cipher_len_not_whole_blocks_rejected(tmp_path: Path, cipher_len: int, expected: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, "SM4-CBC", KEY_16, b"data" * 10)
    patch_bytes(path, CBC_FRAME_LEN_OFFSET, struct.pack("<I", 4 + 16 + 4 + cipher_len))
    patch_bytes(path, CBC_CIPHER_LEN_OFFSET, struct.pack("<I", cipher_len))

    with pytest.raises(DecryptionError, match=expected) as error:
        walk(path, "SM4-CBC", KEY_16)

    assert "positive multiple of 16" in str(error.value)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------------------------------------
# Wrong keys and damaged frames


def test_gcm_wrong_key_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, "AES-GCM", KEY_16, fake_checkpoint(record_count=4, payload_bytes=40))
    wrong_key = bytes(range(32, 64))

    table = walk(path, "AES-GCM", wrong_key)
    with pytest.raises(DecryptionError, match="wrong key, or the frame was modified") as error:
        decrypt_all(path, "AES-GCM", wrong_key, table)

    assert str(path) in str(error.value)
    assert error.value.offset == 0
    assert_key_hidden(error.value, wrong_key)
    assert_key_hidden(error.value, KEY_16)


@pytest.mark.parametrize("mode", CBC_MODES)
def test_cbc_wrong_keys_always_caught(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.ckpt"
    plaintext = fake_checkpoint(record_count=5, payload_bytes=37)
    write_encrypted(path, mode, KEY_16, plaintext, frame_bytes=FRAME_PLAINTEXT_BYTES)
    rng = random.Random(f"wrong keys {mode}")
    caught_in_walk = 0
    passed_walk = 0

    for _ in range(3000):
        wrong_key = rng.randbytes(16)
        try:
            table = walk(path, mode, wrong_key)
        except DecryptionError as error:
            assert "invalid PKCS#7 padding" in str(error)
            assert str(path) in str(error)
            assert_key_hidden(error, wrong_key)
            caught_in_walk += 1
            continue
        passed_walk += 1

        # The padding looked valid, so the full decryption passes too. Parsing the plaintext is
        # what rejects this key, and the first plaintext byte already shows it.
        decrypted, _ = decrypt_all(path, mode, wrong_key, table)
        with open(path, "rb") as file:
            prefix = decrypt_prefix(path, file, mode, wrong_key, table.frames[0], 1)
        assert prefix == decrypted[:1]
        assert not plaintext_parses(decrypted)

    assert passed_walk >= 1
    assert caught_in_walk + passed_walk == 3000
    assert caught_in_walk > 2900


@pytest.mark.parametrize("mode", CBC_MODES)
def test_cbc_wrong_key_multi_frame_rejected(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, mode, KEY_16, fake_checkpoint(record_count=8, payload_bytes=40))
    rng = random.Random(f"multi-frame wrong keys {mode}")

    for _ in range(200):
        wrong_key = rng.randbytes(16)
        with pytest.raises(DecryptionError, match="invalid PKCS#7 padding") as error:
            walk(path, mode, wrong_key)
        assert_key_hidden(error.value, wrong_key)


def test_gcm_flipped_tag_bit_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, "AES-GCM", KEY_16, b"data" * 40)
    second = walk(path, "AES-GCM", KEY_16).frames[1]
    flip_bit(path, second.header_offset + GCM_TAG_OFFSET + 7)

    table = walk(path, "AES-GCM", KEY_16)
    with pytest.raises(DecryptionError, match="frame 1 failed AES-GCM authentication") as error:
        decrypt_all(path, "AES-GCM", KEY_16, table)

    assert str(path) in str(error.value)
    assert error.value.offset == second.header_offset
    assert_key_hidden(error.value, KEY_16)


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_gcm_flipped_ciphertext_bit_rejected(tmp_path: Path, position: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, "AES-GCM", KEY_16, b"data" * 40)
    frame = walk(path, "AES-GCM", KEY_16).frames[2]
    relative = {"first": 0, "middle": frame.cipher_len_bytes // 2, "last": frame.cipher_len_bytes - 1}[position]
    flip_bit(path, frame.cipher_offset + relative, 0x80)

    table = walk(path, "AES-GCM", KEY_16)
    with pytest.raises(DecryptionError, match="wrong key, or the frame was modified") as error:
        decrypt_all(path, "AES-GCM", KEY_16, table)

    assert str(path) in str(error.value)
    assert error.value.offset == frame.header_offset


@pytest.mark.parametrize("mode", CBC_MODES)
def test_cbc_flipped_bit_before_padding_rejected(tmp_path: Path, mode: str) -> None:
    # Flipping bit 0x10 of the second-to-last cipher block flips the same bit of the padding
    # byte, which turns any valid padding length (1 to 16) into an invalid one.
    path = tmp_path / "model.ckpt"
    write_encrypted(path, mode, KEY_16, b"data" * 40)
    frame = walk(path, mode, KEY_16).frames[1]
    flip_bit(path, frame.cipher_offset + frame.cipher_len_bytes - 17, 0x10)

    with pytest.raises(DecryptionError, match="frame 1 has invalid PKCS#7 padding") as error:
        walk(path, mode, KEY_16)

    assert str(path) in str(error.value)
    assert error.value.offset == frame.header_offset
    assert_key_hidden(error.value, KEY_16)


@pytest.mark.parametrize("mode", CBC_MODES)
def test_cbc_padding_changed_after_walk(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.ckpt"
    write_encrypted(path, mode, KEY_16, b"data" * 40)
    table = walk(path, mode, KEY_16)
    frame = table.frames[1]
    flip_bit(path, frame.cipher_offset + frame.cipher_len_bytes - 17, 0x10)
    shared = bytearray(b"\xee" * (table.plain_size_bytes + 32))
    out = memoryview(shared)[16:16 + frame.plain_len_bytes]

    with open(path, "rb") as file, pytest.raises(DecryptionError, match="invalid PKCS#7 padding"):
        decrypt_frame_into(file.fileno(), mode, KEY_16, frame, out, path=str(path), want_crc=False)

    assert shared[:16] == b"\xee" * 16
    assert shared[16 + frame.plain_len_bytes:] == b"\xee" * (len(shared) - 16 - frame.plain_len_bytes)
