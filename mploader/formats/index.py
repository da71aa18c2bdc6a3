"""The index of a checkpoint: what each entry is and where its bytes are.

Format readers produce these records without reading tensor bytes. The planner and the coordinator
consume them, so they are plain, immutable values that any format can build.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
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


def merge_shard_entries(shards: Iterable[tuple[str, Sequence[Entry]]]) -> list[Entry]:
    """Concatenate the entries of (path, entries) shards in order.

    Raises
    ------
    ValueError
        If a name is in two shards, since a sharded checkpoint contains each name once.
    """
    owner: dict[str, str] = {}
    merged: list[Entry] = []
    for path, entries in shards:
        for entry in entries:
            if entry.name in owner:
                raise ValueError(
                    f"entry {entry.name!r} is in both {owner[entry.name]} and {path}; a sharded checkpoint "
                    "must hold each name once. Remove the duplicate shard or load the files separately"
                )
            owner[entry.name] = path
            merged.append(entry)
    return merged


def check_weight_map(index_path: str, weight_map: Mapping[str, str], entries: Sequence[Entry]) -> None:
    """Check that every name of an index JSON's ``weight_map`` is in the file it names.

    Raises
    ------
    ValueError
        If a name is in another file, or in none.
    """
    found = {entry.name: os.path.abspath(entry.path) for entry in entries}
    for name, path in weight_map.items():
        if found.get(name) != os.path.abspath(path):
            where = f"is in {found[name]}" if name in found else "is in no shard"
            raise ValueError(
                f"index file {index_path} maps {name!r} to {path}, but that entry {where}; the index and "
                "the shards do not match"
            )
