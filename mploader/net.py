"""Load a parameter dict into a network, with the matching rules of MindSpore 2.10.

:func:`load_param_into_net` takes the dict that :func:`mploader.load_checkpoint` returns and copies
its arrays into a network's parameters. It works in two steps:

1. :func:`plan_load` is pure. From the parameters' names, shapes and dtypes and the entries'
   kinds, shapes and dtypes it decides which entry fills which parameter, and raises before
   anything is assigned when one of them does not fit.
2. A target adapter carries the plan out. Adapters exist for a ``dict`` of numpy arrays, for any
   object with MindSpore's ``parameters_dict()`` protocol, for a PyTorch ``nn.Module``, and, in
   :mod:`mploader.mindspore`, for a real MindSpore ``nn.Cell``.

Importing this module imports neither MindSpore nor torch. It uses torch only when the target is a
torch module, which means torch is already imported.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .formats.dtypes import CKPT_DTYPES

__all__ = [
    "Assignment",
    "EntrySpec",
    "LoadPlan",
    "ParameterSpec",
    "describe_entries",
    "load_param_into_net",
    "log_plan",
    "plan_load",
]

logger = logging.getLogger("mploader")

# dtype families within which MindSpore 2.10 converts when strict_load is False. Unsigned
# integers and Bool are in neither family, so they load only into a parameter of the same dtype.
# bfloat16 is matched by name, so that this module does not import ml_dtypes.
_FLOAT_DTYPE_NAMES = frozenset(("float16", "float32", "float64", "bfloat16"))
_INT_DTYPES = frozenset(np.dtype(name) for name in ("int8", "int16", "int32", "int64"))

# MindSpore never lists parameters with this name prefix as unloaded: they are gradient
# accumulators that a checkpoint does not have to contain.
_ACCUMULATOR_PREFIX = "accu_grads"

# Each warning lists at most this many names, so that a large network does not flood the log.
_LOGGED_NAMES_MAX = 10

# A dtype is a numpy dtype, or a name such as "Int4" or "torch.float8_e4m3fn" for an element type
# that numpy has no dtype for. Such a name equals only itself and is in no conversion family.
DType = np.dtype | str
EntryKind = Literal["tensor", "str", "map"]


@dataclass(frozen=True)
class ParameterSpec:
    """A network parameter's shape, dtype and kind: the planner's input for one parameter.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype or str
        A numpy dtype in native byte order, or the name of an element type numpy lacks.
    is_map : bool
        True for a MindSpore ``MapParameter``, which takes a ``[keys, values, status]`` entry.
    """

    shape: tuple[int, ...]
    dtype: DType
    is_map: bool = False


@dataclass(frozen=True)
class EntrySpec:
    """A parameter-dict entry's kind, shape and dtype: the planner's input for one entry.

    Attributes
    ----------
    kind : {"tensor", "str", "map"}
        A tensor has ``shape`` and ``dtype``. A string or map entry has neither.
    shape : tuple of int
    dtype : numpy.dtype or str or None
    """

    kind: EntryKind
    shape: tuple[int, ...] = ()
    dtype: DType | None = None


@dataclass(frozen=True)
class Assignment:
    """One step of a plan: fill ``parameter_name`` from the entry ``entry_name``.

    Attributes
    ----------
    parameter_name : str
    entry_name : str
        Equal to ``parameter_name``, or that name with a prefix that the prefix retry found.
    reshape : bool
        The entry has trailing size-1 dimensions to drop to get the parameter's shape.
    convert : bool
        The entry's dtype differs from the parameter's and must be converted.
    import_map : bool
        The parameter is a MindSpore ``MapParameter``, whose ``import_data`` takes the entry as is.
    """

    parameter_name: str
    entry_name: str
    reshape: bool = False
    convert: bool = False
    import_map: bool = False


@dataclass
class LoadPlan:
    """The result of :func:`plan_load`.

    Attributes
    ----------
    assignments : list of Assignment
        In the order MindSpore assigns them: exact names in network order, then each prefix
        retry in network order.
    param_not_load : list of str
        Network parameters that get no value, in network order.
    ckpt_not_load : list of str
        Dict entries not used by an exact-name match, in dict order.
    prefixes : list of str
        The prefixes the retry found, in the order it found them.
    """

    assignments: list[Assignment] = field(default_factory=list)
    param_not_load: list[str] = field(default_factory=list)
    ckpt_not_load: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)


def _dtype_family(dtype: DType | None) -> str | None:
    if isinstance(dtype, np.dtype):
        if dtype.name in _FLOAT_DTYPE_NAMES and dtype.kind in "fV":
            return "float"
        if dtype in _INT_DTYPES:
            return "int"
    return None


def _native(dtype: np.dtype) -> np.dtype:
    """Return ``dtype`` in native byte order, so that ``>f4`` and ``<f4`` compare equal."""
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def _check_fit(
    parameter_name: str, entry_name: str, parameter: ParameterSpec, entry: EntrySpec, strict_load: bool
) -> Assignment:
    """Return how ``entry`` fills ``parameter``, or raise RuntimeError when it cannot."""
    source = f"parameter_dict[{entry_name!r}]"
    reshape = False
    if entry.shape != parameter.shape:
        ndim = len(parameter.shape)
        squeezable = (
            len(entry.shape) > ndim
            and entry.shape[:ndim] == parameter.shape
            and all(size == 1 for size in entry.shape[ndim:])
        )
        if not squeezable:
            raise RuntimeError(
                f"Cannot load {source} into net parameter {parameter_name!r}: the entry has shape "
                f"{entry.shape} but the parameter has shape {parameter.shape}, and only trailing size-1 "
                f"dimensions of an entry are dropped to make shapes fit. Check that the checkpoint was "
                f"saved from a network with the same layer sizes."
            )
        reshape = True

    convert = False
    if entry.dtype != parameter.dtype:
        family = _dtype_family(entry.dtype)
        if strict_load and family is not None and family == _dtype_family(parameter.dtype):
            raise RuntimeError(
                f"Cannot load {source} into net parameter {parameter_name!r}: the entry has dtype "
                f"{entry.dtype} but the parameter has dtype {parameter.dtype}, and strict_load=True "
                f"forbids conversion. Pass strict_load=False to convert it, or cast the entry first."
            )
        if family is None or family != _dtype_family(parameter.dtype):
            raise RuntimeError(
                f"Cannot load {source} into net parameter {parameter_name!r}: the entry has dtype "
                f"{entry.dtype} but the parameter has dtype {parameter.dtype}, and only conversions "
                f"among float16, bfloat16, float32 and float64 or among int8, int16, int32 and int64 "
                f"are made. Cast the entry with numpy first if this conversion is intended."
            )
        convert = True

    return Assignment(parameter_name, entry_name, reshape=reshape, convert=convert)


def _find_prefix(entry_names: list[str], param_not_load: list[str], no_match: str) -> str | None:
    """Return the prefix of the first entry name that ends with an unloaded parameter's name.

    Unloaded names are tried in network order, and for each one only the first entry, in dict
    order, whose name ends with it. A prefix equal to ``no_match`` counts as no match.
    """
    for parameter_name in param_not_load:
        for entry_name in entry_names:
            if entry_name.endswith(parameter_name):
                prefix = entry_name[: len(entry_name) - len(parameter_name)]
                if prefix != no_match:
                    return prefix
                break
    return None


def _non_tensor_entry_error(parameter_name: str, entry_name: str, kind: EntryKind) -> TypeError:
    description = "a string" if kind == "str" else "a map tensor or list"
    return TypeError(
        f"Cannot load parameter_dict[{entry_name!r}] into net parameter {parameter_name!r}: the entry "
        f"is {description}, not an array. Remove it from parameter_dict or rename it so that it does not "
        f"end with a parameter's name."
    )


def plan_load(
    parameters: Mapping[str, ParameterSpec],
    entries: Mapping[str, EntrySpec],
    strict_load: bool = False,
) -> LoadPlan:
    """Match network parameters to dict entries with MindSpore 2.10's rules, assigning nothing.

    Parameters
    ----------
    parameters : mapping of str to ParameterSpec
        The network's parameters, in network order.
    entries : mapping of str to EntrySpec
        The parameter dict's entries, in dict order.
    strict_load : bool, default False
        Disable the prefix retry and every dtype conversion.

    Returns
    -------
    LoadPlan

    Raises
    ------
    RuntimeError
        For the first parameter, in MindSpore's order, whose entry has a shape or dtype that does
        not fit.
    TypeError
        When the prefix retry picks a string or map entry for an ordinary parameter.

    Notes
    -----
    Matching, as in MindSpore 2.10's ``load_param_into_net``:

    1. Each parameter, in network order, takes the entry of the same name. A string or list entry
       of that name is skipped: the parameter is then in neither returned list, and the entry stays
       in ``ckpt_not_load``. A ``MapParameter`` takes any entry of its name through
       ``import_data``, and that entry also stays in ``ckpt_not_load``. A parameter with no entry
       goes to ``param_not_load`` unless its name starts with ``accu_grads``.
    2. Unless ``strict_load``, the prefix retry runs while parameters are unloaded. It takes the
       first unloaded name that some entry name ends with, and the part of that entry name before
       it as the prefix. Every unloaded parameter whose name with the prefix added is an entry then
       takes that entry. The retry repeats until it finds no new prefix. Entries used here stay in
       ``ckpt_not_load``, because MindSpore removes only exact matches from that list. A network
       whose names have a prefix that the dict's names lack is not matched.

    An entry fits a parameter when the shapes are equal or the entry's shape is the parameter's
    followed by size-1 dimensions, which are then dropped. When the dtypes differ, the entry is
    converted only if ``strict_load`` is False and both dtypes are among float16, bfloat16,
    float32 and float64, or both among int8, int16, int32 and int64. Unsigned integers and Bool
    never convert.

    MindSpore 2.10 differs in two cases, both of which raise here. It reshapes an entry of shape
    ``(2, 3, 1)`` into a parameter of shape ``(3, 2)``, and it raises ValueError, not
    RuntimeError, for an entry of shape ``(4, 1)`` and a parameter of shape ``(3,)``.
    """
    plan = LoadPlan(ckpt_not_load=list(entries))
    used_exactly: set[str] = set()

    for name, parameter in parameters.items():
        entry = entries.get(name)
        if entry is None:
            if not name.startswith(_ACCUMULATOR_PREFIX):
                plan.param_not_load.append(name)
            continue
        if parameter.is_map:
            plan.assignments.append(Assignment(name, name, import_map=True))
            continue
        if entry.kind != "tensor":
            continue
        plan.assignments.append(_check_fit(name, name, parameter, entry, strict_load))
        used_exactly.add(name)
    plan.ckpt_not_load = [name for name in plan.ckpt_not_load if name not in used_exactly]

    if strict_load:
        return plan

    entry_names = list(entries)
    # MindSpore 2.10 marks "no prefix found" with the first name that was unloaded before the
    # retry, so a prefix spelled exactly like that name is ignored. Doing the same keeps the
    # results identical.
    no_match = plan.param_not_load[0] if plan.param_not_load else ""
    while plan.param_not_load:
        prefix = _find_prefix(entry_names, plan.param_not_load, no_match)
        if prefix is None:
            break
        plan.prefixes.append(prefix)
        unloaded = set(plan.param_not_load)
        loaded: set[str] = set()
        for name, parameter in parameters.items():
            entry_name = prefix + name
            entry = entries.get(entry_name)
            if name not in unloaded or entry is None:
                continue
            if parameter.is_map:
                plan.assignments.append(Assignment(name, entry_name, import_map=True))
            elif entry.kind != "tensor":
                raise _non_tensor_entry_error(name, entry_name, entry.kind)
            else:
                plan.assignments.append(_check_fit(name, entry_name, parameter, entry, strict_load))
            loaded.add(name)
        plan.param_not_load = [name for name in plan.param_not_load if name not in loaded]

    return plan


def log_plan(plan: LoadPlan, entries: Mapping[str, EntrySpec], parameters: Mapping[str, ParameterSpec]) -> None:
    """Log the prefixes, dtype conversions and unloaded parameters of a plan about to run."""
    for prefix in plan.prefixes:
        logger.warning("load_param_into_net: loading parameters from entries named with prefix %r", prefix)
    conversions = [
        f"parameter_dict[{step.entry_name!r}] from {entries[step.entry_name].dtype} to "
        f"{parameters[step.parameter_name].dtype}"
        for step in plan.assignments
        if step.convert
    ]
    if conversions:
        logger.warning(
            "load_param_into_net: converting %d entries to the dtypes of their net parameters: %s",
            len(conversions), _first_names(conversions),
        )
    if plan.param_not_load:
        logger.warning(
            "load_param_into_net: %d net parameters are not in parameter_dict and keep their values: %s",
            len(plan.param_not_load), _first_names(plan.param_not_load),
        )


def _first_names(names: list[str]) -> str:
    listed = ", ".join(names[:_LOGGED_NAMES_MAX])
    more = len(names) - _LOGGED_NAMES_MAX
    return f"{listed} and {more} more" if more > 0 else listed


def describe_entries(
    parameter_dict: Mapping[Any, Any],
    describe_other: Callable[[Any], EntrySpec | None] | None = None,
) -> dict[str, EntrySpec]:
    """Describe every entry of a parameter dict, checking keys and value types.

    ``describe_other`` describes values that are not numpy arrays, strings or lists (MindSpore
    tensors, for :mod:`mploader.mindspore`). It returns None for a type it does not accept.

    Raises
    ------
    TypeError
        If ``parameter_dict`` is not a mapping, a key is not a str, or a value has another type.
    """
    if not isinstance(parameter_dict, Mapping):
        raise TypeError(
            f"parameter_dict must be a dict of names to arrays, not {type(parameter_dict).__name__}. "
            f"Pass the dict that load_checkpoint returns."
        )
    described: dict[str, EntrySpec] = {}
    for name, value in parameter_dict.items():
        if not isinstance(name, str):
            raise TypeError(
                f"parameter_dict key {name!r} is a {type(name).__name__}, but keys must be parameter "
                f"names (str). Convert the key to str."
            )
        spec: EntrySpec | None
        if isinstance(value, np.ndarray):
            spec = EntrySpec("tensor", tuple(value.shape), _native(value.dtype))
        elif isinstance(value, str):
            spec = EntrySpec("str")
        elif isinstance(value, list):
            spec = EntrySpec("map")
        else:
            spec = describe_other(value) if describe_other is not None else None
        if spec is None:
            raise TypeError(
                f"parameter_dict[{name!r}] is a {type(value).__name__}, but values must be numpy "
                f"arrays, str, or [keys, values, status] lists. Wrap the value with numpy.asarray()."
            )
        described[name] = spec
    return described


def _reshaped(value: np.ndarray, parameter: ParameterSpec, step: Assignment) -> np.ndarray:
    """Return ``value`` with its trailing size-1 dimensions dropped when ``step.reshape`` is set."""
    return value.reshape(parameter.shape) if step.reshape else value


# ---------------------------------------------------------------------------------------------
# Target: a dict of numpy arrays


def _load_into_dict(target: dict[Any, Any], parameter_dict: Mapping[str, Any], strict_load: bool) -> LoadPlan:
    parameters: dict[str, ParameterSpec] = {}
    for name, array in target.items():
        if not isinstance(name, str):
            raise TypeError(
                f"net key {name!r} is a {type(name).__name__}, but a dict net must be keyed by "
                f"parameter names (str). Convert the key to str."
            )
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"net[{name!r}] is a {type(array).__name__}, but a dict net must map names to numpy "
                f"arrays. Convert its values with numpy.asarray()."
            )
        if not array.flags.writeable:
            raise ValueError(
                f"net[{name!r}] is a read-only array, so it cannot be filled in place. Pass a copy "
                f"made with numpy.array(value)."
            )
        parameters[name] = ParameterSpec(tuple(array.shape), _native(array.dtype))

    entries = describe_entries(parameter_dict)
    plan = plan_load(parameters, entries, strict_load)
    log_plan(plan, entries, parameters)
    for step in plan.assignments:
        if step.import_map:
            continue
        destination = target[step.parameter_name]
        source = _reshaped(parameter_dict[step.entry_name], parameters[step.parameter_name], step)
        np.copyto(destination, source, casting="unsafe")
    return plan


# ---------------------------------------------------------------------------------------------
# Target: an object with MindSpore's parameters_dict() protocol


def _dtype_of(value: Any) -> DType:
    try:
        return _native(np.dtype(value))
    except TypeError:
        return str(value)


def _load_into_cell(net: Any, parameter_dict: Mapping[str, Any], strict_load: bool) -> LoadPlan:
    net_parameters = net.parameters_dict()
    if not isinstance(net_parameters, Mapping):
        raise TypeError(
            f"net.parameters_dict() returned a {type(net_parameters).__name__}, but it must return a "
            f"mapping of parameter names to parameters."
        )
    parameters: dict[str, ParameterSpec] = {}
    for name, parameter in net_parameters.items():
        missing = [attribute for attribute in ("shape", "dtype", "set_data") if not hasattr(parameter, attribute)]
        if missing:
            raise TypeError(
                f"net parameter {name!r} is a {type(parameter).__name__} without {', '.join(missing)}, "
                f"but parameters_dict() must return objects with shape, dtype and set_data(array)."
            )
        parameters[str(name)] = ParameterSpec(tuple(int(size) for size in parameter.shape), _dtype_of(parameter.dtype))

    entries = describe_entries(parameter_dict)
    plan = plan_load(parameters, entries, strict_load)
    log_plan(plan, entries, parameters)
    for step in plan.assignments:
        if step.import_map:
            continue
        spec = parameters[step.parameter_name]
        value = _reshaped(parameter_dict[step.entry_name], spec, step)
        if step.convert and isinstance(spec.dtype, np.dtype):
            value = value.astype(spec.dtype)
        net_parameters[step.parameter_name].set_data(value)
    return plan


# ---------------------------------------------------------------------------------------------
# Target: a PyTorch nn.Module


def _torch_to_numpy_dtypes(torch: Any) -> dict[Any, np.dtype]:
    pairs: dict[Any, np.dtype] = {
        torch.bool: np.dtype(np.bool_),
        torch.uint8: np.dtype(np.uint8),
        torch.int8: np.dtype(np.int8),
        torch.int16: np.dtype(np.int16),
        torch.int32: np.dtype(np.int32),
        torch.int64: np.dtype(np.int64),
        torch.float16: np.dtype(np.float16),
        torch.bfloat16: CKPT_DTYPES["BFloat16"],
        torch.float32: np.dtype(np.float32),
        torch.float64: np.dtype(np.float64),
        torch.complex64: np.dtype(np.complex64),
        torch.complex128: np.dtype(np.complex128),
    }
    # Unsigned types wider than 8 bits exist from torch 2.3 on.
    for bits in (16, 32, 64):
        torch_dtype = getattr(torch, f"uint{bits}", None)
        if torch_dtype is not None:
            pairs[torch_dtype] = np.dtype(f"uint{bits}")
    return pairs


def _numpy_to_torch(torch: Any, array: np.ndarray) -> Any:
    """Wrap ``array`` in a CPU tensor without copying, unless its layout or byte order needs one."""
    if not array.dtype.isnative:
        array = array.astype(_native(array.dtype))
    # np.require keeps a 0-d array 0-d, where np.ascontiguousarray would make it 1-d.
    array = np.require(array, requirements="C")
    with warnings.catch_warnings():
        # torch warns about read-only arrays, but the tensor made here is only read from.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if array.dtype.name == "bfloat16":
            return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(array)


def _is_torch_module(net: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(net, torch.nn.Module)


def _load_into_torch(module: Any, parameter_dict: Mapping[str, Any], strict_load: bool) -> LoadPlan:
    torch = sys.modules["torch"]
    to_numpy = _torch_to_numpy_dtypes(torch)
    state = {name: tensor for name, tensor in module.state_dict().items() if isinstance(tensor, torch.Tensor)}
    parameters = {
        name: ParameterSpec(tuple(tensor.shape), to_numpy.get(tensor.dtype, str(tensor.dtype)))
        for name, tensor in state.items()
    }

    entries = describe_entries(parameter_dict)
    plan = plan_load(parameters, entries, strict_load)
    log_plan(plan, entries, parameters)
    with torch.no_grad():
        for step in plan.assignments:
            if step.import_map:
                continue
            value = _reshaped(parameter_dict[step.entry_name], parameters[step.parameter_name], step)
            # copy_ converts the dtype, and state_dict() tensors share storage with the module.
            state[step.parameter_name].copy_(_numpy_to_torch(torch, value))
    return plan


# ---------------------------------------------------------------------------------------------


def _is_mindspore_cell(net: Any) -> bool:
    mindspore = sys.modules.get("mindspore")
    return mindspore is not None and isinstance(net, mindspore.nn.Cell)


def load_param_into_net(
    net: Any, parameter_dict: Mapping[str, Any], strict_load: bool = False
) -> tuple[list[str], list[str]]:
    """Copy the arrays of a parameter dict into a network's parameters.

    A drop-in for ``mindspore.load_param_into_net`` 2.10 that also accepts networks without
    MindSpore.

    Parameters
    ----------
    net : dict, object with ``parameters_dict()``, torch.nn.Module or mindspore.nn.Cell
        The network. See Notes for what each kind must provide.
    parameter_dict : dict
        Names mapped to numpy arrays, ``str`` or ``[keys, values, status]`` lists, as
        :func:`mploader.load_checkpoint` returns them.
    strict_load : bool, default False
        When True, parameters match only entries of exactly their name, and a dtype difference
        raises instead of converting.

    Returns
    -------
    param_not_load : list of str
        Names of the network's parameters that got no value, in network order.
    ckpt_not_load : list of str
        Names in ``parameter_dict`` that no parameter took by its exact name, in dict order.
        Entries used through the prefix retry stay in this list, as in MindSpore.

    Raises
    ------
    RuntimeError
        If an entry's shape or dtype does not fit its parameter. The message names both.
    TypeError
        If ``net`` is of none of the accepted kinds, ``strict_load`` is not a bool, a key of
        ``parameter_dict`` is not a str or a value is not an array, str or list.
    ValueError
        If ``net`` is a dict holding a read-only array.

    Notes
    -----
    The matching rules are those of MindSpore 2.10 and are listed in :func:`plan_load`. Exact
    names are matched first. Then, unless ``strict_load``, entries match whose names add a prefix
    such as ``ema.`` or ``adam_m.`` to a parameter's name. Shapes must be equal up to trailing
    size-1 dimensions of the entry. dtypes are converted only among floating-point types or among
    signed integer types.

    Every parameter is checked before any is assigned, so an error leaves the network unchanged.
    MindSpore assigns as it checks and leaves earlier parameters loaded. An exception raised by a
    target's own ``set_data`` or ``copy_`` during assignment can still leave earlier ones loaded.

    Targets:

    - ``dict``: each value must be a writable numpy array. It is filled in place and keeps its
      dtype and shape, and ``numpy.copyto`` converts a matching entry into it.
    - ``mindspore.nn.Cell``: handled by :func:`mploader.mindspore.load_param_into_net`.
    - ``torch.nn.Module``: the names of ``state_dict()``, buffers included. Tensors are filled in
      place with ``copy_`` under ``torch.no_grad()``, which converts the dtype.
    - Any other object with ``parameters_dict()`` returning a mapping of names to parameters. Each
      parameter must have ``shape`` (a sequence of ints), ``dtype`` and ``set_data(array)``. A
      ``dtype`` that ``numpy.dtype()`` does not accept matches no entry. ``set_data`` receives a
      numpy array with the parameter's shape and dtype. When no conversion is needed it is the
      dict's own array or a view of it, so copy it if the parameter must not share memory with
      the dict.
    """
    if not isinstance(strict_load, bool):
        raise TypeError(f"strict_load must be a bool, not {type(strict_load).__name__} ({strict_load!r})")

    if isinstance(net, dict):
        plan = _load_into_dict(net, parameter_dict, strict_load)
    elif _is_torch_module(net):
        plan = _load_into_torch(net, parameter_dict, strict_load)
    elif _is_mindspore_cell(net):
        from . import mindspore as mindspore_adapter

        return mindspore_adapter.load_param_into_net(net, parameter_dict, strict_load)
    elif callable(getattr(net, "parameters_dict", None)):
        plan = _load_into_cell(net, parameter_dict, strict_load)
    else:
        raise TypeError(
            f"net is a {type(net).__name__}, but it must be a dict of numpy arrays, a torch.nn.Module, "
            f"a mindspore.nn.Cell, or an object with a parameters_dict() method."
        )
    return plan.param_not_load, plan.ckpt_not_load
