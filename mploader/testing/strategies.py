"""Hypothesis strategies that generate checkpoint contents, for fuzzing code that saves or loads them.

The values are what :func:`mploader.save_checkpoint` accepts and :func:`mploader.load_checkpoint`
returns: numpy arrays of every element type a ``.ckpt`` file can hold, ``str`` entries, and map
tensors as ``[keys, values, status]`` lists. Shapes include 0-d scalars, one-element arrays and
arrays with no elements. Names include non-ASCII text, names of thousands of characters, and
names that share prefixes, which is what ``filter_prefix`` and ``specify_prefix`` act on.

This module needs Hypothesis (``pip install hypothesis``); the rest of mploader does not.

Examples
--------
>>> from hypothesis import given
>>> from mploader.testing import strategies as ckpt_st
>>> @given(ckpt_st.checkpoint_contents())
... def test_round_trip(contents):
...     mploader.save_checkpoint(contents, "model.ckpt")
...     ckpt_st.assert_contents_equal(mploader.load_checkpoint("model.ckpt"), ckpt_st.expected_load(contents))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mploader.testing.strategies needs Hypothesis; install it with 'pip install hypothesis'"
    ) from exc

from ..formats import ckpt as ckpt_format
from ..formats.dtypes import CKPT_DTYPES, MAP_PART_DTYPES

__all__ = [
    "KINDS",
    "assert_contents_equal",
    "checkpoint_contents",
    "entry_names",
    "expected_load",
    "map_tensors",
    "patch_slice_bytes",
    "sliced_tensors",
    "string_values",
    "tensor_dtypes",
    "tensors",
]

# Entry kinds that checkpoint_contents can generate. "sliced" needs its slice_bytes argument.
KINDS = ("tensor", "str", "map", "sliced")

_BFLOAT16 = CKPT_DTYPES["BFloat16"]
# Name text: any Unicode scalar value except the surrogates, which UTF-8 cannot encode.
_NAME_CHARACTERS = st.characters(codec="utf-8")
_NAME_SEGMENT = st.text(_NAME_CHARACTERS, min_size=1, max_size=12)


def tensor_dtypes() -> st.SearchStrategy[np.dtype[Any]]:
    """Generate every numpy dtype a ``.ckpt`` tensor can have, bfloat16 and bool included.

    Returns
    -------
    hypothesis.strategies.SearchStrategy of numpy.dtype
        The values of :data:`mploader.formats.dtypes.CKPT_DTYPES`, all little-endian.
    """
    return st.sampled_from(list(CKPT_DTYPES.values()))


def _arrays_of(dtype: np.dtype[Any], shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    if dtype == _BFLOAT16:
        # Hypothesis has no element strategy for ml_dtypes types, so draw every bit pattern,
        # NaN payloads and infinities included, as uint16.
        return hnp.arrays(np.dtype("<u2"), shape).map(lambda bits: bits.view(_BFLOAT16))
    return hnp.arrays(dtype, shape)


def tensors(
    dtype: np.dtype[Any] | str | None = None, *, max_dims: int = 4, max_side: int = 5
) -> st.SearchStrategy[np.ndarray]:
    """Generate C-contiguous little-endian arrays that a ``.ckpt`` file can store.

    Parameters
    ----------
    dtype : numpy.dtype or str, optional
        The element type. By default every type of :func:`tensor_dtypes`.
    max_dims : int, default 4
        Maximum number of dimensions. Shapes start at 0 dimensions, a scalar.
    max_side : int, default 5
        Largest length of one dimension. Lengths start at 0, so arrays with no elements occur.

    Returns
    -------
    hypothesis.strategies.SearchStrategy of numpy.ndarray
        Floating-point arrays include NaN, infinities, -0.0 and subnormal values, so compare
        them bit for bit, as :func:`assert_contents_equal` does.
    """
    dtypes = tensor_dtypes() if dtype is None else st.just(np.dtype(dtype))
    shapes = hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side)
    return st.tuples(dtypes, shapes).flatmap(lambda pair: _arrays_of(*pair))


def sliced_tensors(slice_bytes: int, *, max_slices: int = 4) -> st.SearchStrategy[np.ndarray]:
    """Generate arrays larger than ``slice_bytes``, which the writer stores in several records.

    MindSpore cuts a parameter's raw bytes into records of 512 MiB
    (:data:`mploader.formats.ckpt.SLICE_BYTES`), and a cut may fall inside an element. To test
    that path with small arrays, lower the constant with :func:`patch_slice_bytes` while saving.

    Parameters
    ----------
    slice_bytes : int
        The record size the test patches in. Must be at least 1.
    max_slices : int, default 4
        The arrays hold more than ``slice_bytes`` and at most ``max_slices * slice_bytes`` bytes,
        or one element when a single element is already larger.

    Returns
    -------
    hypothesis.strategies.SearchStrategy of numpy.ndarray
        One-dimensional arrays, or two-dimensional ones with a dimension of length 1.
    """
    if slice_bytes < 1:
        raise ValueError(f"slice_bytes must be at least 1, got {slice_bytes}")
    if max_slices < 2:
        raise ValueError(f"max_slices must be at least 2 for an array to be sliced, got {max_slices}")

    @st.composite
    def draw_sliced(draw: st.DrawFn) -> np.ndarray:
        dtype = draw(tensor_dtypes())
        min_count = slice_bytes // dtype.itemsize + 1
        max_count = max(min_count, max_slices * slice_bytes // dtype.itemsize)
        count = draw(st.integers(min_count, max_count))
        shape = draw(st.sampled_from([(count,), (1, count), (count, 1)]))
        return draw(_arrays_of(dtype, shape))

    return draw_sliced()


def string_values(*, max_size: int = 40) -> st.SearchStrategy[str]:
    """Generate text for string entries (MindSpore's ``append_dict={"name": "text"}``).

    The text is any Unicode without surrogates, and may end in NUL characters, which a load
    drops as numpy does; :func:`expected_load` models that.
    """
    return st.text(st.characters(codec="utf-8"), max_size=max_size)


def map_tensors(*, max_rows: int = 5, max_side: int = 3) -> st.SearchStrategy[list[np.ndarray]]:
    """Generate map tensors: ``[keys, values, status]`` arrays with the same number of rows.

    Each part has its own element type from :data:`mploader.formats.dtypes.MAP_PART_DTYPES`
    and at least one dimension. The row count may be 0.
    """

    @st.composite
    def draw_map(draw: st.DrawFn) -> list[np.ndarray]:
        rows = draw(st.integers(0, max_rows))
        parts = []
        for _ in range(3):
            dtype = draw(st.sampled_from(list(MAP_PART_DTYPES.values())))
            trailing = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=max_side))
            parts.append(draw(hnp.arrays(dtype, (rows, *trailing))))
        return parts

    return draw_map()


def entry_names(*, max_length: int = 5000) -> st.SearchStrategy[str]:
    """Generate one entry name: dotted Unicode segments, sometimes thousands of characters long.

    Parameters
    ----------
    max_length : int, default 5000
        Maximum name length, in characters. Long names are a segment repeated, so they cost little to generate; one over
        4096 bytes exceeds the window the ``.ckpt`` reader fetches headers through.
    """
    dotted = st.lists(_NAME_SEGMENT, min_size=1, max_size=4).map(".".join)
    long_names = st.builds(lambda segment, count: segment * count, _NAME_SEGMENT, st.integers(100, 1000))
    # One name in five is long.
    return st.one_of(dotted, dotted, dotted, dotted, long_names).map(lambda name: name[:max_length])


@st.composite
def _shared_prefix_names(draw: st.DrawFn, min_size: int, max_size: int) -> list[str]:
    """Draw unique names, most of which extend one of a few shared stems.

    A stem followed by a digit, such as ``layer.1`` and ``layer.10``, is a prefix of a longer
    name without being a dotted parent of it, the case prefix filters most often get wrong.
    """
    stems = draw(st.lists(entry_names(max_length=200), min_size=1, max_size=3))
    suffixes = st.one_of(
        st.just(""),
        st.integers(0, 12).map(str),
        _NAME_SEGMENT.map(lambda segment: "." + segment),
    )
    shared = st.builds(lambda stem, suffix: stem + suffix, st.sampled_from(stems), suffixes)
    return draw(st.lists(st.one_of(shared, shared, entry_names()), min_size=min_size, max_size=max_size, unique=True))


@st.composite
def checkpoint_contents(
    draw: st.DrawFn,
    *,
    min_entries: int = 1,
    max_entries: int = 8,
    kinds: Sequence[str] = ("tensor", "str", "map"),
    slice_bytes: int | None = None,
) -> dict[str, Any]:
    """Generate a dict that :func:`mploader.save_checkpoint` accepts.

    Parameters
    ----------
    min_entries, max_entries : int
        Bounds on the number of entries. Entries with no elements are among them, and saving
        drops those, so a saved file can hold fewer.
    kinds : sequence of {"tensor", "str", "map", "sliced"}
        The kinds of value to draw from: arrays from :func:`tensors`, text from
        :func:`string_values`, map tensors from :func:`map_tensors`, and arrays from
        :func:`sliced_tensors`.
    slice_bytes : int, optional
        Record size for ``"sliced"`` entries; adds ``"sliced"`` to ``kinds`` when given. Save
        inside :func:`patch_slice_bytes` with the same value, or the arrays stay in one record.

    Returns
    -------
    hypothesis.strategies.SearchStrategy of dict
        Names in insertion order mapped to values. :func:`expected_load` gives what loading the
        saved file returns.
    """
    kinds = list(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    if slice_bytes is not None and "sliced" not in kinds:
        kinds.append("sliced")
    if "sliced" in kinds and slice_bytes is None:
        raise ValueError("kind 'sliced' needs slice_bytes")

    values: dict[str, st.SearchStrategy[Any]] = {"tensor": tensors(), "str": string_values(), "map": map_tensors()}
    if slice_bytes is not None:
        values["sliced"] = sliced_tensors(slice_bytes)
    names = draw(_shared_prefix_names(min_entries, max_entries))
    contents: dict[str, Any] = {}
    for name in names:
        kind = draw(st.sampled_from(kinds))
        contents[name] = draw(values[kind])
    return contents


def expected_load(contents: Mapping[str, Any]) -> dict[str, Any]:
    """Return what loading a file that ``save_checkpoint(contents)`` wrote gives back.

    Saving drops arrays with no elements (MindSpore writes no record for them), and loading a
    string drops its trailing NUL characters (numpy's ``str_`` type cannot hold them). Map tensor
    parts are kept even with no rows. Everything else comes back unchanged.
    """
    expected: dict[str, Any] = {}
    for name, value in contents.items():
        if isinstance(value, str):
            expected[name] = value.rstrip("\x00")
        elif isinstance(value, (list, tuple)):
            expected[name] = [np.asarray(part) for part in value]
        else:
            array = np.asarray(value)
            if array.size:
                expected[name] = array
    return expected


def _describe_array(array: np.ndarray) -> str:
    return f"{array.dtype} array of shape {array.shape}"


def _assert_array_equal(where: str, actual: Any, expected: np.ndarray) -> None:
    if not isinstance(actual, np.ndarray):
        raise AssertionError(f"{where}: expected a {_describe_array(expected)}, got {type(actual).__name__}")
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        raise AssertionError(f"{where}: expected a {_describe_array(expected)}, got a {_describe_array(actual)}")
    if actual.tobytes() != expected.tobytes():
        actual_bytes = np.ascontiguousarray(actual).reshape(-1).view(np.uint8)
        differ = np.flatnonzero(actual_bytes != np.ascontiguousarray(expected).reshape(-1).view(np.uint8))
        first = int(differ[0]) if differ.size else 0
        raise AssertionError(f"{where}: bytes differ, first at byte {first} ({differ.size} bytes differ)")


def assert_contents_equal(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Assert that two parameter dicts hold the same names in the same order, and equal values.

    Arrays must match in dtype, shape and every byte, so NaN payloads and -0.0 count.

    Raises
    ------
    AssertionError
        Naming the first entry that differs and how.
    """
    if list(actual) != list(expected):
        missing = [name for name in expected if name not in actual]
        extra = [name for name in actual if name not in expected]
        raise AssertionError(
            f"names differ: missing {missing!r}, unexpected {extra!r}"
            if missing or extra
            else f"names are in another order: {list(actual)!r}, expected {list(expected)!r}"
        )
    for name, want in expected.items():
        got = actual[name]
        if isinstance(want, str):
            if got != want:
                raise AssertionError(f"entry {name!r}: expected the string {want!r}, got {got!r}")
        elif isinstance(want, (list, tuple)):
            if not isinstance(got, (list, tuple)) or len(got) != len(want):
                raise AssertionError(f"entry {name!r}: expected a map tensor of {len(want)} parts, got {got!r}")
            for part_name, got_part, want_part in zip(("keys", "values", "status"), got, want):
                _assert_array_equal(f"entry {name!r} {part_name}", got_part, np.asarray(want_part))
        else:
            _assert_array_equal(f"entry {name!r}", got, np.asarray(want))


@contextlib.contextmanager
def patch_slice_bytes(slice_bytes: int) -> Iterator[None]:
    """Make :func:`mploader.save_checkpoint` cut parameters into records of ``slice_bytes`` bytes.

    For tests only: it replaces the module constant :data:`mploader.formats.ckpt.SLICE_BYTES`
    for every thread of the process, and restores it on exit. Loading is unaffected, since the
    reader accepts records of any size.
    """
    if slice_bytes < 1:
        raise ValueError(f"slice_bytes must be at least 1, got {slice_bytes}")
    saved = ckpt_format.SLICE_BYTES
    ckpt_format.SLICE_BYTES = slice_bytes
    try:
        yield
    finally:
        ckpt_format.SLICE_BYTES = saved
