"""Write the seed corpus of ``fuzz_index.py`` into a directory.

Seeds are the files in ``tests/fixtures`` and small checkpoints made from them: plain, with a
CRC trailer, sliced into several records, encrypted with every cipher and key of the harness
(in whole and in small frames), and as ``.safetensors``. Each seed is prefixed with the two
selector bytes of every target that reads its kind of file.

Usage: ``python fuzz/seed_corpus.py CORPUS_DIR``
"""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import numpy as np

import mploader
from mploader.formats import ckpt as ckpt_format
from mploader.formats import crypto
from mploader.formats.safetensors import save_safetensors
from mploader.testing.strategies import patch_slice_bytes

sys.path.insert(0, str(Path(__file__).parent))
from targets import CIPHERS, TARGETS, cipher_for  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
PLAIN_TARGETS = (TARGETS.index("index_ckpt"), TARGETS.index("load_ckpt"))
ENCRYPTED_TARGETS = (TARGETS.index("decrypt"), TARGETS.index("load_encrypted"))
SAFETENSORS_TARGETS = (TARGETS.index("index_safetensors"), TARGETS.index("load_safetensors"))
SMALL_FRAME_BYTES = 200


def small_contents() -> dict[str, object]:
    """Return a few entries of every kind, taken from the fixtures where they have them."""
    lenet = mploader.load_checkpoint(FIXTURES / "lenet5_momentum.ckpt", workers=0)
    contents: dict[str, object] = {name: np.ascontiguousarray(value)[:2] for name, value in list(lenet.items())[:3]}
    contents.update(mploader.load_checkpoint(FIXTURES / "map_tensor.ckpt", workers=0))
    contents["note"] = "seed ✓"
    contents["step"] = np.int64(7)
    return contents


def plain_bytes(contents: dict[str, object], *, crc_check: bool = False, slice_bytes: int | None = None) -> bytes:
    items = ckpt_format.normalize_save_obj(contents)
    output = io.BytesIO()
    if slice_bytes is None:
        ckpt_format.write_checkpoint(items, output, crc_check=crc_check)
    else:
        with patch_slice_bytes(slice_bytes):
            ckpt_format.write_checkpoint(items, output, crc_check=crc_check)
    return output.getvalue()


def encrypted_bytes(plaintext: bytes, option: int, frame_bytes: int = crypto.FRAME_PLAINTEXT_BYTES) -> bytes:
    mode, key = cipher_for(option)
    output = io.BytesIO()
    with crypto.EncryptingWriter(output, mode, key, frame_plaintext_bytes=frame_bytes) as writer:
        writer.write(plaintext)
    return output.getvalue()


def write_seed(directory: Path, targets: tuple[int, ...], option: int, data: bytes) -> None:
    for target in targets:
        seed = bytes((target, option)) + data
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def main(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for fixture in sorted(FIXTURES.iterdir()):
        data = fixture.read_bytes()
        if fixture.suffix == ".safetensors":
            write_seed(directory, SAFETENSORS_TARGETS, 0, data)
        elif "_aes_" in fixture.name or "_sm4_" in fixture.name:
            mode = "SM4-CBC"
            if "_aes_gcm_" in fixture.name:
                mode = "AES-GCM"
            elif "_aes_cbc_" in fixture.name:
                mode = "AES-CBC"
            key_bytes = int(fixture.stem.rsplit("_k", 1)[1])
            write_seed(directory, ENCRYPTED_TARGETS, CIPHERS.index((mode, key_bytes)), data)
        elif fixture.suffix == ".ckpt":
            write_seed(directory, PLAIN_TARGETS, 1, data)

    contents = small_contents()
    plain = plain_bytes(contents)
    write_seed(directory, PLAIN_TARGETS, 0, plain)
    write_seed(directory, PLAIN_TARGETS, 1, plain_bytes(contents, crc_check=True))
    write_seed(directory, PLAIN_TARGETS, 0, plain_bytes(contents, slice_bytes=7))
    for option in range(len(CIPHERS)):
        write_seed(directory, ENCRYPTED_TARGETS, option, encrypted_bytes(plain, option))
        write_seed(directory, ENCRYPTED_TARGETS, option, encrypted_bytes(plain, option, SMALL_FRAME_BYTES))

    arrays = {name: value for name, value in contents.items() if isinstance(value, np.ndarray)}
    variants: list[tuple[dict[str, np.ndarray], dict[str, str] | None]] = [
        (arrays, None),
        (arrays, {"format": "ms", "crc_num": "0"}),
        ({"empty": np.zeros((0, 3), np.float16), "flag": np.array([True, False])}, None),
        ({f"layer.{i}": np.full((i + 1,), i, np.int32) for i in range(4)}, {"format": "pt"}),
    ]
    safetensors_path = directory / "seed.safetensors.tmp"
    for tensors, metadata in variants:
        save_safetensors(tensors, safetensors_path, metadata=metadata)
        write_seed(directory, SAFETENSORS_TARGETS, 0, safetensors_path.read_bytes())
    safetensors_path.unlink()
    print(f"wrote {len(list(directory.iterdir()))} seeds to {directory}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python fuzz/seed_corpus.py CORPUS_DIR")
    main(Path(sys.argv[1]))
