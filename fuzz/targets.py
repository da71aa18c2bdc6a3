"""The targets and ciphers that the first two bytes of a fuzz input select; see fuzz_index.py."""

from __future__ import annotations

TARGETS = ("index_ckpt", "index_safetensors", "decrypt", "load_ckpt", "load_encrypted", "load_safetensors")

# (mode, key length) pairs chosen by the option byte. The keys are bytes(range(n)), as for the
# encrypted files in tests/fixtures.
CIPHERS = [
    ("AES-GCM", 16),
    ("AES-GCM", 24),
    ("AES-GCM", 32),
    ("AES-CBC", 16),
    ("AES-CBC", 24),
    ("AES-CBC", 32),
    ("SM4-CBC", 16),
]


def cipher_for(option: int) -> tuple[str, bytes]:
    """Return the (mode, key) that option byte ``option`` selects."""
    mode, key_bytes = CIPHERS[option % len(CIPHERS)]
    return mode, bytes(range(key_bytes))
