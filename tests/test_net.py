"""Tests of load_param_into_net on dict, parameters_dict() and torch targets."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from mploader.net import EntrySpec, ParameterSpec, load_param_into_net, plan_load

Shape = tuple[int, ...]
Specs = dict[str, tuple[Shape, str]]

FLOAT_TYPES = ["float16", "bfloat16", "float32", "float64"]
INT_TYPES = ["int8", "int16", "int32", "int64"]

# Every value here is exact in each dtype of its family, so converted values compare equal.
FLOAT_VALUES = [-1.5, 0.0, 0.25, 3.0, 96.0, -0.125]
INT_VALUES = [-3, 0, 7, 100, -128, 127]

INITIAL_FILL = 5  # every parameter of a new test net contains this, so "unchanged" is checkable


def dtype_of(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def initial_array(shape: Shape, dtype: str) -> np.ndarray:
    return np.full(shape, INITIAL_FILL, dtype=dtype_of(dtype))


def entry(values: list[float] | list[int], dtype: str, shape: Shape | None = None) -> np.ndarray:
    array = np.array(values, dtype=np.float64).astype(dtype_of(dtype))
    return array.reshape(shape) if shape is not None else array


# ---------------------------------------------------------------------------------------------
# Targets. Each one builds a net from {name: (shape, dtype)} in that order and reads back
# {name: numpy array}, so every test runs unchanged on each kind of net.


class FakeParameter:
    """A parameter with MindSpore's duck-typed protocol: shape, dtype and set_data(array)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.received: list[np.ndarray] = []

    @property
    def shape(self) -> Shape:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def set_data(self, value: np.ndarray) -> None:
        self.received.append(value)
        self.array = np.array(value, copy=True)


class FakeCell:
    """A network that exposes its parameters the way mindspore.nn.Cell.parameters_dict() does."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.parameters = {name: FakeParameter(array) for name, array in arrays.items()}

    def parameters_dict(self) -> dict[str, FakeParameter]:
        return dict(self.parameters)


def make_dict(specs: Specs) -> dict[str, np.ndarray]:
    return {name: initial_array(shape, dtype) for name, (shape, dtype) in specs.items()}


def read_dict(net: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: array.copy() for name, array in net.items()}


def make_cell(specs: Specs) -> FakeCell:
    return FakeCell(make_dict(specs))


def read_cell(net: FakeCell) -> dict[str, np.ndarray]:
    return {name: parameter.array.copy() for name, parameter in net.parameters.items()}


def make_torch(specs: Specs) -> Any:
    torch = pytest.importorskip("torch")
    root = torch.nn.Module()
    for name, (shape, dtype) in specs.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        torch_dtype = getattr(torch, dtype)
        tensor = torch.full(shape, INITIAL_FILL, dtype=torch_dtype)
        parameter = torch.nn.Parameter(tensor, requires_grad=torch_dtype.is_floating_point)
        module.register_parameter(leaf, parameter)
    if list(root.state_dict()) != list(specs):
        raise ValueError(f"test net order {list(root.state_dict())} differs from {list(specs)}. Reorder the specs.")
    return root


def read_torch(net: Any) -> dict[str, np.ndarray]:
    torch = sys.modules["torch"]
    values = {}
    for name, tensor in net.state_dict().items():
        if tensor.dtype == torch.bfloat16:
            values[name] = tensor.float().numpy().astype(ml_dtypes.bfloat16)
        else:
            values[name] = tensor.numpy().copy()
    return values


TARGETS: dict[str, tuple[Callable[[Specs], Any], Callable[[Any], dict[str, np.ndarray]]]] = {
    "dict": (make_dict, read_dict),
    "cell": (make_cell, read_cell),
    "torch": (make_torch, read_torch),
}


class Target:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._make, self._read = TARGETS[kind]

    def make(self, specs: Specs) -> Any:
        return self._make(specs)

    def read(self, net: Any) -> dict[str, np.ndarray]:
        return self._read(net)


@pytest.fixture(params=list(TARGETS))
def target(request: pytest.FixtureRequest) -> Target:
    return Target(request.param)


def assert_unchanged(target: Target, net: Any, specs: Specs) -> None:
    values = target.read(net)
    for name, (shape, dtype) in specs.items():
        np.testing.assert_array_equal(values[name], initial_array(shape, dtype), err_msg=name)


# ---------------------------------------------------------------------------------------------
# Exact names


def test_exact_match_copies_values(target: Target) -> None:
    specs: Specs = {"fc1.weight": ((2, 3), "float32"), "fc1.bias": ((2,), "float32")}
    net = target.make(specs)
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    bias = np.array([-1.0, 1.0], dtype=np.float32)

    result = load_param_into_net(net, {"fc1.weight": weight, "fc1.bias": bias})

    assert result == ([], [])
    values = target.read(net)
    np.testing.assert_array_equal(values["fc1.weight"], weight)
    np.testing.assert_array_equal(values["fc1.bias"], bias)
    assert values["fc1.weight"].dtype == np.float32


def test_exact_match_return_lists(target: Target) -> None:
    specs: Specs = {"a.w": ((2,), "float32"), "b.w": ((2,), "float32"), "c.w": ((2,), "float32")}
    net = target.make(specs)
    parameter_dict = {
        "z.extra": np.zeros(1, np.float32),
        "b.w": np.ones(2, np.float32),
        "step": np.array(3, np.int64),
    }

    param_not_load, ckpt_not_load = load_param_into_net(net, parameter_dict)

    assert param_not_load == ["a.w", "c.w"]
    assert ckpt_not_load == ["z.extra", "step"]
    values = target.read(net)
    np.testing.assert_array_equal(values["b.w"], np.ones(2, np.float32))
    np.testing.assert_array_equal(values["a.w"], initial_array((2,), "float32"))


def test_accumulator_names_not_reported(target: Target) -> None:
    specs: Specs = {"accu_grads.w": ((2,), "float32"), "net.w": ((2,), "float32")}
    net = target.make(specs)

    param_not_load, ckpt_not_load = load_param_into_net(net, {"net.w": np.ones(2, np.float32)}, strict_load=True)

    assert param_not_load == []
    assert ckpt_not_load == []


def test_string_entry_skipped_silently(target: Target) -> None:
    specs: Specs = {"m.w": ((2,), "float32"), "m.b": ((2,), "float32")}
    net = target.make(specs)

    param_not_load, ckpt_not_load = load_param_into_net(net, {"m.w": "text", "m.b": np.ones(2, np.float32)})

    assert param_not_load == []
    assert ckpt_not_load == ["m.w"]
    np.testing.assert_array_equal(target.read(net)["m.w"], initial_array((2,), "float32"))


def test_map_entry_skipped_silently(target: Target) -> None:
    specs: Specs = {"m.w": ((2,), "float32")}
    net = target.make(specs)
    map_entry = [np.arange(2, dtype=np.int32), np.ones((2, 3), np.float32), np.zeros(2, np.int32)]

    param_not_load, ckpt_not_load = load_param_into_net(net, {"m.w": map_entry})

    assert param_not_load == []
    assert ckpt_not_load == ["m.w"]
    assert_unchanged(target, net, specs)


# ---------------------------------------------------------------------------------------------
# Prefix retry


@pytest.mark.parametrize("prefix", ["ema.", "adam_m.", "network.backbone."])
def test_prefix_retry_loads_all(target: Target, prefix: str) -> None:
    specs: Specs = {"fc1.weight": ((2, 2), "float32"), "fc1.bias": ((2,), "float32")}
    net = target.make(specs)
    weight = np.full((2, 2), 2.0, np.float32)
    bias = np.full(2, 3.0, np.float32)

    param_not_load, ckpt_not_load = load_param_into_net(
        net, {f"{prefix}fc1.weight": weight, f"{prefix}fc1.bias": bias}
    )

    assert param_not_load == []
    assert ckpt_not_load == [f"{prefix}fc1.weight", f"{prefix}fc1.bias"]
    values = target.read(net)
    np.testing.assert_array_equal(values["fc1.weight"], weight)
    np.testing.assert_array_equal(values["fc1.bias"], bias)


def test_prefix_retry_logs_warning(target: Target, caplog: pytest.LogCaptureFixture) -> None:
    net = target.make({"fc1.weight": ((2,), "float32")})

    with caplog.at_level(logging.WARNING, logger="mploader"):
        load_param_into_net(net, {"ema.fc1.weight": np.ones(2, np.float32)})

    assert "'ema.'" in caplog.text


def test_prefix_retry_after_exact(target: Target) -> None:
    specs: Specs = {"fc1.weight": ((2,), "float32"), "fc1.bias": ((2,), "float32")}
    net = target.make(specs)
    parameter_dict = {
        "fc1.weight": np.full(2, 1.0, np.float32),
        "ema.fc1.weight": np.full(2, 9.0, np.float32),
        "ema.fc1.bias": np.full(2, 2.0, np.float32),
    }

    param_not_load, ckpt_not_load = load_param_into_net(net, parameter_dict)

    assert param_not_load == []
    assert ckpt_not_load == ["ema.fc1.weight", "ema.fc1.bias"]
    values = target.read(net)
    np.testing.assert_array_equal(values["fc1.weight"], np.full(2, 1.0, np.float32))
    np.testing.assert_array_equal(values["fc1.bias"], np.full(2, 2.0, np.float32))


def test_prefix_retry_first_entry_wins(target: Target) -> None:
    # The first unloaded name is fc1.weight, and the first entry ending with it is adam_m's, so
    # adam_m. is tried first. fc1.bias has no adam_m. entry, so a second round finds ema.
    specs: Specs = {"fc1.weight": ((2,), "float32"), "fc1.bias": ((2,), "float32")}
    net = target.make(specs)
    parameter_dict = {
        "adam_m.fc1.weight": np.full(2, 1.0, np.float32),
        "ema.fc1.weight": np.full(2, 2.0, np.float32),
        "ema.fc1.bias": np.full(2, 3.0, np.float32),
    }

    param_not_load, _ = load_param_into_net(net, parameter_dict)

    assert param_not_load == []
    values = target.read(net)
    np.testing.assert_array_equal(values["fc1.weight"], np.full(2, 1.0, np.float32))
    np.testing.assert_array_equal(values["fc1.bias"], np.full(2, 3.0, np.float32))


def test_prefix_retry_partial(target: Target) -> None:
    specs: Specs = {"a.w": ((2,), "float32"), "b.w": ((2,), "float32"), "c.w": ((2,), "float32")}
    net = target.make(specs)
    parameter_dict = {"ema.a.w": np.ones(2, np.float32), "ema.c.w": np.ones(2, np.float32)}

    param_not_load, ckpt_not_load = load_param_into_net(net, parameter_dict)

    assert param_not_load == ["b.w"]
    assert ckpt_not_load == ["ema.a.w", "ema.c.w"]


def test_prefix_retry_off_when_strict(target: Target) -> None:
    specs: Specs = {"fc1.weight": ((2,), "float32")}
    net = target.make(specs)

    result = load_param_into_net(net, {"ema.fc1.weight": np.ones(2, np.float32)}, strict_load=True)

    assert result == (["fc1.weight"], ["ema.fc1.weight"])
    assert_unchanged(target, net, specs)


def test_net_prefix_not_matched(target: Target) -> None:
    # The retry adds prefixes to net names and never removes one, as in MindSpore 2.10.
    specs: Specs = {"backbone.fc1.weight": ((2,), "float32")}
    net = target.make(specs)

    result = load_param_into_net(net, {"fc1.weight": np.ones(2, np.float32)})

    assert result == (["backbone.fc1.weight"], ["fc1.weight"])
    assert_unchanged(target, net, specs)


def test_prefix_string_entry_rejected(target: Target) -> None:
    specs: Specs = {"m.w": ((2,), "float32"), "m.b": ((2,), "float32")}
    net = target.make(specs)

    with pytest.raises(TypeError, match=r"'ema\.m\.b'.*string"):
        load_param_into_net(net, {"m.w": np.ones(2, np.float32), "ema.m.b": "text"})

    assert_unchanged(target, net, specs)


def test_prefix_equal_to_first_name_ignored() -> None:
    # MindSpore 2.10 treats a prefix spelled like the first unloaded name as "no prefix".
    net = {"x": np.zeros(2, np.float32), "y": np.zeros(2, np.float32)}
    parameter_dict = {"xx": np.ones(2, np.float32), "xy": np.ones(2, np.float32)}

    assert load_param_into_net(net, parameter_dict) == (["x", "y"], ["xx", "xy"])


# ---------------------------------------------------------------------------------------------
# dtypes

ALLOWED_CONVERSIONS = [
    *itertools.permutations(FLOAT_TYPES, 2),
    *itertools.permutations(INT_TYPES, 2),
]
REJECTED_CONVERSIONS = [
    ("float32", "int32"),
    ("int32", "float32"),
    ("bfloat16", "int16"),
    ("int64", "float64"),
    ("bool", "int8"),
    ("int8", "bool"),
    ("bool", "float32"),
    ("float16", "bool"),
    ("uint8", "int16"),
    ("int16", "uint8"),
    ("uint8", "float32"),
    ("float32", "uint8"),
    ("uint8", "bool"),
]


@pytest.mark.parametrize(("source", "destination"), ALLOWED_CONVERSIONS)
def test_conversion_allowed(target: Target, source: str, destination: str) -> None:
    values = FLOAT_VALUES if source in FLOAT_TYPES else INT_VALUES
    net = target.make({"m.w": ((len(values),), destination)})

    result = load_param_into_net(net, {"m.w": entry(values, source)})

    assert result == ([], [])
    loaded = target.read(net)["m.w"]
    assert loaded.dtype == dtype_of(destination)
    np.testing.assert_array_equal(loaded, entry(values, destination))


@pytest.mark.parametrize(("source", "destination"), [("float16", "float32"), ("int64", "int32")])
def test_conversion_logs_warning(
    target: Target, source: str, destination: str, caplog: pytest.LogCaptureFixture
) -> None:
    net = target.make({"m.w": ((2,), destination)})

    with caplog.at_level(logging.WARNING, logger="mploader"):
        load_param_into_net(net, {"m.w": entry([1, 2], source)})

    assert f"from {source} to {destination}" in caplog.text


@pytest.mark.parametrize(("source", "destination"), REJECTED_CONVERSIONS)
def test_conversion_rejected(target: Target, source: str, destination: str) -> None:
    specs: Specs = {"m.a": ((2,), "float32"), "m.w": ((2,), destination)}
    net = target.make(specs)
    parameter_dict = {"m.a": np.ones(2, np.float32), "m.w": entry([1, 0], source)}

    with pytest.raises(RuntimeError) as raised:
        load_param_into_net(net, parameter_dict)

    message = str(raised.value)
    assert "'m.w'" in message
    assert source in message
    assert destination in message
    assert_unchanged(target, net, specs)


@pytest.mark.parametrize(("source", "destination"), [("uint16", "uint32"), ("uint32", "uint64")])
def test_wide_unsigned_conversion_rejected(source: str, destination: str) -> None:
    # torch has no full support for wide unsigned types, so this runs on a dict only.
    net = {"w": np.zeros(2, dtype=destination)}

    with pytest.raises(RuntimeError, match=f"{source}.*{destination}"):
        load_param_into_net(net, {"w": np.ones(2, dtype=source)})


@pytest.mark.parametrize(
    ("source", "destination"), [("float16", "float32"), ("bfloat16", "float32"), ("int64", "int32")]
)
def test_strict_rejects_conversion(target: Target, source: str, destination: str) -> None:
    specs: Specs = {"m.a": ((2,), "float32"), "m.w": ((2,), destination)}
    net = target.make(specs)
    parameter_dict = {"m.a": np.ones(2, np.float32), "m.w": entry([1, 2], source)}

    with pytest.raises(RuntimeError, match="strict_load=True") as raised:
        load_param_into_net(net, parameter_dict, strict_load=True)

    assert f"dtype {source}" in str(raised.value)
    assert f"dtype {destination}" in str(raised.value)
    assert_unchanged(target, net, specs)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "int8", "uint8", "bool"])
def test_same_dtype_bit_exact(target: Target, dtype: str) -> None:
    rng = np.random.default_rng(0)
    if dtype == "bool":
        value = rng.integers(0, 2, size=(3, 4)).astype(bool)
    elif dtype in ("int8", "uint8"):
        value = rng.integers(0, 100, size=(3, 4)).astype(dtype)
    else:
        value = rng.standard_normal((3, 4)).astype(dtype_of(dtype))
    net = target.make({"m.w": ((3, 4), dtype)})

    load_param_into_net(net, {"m.w": value}, strict_load=True)

    loaded = target.read(net)["m.w"]
    assert loaded.dtype == value.dtype
    assert loaded.tobytes() == value.tobytes()


# ---------------------------------------------------------------------------------------------
# Shapes


def test_shape_mismatch_leaves_net_unchanged(target: Target) -> None:
    specs: Specs = {"fc1.weight": ((2, 3), "float32"), "fc2.weight": ((4, 3), "float32")}
    net = target.make(specs)
    parameter_dict = {"fc1.weight": np.ones((2, 3), np.float32), "fc2.weight": np.ones((3, 4), np.float32)}

    with pytest.raises(RuntimeError) as raised:
        load_param_into_net(net, parameter_dict)

    message = str(raised.value)
    assert "'fc2.weight'" in message
    assert "(3, 4)" in message
    assert "(4, 3)" in message
    assert_unchanged(target, net, specs)


def test_prefix_stage_error_leaves_net_unchanged(target: Target) -> None:
    specs: Specs = {"fc1.weight": ((2,), "float32"), "fc1.bias": ((2,), "float32")}
    net = target.make(specs)
    parameter_dict = {"fc1.weight": np.ones(2, np.float32), "ema.fc1.bias": np.ones(3, np.float32)}

    with pytest.raises(RuntimeError, match=r"'ema\.fc1\.bias'"):
        load_param_into_net(net, parameter_dict)

    assert_unchanged(target, net, specs)


@pytest.mark.parametrize(
    ("entry_shape", "parameter_shape"),
    [((3, 1), (3,)), ((2, 3, 1, 1), (2, 3)), ((1,), ()), ((1, 1), ())],
)
def test_trailing_ones_squeezed(target: Target, entry_shape: Shape, parameter_shape: Shape) -> None:
    net = target.make({"m.w": (parameter_shape, "float32")})
    value = np.arange(int(np.prod(entry_shape)), dtype=np.float32).reshape(entry_shape) + 1

    assert load_param_into_net(net, {"m.w": value}) == ([], [])

    loaded = target.read(net)["m.w"]
    assert loaded.shape == parameter_shape
    np.testing.assert_array_equal(loaded, value.reshape(parameter_shape))


def test_squeeze_with_conversion(target: Target) -> None:
    net = target.make({"m.w": ((3,), "float32")})

    load_param_into_net(net, {"m.w": np.array([[1.0], [2.0], [3.0]], np.float16)})

    np.testing.assert_array_equal(target.read(net)["m.w"], np.array([1.0, 2.0, 3.0], np.float32))


@pytest.mark.parametrize(
    ("entry_shape", "parameter_shape"),
    [((3,), (3, 1)), ((1, 3), (3,)), ((2, 3, 1), (3, 2)), ((4, 1), (3,)), ((), (1,)), ((3, 2), (3,))],
)
def test_other_shape_changes_rejected(target: Target, entry_shape: Shape, parameter_shape: Shape) -> None:
    specs: Specs = {"m.w": (parameter_shape, "float32")}
    net = target.make(specs)

    with pytest.raises(RuntimeError) as raised:
        load_param_into_net(net, {"m.w": np.ones(entry_shape, np.float32)})

    assert str(entry_shape) in str(raised.value)
    assert str(parameter_shape) in str(raised.value)
    assert_unchanged(target, net, specs)


# ---------------------------------------------------------------------------------------------
# Argument checks


def test_non_string_key_rejected(target: Target) -> None:
    net = target.make({"m.w": ((2,), "float32")})

    with pytest.raises(TypeError, match="key 3"):
        load_param_into_net(net, {3: np.ones(2, np.float32)})  # type: ignore[dict-item]


@pytest.mark.parametrize("value", [1.5, (np.ones(2),), np.float32(1.0)])
def test_unsupported_value_rejected(target: Target, value: object) -> None:
    net = target.make({"m.w": ((2,), "float32")})

    with pytest.raises(TypeError, match=r"parameter_dict\['m.w'\]"):
        load_param_into_net(net, {"m.w": value})


def test_strict_load_must_be_bool(target: Target) -> None:
    net = target.make({"m.w": ((2,), "float32")})

    with pytest.raises(TypeError, match="strict_load"):
        load_param_into_net(net, {}, strict_load=1)  # type: ignore[arg-type]


def test_parameter_dict_must_be_mapping(target: Target) -> None:
    net = target.make({"m.w": ((2,), "float32")})

    with pytest.raises(TypeError, match="parameter_dict"):
        load_param_into_net(net, [("m.w", np.ones(2))])  # type: ignore[arg-type]


@pytest.mark.parametrize("net", [None, 3, [np.zeros(2)], object()])
def test_unsupported_net_rejected(net: object) -> None:
    with pytest.raises(TypeError, match="net is a"):
        load_param_into_net(net, {"w": np.ones(2)})


# ---------------------------------------------------------------------------------------------
# Target-specific behaviour


def test_dict_filled_in_place() -> None:
    array = np.zeros((2, 2), np.float64)
    net = {"w": array}

    load_param_into_net(net, {"w": np.ones((2, 2), np.float32)})

    assert net["w"] is array
    assert array.dtype == np.float64
    np.testing.assert_array_equal(array, np.ones((2, 2)))


def test_dict_read_only_rejected() -> None:
    array = np.zeros(2, np.float32)
    array.flags.writeable = False

    with pytest.raises(ValueError, match="read-only"):
        load_param_into_net({"w": array}, {"w": np.ones(2, np.float32)})


def test_dict_non_array_rejected() -> None:
    with pytest.raises(TypeError, match=r"net\['w'\]"):
        load_param_into_net({"w": [0.0, 0.0]}, {"w": np.ones(2, np.float32)})


def test_dict_big_endian_entry() -> None:
    net = {"w": np.zeros(3, np.float32)}

    load_param_into_net(net, {"w": np.arange(3, dtype=">f4")}, strict_load=True)

    np.testing.assert_array_equal(net["w"], np.arange(3, dtype=np.float32))


def test_cell_set_data_receives_parameter_layout() -> None:
    net = make_cell({"m.w": ((3,), "float32"), "m.b": ((2,), "int32")})
    weight = np.ones((3, 1), np.float16)
    bias = np.arange(2, dtype=np.int32)

    load_param_into_net(net, {"m.w": weight, "m.b": bias})

    received_weight = net.parameters["m.w"].received[0]
    assert received_weight.shape == (3,)
    assert received_weight.dtype == np.float32
    assert net.parameters["m.b"].received[0] is bias


def test_cell_without_set_data_rejected() -> None:
    class NoSetData:
        shape = (2,)
        dtype = np.float32

    class Net:
        def parameters_dict(self) -> dict[str, object]:
            return {"w": NoSetData()}

    with pytest.raises(TypeError, match="without set_data"):
        load_param_into_net(Net(), {"w": np.ones(2, np.float32)})


def test_cell_unknown_dtype_matches_nothing() -> None:
    class OpaqueParameter(FakeParameter):
        @property
        def dtype(self) -> Any:
            return "Int4"

    net = FakeCell({})
    net.parameters["q"] = OpaqueParameter(np.zeros(2, np.int8))

    with pytest.raises(RuntimeError, match="Int4"):
        load_param_into_net(net, {"q": np.ones(2, np.int8)})


def test_torch_buffers_and_grad_parameters() -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.BatchNorm1d(3)
    parameter_dict = {
        "weight": np.full(3, 2.0, np.float32),
        "bias": np.full(3, -1.0, np.float32),
        "running_mean": np.arange(3, dtype=np.float64),
        "running_var": np.ones(3, np.float32),
        "num_batches_tracked": np.array(7, np.int32),
    }

    result = load_param_into_net(module, parameter_dict)

    assert result == ([], [])
    assert module.weight.requires_grad
    np.testing.assert_array_equal(module.weight.detach().numpy(), np.full(3, 2.0, np.float32))
    np.testing.assert_array_equal(module.running_mean.numpy(), np.arange(3, dtype=np.float32))
    assert module.num_batches_tracked.dtype == torch.int64
    assert int(module.num_batches_tracked) == 7


def test_torch_bfloat16_bit_exact() -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(4, 2, bias=False).to(torch.bfloat16)
    value = np.random.default_rng(1).standard_normal((2, 4)).astype(ml_dtypes.bfloat16)

    load_param_into_net(module, {"weight": value}, strict_load=True)

    assert module.weight.dtype == torch.bfloat16
    loaded_bits = module.weight.detach().view(torch.int16).numpy()
    np.testing.assert_array_equal(loaded_bits, value.view(np.int16))


def test_torch_read_only_entry_no_warning() -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(2, 1, bias=False)
    value = np.ones((1, 2), np.float32)
    value.flags.writeable = False

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_param_into_net(module, {"weight": value})

    np.testing.assert_array_equal(module.weight.detach().numpy(), value)


# ---------------------------------------------------------------------------------------------
# The planner and imports


def test_plan_load_is_pure() -> None:
    parameters = {"fc.w": ParameterSpec((2,), np.dtype(np.float32)), "fc.b": ParameterSpec((2,), np.dtype(np.float32))}
    entries = {
        "fc.w": EntrySpec("tensor", (2, 1), np.dtype(np.float16)),
        "ema.fc.b": EntrySpec("tensor", (2,), np.dtype(np.float32)),
    }

    plan = plan_load(parameters, entries)

    assert [(step.parameter_name, step.entry_name) for step in plan.assignments] == [
        ("fc.w", "fc.w"),
        ("fc.b", "ema.fc.b"),
    ]
    assert plan.assignments[0].reshape
    assert plan.assignments[0].convert
    assert plan.prefixes == ["ema."]
    assert plan.param_not_load == []
    assert plan.ckpt_not_load == ["ema.fc.b"]


def test_mindspore_adapter_needs_mindspore(tmp_path: Any) -> None:
    try:
        import mindspore  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("MindSpore is installed")
    import mploader.mindspore

    with pytest.raises(ImportError, match="Install mindspore"):
        mploader.mindspore.load_checkpoint(tmp_path / "net.ckpt")
    future = mploader.mindspore.load_checkpoint_async(tmp_path / "net.ckpt")
    with pytest.raises(ImportError, match="Install mindspore"):
        future.result(timeout=10)


def test_import_loads_no_framework() -> None:
    code = (
        "import sys, mploader, mploader.net, mploader.mindspore; "
        "print('torch' in sys.modules, 'mindspore' in sys.modules)"
    )

    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert output.split() == ["False", "False"]
