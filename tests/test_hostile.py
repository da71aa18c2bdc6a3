"""Hostile files through the public loader, in-process (workers=0) and through the pool (workers=2).

Every bad file must raise a :class:`~mploader.errors.CheckpointError` that names the file and,
for plain files, the byte offset of the problem. No bad file may crash a worker, hang, or make
the loader allocate in proportion to a length the file declares. A damaged file that still
parses must load the values its bytes hold: they are compared with an independent decoding
through the protobuf library (``ckpt_proto``) and, for encrypted files, through ``cryptography``.

The index-level variants of these cases live in ``test_ckpt_index.py``; here each case goes
through ``load_checkpoint``, the planner, the workers and the shared-memory segment.
"""

from __future__ import annotations

import shutil
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis_profiles
import numpy as np
import pytest
from ckpt_proto import parse_checkpoint
from google.protobuf.message import DecodeError
from helpers import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

import mploader
from mploader.errors import CheckpointError, CrcMismatchError, DecryptionError
from mploader.formats import crypto
from mploader.formats.crc import TRAILER_MAGIC, TRAILER_SIZE_BYTES, make_trailer
from mploader.formats.dtypes import CKPT_DTYPES, MAP_PART_DTYPES
from mploader.testing import strategies as ckpt_st

EXAMPLES = hypothesis_profiles.scaled_examples
WORKERS = (0, 2)
MODES = list(crypto.MODES)
KEY = bytes(range(16))

# A hostile file of a few hundred bytes must fail without allocating anywhere near what it
# declares (up to 2**64 - 1 bytes). The budget covers the index, the error and its traceback.
MAX_PEAK_BYTES = 1024 * 1024


# ----------------------------------------------------------------------------------------------
# Encoding helpers, written from the protobuf wire format rather than with the writer under test
# ----------------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Encode a protobuf varint; a negative value is encoded as its int64 two's complement."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited(number: int, payload: bytes, declared: int | None = None) -> bytes:
    """Encode a length-delimited field; ``declared`` overrides the length prefix."""
    length = len(payload) if declared is None else declared
    return varint(number << 3 | 2) + varint(length) + payload


def tensor_proto(dims: list[int], type_name: str, content: bytes, declared: int | None = None) -> bytes:
    dims_bytes = b"".join(b"\x08" + varint(dim) for dim in dims)
    return dims_bytes + delimited(2, type_name.encode()) + delimited(3, content, declared)


def tensor_record(name: str, dims: list[int], type_name: str, content: bytes, declared: int | None = None) -> bytes:
    value = delimited(1, name.encode()) + delimited(2, tensor_proto(dims, type_name, content, declared))
    return delimited(1, value)


# ----------------------------------------------------------------------------------------------
# The sample checkpoint: every kind of entry, one of them sliced into several records
# ----------------------------------------------------------------------------------------------

SAMPLE_CONTENTS: dict[str, Any] = {
    "layers.0.weight": (np.arange(12, dtype=np.float32) - 5.5).reshape(3, 4),
    "layers.0.bias": np.array([1.5, -2.0, 0.0, 3.25], dtype=CKPT_DTYPES["BFloat16"]),
    "note": "héllo 😀",
    "table": [np.array([7, 8, 9], np.int64), np.ones((3, 2), np.float16), np.array([True, False, True])],
    "step": np.int64(1234),
    "flag": np.array(True),
}
SLICED_NAME = "layers.0.weight"
SAMPLE_SLICE_BYTES = 20  # the 48-byte weight becomes records of 20, 20 and 8 bytes


def _write_sample(path: Path, crc_check: bool = False) -> bytes:
    with ckpt_st.patch_slice_bytes(SAMPLE_SLICE_BYTES):
        mploader.save_checkpoint(SAMPLE_CONTENTS, path, crc_check=crc_check)
    return path.read_bytes()


def _record_spans(data: bytes) -> list[tuple[int, int, str]]:
    """Split a plain record stream into (start, end, tag) by reading each record's length prefix."""
    spans = []
    position = 0
    while position < len(data):
        assert data[position] == 0x0A
        length, shift, cursor = 0, 0, position + 1
        while True:
            byte = data[cursor]
            length |= (byte & 0x7F) << shift
            shift += 7
            cursor += 1
            if not byte & 0x80:
                break
        end = cursor + length
        tag = parse_checkpoint(data[position:end]).value[0].tag
        spans.append((position, end, tag))
        position = end
    return spans


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def sample(work_dir: Path) -> bytes:
    return _write_sample(work_dir / "sample-source.ckpt")


@pytest.fixture(scope="module")
def sample_crc(work_dir: Path) -> bytes:
    return _write_sample(work_dir / "sample-crc-source.ckpt", crc_check=True)


EXPECTED = ckpt_st.expected_load(SAMPLE_CONTENTS)


# ----------------------------------------------------------------------------------------------
# Independent decoding, for checking what a damaged file that still parses loads as
# ----------------------------------------------------------------------------------------------


def _reference_tensor(tensor: Any, content: bytes) -> Any:
    if tensor.tensor_type == "str":
        return content.decode("utf-32-le").rstrip("\x00")
    dtype = CKPT_DTYPES[tensor.tensor_type]
    dims = list(tensor.dims)
    shape = () if dims == [0] and len(content) == dtype.itemsize else tuple(dims)
    return np.frombuffer(content, dtype).reshape(shape)


def reference_load(data: bytes) -> dict[str, Any] | None:
    """Decode a plain record stream with protobuf, as MindSpore does, or return None if that fails.

    Consecutive records with one tag are one entry. A tag seen again later replaces the earlier
    entry in its place, as assigning to a dict does.
    """
    if len(data) >= TRAILER_SIZE_BYTES and data[-TRAILER_SIZE_BYTES:].startswith(TRAILER_MAGIC):
        data = data[:-TRAILER_SIZE_BYTES]
    try:
        values = list(parse_checkpoint(data).value)
        groups: list[list[Any]] = []
        for value in values:
            if groups and groups[-1][0].tag == value.tag:
                groups[-1].append(value)
            else:
                groups.append([value])
        result: dict[str, Any] = {}
        for group in groups:
            first = group[0]
            if first.HasField("maptensor"):
                parts = []
                for number in range(3):
                    pieces = [value.maptensor.tensor[number] for value in group]
                    dtype = MAP_PART_DTYPES[pieces[0].tensor_type]
                    arrays = [np.frombuffer(piece.tensor_content, dtype).reshape(list(piece.dims)) for piece in pieces]
                    parts.append(np.concatenate(arrays))
                result[first.tag] = parts
            else:
                content = b"".join(value.tensor.tensor_content for value in group)
                result[first.tag] = _reference_tensor(first.tensor, content)
        return result
    except (DecodeError, KeyError, ValueError, IndexError):
        return None


def _frames(data: bytes, mode: str) -> Iterator[tuple[int, bytes, bytes, bytes]]:
    """Yield (end offset, IV, tag, ciphertext) of each frame, following the documented layout."""
    position = 0
    gcm = mode == "AES-GCM"
    while position < len(data) and not data[position:].startswith(TRAILER_MAGIC):
        if gcm:
            magic, tag, _, _, iv, cipher_len = struct.unpack_from("<I16sII16sI", data, position)
            start = position + 48
        else:
            magic, _, _, iv, cipher_len = struct.unpack_from("<III16sI", data, position)
            tag, start = b"", position + 32
        if magic != crypto.MODES[mode] or start + cipher_len > len(data):
            raise ValueError("not a frame")
        yield start + cipher_len, iv, tag, data[start : start + cipher_len]
        position = start + cipher_len


def reference_decrypt(data: bytes, mode: str, key: bytes) -> bytes | None:
    """Decrypt every frame with ``cryptography`` directly; None if any frame fails."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    plaintext = b""
    try:
        for _, iv, tag, ciphertext in _frames(data, mode):
            if mode == "AES-GCM":
                gcm = Cipher(algorithms.AES(key), modes.GCM(iv[:12], tag)).decryptor()
                plaintext += gcm.update(ciphertext) + gcm.finalize()
                continue
            algorithm = algorithms.AES(key) if mode == "AES-CBC" else algorithms.SM4(key)
            cbc = Cipher(algorithm, modes.CBC(iv)).decryptor()
            padded = cbc.update(ciphertext) + cbc.finalize()
            unpadder = padding.PKCS7(128).unpadder()
            plaintext += unpadder.update(padded) + unpadder.finalize()
    except (ValueError, struct.error, InvalidTag):
        return None
    return plaintext


# ----------------------------------------------------------------------------------------------
# Checking helpers
# ----------------------------------------------------------------------------------------------


def expect_error(
    path: Path, error: type[CheckpointError] = CheckpointError, *, with_offset: bool = True, **kwargs: Any
) -> CheckpointError:
    """Load ``path`` in-process and through the pool; both must raise ``error`` naming the file."""
    caught_errors = []
    for workers in WORKERS:
        with pytest.raises(error) as caught:
            mploader.load_checkpoint(path, workers=workers, **kwargs)
        caught_errors.append(caught.value)
    size_bytes = path.stat().st_size
    for caught_error in caught_errors:
        assert caught_error.path == str(path)
        assert str(path) in str(caught_error)
        if with_offset:
            assert caught_error.offset is not None, str(caught_error)
            assert 0 <= caught_error.offset <= size_bytes, str(caught_error)
    assert str(caught_errors[0]) == str(caught_errors[1])
    return caught_errors[0]


def load_outcomes(path: Path, **kwargs: Any) -> list[dict[str, Any] | CheckpointError]:
    """Load with each worker count; return each result or CheckpointError. Anything else fails."""
    outcomes: list[dict[str, Any] | CheckpointError] = []
    for workers in WORKERS:
        try:
            outcomes.append(mploader.load_checkpoint(path, workers=workers, **kwargs))
        except CheckpointError as error:
            assert error.path == str(path)
            outcomes.append(error)
    if isinstance(outcomes[0], CheckpointError) or isinstance(outcomes[1], CheckpointError):
        assert str(outcomes[0]) == str(outcomes[1])
    else:
        ckpt_st.assert_contents_equal(outcomes[1], outcomes[0])
    return outcomes


def peak_allocation(function: Callable[[], Any]) -> int:
    """Run ``function`` under tracemalloc and return the peak of traced memory, in bytes."""
    tracemalloc.start()
    try:
        function()
    except CheckpointError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# ----------------------------------------------------------------------------------------------
# Truncation
# ----------------------------------------------------------------------------------------------


def _expected_prefix(spans: list[tuple[int, int, str]], cut: int) -> dict[str, Any] | None:
    """What loading the first ``cut`` bytes must give: the entries whose records all end before
    the cut, or None if the cut splits an entry's records (a sliced parameter) or a record."""
    ends = {end for _, end, _ in spans}
    if cut not in ends:
        return None
    complete = {tag for _, end, tag in spans if end <= cut}
    cut_off = {tag for _, end, tag in spans if end > cut}
    if complete & cut_off:
        return None
    return {name: value for name, value in EXPECTED.items() if name in complete}


def test_truncation_every_byte(sample: bytes, tmp_path: Path) -> None:
    spans = _record_spans(sample)
    assert [tag for *_, tag in spans].count(SLICED_NAME) == 3
    path = tmp_path / "truncated.ckpt"
    loaded_prefixes = 0
    for cut in range(len(sample)):
        path.write_bytes(sample[:cut])
        expected = _expected_prefix(spans, cut)
        if expected is None or not expected:
            error = expect_error(path)
            assert error.offset is not None and error.offset <= cut
            continue
        # A cut between two entries leaves a valid, shorter checkpoint: only a CRC trailer
        # could tell, and the sample has none.
        for workers in WORKERS:
            ckpt_st.assert_contents_equal(mploader.load_checkpoint(path, workers=workers), expected)
        loaded_prefixes += 1
    assert loaded_prefixes == len(EXPECTED) - 1


def test_truncation_inside_trailer(sample_crc: bytes, tmp_path: Path) -> None:
    path = tmp_path / "truncated.ckpt"
    records_end = len(sample_crc) - TRAILER_SIZE_BYTES
    for cut in range(records_end + 1, len(sample_crc)):
        path.write_bytes(sample_crc[:cut])
        for crc_check in (False, True):
            expect_error(path, crc_check=crc_check)


def test_truncation_removes_crc_trailer(sample_crc: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Cut exactly before the trailer, the file is a valid checkpoint without one. As in MindSpore,
    # crc_check=True then only logs a warning.
    path = tmp_path / "no-trailer.ckpt"
    path.write_bytes(sample_crc[:-TRAILER_SIZE_BYTES])
    for workers in WORKERS:
        loaded = mploader.load_checkpoint(path, workers=workers, crc_check=True)
        ckpt_st.assert_contents_equal(loaded, EXPECTED)
    assert "has no CRC trailer" in caplog.text


# ----------------------------------------------------------------------------------------------
# Bit flips
# ----------------------------------------------------------------------------------------------


def _flip(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


@settings(max_examples=EXAMPLES(100))
@given(bit_fraction=st.floats(0, 1, exclude_max=True))
def test_bit_flip_loads_what_bytes_hold(sample: bytes, work_dir: Path, bit_fraction: float) -> None:
    flipped = _flip(sample, int(bit_fraction * len(sample) * 8))
    path = work_dir / "flipped.ckpt"
    path.write_bytes(flipped)
    outcome = load_outcomes(path)[0]
    if isinstance(outcome, CheckpointError):
        return
    reference = reference_load(flipped)
    assert reference is not None, "mploader loaded a file that protobuf cannot decode"
    ckpt_st.assert_contents_equal(outcome, reference)


@settings(max_examples=EXAMPLES(100))
@given(bit_fraction=st.floats(0, 1, exclude_max=True))
def test_bit_flip_caught_by_crc(sample_crc: bytes, work_dir: Path, bit_fraction: float) -> None:
    # CRC32 detects every single-bit error, so a load with crc_check=True either fails or, when
    # the flip hit the trailer's magic and the trailer no longer looks like one, returns the
    # original values.
    flipped = _flip(sample_crc, int(bit_fraction * len(sample_crc) * 8))
    path = work_dir / "flipped-crc.ckpt"
    path.write_bytes(flipped)
    outcome = load_outcomes(path, crc_check=True)[0]
    if not isinstance(outcome, CheckpointError):
        ckpt_st.assert_contents_equal(outcome, EXPECTED)


def test_record_key_turned_field_zero(sample: bytes, tmp_path: Path) -> None:
    # One flipped bit turns a record key 0x0a into 0x02: field number 0, which protobuf rejects.
    # Skipped as an unknown field, it would drop the whole entry from the load without an error.
    start, _, tag = _record_spans(sample)[-2]
    assert sample[start] == 0x0A
    path = tmp_path / "flipped.ckpt"
    path.write_bytes(_flip(sample, start * 8 + 3))
    error = expect_error(path)
    assert error.offset == start
    assert "field number 0" in str(error)
    assert tag == "step"


def test_flipped_content_bit_is_crc_mismatch(sample_crc: bytes, tmp_path: Path) -> None:
    spans = _record_spans(sample_crc[:-TRAILER_SIZE_BYTES])
    _, end, _ = spans[-1]
    path = tmp_path / "flipped.ckpt"
    path.write_bytes(_flip(sample_crc, (end - 1) * 8))  # the last content byte of the last record
    error = expect_error(path, CrcMismatchError, with_offset=False, crc_check=True)
    assert "CRC32 mismatch" in str(error)


# ----------------------------------------------------------------------------------------------
# Declared lengths and shapes the file cannot back
# ----------------------------------------------------------------------------------------------

_FLOATS = np.arange(4, dtype=np.float32).tobytes()

HUGE_LENGTH_CASES: dict[str, bytes] = {
    "record length 2**64-1": b"\x0a" + varint(2**64 - 1) + b"\x0a\x01w",
    "record length 2**63": b"\x0a" + varint(2**63) + b"\x0a\x01w",
    "name length 2**64-1": delimited(1, delimited(1, b"w", declared=2**64 - 1)),
    "content length 2**64-1": tensor_record("w", [4], "Float32", _FLOATS, declared=2**64 - 1),
    "content length past the file": tensor_record("w", [4], "Float32", _FLOATS, declared=1 << 40),
    "dims product overflows int64": tensor_record("w", [2**40, 2**40], "Float32", _FLOATS),
    "dims product overflows uint64": tensor_record("w", [2**62, 2**62, 2**62], "Int8", b"\x00"),
    "dim 2**63-1": tensor_record("w", [2**63 - 1], "Int8", b"\x00"),
    "negative dim": tensor_record("w", [-1], "Float32", _FLOATS),
    "negative dim after positive": tensor_record("w", [4, -4], "Float32", _FLOATS),
    "zero dim beside huge dim": tensor_record("w", [0, 2**62], "Float32", b""),
    "second record huge": tensor_record("a", [4], "Float32", _FLOATS) + b"\x0a" + varint(2**64 - 1),
    "varint over 64 bits": b"\x0a" + b"\xff" * 10 + b"\x01",
}


@pytest.mark.parametrize("data", list(HUGE_LENGTH_CASES.values()), ids=list(HUGE_LENGTH_CASES))
def test_declared_length_rejected(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "hostile.ckpt"
    path.write_bytes(data)
    expect_error(path)

    mploader.load_checkpoint(FIXTURES / "map_tensor.ckpt", workers=0)  # imports and caches warmed up
    peak = peak_allocation(lambda: mploader.load_checkpoint(path, workers=0))
    assert peak < MAX_PEAK_BYTES


SHAPE_CASES: dict[str, bytes] = {
    "content shorter than dims need": tensor_record("w", [3, 4], "Float32", bytes(44)),
    "content longer than dims need": tensor_record("w", [3, 4], "Float32", bytes(52)),
    "content not a multiple of itemsize": tensor_record("w", [3], "Float64", bytes(23)),
    "scalar with two elements": tensor_record("w", [], "Int32", bytes(8)),
    "unknown tensor_type": tensor_record("w", [4], "Float128", bytes(64)),
    "Int4 tensor_type": tensor_record("w", [4], "Int4", bytes(2)),
    "empty tensor_type": tensor_record("w", [4], "", bytes(4)),
    "lower-case tensor_type": tensor_record("w", [4], "float32", _FLOATS),
    "string of 3 bytes": tensor_record("s", [0], "str", b"abc"),
    "slices disagree on dims": tensor_record("w", [4], "Float32", _FLOATS[:8])
    + tensor_record("w", [2, 2], "Float32", _FLOATS[8:]),
    "slices add up short": tensor_record("w", [4], "Float32", _FLOATS[:8])
    + tensor_record("w", [4], "Float32", _FLOATS[8:12]),
}


@pytest.mark.parametrize("data", list(SHAPE_CASES.values()), ids=list(SHAPE_CASES))
def test_shape_and_type_rejected(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "hostile.ckpt"
    path.write_bytes(data + tensor_record("after", [2], "Int8", b"\x01\x02"))
    expect_error(path)


# ----------------------------------------------------------------------------------------------
# Files that are not checkpoints
# ----------------------------------------------------------------------------------------------

LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    b"size 524288000\n"
)

NOT_CHECKPOINTS: dict[str, bytes] = {
    "empty file": b"",
    "text file": b"epoch,loss\n1,0.5\n2,0.25\n",
    "text starting with a newline": b"\nmodel weights\n",
    "Git LFS pointer": LFS_POINTER,
    "zip archive (a PyTorch file)": b"PK\x03\x04" + bytes(60),
    "random bytes": np.random.default_rng(5).bytes(4096),
    "only zeros": bytes(1000),
    "only 0x0a bytes": b"\x0a" * 1000,
}


@pytest.mark.parametrize("data", list(NOT_CHECKPOINTS.values()), ids=list(NOT_CHECKPOINTS))
def test_not_a_checkpoint(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(data)
    expect_error(path)


def test_safetensors_named_ckpt(tmp_path: Path) -> None:
    path = tmp_path / "lenet5.ckpt"
    shutil.copyfile(FIXTURES / "lenet5_momentum.safetensors", path)
    error = expect_error(path)
    assert error.offset == 0
    assert "not a MindSpore .ckpt" in str(error)
    assert mploader.load_checkpoint(path, format="safetensors", workers=0)


def test_ckpt_named_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "lenet5.safetensors"
    shutil.copyfile(FIXTURES / "lenet5_momentum.ckpt", path)
    expect_error(path)


def _safetensors(header: bytes, data: bytes, declared: int | None = None) -> bytes:
    length = len(header) if declared is None else declared
    return length.to_bytes(8, "little") + header + data


SAFETENSORS_CASES: dict[str, bytes] = {
    "header length 2**64-1": _safetensors(b"{}", b"", declared=2**64 - 1),
    "header length past the file": _safetensors(b"{}", b"", declared=1 << 40),
    "header not JSON": _safetensors(b"{oops}", b""),
    "offsets past the data": _safetensors(
        b'{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}', bytes(16)
    ),
    "shape product overflows": _safetensors(
        b'{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}', bytes(4)
    ),
    "negative shape": _safetensors(b'{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', bytes(4)),
}


@pytest.mark.parametrize("data", list(SAFETENSORS_CASES.values()), ids=list(SAFETENSORS_CASES))
def test_safetensors_hostile(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    expect_error(path)
    peak = peak_allocation(lambda: mploader.load_checkpoint(path, workers=0))
    assert peak < MAX_PEAK_BYTES


# ----------------------------------------------------------------------------------------------
# Encrypted files
# ----------------------------------------------------------------------------------------------

FRAME_PLAINTEXT_BYTES = 96  # several frames from a small sample, cut inside records


def _write_encrypted(path: Path, plaintext: bytes, mode: str, crc_check: bool = False) -> bytes:
    with open(path, "wb") as file:
        with crypto.EncryptingWriter(file, mode, KEY, frame_plaintext_bytes=FRAME_PLAINTEXT_BYTES) as writer:
            writer.write(plaintext)
        if crc_check:
            file.write(make_trailer(zlib.crc32(plaintext)))
    return path.read_bytes()


@pytest.fixture(scope="module", params=MODES)
def encrypted(request: pytest.FixtureRequest, sample: bytes, work_dir: Path) -> tuple[str, bytes]:
    mode = request.param
    return mode, _write_encrypted(work_dir / f"encrypted-{mode}-source.ckpt", sample, mode)


def test_encrypted_truncation_every_byte(encrypted: tuple[str, bytes], sample: bytes, tmp_path: Path) -> None:
    mode, data = encrypted
    frame_ends = {end: index for index, (end, *_) in enumerate(_frames(data, mode))}
    assert len(frame_ends) > 3
    spans = _record_spans(sample)
    path = tmp_path / "truncated.ckpt"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        expected = None
        if cut in frame_ends:
            # The file ends after a whole frame: a valid encrypted file of a shorter plaintext.
            expected = _expected_prefix(spans, min(len(sample), (frame_ends[cut] + 1) * FRAME_PLAINTEXT_BYTES))
        if not expected:
            expect_error(path, DecryptionError, with_offset=False, dec_key=KEY, dec_mode=mode)
            continue
        for workers in WORKERS:
            loaded = mploader.load_checkpoint(path, workers=workers, dec_key=KEY, dec_mode=mode)
            ckpt_st.assert_contents_equal(loaded, expected)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=EXAMPLES(40))
@given(bit_fraction=st.floats(0, 1, exclude_max=True))
def test_encrypted_bit_flip(
    sample: bytes, work_dir: Path, mode: str, bit_fraction: float
) -> None:
    data = _write_encrypted(work_dir / f"flip-source-{mode}.ckpt", sample, mode)
    flipped = _flip(data, int(bit_fraction * len(data) * 8))
    path = work_dir / f"flipped-{mode}.ckpt"
    path.write_bytes(flipped)
    outcome = load_outcomes(path, dec_key=KEY, dec_mode=mode)[0]
    if isinstance(outcome, CheckpointError):
        # A flip in CBC ciphertext that decryption cannot see can still garble a string entry;
        # see test_encrypted_garbled_string for the error type that case should have.
        return
    plaintext = reference_decrypt(flipped, mode, KEY)
    assert plaintext is not None, "mploader decrypted a file that cryptography rejects"
    reference = reference_load(plaintext)
    assert reference is not None, "mploader loaded a plaintext that protobuf cannot decode"
    ckpt_st.assert_contents_equal(outcome, reference)
    if mode == "AES-GCM":
        # GCM authenticates every frame, so only the 4 IV bytes beyond the 12-byte nonce are free.
        ckpt_st.assert_contents_equal(outcome, EXPECTED)


@pytest.mark.parametrize("mode", ["AES-CBC", "SM4-CBC"])
@settings(max_examples=EXAMPLES(40))
@given(bit_fraction=st.floats(0, 1, exclude_max=True))
def test_encrypted_bit_flip_caught_by_crc(sample: bytes, work_dir: Path, mode: str, bit_fraction: float) -> None:
    # CBC does not authenticate, so only the plaintext CRC written by mploader catches every flip.
    data = _write_encrypted(work_dir / f"flip-crc-source-{mode}.ckpt", sample, mode, crc_check=True)
    path = work_dir / f"flipped-crc-{mode}.ckpt"
    path.write_bytes(_flip(data, int(bit_fraction * len(data) * 8)))
    outcome = load_outcomes(path, dec_key=KEY, dec_mode=mode, crc_check=True)[0]
    if not isinstance(outcome, CheckpointError):
        ckpt_st.assert_contents_equal(outcome, EXPECTED)


def test_encrypted_garbled_string(tmp_path: Path) -> None:
    # What a flipped bit in CBC ciphertext can do: the string's UTF-32 code point becomes invalid.
    plaintext = tensor_record("note", [0], "str", (0x110000).to_bytes(4, "little"))
    path = tmp_path / "garbled.ckpt"
    _write_encrypted(path, plaintext, "AES-CBC")
    for workers in WORKERS:
        with pytest.raises(DecryptionError) as caught:
            mploader.load_checkpoint(path, workers=workers, dec_key=KEY, dec_mode="AES-CBC")
        assert caught.value.offset is None


def test_encrypted_huge_cipher_len(tmp_path: Path) -> None:
    header = struct.pack("<I16sII16sI", crypto.MODES["AES-GCM"], bytes(16), 24 + 2**32 - 25, 16, bytes(16), 2**32 - 25)
    path = tmp_path / "hostile.ckpt"
    path.write_bytes(header + bytes(64))
    error = expect_error(path, DecryptionError, dec_key=KEY)
    assert "truncated" in str(error)
    peak = peak_allocation(lambda: mploader.load_checkpoint(path, workers=0, dec_key=KEY))
    assert peak < MAX_PEAK_BYTES


def test_encrypted_file_without_frames(tmp_path: Path) -> None:
    path = tmp_path / "trailer.ckpt"
    path.write_bytes(make_trailer(0))
    expect_error(path, DecryptionError, dec_key=KEY)
