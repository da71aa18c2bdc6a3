"""The index of a checkpoint: what each entry is and where its bytes are.

Format readers produce these records without reading tensor bytes. The planner and the coordinator
consume them, so they are plain, immutable values that any format can build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

EntryKind = Literal["tensor", "str", "map"]


@dataclass(frozen=True)
class TensorIndex:
    """One array's location in a source file.

    Attributes
    ----------
    type_name : str
        The element type as the file names it (``"Float16"``, ``"float32"``, ``"str"``, ``"F16"``).
    dtype : numpy.dtype
        The numpy dtype the bytes are viewed as. For strings, ``uint8``.
    shape : tuple of int
        The array's shape. Strings have shape ``(byte_count,)``.
    ranges : tuple of (offset_bytes, length_bytes)
        Where the content lies in the source, in order. Concatenated, they are the array's bytes.
        A parameter stored in several records has one range per record.
    """

    type_name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]

    @property
    def nbytes(self) -> int:
        """Total content length in bytes."""
        return sum(length for _, length in self.ranges)


@dataclass(frozen=True)
class Entry:
    """One named entry of a checkpoint.

    Attributes
    ----------
    name : str
        The entry's name (the record tag).
    kind : {"tensor", "str", "map"}
        A tensor has one part; a string has one part holding UTF-32-LE text; a map tensor has
        three parts: keys, values and status.
    parts : tuple of TensorIndex
    path : str
        The file the ranges refer to. For an encrypted file, the ranges refer to its plaintext.
    """

    name: str
    kind: EntryKind
    parts: tuple[TensorIndex, ...]
    path: str

    @property
    def nbytes(self) -> int:
        """Total content length of all parts, in bytes."""
        return sum(part.nbytes for part in self.parts)
