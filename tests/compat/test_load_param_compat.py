"""mploader's load_param_into_net gives the same results as MindSpore's own on real Cells."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import mploader
import mploader.mindspore as mploader_mindspore
import mploader.net

pytest.importorskip("mindspore")

FIXTURES = Path(__file__).parent.parent / "fixtures"

Specs = dict[str, tuple[tuple[int, ...], str]]
Outcome = tuple[str, Any]


def outcome(call: Callable[[], Any]) -> Outcome:
    """Return ("returned", value) or ("raised", exception type)."""
    try:
        return "returned", call()
    except Exception as exc:
        return "raised", type(exc)


def entries(values: dict[str, tuple[list[float], str, tuple[int, ...] | None]]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, (numbers, dtype, shape) in values.items():
        array = np.array(numbers, dtype=np.float64)
        array = array.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype))
        arrays[name] = array.reshape(shape) if shape is not None else array
    return arrays


class Comparison:
    """Runs MindSpore's and mploader's load_param_into_net on two fresh, identical Cells."""

    def __init__(self, ms: ModuleType, make_cell: Any, make_parameter: Any, to_numpy: Any) -> None:
        self.ms = ms
        self.make_cell = make_cell
        self.make_parameter = make_parameter
        self.to_numpy = to_numpy

    def run(
        self, specs: Specs, arrays: dict[str, Any], strict_load: bool = False, numpy_dict: bool = False
    ) -> tuple[Outcome, Outcome, Any, Any]:
        reference_net = self.make_cell(specs)
        net = self.make_cell(specs)
        reference_dict = {name: self._as_parameter(name, value) for name, value in arrays.items()}
        if numpy_dict:
            parameter_dict = dict(arrays)
        else:
            parameter_dict = {name: self._as_parameter(name, value) for name, value in arrays.items()}

        expected = outcome(lambda: self.ms.load_param_into_net(reference_net, reference_dict, strict_load))
        actual = outcome(lambda: mploader_mindspore.load_param_into_net(net, parameter_dict, strict_load))
        return expected, actual, reference_net, net

    def _as_parameter(self, name: str, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return self.make_parameter(name, value)
        return value

    def values(self, net: Any) -> dict[str, np.ndarray]:
        return {parameter.name: self.to_numpy(parameter) for parameter in net.get_parameters()}

    def dtypes(self, net: Any) -> dict[str, Any]:
        return {parameter.name: parameter.dtype for parameter in net.get_parameters()}


@pytest.fixture
def compare(ms: ModuleType, make_cell: Any, make_parameter: Any, to_numpy: Any) -> Comparison:
    return Comparison(ms, make_cell, make_parameter, to_numpy)


def assert_same_values(compare: Comparison, reference_net: Any, net: Any) -> None:
    expected = compare.values(reference_net)
    actual = compare.values(net)
    assert list(actual) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    assert compare.dtypes(net) == compare.dtypes(reference_net)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("numpy_dict", [False, True])
def test_dense_exact(compare: Comparison, ms: ModuleType, to_numpy: Any, numpy_dict: bool) -> None:
    arrays = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.array([1.0, -1.0], np.float32)}
    reference_net, net = ms.nn.Dense(3, 2), ms.nn.Dense(3, 2)
    reference_dict = {name: compare.make_parameter(name, value) for name, value in arrays.items()}
    parameter_dict = arrays if numpy_dict else {name: compare.make_parameter(name, v) for name, v in arrays.items()}

    expected = ms.load_param_into_net(reference_net, reference_dict)
    actual = mploader_mindspore.load_param_into_net(net, parameter_dict)

    assert actual == expected
    assert_same_values(compare, reference_net, net)


PLAIN: Specs = {"a.w": ((2,), "float32"), "b.w": ((2,), "float32"), "accu_grads.a.w": ((2,), "float32")}


@pytest.mark.parametrize(
    ("specs", "arrays"),
    [
        pytest.param(PLAIN, {"ema.a.w": ([1, 2], "float32", None), "ema.b.w": ([3, 4], "float32", None)}, id="ema"),
        pytest.param(
            PLAIN,
            {
                "adam_m.a.w": ([1, 2], "float32", None),
                "ema.a.w": ([5, 6], "float32", None),
                "ema.b.w": ([3, 4], "float32", None),
            },
            id="adam_m-then-ema",
        ),
        pytest.param(PLAIN, {"a.w": ([1, 2], "float32", None), "moments.b.w": ([3, 4], "float32", None)}, id="mixed"),
        pytest.param(PLAIN, {"a.w": ([1, 2], "float32", None), "step": ([3], "int64", ())}, id="extra-entry"),
        pytest.param({"backbone.w": ((2,), "float32")}, {"w": ([1, 2], "float32", None)}, id="net-prefix"),
        pytest.param(
            {"x": ((2,), "float32"), "y": ((2,), "float32")},
            {"xx": ([1, 2], "float32", None), "xy": ([3, 4], "float32", None)},
            id="prefix-equals-name",
        ),
    ],
)
def test_prefix_retry_same(compare: Comparison, specs: Specs, arrays: dict[str, Any]) -> None:
    expected, actual, reference_net, net = compare.run(specs, entries(arrays))

    assert actual == expected
    assert_same_values(compare, reference_net, net)


def test_strict_skips_prefix_retry(compare: Comparison) -> None:
    specs: Specs = {"a.w": ((2,), "float32")}

    expected, actual, _, _ = compare.run(specs, entries({"ema.a.w": ([1, 2], "float32", None)}), strict_load=True)

    assert actual == expected


def test_string_and_map_entries_same(compare: Comparison) -> None:
    specs: Specs = {"a.w": ((2,), "float32"), "b.w": ((2,), "float32")}
    map_entry = [np.arange(2, dtype=np.int32), np.ones((2, 3), np.float32), np.zeros(2, np.int32)]
    arrays = {"a.w": "text", "b.w": map_entry, "c": np.ones(2, np.float32)}

    expected, actual, reference_net, net = compare.run(specs, arrays)

    assert actual == expected
    assert_same_values(compare, reference_net, net)


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        ("float16", "float32"),
        ("float64", "float32"),
        ("float32", "float16"),
        ("float32", "bfloat16"),
        ("float64", "bfloat16"),
        ("int64", "int32"),
        ("int8", "int64"),
        ("int32", "int16"),
    ],
)
@pytest.mark.parametrize("strict_load", [False, True])
def test_conversion_same(compare: Comparison, source: str, destination: str, strict_load: bool) -> None:
    # bfloat16 entries are left out: MindSpore 2.10 converts through asnumpy(), which raises for
    # bfloat16 under numpy 2.
    specs: Specs = {"a.w": ((4,), destination)}
    arrays = entries({"a.w": ([-1.5, 0.0, 3.0, 96.0] if "float" in source else [-3, 0, 7, 100], source, None)})

    expected, actual, reference_net, net = compare.run(specs, arrays, strict_load=strict_load)

    assert actual == expected
    if actual[0] == "returned":
        assert_same_values(compare, reference_net, net)


@pytest.mark.parametrize(
    ("source", "destination"),
    [
        ("float32", "int32"),
        ("int32", "float32"),
        ("uint8", "int16"),
        ("int16", "uint8"),
        ("bool", "int8"),
        ("int8", "bool"),
        ("uint16", "uint32"),
    ],
)
def test_rejected_conversion_same(compare: Comparison, source: str, destination: str) -> None:
    specs: Specs = {"a.b": ((2,), "float32"), "a.w": ((2,), destination)}
    arrays = entries({"a.b": ([1, 2], "float32", None), "a.w": ([1, 0], source, None)})

    expected, actual, _, net = compare.run(specs, arrays)

    assert expected == ("raised", RuntimeError)
    assert actual == expected
    # MindSpore has loaded a.b by now; mploader leaves the whole net unchanged.
    assert compare.values(net)["a.b"].tolist() == [5, 5]


@pytest.mark.parametrize(
    ("entry_shape", "parameter_shape"), [((3,), (4,)), ((2, 3), (3, 2)), ((), (1,)), ((3,), (3, 1))]
)
def test_shape_error_same(compare: Comparison, entry_shape: tuple[int, ...], parameter_shape: tuple[int, ...]) -> None:
    specs: Specs = {"a.b": ((2,), "float32"), "a.w": (parameter_shape, "float32")}
    arrays = {"a.b": np.ones(2, np.float32), "a.w": np.ones(entry_shape, np.float32)}

    expected, actual, _, net = compare.run(specs, arrays)

    assert expected == ("raised", RuntimeError)
    assert actual == expected
    assert compare.values(net)["a.b"].tolist() == [5, 5]


@pytest.mark.parametrize(("entry_shape", "parameter_shape"), [((3, 1), (3,)), ((2, 3, 1, 1), (2, 3)), ((1,), ())])
def test_squeeze_same_result(
    compare: Comparison, entry_shape: tuple[int, ...], parameter_shape: tuple[int, ...]
) -> None:
    specs: Specs = {"a.w": (parameter_shape, "float32")}
    value = np.arange(int(np.prod(entry_shape)), dtype=np.float32).reshape(entry_shape)

    expected, actual, reference_net, net = compare.run(specs, {"a.w": value})

    assert actual == expected
    # MindSpore 2.10 leaves the parameter with the entry's shape; mploader keeps the net's shape.
    (parameter,) = net.get_parameters()
    assert parameter.shape == parameter_shape
    np.testing.assert_array_equal(compare.to_numpy(parameter), value.reshape(parameter_shape))


def test_map_parameter_same(ms: ModuleType, compare: Comparison) -> None:
    from mindspore.experimental import MapParameter

    def make() -> Any:
        cell = ms.nn.Cell()
        cell.table = MapParameter(key_dtype=ms.int32, value_dtype=ms.float32, value_shape=(3,), name="table")
        return cell

    map_entry = [np.array([4, 9], np.int32), np.ones((2, 3), np.float32), np.zeros(2, np.int32)]
    reference_net, net = make(), make()

    expected = ms.load_param_into_net(reference_net, {"table": map_entry})
    actual = mploader_mindspore.load_param_into_net(net, {"table": map_entry})

    assert actual == expected
    keys, values, _ = net.table.export_data()
    np.testing.assert_array_equal(keys, [4, 9])
    np.testing.assert_array_equal(values, np.ones((2, 3), np.float32))


def test_lenet_fixture_same(ms: ModuleType, compare: Comparison) -> None:
    class LeNet5(ms.nn.Cell):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = ms.nn.Conv2d(1, 6, 5, pad_mode="valid")
            self.conv2 = ms.nn.Conv2d(6, 16, 5, pad_mode="valid")
            self.fc1 = ms.nn.Dense(16 * 5 * 5, 120)
            self.fc2 = ms.nn.Dense(120, 84)
            self.fc3 = ms.nn.Dense(84, 10)

    reference_net, net = LeNet5(), LeNet5()
    path = str(FIXTURES / "lenet5_momentum.ckpt")

    expected = ms.load_param_into_net(reference_net, ms.load_checkpoint(path))
    actual = mploader_mindspore.load_param_into_net(net, mploader_mindspore.load_checkpoint(path))
    from_numpy_dict = mploader.net.load_param_into_net(LeNet5(), mploader.load_checkpoint(path))

    assert actual == expected
    assert from_numpy_dict == expected
    assert expected[0] == []
    assert_same_values(compare, reference_net, net)


def test_load_checkpoint_with_net(ms: ModuleType, compare: Comparison) -> None:
    path = str(FIXTURES / "encoder_fp16.ckpt")
    reference_params = ms.load_checkpoint(path)
    specs: Specs = {name: (tuple(value.shape), "float32") for name, value in reference_params.items()}
    reference_net, net = compare.make_cell(specs), compare.make_cell(specs)

    ms.load_checkpoint(path, net=reference_net)
    loaded = mploader_mindspore.load_checkpoint(path, net=net)

    assert list(loaded) == list(reference_params)
    assert_same_values(compare, reference_net, net)


def test_numpy_entries_shared_with_parameters(ms: ModuleType, compare: Comparison) -> None:
    net = ms.nn.Dense(3, 2)
    weight = np.zeros((2, 3), np.float32)

    mploader_mindspore.load_param_into_net(net, {"weight": weight, "bias": np.zeros(2, np.float32)})
    weight[0, 0] = 42.0

    assert compare.to_numpy(net.weight)[0, 0] == 42.0


def test_loaded_parameters_train(ms: ModuleType) -> None:
    loaded = mploader_mindspore.load_checkpoint(str(FIXTURES / "lenet5_momentum.ckpt"))
    weight, bias = loaded["fc3.weight"], loaded["fc3.bias"]
    inputs = ms.Tensor(np.ones((1, 84), np.float32))

    def loss(x: Any) -> Any:
        return (ms.ops.matmul(x, weight.T) + bias).sum()

    gradients = ms.grad(loss, grad_position=None, weights=[weight, bias])(inputs)

    expected = np.ones((1, 84), np.float32) @ weight.asnumpy().T + bias.asnumpy()
    np.testing.assert_allclose(loss(inputs).asnumpy(), expected.sum(), rtol=1e-5)
    np.testing.assert_array_equal(gradients[0].asnumpy(), np.ones((10, 84), np.float32))
    np.testing.assert_array_equal(gradients[1].asnumpy(), np.ones(10, np.float32))
