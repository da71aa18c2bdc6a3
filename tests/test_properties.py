"""Properties of save and load over generated checkpoints: round trips, filters, worker counts.

Contents come from :mod:`mploader.testing.strategies`. Saving drops arrays with no elements, and
loading drops trailing NULs of strings. ``expected_load`` models both, so every property compares
with exactly what a load must return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hypothesis_profiles
import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import mploader
from mploader.formats import ckpt as ckpt_format
from mploader.formats import crypto
from mploader.formats.dtypes import CKPT_DTYPES
from mploader.testing import strategies as ckpt_st

MODES = list(crypto.MODES)
EXAMPLES = hypothesis_profiles.scaled_examples

# Hypothesis reruns a test body many times inside one function-scoped fixture, so the tests
# write into a directory that lives for the whole module and overwrite one file.


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


def _load_all(path: Path, worker_counts: Sequence[int], **kwargs: Any) -> list[dict[str, Any]]:
    return [mploader.load_checkpoint(path, workers=workers, **kwargs) for workers in worker_counts]


def _check_round_trip(path: Path, contents: dict[str, Any], worker_counts: Sequence[int], **kwargs: Any) -> None:
    expected = ckpt_st.expected_load(contents)
    for workers in worker_counts:
        if not expected:
            # Every entry had no elements, so the file contains no record at all.
            with pytest.raises(ValueError):
                mploader.load_checkpoint(path, workers=workers, **kwargs)
            continue
        ckpt_st.assert_contents_equal(mploader.load_checkpoint(path, workers=workers, **kwargs), expected)


@settings(max_examples=EXAMPLES(60))
@given(contents=ckpt_st.checkpoint_contents())
def test_round_trip_plain(work_dir: Path, contents: dict[str, Any]) -> None:
    path = work_dir / "plain.ckpt"
    mploader.save_checkpoint(contents, path)
    _check_round_trip(path, contents, (0, 2))


@st.composite
def _sliced_case(draw: st.DrawFn) -> tuple[int, dict[str, Any]]:
    slice_bytes = draw(st.integers(1, 48))
    return slice_bytes, draw(ckpt_st.checkpoint_contents(slice_bytes=slice_bytes))


@settings(max_examples=EXAMPLES(40))
@given(case=_sliced_case())
def test_round_trip_sliced(work_dir: Path, case: tuple[int, dict[str, Any]]) -> None:
    slice_bytes, contents = case
    path = work_dir / "sliced.ckpt"
    with ckpt_st.patch_slice_bytes(slice_bytes):
        mploader.save_checkpoint(contents, path)
    _check_round_trip(path, contents, (0, 2))


@settings(max_examples=EXAMPLES(30))
@given(contents=ckpt_st.checkpoint_contents())
def test_round_trip_crc(work_dir: Path, contents: dict[str, Any]) -> None:
    path = work_dir / "crc.ckpt"
    mploader.save_checkpoint(contents, path, crc_check=True)
    _check_round_trip(path, contents, (0, 2), crc_check=True)


def _keys(mode: str) -> st.SearchStrategy[bytes]:
    sizes = crypto.KEY_SIZES_BYTES[mode]
    return st.sampled_from(sizes).flatmap(lambda size: st.binary(min_size=size, max_size=size))


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=EXAMPLES(15))
@given(data=st.data())
def test_round_trip_encrypted(work_dir: Path, mode: str, data: st.DataObject) -> None:
    contents = data.draw(ckpt_st.checkpoint_contents(), label="contents")
    key = data.draw(_keys(mode), label="key")
    crc_check = data.draw(st.booleans(), label="crc_check")
    path = work_dir / f"encrypted-{mode}.ckpt"
    mploader.save_checkpoint(contents, path, enc_key=key, enc_mode=mode, crc_check=crc_check)
    _check_round_trip(path, contents, (0, 2), dec_key=key, dec_mode=mode, crc_check=crc_check)


def _write_small_frames(path: Path, contents: dict[str, Any], mode: str, key: bytes, frame_bytes: int) -> None:
    """Write an encrypted checkpoint as save_checkpoint does, but with frames of ``frame_bytes``."""
    items = ckpt_format.normalize_save_obj(contents)
    with open(path, "wb") as file, crypto.EncryptingWriter(
        file, mode, key, frame_plaintext_bytes=frame_bytes
    ) as encrypted:
        ckpt_format.write_checkpoint(items, encrypted)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=EXAMPLES(10))
@given(data=st.data())
def test_round_trip_small_frames(work_dir: Path, mode: str, data: st.DataObject) -> None:
    # Frame boundaries then fall inside record headers, names and tensor contents.
    contents = data.draw(ckpt_st.checkpoint_contents(max_entries=4), label="contents")
    frame_bytes = data.draw(st.integers(8, 256), label="frame_bytes")
    key = bytes(range(16))
    path = work_dir / f"frames-{mode}.ckpt"
    _write_small_frames(path, contents, mode, key, frame_bytes)
    _check_round_trip(path, contents, (0, 2), dec_key=key, dec_mode=mode)


# ----------------------------------------------------------------------------------------------
# Filters
# ----------------------------------------------------------------------------------------------


def _as_prefixes(value: str | list[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def _model_selection(
    names: Sequence[str],
    filter_prefix: str | list[str] | None,
    specify_prefix: str | list[str] | None,
    choice_func: Callable[[str], Any] | None,
) -> list[str]:
    """Select names by MindSpore 2.10's rule, written independently of mploader's code.

    A name is kept when it starts with one of specify_prefix and with none of filter_prefix. Only
    when neither is given, choice_func decides by the truth of its result.
    """
    excluded = _as_prefixes(filter_prefix)
    included = _as_prefixes(specify_prefix)
    if excluded is None and included is None:
        return [name for name in names if choice_func is None or choice_func(name)]
    kept = []
    for name in names:
        if included is not None and not any(name.startswith(prefix) for prefix in included):
            continue
        if excluded is not None and any(name.startswith(prefix) for prefix in excluded):
            continue
        kept.append(name)
    return kept


def _prefix_arguments(names: list[str]) -> st.SearchStrategy[str | list[str] | None]:
    # Prefixes of real names match something; arbitrary text mostly matches nothing.
    prefixes = st.text(min_size=1, max_size=4)
    if names:
        prefixes = st.one_of(
            prefixes,
            st.sampled_from(names).flatmap(lambda name: st.integers(1, len(name)).map(lambda end: name[:end])),
        )
    return st.one_of(st.none(), prefixes, st.lists(prefixes, min_size=1, max_size=3))


def _choice_functions(names: list[str]) -> st.SearchStrategy[Callable[[str], Any] | None]:
    # Truthy non-bool results are accepted, as MindSpore tests them with `if`.
    chosen = st.sets(st.sampled_from(names)) if names else st.just(set())
    results = st.sampled_from([(True, False), (1, 0), ("yes", ""), ([0], [])])
    return st.one_of(
        st.none(),
        st.builds(lambda keep, result: lambda name: result[0] if name in keep else result[1], chosen, results),
    )


@settings(max_examples=EXAMPLES(60))
@given(data=st.data())
def test_filters_select_exact_subset(work_dir: Path, data: st.DataObject) -> None:
    contents = data.draw(ckpt_st.checkpoint_contents(max_entries=10), label="contents")
    path = work_dir / "filters.ckpt"
    mploader.save_checkpoint(contents, path)
    expected = ckpt_st.expected_load(contents)
    names = list(expected)
    filter_prefix = data.draw(_prefix_arguments(names), label="filter_prefix")
    specify_prefix = data.draw(_prefix_arguments(names), label="specify_prefix")
    choice_func = data.draw(_choice_functions(names), label="choice_func")
    kwargs: dict[str, Any] = {
        "filter_prefix": filter_prefix,
        "specify_prefix": specify_prefix,
        "choice_func": choice_func,
    }

    kept = _model_selection(names, filter_prefix, specify_prefix, choice_func)
    for workers in (0, 2):
        if not kept:
            with pytest.raises(ValueError):
                mploader.load_checkpoint(path, workers=workers, **kwargs)
            continue
        loaded = mploader.load_checkpoint(path, workers=workers, **kwargs)
        ckpt_st.assert_contents_equal(loaded, {name: expected[name] for name in kept})


# ----------------------------------------------------------------------------------------------
# Worker counts
# ----------------------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES(30))
@given(data=st.data())
def test_result_independent_of_workers(work_dir: Path, data: st.DataObject) -> None:
    slice_bytes = data.draw(st.integers(1, 64), label="slice_bytes")
    contents = data.draw(ckpt_st.checkpoint_contents(slice_bytes=slice_bytes, max_entries=10), label="contents")
    crc_check = data.draw(st.booleans(), label="crc_check")
    path = work_dir / "workers.ckpt"
    with ckpt_st.patch_slice_bytes(slice_bytes):
        mploader.save_checkpoint(contents, path, crc_check=crc_check)
    expected = ckpt_st.expected_load(contents)
    if not expected:
        return
    keep = data.draw(st.sets(st.sampled_from(list(expected)), min_size=1), label="keep")

    results = _load_all(path, (0, 1, 2), crc_check=crc_check, choice_func=keep.__contains__)
    for result in results:
        ckpt_st.assert_contents_equal(result, {name: value for name, value in expected.items() if name in keep})
    for result in results[1:]:
        for name, value in results[0].items():
            if isinstance(value, np.ndarray):
                assert result[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize("dtype", list(CKPT_DTYPES.values()), ids=list(CKPT_DTYPES))
def test_strategy_draws_every_dtype(dtype: np.dtype[Any]) -> None:
    # The properties above cover a dtype only if the strategy can draw it.
    found = find(ckpt_st.tensors(), lambda array: array.dtype == dtype and array.size > 1)
    assert found.dtype == dtype


def test_string_with_lone_surrogate_round_trips(work_dir: Path) -> None:
    path = work_dir / "surrogate.ckpt"
    mploader.save_checkpoint({"note": "a\ud800b"}, path)
    assert mploader.load_checkpoint(path, workers=0)["note"] == "a\ud800b"
