"""Element types of MindSpore checkpoints and their numpy equivalents.

``.ckpt`` records name their element type with a MindSpore ``tensor_type`` string such as
``"Float16"``; map-tensor parts use numpy names such as ``"float32"``. All data is little-endian.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

__all__ = [
    "CKPT_DTYPES",
    "MAP_PART_DTYPES",
    "STRING_TYPE",
    "ckpt_type_of",
    "numpy_dtype_of",
]

# The tensor_type of a Python string entry; its content is UTF-32-LE, 4 bytes per code point.
STRING_TYPE = "str"

# MindSpore tensor_type -> numpy dtype. Int4 (two signed 4-bit values per byte) is absent on
# purpose: MindSpore stores it packed, and numpy has no packed 4-bit type to view it with.
CKPT_DTYPES: dict[str, np.dtype] = {
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
    "BFloat16": np.dtype(ml_dtypes.bfloat16),
    "Bool": np.dtype(np.bool_),
}

# numpy dtype names that MindSpore writes for the keys, values and status of a map tensor.
MAP_PART_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "bool")
}

_CKPT_TYPE_BY_DTYPE = {dtype: name for name, dtype in CKPT_DTYPES.items()}


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
    if name is None:
        supported = ", ".join(sorted(CKPT_DTYPES))
        raise TypeError(f"dtype {dtype} cannot be stored in a .ckpt file; supported types are {supported}")
    return name
