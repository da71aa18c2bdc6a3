"""Element types of MindSpore checkpoints and their numpy equivalents.

``.ckpt`` records name their element type with a MindSpore ``tensor_type`` string such as
``"Float16"``; map-tensor parts use numpy names such as ``"float32"``. All data is little-endian.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

import numpy as np

__all__ = [
    "CKPT_DTYPES",
    "LazyDtypes",
    "MAP_PART_DTYPES",
    "STRING_TYPE",
    "ckpt_type_of",
    "numpy_dtype_of",
]

class LazyDtypes(Mapping[str, np.dtype]):
    """A read-only name -> numpy dtype table whose ``ml_dtypes`` entries are resolved on first use.

    Importing ``ml_dtypes`` takes about 0.6 s (version 0.7 on a 2-core VM), so a load that meets no
    bfloat16 or float8 data does not pay for it.
    """

    def __init__(self, eager: dict[str, np.dtype], lazy: dict[str, str]) -> None:
        self._eager = eager
        self._lazy = lazy  # name -> attribute of ml_dtypes, for names not resolved yet
        self._names = list(eager) + [name for name in lazy if name not in eager]

    def __getitem__(self, name: str) -> np.dtype:
        dtype = self._eager.get(name)
        if dtype is not None:
            return dtype
        attribute = self._lazy.get(name)
        if attribute is None:
            raise KeyError(name)
        ml_dtypes = importlib.import_module("ml_dtypes")
        if not hasattr(ml_dtypes, attribute):
            raise KeyError(name)
        dtype = np.dtype(getattr(ml_dtypes, attribute))
        self._eager[name] = dtype
        return dtype

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._eager or name in self._lazy


# The tensor_type of a Python string entry; its content is UTF-32-LE, 4 bytes per code point.
STRING_TYPE = "str"

# MindSpore tensor_type -> numpy dtype. Int4 (two signed 4-bit values per byte) is absent on
# purpose: MindSpore stores it packed, and numpy has no packed 4-bit type to view it with.
CKPT_DTYPES: LazyDtypes = LazyDtypes({
    "Int8": np.dtype("<i1"),
    "UInt8": np.dtype("<u1"),
    "Int16": np.dtype("<i2"),
    "UInt16": np.dtype("<u2"),
    "Int32": np.dtype("<i4"),
    "UInt32": np.dtype("<u4"),
    "Int64": np.dtype("<i8"),
    "UInt64": np.dtype("<u8"),
    "Float16": np.dtype("<f2"),
    "Float32": np.dtype("<f4"),
    "Float64": np.dtype("<f8"),
    "Bool": np.dtype(np.bool_),
}, {"BFloat16": "bfloat16"})

# numpy dtype names that MindSpore writes for the keys, values and status of a map tensor.
MAP_PART_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "bool")
}

_CKPT_TYPE_BY_DTYPE = {dtype: name for name, dtype in CKPT_DTYPES._eager.items()}


def numpy_dtype_of(type_name: str) -> np.dtype | None:
    """Return the numpy dtype for a ``.ckpt`` type name, or None when the name is unknown."""
    return CKPT_DTYPES.get(type_name) or MAP_PART_DTYPES.get(type_name)


def ckpt_type_of(dtype: np.dtype) -> str:
    """Return the MindSpore ``tensor_type`` that stores arrays of ``dtype``.

    Raises
    ------
    TypeError
        If MindSpore checkpoints have no type for ``dtype``.
    """
    name = _CKPT_TYPE_BY_DTYPE.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if name is None and dtype.name == "bfloat16" and dtype.kind == "V":
        # An ml_dtypes bfloat16 array exists, so ml_dtypes is imported already.
        name = "BFloat16" if dtype == CKPT_DTYPES["BFloat16"] else None
    if name is None:
        supported = ", ".join(sorted(CKPT_DTYPES))
        raise TypeError(f"dtype {dtype} cannot be stored in a .ckpt file; supported types are {supported}")
    return name
