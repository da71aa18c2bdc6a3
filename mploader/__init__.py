"""mploader: load MindSpore checkpoints in parallel through shared memory.

The public functions are imported on first use, so that worker processes, which import
``mploader.worker``, do not pay for numpy and the format readers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_checkpoint": "mploader.api",
    "load_checkpoint_async": "mploader.api",
    "save_checkpoint": "mploader.api",
    "load_param_into_net": "mploader.net",
    "CheckpointError": "mploader.errors",
    "CrcMismatchError": "mploader.errors",
    "DecryptionError": "mploader.errors",
    "SharedMemoryFullError": "mploader.errors",
    "WorkerCrashedError": "mploader.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .api import load_checkpoint, load_checkpoint_async, save_checkpoint  # noqa: F401
    from .errors import (  # noqa: F401
        CheckpointError,
        CrcMismatchError,
        DecryptionError,
        SharedMemoryFullError,
        WorkerCrashedError,
    )
    from .net import load_param_into_net  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mploader' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
