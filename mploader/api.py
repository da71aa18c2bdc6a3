"""Public functions: argument checks, format choice and futures.

The argument rules follow ``mindspore.load_checkpoint`` 2.10, so mploader is a drop-in for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from . import coordinator
from . import net as net_module
from .formats import ckpt as ckpt_format
from .formats import crc as crc_format
from .formats import crypto

__all__ = ["load_checkpoint", "load_checkpoint_async", "save_checkpoint"]

_EXTENSIONS = (".ckpt", ".safetensors")


def _check_prefixes(value: Any, argument: str) -> tuple[str, ...] | None:
    """Validate ``filter_prefix`` or ``specify_prefix``; return them as a tuple, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        items: tuple[Any, ...] = (value,)
    elif isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{argument} must not be an empty {type(value).__name__}")
        items = tuple(value)
    else:
        raise TypeError(
            f"{argument} must be a str or a list or tuple of str, not {type(value).__name__}"
        )
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"every {argument} must be a str, not {type(item).__name__} ({item!r})")
        if not item:
            raise ValueError(f"{argument} must not contain an empty string")
    return items


def _selector(
    filter_prefix: Any, specify_prefix: Any, choice_func: Any
) -> Callable[[str], bool] | None:
    """Combine the three name filters into one predicate, with MindSpore 2.10's precedence.

    A name is kept when it starts with one of ``specify_prefix`` (if given) and with none of
    ``filter_prefix`` (if given). When either is set, ``choice_func`` is ignored.
    """
    excluded = _check_prefixes(filter_prefix, "filter_prefix")
    included = _check_prefixes(specify_prefix, "specify_prefix")
    if choice_func is not None and not callable(choice_func):
        raise TypeError(f"choice_func must be callable, not {type(choice_func).__name__}")
    if excluded is None and included is None:
        if choice_func is None:
            return None
        return lambda name: bool(choice_func(name))

    def select(name: str) -> bool:
        if included is not None and not name.startswith(included):
            return False
        return excluded is None or not name.startswith(excluded)

    return select


def _text_path(value: Any, argument: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a str or os.PathLike, not {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{argument} must be a text path, not {type(path).__name__}")
    return path


def _check_file(path: str, file_format: str | None = None) -> str:
    if not os.path.exists(path):
        raise ValueError(f"checkpoint file {path!r} does not exist")
    # An explicit format= names the format, so the extension need not.
    if file_format is None and not path.endswith(_EXTENSIONS):
        raise ValueError(
            f"checkpoint file name {path!r} must end with .ckpt or .safetensors; rename the file or pass format="
        )
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file {path!r} is not a regular file")
    return os.path.abspath(path)


def _read_weight_map(path: str) -> tuple[list[str], dict[str, str]]:
    """Return the shard files named by an index JSON's ``weight_map``, and the map with full paths."""
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"index file {path!r} cannot be read as JSON: {exc}") from exc
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(name, str) and isinstance(file_name, str) for name, file_name in weight_map.items()
    ):
        raise ValueError(
            f"index file {path!r} has no 'weight_map' object mapping tensor names to file names"
        )
    directory = os.path.dirname(os.path.abspath(path))
    files: list[str] = []
    for file_name in weight_map.values():
        shard = os.path.join(directory, file_name)
        if shard not in files:
            if not os.path.isfile(shard):
                raise ValueError(f"index file {path!r} names {file_name!r}, which does not exist in {directory}")
            files.append(shard)
    if not files:
        raise ValueError(f"index file {path!r} has an empty weight_map")
    return files, {name: os.path.join(directory, file_name) for name, file_name in weight_map.items()}


def _resolve_files(
    ckpt_file_name: Any, file_format: str | None = None
) -> tuple[str, list[str], dict[str, str] | None]:
    """Return a display name, the checkpoint files, and the index JSON's weight map, if any."""
    if isinstance(ckpt_file_name, (list, tuple)):
        if not ckpt_file_name:
            raise ValueError("ckpt_file_name is an empty list; pass at least one file")
        files = [_check_file(_text_path(item, "every ckpt_file_name item"), file_format) for item in ckpt_file_name]
        if len(set(files)) != len(files):
            raise ValueError("ckpt_file_name lists the same file twice")
        return files[0] if len(files) == 1 else f"{files[0]} and {len(files) - 1} more files", files, None
    path = _text_path(ckpt_file_name, "ckpt_file_name")
    if os.path.isdir(path):
        names = sorted(name for name in os.listdir(path) if name.endswith(_EXTENSIONS))
        if not names:
            raise ValueError(f"directory {path!r} contains no .ckpt or .safetensors file")
        return os.path.abspath(path), [_check_file(os.path.join(path, name)) for name in names], None
    if path.endswith(".json"):
        if not os.path.isfile(path):
            raise ValueError(f"index file {path!r} does not exist")
        files, weight_map = _read_weight_map(path)
        return os.path.abspath(path), files, weight_map
    checked = _check_file(path, file_format)
    return checked, [checked], None


def _check_workers(workers: Any) -> int | None:
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int or None, not {type(workers).__name__}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 loads in-process), got {workers}")
    return workers


def _build_request(
    ckpt_file_name: Any,
    net: Any,
    strict_load: bool,
    filter_prefix: Any,
    dec_key: Any,
    dec_mode: str,
    specify_prefix: Any,
    choice_func: Any,
    crc_check: bool,
    workers: Any,
    progress: Callable[[int], None] | None = None,
    file_format: str | None = None,
) -> coordinator.LoadRequest:
    path, files, weight_map = _resolve_files(ckpt_file_name, file_format)
    select = _selector(filter_prefix, specify_prefix, choice_func)
    if dec_key is not None:
        if not isinstance(dec_key, (bytes, bytearray, memoryview)):
            raise TypeError(f"dec_key must be bytes, not {type(dec_key).__name__}")
        if not isinstance(dec_mode, str) or dec_mode not in crypto.MODES:
            raise ValueError(f"dec_mode must be one of {', '.join(crypto.MODES)}, not {dec_mode!r}")
        dec_key = bytes(dec_key)
    if not isinstance(strict_load, bool):
        raise TypeError(f"strict_load must be a bool, not {type(strict_load).__name__}")
    after_load = None
    if net is not None:

        def after_load(parameters: dict[str, Any]) -> None:
            net_module.load_param_into_net(net, parameters, strict_load)

    if file_format is not None and file_format not in ("ckpt", "safetensors"):
        raise ValueError(f"format must be 'ckpt' or 'safetensors', not {file_format!r}")
    shards = tuple(
        (file, file_format or ("safetensors" if file.endswith(".safetensors") else "ckpt")) for file in files
    )
    if dec_key is not None and (len(shards) > 1 or shards[0][1] != "ckpt"):
        raise ValueError(
            "dec_key applies to a single .ckpt file; MindSpore neither encrypts .safetensors files nor shards "
            "encrypted checkpoints"
        )
    return coordinator.LoadRequest(
        path=path,
        select=select,
        workers=_check_workers(workers),
        crc_check=bool(crc_check),
        dec_key=dec_key,
        dec_mode=dec_mode,
        file_format=shards[0][1],
        shards=shards,
        weight_map=weight_map,
        progress=progress,
        after_load=after_load,
    )


def load_checkpoint(
    ckpt_file_name: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    net: Any = None,
    strict_load: bool = False,
    filter_prefix: str | Iterable[str] | None = None,
    dec_key: bytes | None = None,
    dec_mode: str = "AES-GCM",
    specify_prefix: str | Iterable[str] | None = None,
    choice_func: Callable[[str], bool] | None = None,
    *,
    crc_check: bool = False,
    workers: int | None = None,
    format: str | None = None,
) -> dict[str, Any]:
    """Load a MindSpore checkpoint into a dict of numpy arrays.

    Parameters
    ----------
    ckpt_file_name : str, os.PathLike, or list of them
        A ``.ckpt`` or ``.safetensors`` file, or a sharded checkpoint: a list of such files, a
        directory holding them, or an index JSON (such as ``model.safetensors.index.json``) whose
        ``weight_map`` names them. All shards are loaded as one job, and a name found in two shards
        is an error.
    net : object, optional
        A network to load the parameters into before the dict is returned: a dict of numpy arrays,
        an object with MindSpore's ``parameters_dict()`` protocol, a PyTorch module or a MindSpore
        Cell. See :func:`mploader.net.load_param_into_net`.
    strict_load : bool, default False
        Matching rule when ``net`` is given: exact names and dtypes only.
    filter_prefix : str or list of str, optional
        Drop entries whose names start with any of these.
    dec_key : bytes, optional
        Key of an encrypted checkpoint.
    dec_mode : {"AES-GCM", "AES-CBC", "SM4-CBC"}
        Cipher of an encrypted checkpoint.
    specify_prefix : str or list of str, optional
        Keep only entries whose names start with one of these.
    choice_func : callable, optional
        ``choice_func(name) -> bool`` keeps an entry when it returns True. Ignored when
        ``filter_prefix`` or ``specify_prefix`` is given, as in MindSpore.
    crc_check : bool, default False
        Verify the CRC32 trailer.
    workers : int, optional
        Worker processes to use. None picks automatically: in-process for small files, else the
        pool's default size (``MPLOADER_WORKERS`` or the CPUs this process may use). 0 loads
        in-process, without shared memory.
    format : {"ckpt", "safetensors"}, optional
        The file format; by default taken from the file name's extension, as MindSpore does.

    Returns
    -------
    dict
        Entry names in file order, mapped to numpy arrays (bfloat16 as ``ml_dtypes.bfloat16``),
        ``str`` for string entries, and ``[keys, values, status]`` for map tensors.

    Raises
    ------
    ValueError
        For a missing file, a wrong extension, invalid filters, or when no entry is left after
        filtering. :class:`~mploader.errors.CheckpointError`, a ValueError, for invalid file
        contents; it carries the path and the byte offset.
    TypeError
        For arguments of the wrong type.
    mploader.errors.WorkerCrashedError
        If a worker process dies during the load.
    mploader.errors.SharedMemoryFullError
        If the shared-memory filesystem is too small for the load.

    Notes
    -----
    Filters are applied to the index before any tensor byte is read, so unselected tensors cost no
    I/O. The arrays are views into one shared-memory mapping, released when the last of them is
    garbage-collected. Its file is unlinked before this function returns.
    """
    request = _build_request(
        ckpt_file_name, net, strict_load, filter_prefix, dec_key, dec_mode, specify_prefix,
        choice_func, crc_check, workers, file_format=format,
    )
    return coordinator.load(request).parameters


def load_checkpoint_async(
    ckpt_file_name: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    net: Any = None,
    strict_load: bool = False,
    filter_prefix: str | Iterable[str] | None = None,
    dec_key: bytes | None = None,
    dec_mode: str = "AES-GCM",
    specify_prefix: str | Iterable[str] | None = None,
    choice_func: Callable[[str], bool] | None = None,
    *,
    crc_check: bool = False,
    workers: int | None = None,
    format: str | None = None,
) -> Future[dict[str, Any]]:
    """Start loading a checkpoint and return a :class:`concurrent.futures.Future` of its dict.

    Takes the same arguments as :func:`load_checkpoint`. ``result(timeout)``, ``done()``,
    ``exception()``, ``cancel()``, ``add_done_callback()`` and ``asyncio.wrap_future`` all work.

    Notes
    -----
    Every error, including invalid arguments, is raised by ``result()``, as with MindSpore, whose
    ``load_checkpoint_async`` runs the whole load on a background thread. ``cancel()`` succeeds
    until the result is set: the load stops dispatching work and frees its memory.
    """
    try:
        request = _build_request(
            ckpt_file_name, net, strict_load, filter_prefix, dec_key, dec_mode, specify_prefix,
            choice_func, crc_check, workers, file_format=format,
        )
    except (TypeError, ValueError, NotImplementedError) as exc:
        failed: Future[dict[str, Any]] = Future()
        failed.set_exception(exc)
        return failed
    return coordinator.load_async(request)


def save_checkpoint(
    save_obj: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    ckpt_file_name: str | os.PathLike[str],
    *,
    append_dict: Mapping[str, Any] | None = None,
    choice_func: Callable[[str], bool] | None = None,
    crc_check: bool = False,
    enc_key: bytes | None = None,
    enc_mode: str = "AES-GCM",
) -> None:
    """Write a ``.ckpt`` file with the bytes MindSpore 2.10 writes for the same entries.

    Parameters
    ----------
    save_obj : dict or list of dict
        ``{name: value}``, or ``[{"name": name, "data": value}, ...]``. Values are numpy arrays or
        scalars of a type MindSpore can store, ``int`` (Int64), ``float`` (Float32), ``bool`` or
        ``str``.
    ckpt_file_name : str or os.PathLike
        Destination. ``.ckpt`` is appended when the name does not end with it, as MindSpore does.
    append_dict : dict, optional
        More entries, written after ``save_obj`` and not subject to ``choice_func``.
    choice_func : callable, optional
        Keep a ``save_obj`` entry when ``choice_func(name)`` is True.
    crc_check : bool, default False
        Append the 17-byte ``crc_num`` trailer holding the CRC32 of the records.
    enc_key : bytes, optional
        Encrypt the file with this key: 16, 24 or 32 bytes for AES, 16 for SM4.
    enc_mode : {"AES-GCM", "AES-CBC", "SM4-CBC"}
        Cipher used with ``enc_key``, in MindSpore's 64 MiB frames with a fresh random IV each.

    Notes
    -----
    Records appear in input order; a parameter over 512 MiB is cut into 512 MiB records. Entries
    with zero elements are skipped with a warning, because MindSpore writes no record for them.
    The file is written under a temporary name in the same directory and renamed when complete,
    so a failure never leaves a partial checkpoint.

    With both ``enc_key`` and ``crc_check``, the trailer after the last frame contains the CRC32 of
    the plaintext records. MindSpore 2.10 writes 0 there instead, and cannot load such files
    itself; mploader loads both kinds and verifies only a non-zero value.
    """
    path = os.fspath(ckpt_file_name)
    if not isinstance(path, str):
        raise TypeError(f"ckpt_file_name must be a text path, not {type(path).__name__}")
    if not path.endswith(".ckpt"):
        path += ".ckpt"
    items = ckpt_format.normalize_save_obj(save_obj, append_dict, choice_func)
    with ckpt_format.AtomicFile(path) as output:
        if enc_key is None:
            ckpt_format.write_checkpoint(items, output.file, crc_check=crc_check)
            return
        with crypto.EncryptingWriter(output.file, enc_mode, enc_key) as encrypted:
            ckpt_format.write_checkpoint(items, encrypted)
        if crc_check:
            output.file.write(crc_format.make_trailer(encrypted.plaintext_crc32))
