"""Write the benchmark's checkpoint files once, reuse them, and compute what each loader must return.

Every file is derived from the LLM-shaped float16 tensors of
:func:`mploader.testing.synthetic.iter_llm_tensors` (size and seed in the file name), except the
LeNet-size checkpoint, which has LeNet-5's shapes in float32. What a loader must return is computed
once per file, by an in-process mploader load, and cached next to the file in ``NAME.json`` while
the file keeps its size and mtime. The copies must contain the same tensors as the plain
checkpoint; a copy that does not is rejected with the advice to delete it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _runner

__all__ = [
    "ENCRYPTION_KEY_HEX",
    "ENCRYPTION_MODE",
    "PreparedFile",
    "choice_expectation",
    "prepare_encrypted_copy",
    "prepare_lenet_checkpoint",
    "prepare_llm_checkpoint",
    "prepare_safetensors_copy",
    "runner_expectation",
]

# A fixed, published AES-256 key: the encrypted copy exists to time decryption and protects nothing,
# so the key may appear in the runner's command line and in the JSON record.
ENCRYPTION_KEY_HEX = bytes(range(32)).hex()
ENCRYPTION_MODE = "AES-GCM"
# Version of the expectations cached next to a file. Change it when the digests change.
_SIDECAR_FORMAT = 2
# LeNet-5 as in MindSpore's model zoo (convolutions without bias), with one Momentum slot per
# parameter and the optimizer's scalars: 494 KB as a .ckpt.
_LENET_PARAMETERS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("conv1.weight", (6, 1, 5, 5)),
    ("conv2.weight", (16, 6, 5, 5)),
    ("fc1.weight", (120, 400)),
    ("fc1.bias", (120,)),
    ("fc2.weight", (84, 120)),
    ("fc2.bias", (84,)),
    ("fc3.weight", (10, 84)),
    ("fc3.bias", (10,)),
)
_EXPECTATION_KEYS = ("tensor_count", "tensor_bytes", "tensor_digest", "file_bytes", "file_digest")


@dataclass(frozen=True)
class PreparedFile:
    """A benchmark file and what loading it must return.

    ``expected`` has ``tensor_count``, ``tensor_bytes``, ``tensor_digest``, ``file_bytes``,
    ``file_digest`` and ``entries``, a list of ``[name, nbytes, first bytes in hex]`` in file order.
    """

    kind: str
    path: Path
    expected: dict[str, Any]


def runner_expectation(expected: dict[str, Any]) -> dict[str, Any]:
    """Return the part of ``expected`` that a runner checks, without the per-entry list."""
    return {key: expected[key] for key in _EXPECTATION_KEYS}


def _expected_for(path: Path, dec_key: bytes | None = None) -> dict[str, Any]:
    """Load ``path`` in-process with mploader and return the counts and digests the runners check."""
    import mploader

    if dec_key is None:
        parameters = mploader.load_checkpoint(path, workers=0)
    else:
        parameters = mploader.load_checkpoint(path, dec_key=dec_key, dec_mode=ENCRYPTION_MODE, workers=0)
    heads = [(name, _runner.array_head(array)) for name, array in parameters.items()]
    head, tail = _runner.read_file_ends(str(path))
    return {
        "tensor_count": len(parameters),
        "tensor_bytes": sum(int(array.nbytes) for array in parameters.values()),
        "tensor_digest": _runner.tensor_digest(heads),
        "file_bytes": path.stat().st_size,
        "file_digest": _runner.file_digest(head, tail),
        "entries": [[name, int(parameters[name].nbytes), head_bytes.hex()] for name, head_bytes in heads],
    }


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _cached_expectation(path: Path) -> dict[str, Any] | None:
    sidecar = _sidecar_path(path)
    if not (path.exists() and sidecar.exists()):
        return None
    try:
        cached = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    status = path.stat()
    if (isinstance(cached, dict) and cached.get("format") == _SIDECAR_FORMAT
            and cached.get("file_bytes") == status.st_size and cached.get("mtime_ns") == status.st_mtime_ns):
        expected: dict[str, Any] = cached["expected"]
        return expected
    return None


def _store_expectation(path: Path, expected: dict[str, Any]) -> None:
    status = path.stat()
    document = {"format": _SIDECAR_FORMAT, "file_bytes": status.st_size, "mtime_ns": status.st_mtime_ns,
                "expected": expected}
    _sidecar_path(path).write_text(json.dumps(document), encoding="utf-8")


def _prepare(
    kind: str, path: Path, write: Callable[[Path], object], description: str, dec_key: bytes | None = None
) -> PreparedFile:
    """Return ``path`` with its expectations, writing the file with ``write`` first if it is missing."""
    cached = _cached_expectation(path)
    if cached is not None:
        return PreparedFile(kind, path, cached)
    if not path.exists():
        print(f"writing {description} to {path}", file=sys.stderr)
        write(path)
    expected = _expected_for(path, dec_key)
    _store_expectation(path, expected)
    return PreparedFile(kind, path, expected)


def _product(shape: Sequence[int]) -> int:
    result = 1
    for dimension in shape:
        result *= dimension
    return result


def _require_same_tensors(copy: PreparedFile, plain: PreparedFile) -> None:
    for key in ("tensor_count", "tensor_bytes", "tensor_digest"):
        if copy.expected[key] != plain.expected[key]:
            raise RuntimeError(
                f"{copy.path} has {key}={copy.expected[key]}, but {plain.path} has {plain.expected[key]}; "
                "delete the copy so that it is written again"
            )


def prepare_llm_checkpoint(directory: Path, size_bytes: int, seed: int) -> PreparedFile:
    """Write the LLM-shaped ``.ckpt`` of ``size_bytes`` and ``seed``, or reuse it.

    The tensor count and bytes are checked against the synthetic layout, independently of mploader.
    """
    from mploader.testing.synthetic import llm_layout, write_llm_checkpoint

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"llm-{size_bytes}-seed{seed}.ckpt"
    prepared = _prepare(
        "ckpt", path, lambda target: write_llm_checkpoint(target, size_bytes, seed=seed),
        f"a {size_bytes / 2**20:,.0f} MiB checkpoint",
    )
    shapes = llm_layout(size_bytes)
    layout_bytes = sum(2 * _product(shape) for _, shape in shapes)
    found = (prepared.expected["tensor_count"], prepared.expected["tensor_bytes"])
    if found != (len(shapes), layout_bytes):
        raise RuntimeError(
            f"{path} contains {found[0]} tensors of {found[1]} bytes, but the synthetic layout has "
            f"{len(shapes)} of {layout_bytes}; delete the file so that it is written again"
        )
    return prepared


def prepare_safetensors_copy(plain: PreparedFile) -> PreparedFile:
    """Write a ``.safetensors`` file with the tensors of ``plain`` next to it, or reuse it.

    The copy is written by :func:`mploader.convert.convert` in bounded memory. The ``safetensors``
    loader then reads it with the safetensors library, which checks the file independently.
    """
    from mploader.convert import convert

    def write(target: Path) -> None:
        convert(plain.path, target, workers=0)

    copy = _prepare("safetensors", plain.path.with_suffix(".safetensors"), write, "a .safetensors copy")
    _require_same_tensors(copy, plain)
    return copy


def prepare_encrypted_copy(plain: PreparedFile, size_bytes: int, seed: int) -> PreparedFile:
    """Write the AES-GCM encrypted copy of the LLM-shaped checkpoint with the fixed key, or reuse it.

    It is written by :func:`mploader.save_checkpoint` from the regenerated tensors, with all of
    them in memory at once.
    """
    import mploader
    from mploader.testing.synthetic import iter_llm_tensors

    key = bytes.fromhex(ENCRYPTION_KEY_HEX)

    def write(target: Path) -> None:
        mploader.save_checkpoint(dict(iter_llm_tensors(size_bytes, seed)), target, enc_key=key,
                                 enc_mode=ENCRYPTION_MODE)

    path = plain.path.with_name(f"{plain.path.stem}-aes-gcm.ckpt")
    copy = _prepare("aes", path, write, "an AES-GCM encrypted copy", dec_key=key)
    _require_same_tensors(copy, plain)
    return copy


def lenet_tensors(seed: int) -> dict[str, Any]:
    """Return LeNet-5's float32 parameters, their Momentum slots and the optimizer's scalars."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tensors: dict[str, Any] = {}
    for name, shape in _LENET_PARAMETERS:
        tensors[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    tensors["global_step"] = np.array([1875], dtype=np.int32)
    tensors["learning_rate"] = np.array(0.01, dtype=np.float32)
    tensors["momentum"] = np.array(0.9, dtype=np.float32)
    for name, shape in _LENET_PARAMETERS:
        tensors[f"moments.{name}"] = (rng.standard_normal(shape) * 0.01).astype(np.float32)
    tensors["epoch_num"] = np.array(1, dtype=np.int64)
    tensors["step_num"] = np.array(1875, dtype=np.int64)
    return tensors


def prepare_lenet_checkpoint(directory: Path, seed: int) -> PreparedFile:
    """Write the LeNet-size ``.ckpt`` (about 0.5 MB) with :func:`mploader.save_checkpoint`, or reuse it."""
    import mploader

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"lenet-seed{seed}.ckpt"
    return _prepare("lenet", path, lambda target: mploader.save_checkpoint(lenet_tensors(seed), target),
                    "a LeNet-size checkpoint")


def choice_expectation(plain: PreparedFile, size_bytes: int, fraction: float) -> tuple[list[str], dict[str, Any]]:
    """Choose the tensors a choice_func keeps, and return their names and what loading them must return.

    The choice is the shortest run of tensors from the start of the synthetic layout (the embedding,
    then layer 0, layer 1 and so on) that contains at least ``fraction`` of the tensor bytes, so it
    never keeps less than requested.
    """
    from mploader.testing.synthetic import llm_layout

    sizes = [(name, 2 * _product(shape)) for name, shape in llm_layout(size_bytes)]
    total_bytes = sum(nbytes for _, nbytes in sizes)
    names: list[str] = []
    kept_bytes = 0
    for name, nbytes in sizes:
        if kept_bytes >= fraction * total_bytes:
            break
        names.append(name)
        kept_bytes += nbytes

    heads = {name: bytes.fromhex(head_hex) for name, _, head_hex in plain.expected["entries"]}
    expected = dict(runner_expectation(plain.expected))
    expected.update({
        "tensor_count": len(names),
        "tensor_bytes": kept_bytes,
        "tensor_digest": _runner.tensor_digest((name, heads[name]) for name in names),
    })
    return names, expected


def describe_file(prepared: PreparedFile) -> dict[str, Any]:
    """Return the facts about a prepared file that the record and the report show."""
    from ._report import filesystem_type

    return {
        "path": str(prepared.path),
        "file_bytes": prepared.expected["file_bytes"],
        "tensor_count": prepared.expected["tensor_count"],
        "tensor_bytes": prepared.expected["tensor_bytes"],
        "filesystem": filesystem_type(os.fspath(prepared.path)),
    }
