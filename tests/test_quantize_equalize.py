"""Channel equalization: exact in float, found only where exact, and it evens the ranges INT8 sees.

The model in small is PP-LCNetV3's block tail as the PP-OCRv4 recognizer has it: a convolution,
a learnable affine (Mul and Add by per-channel constants) whose channels span 100x in range, a
squeeze-excitation gate, and the pointwise convolution that reads it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import runtime
from onnxprune.api import recovery
from onnxprune.io import load_model
from onnxprune.passes.quantize.equalize import regions

C = 16


def _model(middle: str = "Identity") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    spread = np.geomspace(0.05, 5.0, C).astype(np.float32)  # the channels' sizes: 100x apart
    weights = {
        "w0": rng.standard_normal((C, 3, 3, 3)).astype(np.float32) * 0.3, "b0": np.zeros(C, np.float32),
        "lab_w": spread.reshape(C, 1, 1), "lab_b": (rng.standard_normal((C, 1, 1)) * 0.1).astype(np.float32),
        "se1": rng.standard_normal((4, C, 1, 1)).astype(np.float32) * 0.3,
        "se2": rng.standard_normal((C, 4, 1, 1)).astype(np.float32) * 0.3,
        "w1": (rng.standard_normal((8, C, 1, 1)) / spread.reshape(1, C, 1, 1)).astype(np.float32) * 0.2,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node(middle, ["r0"], ["h"], name="act"),
        helper.make_node("Mul", ["h", "lab_w"], ["m"], name="lab_mul"),
        helper.make_node("Add", ["m", "lab_b"], ["a"], name="lab_add"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
        helper.make_node("Conv", ["g", "se1"], ["s1"], name="se_conv1"),
        helper.make_node("Relu", ["s1"], ["s1r"], name="se_relu"),
        helper.make_node("Conv", ["s1r", "se2"], ["s2"], name="se_conv2"),
        helper.make_node("HardSigmoid", ["s2"], ["gate"], name="se_gate"),
        helper.make_node("Mul", ["a", "gate"], ["e"], name="se_mul"),
        helper.make_node("Conv", ["e", "w1"], ["y"], name="pointwise"),
    ]
    graph = helper.make_graph(nodes, "lab", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


@pytest.fixture
def data():
    return np.random.default_rng(1).standard_normal((64, 3, 8, 8)).astype(np.float32)


def test_equalization_is_exact_and_evens_the_channel_ranges(tmp_path, data):
    onnx.save(_model(), tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx")
    found = {frozenset(r.members): r for r in regions(model)}  # the block, and the SE's own Conv-Relu-Conv
    assert set(found) == {frozenset({"m", "a", "g", "e"}), frozenset({"s1", "s1r"})}
    assert {n.name for n in found[frozenset({"m", "a", "g", "e"})].sinks} == {"se_conv1", "pointwise"}
    before = recovery.channel_absmax(model, [{"x": data}], ["a"])["a"]
    result = recovery.equalize(model, [{"x": data}])
    assert result.modified and any("4 tensors equalized into 2 layers" in c for c in result.changes)
    after = recovery.channel_absmax(model, [{"x": data}], ["a"])["a"]
    assert after.max() / after.min() < (before.max() / before.min()) / 4  # the ranges are closer
    reference = runtime.run(load_model(tmp_path / "m.onnx"), {"x": data})["y"]
    equalized = runtime.run(model, {"x": data})["y"]
    np.testing.assert_allclose(equalized, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_equalized_int8_is_closer_to_float(tmp_path, data):
    onnx.save(_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=data[:48])
    held = {"x": data[48:]}
    reference = runtime.run(load_model(tmp_path / "m.onnx"), held)["y"]

    def error(**options) -> float:
        q = onnxprune.quantize(tmp_path / "m.onnx", calib=tmp_path / "calib.npz", guard=False, **options)
        return float(np.mean((runtime.run(q.model, held)["y"] - reference) ** 2))

    plain, equalized = error(), error(equalize=True)
    assert equalized < plain / 2, (plain, equalized)


def test_nothing_is_equalized_through_a_hardswish(tmp_path):
    onnx.save(_model("HardSwish"), tmp_path / "m.onnx")
    found = regions(load_model(tmp_path / "m.onnx"))
    assert all("r0" not in r.members and "h" not in r.members for r in found)  # the Mul source starts after it
