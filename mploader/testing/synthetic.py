"""Reproducible LLM-shaped checkpoints of any size, for the demo, tests and benchmarks."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from ..formats import ckpt as ckpt_format

__all__ = ["llm_layout", "write_llm_checkpoint"]


def llm_layout(size_bytes: int, hidden_size: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """Return (name, shape) pairs of a decoder-only transformer of about ``size_bytes`` in float16.

    Each layer has attention projections (q, k, v, o: hidden x hidden), MLP projections (gate, up:
    4·hidden x hidden; down: hidden x 4·hidden) and two norms, and the model has an embedding and a
    final norm. The hidden size grows with the target so that a 1 GiB model has a few dozen layers.
    """
    if size_bytes <= 0:
        raise ValueError(f"size_bytes must be positive, got {size_bytes}")
    if hidden_size is None:
        hidden_size = 256
        while hidden_size < 4096 and 16 * 16 * hidden_size * hidden_size * 2 < size_bytes:
            hidden_size *= 2
    vocab_size = 8 * hidden_size
    layer_bytes = 16 * hidden_size * hidden_size * 2
    fixed_bytes = vocab_size * hidden_size * 2
    layer_count = max(1, round((size_bytes - fixed_bytes) / layer_bytes))
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab_size, hidden_size))]
    for layer in range(layer_count):
        prefix = f"model.layers.{layer}"
        shapes.append((f"{prefix}.input_layernorm.weight", (hidden_size,)))
        for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes.append((f"{prefix}.self_attn.{projection}.weight", (hidden_size, hidden_size)))
        shapes.append((f"{prefix}.post_attention_layernorm.weight", (hidden_size,)))
        shapes.append((f"{prefix}.mlp.gate_proj.weight", (4 * hidden_size, hidden_size)))
        shapes.append((f"{prefix}.mlp.up_proj.weight", (4 * hidden_size, hidden_size)))
        shapes.append((f"{prefix}.mlp.down_proj.weight", (hidden_size, 4 * hidden_size)))
    shapes.append(("model.norm.weight", (hidden_size,)))
    return shapes


def _random_float16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # Random bit patterns with the exponent capped below 0x3C00 (1.0): finite values in (-1, 1),
    # generated far faster than normal samples converted to float16.
    bits = rng.integers(0, 0x3BFF, size=shape, dtype=np.uint16, endpoint=True)
    bits |= rng.integers(0, 2, size=shape, dtype=np.uint16) << 15
    return bits.view(np.float16)


def iter_llm_tensors(size_bytes: int, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """Yield the tensors of :func:`llm_layout` one at a time, so memory stays at one tensor."""
    rng = np.random.default_rng(seed)
    for name, shape in llm_layout(size_bytes):
        yield name, _random_float16(rng, shape)


def write_llm_checkpoint(path: str | os.PathLike[str], size_bytes: int, seed: int = 0) -> int:
    """Write an LLM-shaped float16 ``.ckpt`` of about ``size_bytes``; return its size in bytes.

    The same ``size_bytes`` and ``seed`` give the same file. Tensors are generated and written one
    at a time, and the file appears under its name only when complete.
    """
    target = os.fspath(path)
    with ckpt_format.AtomicFile(target) as output:
        for name, array in iter_llm_tensors(size_bytes, seed):
            ckpt_format.write_checkpoint([ckpt_format.SaveItem(name, array)], output.file)
    return os.path.getsize(target)
