"""MindSpore front end: mploader's loader returning ``mindspore.Parameter`` values.

``from mploader.mindspore import load_checkpoint, load_checkpoint_async, load_param_into_net``
replaces the functions of the same names in ``mindspore``: the dicts hold ``Parameter`` objects
where MindSpore's do, and ``net`` may be any ``mindspore.nn.Cell``.

MindSpore is imported on the first call, not when this module is imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np

from .net import EntrySpec, ParameterSpec, describe_entries, log_plan, plan_load
from .net import load_param_into_net as _load_into_other_net

__all__ = ["load_checkpoint", "load_checkpoint_async", "load_param_into_net"]


def _import_mindspore() -> ModuleType:
    try:
        return importlib.import_module("mindspore")
    except ImportError as exc:
        raise ImportError(
            f"mploader.mindspore needs MindSpore, which failed to import ({exc}). Install mindspore, "
            f"or use mploader.load_checkpoint, which returns numpy arrays."
        ) from exc


def _numpy_dtype(mindspore: ModuleType, dtype: Any) -> np.dtype | str:
    """Return the numpy dtype of a MindSpore dtype, or its name when numpy has none (Int4)."""
    numpy_dtypes = {
        mindspore.bool_: np.bool_,
        mindspore.int8: np.int8,
        mindspore.int16: np.int16,
        mindspore.int32: np.int32,
        mindspore.int64: np.int64,
        mindspore.uint8: np.uint8,
        mindspore.uint16: np.uint16,
        mindspore.uint32: np.uint32,
        mindspore.uint64: np.uint64,
        mindspore.float16: np.float16,
        mindspore.bfloat16: ml_dtypes.bfloat16,
        mindspore.float32: np.float32,
        mindspore.float64: np.float64,
        mindspore.complex64: np.complex64,
        mindspore.complex128: np.complex128,
    }
    numpy_type = numpy_dtypes.get(dtype)
    # NOTE: MindSpore also converts int8..int64 entries into Int4 (qint4x2) parameters. Int4 has no
    # numpy dtype, so here an Int4 parameter takes only an Int4 entry.
    return np.dtype(numpy_type) if numpy_type is not None else str(dtype)


def _writable(array: np.ndarray) -> np.ndarray:
    """Return ``array``, or a native-order copy when MindSpore could not safely share it.

    A Parameter made from an array shares its memory, and training writes into that memory, so a
    read-only array (for example one over a ``bytes`` object) is copied.
    """
    if not array.flags.writeable or not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="), copy=True)
    return array


def _to_tensor(mindspore: ModuleType, array: np.ndarray) -> Any:
    """Wrap ``array`` in a Tensor that shares its memory, unless it must be copied to be contiguous."""
    from_numpy = getattr(mindspore, "from_numpy", None) or mindspore.Tensor.from_numpy
    return from_numpy(_writable(array))


def _to_parameter(mindspore: ModuleType, name: str, array: np.ndarray) -> Any:
    """Make a ``mindspore.Parameter`` named ``name`` that shares ``array``'s memory.

    ``Parameter(tensor)`` copies the data through ``tensor.asnumpy()`` (MindSpore 2.10 on
    CPython 3.11), and that call raises TypeError for bfloat16 when MindSpore's own numpy bfloat16
    type does not work with the installed numpy (numpy 2). A Parameter made from a data-less
    ``meta`` tensor of the same shape and dtype and then given the tensor by ``set_data`` shares
    the memory instead, bfloat16 included: ``from_numpy`` reads an ``ml_dtypes.bfloat16`` array as
    MindSpore BFloat16.
    """
    # NOTE: MindSpore 2.10 documents Tensor's ``device`` argument as reserved. The compat tests
    # check that this path shares memory and that the Parameters train.
    tensor = _to_tensor(mindspore, array)
    placeholder = mindspore.Tensor(shape=tensor.shape, dtype=tensor.dtype, device="meta")
    parameter = mindspore.Parameter(placeholder, name=name)
    parameter.set_data(tensor)
    return parameter


def _to_parameters(mindspore: ModuleType, loaded: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the arrays of mploader's dict into Parameters, keeping strings and map lists as they are."""
    return {
        name: _to_parameter(mindspore, name, value) if isinstance(value, np.ndarray) else value
        for name, value in loaded.items()
    }


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
    workers: int | None = None,
    crc_check: bool = False,
    format: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into a dict of ``mindspore.Parameter``, like ``mindspore.load_checkpoint``.

    Takes the arguments of :func:`mploader.load_checkpoint`. When ``net`` is given, the dict is
    also loaded into it with :func:`load_param_into_net` and ``strict_load``.

    Returns
    -------
    dict
        Entry names in file order, mapped to ``mindspore.Parameter`` for tensors, ``str`` for
        string entries and ``[keys, values, status]`` lists of numpy arrays for map tensors.

    Raises
    ------
    ImportError
        If MindSpore is not installed.
    ValueError, TypeError, RuntimeError
        As :func:`mploader.load_checkpoint` and :func:`load_param_into_net` raise them.

    Notes
    -----
    Each Parameter shares memory with the array mploader loaded, so no tensor data is copied.
    """
    from . import api

    mindspore = _import_mindspore()
    loaded = api.load_checkpoint(
        ckpt_file_name, None, strict_load, filter_prefix, dec_key, dec_mode, specify_prefix, choice_func,
        workers=workers, crc_check=crc_check, format=format,
    )
    parameters = _to_parameters(mindspore, loaded)
    if net is not None:
        load_param_into_net(net, parameters, strict_load)
    return parameters


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
    workers: int | None = None,
    crc_check: bool = False,
    format: str | None = None,
) -> Future[dict[str, Any]]:
    """Start :func:`load_checkpoint` and return a :class:`concurrent.futures.Future` of its dict.

    Notes
    -----
    Every error is raised by ``result()``. Cancelling the returned future before its result is set
    cancels the load. The conversion to Parameters, and the loading into ``net`` when it is given,
    run in the thread that completes the load.
    """
    from . import api

    outer: Future[dict[str, Any]] = Future()
    try:
        mindspore = _import_mindspore()
    except ImportError as exc:
        outer.set_exception(exc)
        return outer

    inner = api.load_checkpoint_async(
        ckpt_file_name, None, strict_load, filter_prefix, dec_key, dec_mode, specify_prefix, choice_func,
        workers=workers, crc_check=crc_check, format=format,
    )

    def finish(done: Future[dict[str, Any]]) -> None:
        if done.cancelled():
            outer.cancel()
            return
        if not outer.set_running_or_notify_cancel():
            return
        error = done.exception()
        if error is not None:
            outer.set_exception(error)
            return
        try:
            parameters = _to_parameters(mindspore, done.result())
            if net is not None:
                load_param_into_net(net, parameters, strict_load)
        except Exception as exc:
            outer.set_exception(exc)
        else:
            outer.set_result(parameters)

    def forward_cancel(done: Future[dict[str, Any]]) -> None:
        if done.cancelled():
            inner.cancel()

    outer.add_done_callback(forward_cancel)
    inner.add_done_callback(finish)
    return outer


def _describe_tensor(mindspore: ModuleType, value: Any) -> EntrySpec | None:
    if isinstance(value, mindspore.Tensor):
        return EntrySpec("tensor", tuple(value.shape), _numpy_dtype(mindspore, value.dtype))
    return None


def _map_parameter_type() -> type[Any] | None:
    try:
        map_parameter: type[Any] = importlib.import_module("mindspore.experimental").MapParameter
        return map_parameter
    except (ImportError, AttributeError):
        return None


def _value_for(mindspore: ModuleType, value: Any, spec: ParameterSpec, reshape: bool, convert: bool) -> Any:
    """Return ``value`` as a Tensor with the parameter's shape and dtype."""
    if isinstance(value, np.ndarray):
        if reshape:
            value = value.reshape(spec.shape)
        if convert and isinstance(spec.dtype, np.dtype):
            value = value.astype(spec.dtype)
        return _to_tensor(mindspore, value)
    if reshape:
        value = value.reshape(spec.shape)
    if convert:
        value = value.astype(_mindspore_dtype(mindspore, spec.dtype))
    return value


def _mindspore_dtype(mindspore: ModuleType, dtype: np.dtype | str) -> Any:
    """Return the MindSpore dtype of one of the convertible numpy dtypes."""
    for candidate in (
        mindspore.int8, mindspore.int16, mindspore.int32, mindspore.int64,
        mindspore.float16, mindspore.bfloat16, mindspore.float32, mindspore.float64,
    ):
        if _numpy_dtype(mindspore, candidate) == dtype:
            return candidate
    raise TypeError(f"dtype {dtype} is not a float or signed integer type that MindSpore converts to")


def load_param_into_net(
    net: Any, parameter_dict: Mapping[str, Any], strict_load: bool = False
) -> tuple[list[str], list[str]]:
    """Load a parameter dict into a MindSpore ``nn.Cell``, like ``mindspore.load_param_into_net``.

    Parameters
    ----------
    net : mindspore.nn.Cell
        The network. Other targets (a dict of numpy arrays, a torch module, an object with
        ``parameters_dict()``) are passed to :func:`mploader.net.load_param_into_net`.
    parameter_dict : dict
        Names mapped to ``mindspore.Parameter`` or ``Tensor`` values, numpy arrays, ``str`` or
        ``[keys, values, status]`` lists. The dicts of :func:`load_checkpoint`,
        :func:`mploader.load_checkpoint` and ``mindspore.load_checkpoint`` all work.
    strict_load : bool, default False
        When True, parameters match only entries of exactly their name, and a dtype difference
        raises instead of converting.

    Returns
    -------
    param_not_load : list of str
        The network's parameters that got no value, in the order of ``net.parameters_and_names()``.
    ckpt_not_load : list of str
        Names in ``parameter_dict`` that no parameter took by its exact name, in dict order.
        Entries used through the prefix retry, and entries given to a ``MapParameter``, stay in
        this list, as in MindSpore.

    Raises
    ------
    ImportError
        If MindSpore is not installed.
    RuntimeError
        If an entry's shape or dtype does not fit its parameter.
    TypeError
        If ``strict_load`` is not a bool, a key is not a str, or a value has an unsupported type.

    Notes
    -----
    The matching rules are MindSpore 2.10's and are listed in :func:`mploader.net.plan_load`.
    Parameters are matched by ``Parameter.name``, and those marked as pipeline-shared are skipped,
    as in MindSpore. A ``MapParameter`` gets its entry through ``import_data``.

    Every parameter is checked before any is assigned, so an error leaves the network unchanged,
    where MindSpore leaves the parameters before the failing one loaded. A numpy entry that needs
    no conversion is shared with the parameter, not copied, as MindSpore shares a loaded
    Parameter's data. An entry with trailing size-1 dimensions is reshaped to the parameter's
    shape. MindSpore 2.10 accepts it too but leaves the parameter with the entry's shape.

    NOTE: MindSpore skips parameters that are not sliced in auto-parallel mode when it lists
    unloaded ones. This function does not look at the parallel mode and lists them.
    """
    mindspore = _import_mindspore()
    if not isinstance(net, mindspore.nn.Cell):
        return _load_into_other_net(net, parameter_dict, strict_load)
    if not isinstance(strict_load, bool):
        raise TypeError(f"strict_load must be a bool, not {type(strict_load).__name__} ({strict_load!r})")

    entries = describe_entries(parameter_dict, lambda value: _describe_tensor(mindspore, value))
    map_parameter_type = _map_parameter_type()
    specs: dict[str, ParameterSpec] = {}
    net_parameters: dict[str, Any] = {}
    for _, parameter in net.parameters_and_names():
        if getattr(getattr(parameter, "param_info", None), "is_pipeline_shared_param", False):
            continue
        if map_parameter_type is not None and isinstance(parameter, map_parameter_type):
            specs[parameter.name] = ParameterSpec((), "MapTensor", is_map=True)
        else:
            specs[parameter.name] = ParameterSpec(
                tuple(parameter.shape), _numpy_dtype(mindspore, parameter.dtype)
            )
        net_parameters[parameter.name] = parameter

    plan = plan_load(specs, entries, strict_load)
    log_plan(plan, entries, specs)
    for step in plan.assignments:
        parameter = net_parameters[step.parameter_name]
        value = parameter_dict[step.entry_name]
        if step.import_map:
            parameter.import_data(value)
            continue
        tensor = _value_for(mindspore, value, specs[step.parameter_name], step.reshape, step.convert)
        parameter.set_data(tensor, parameter.sliced)
        if hasattr(parameter, "init_param") and not parameter.init_param:
            parameter.init_param = True
    return plan.param_not_load, plan.ckpt_not_load
