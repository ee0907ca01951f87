"""Tiny hand-built ONNX graphs for pass tests, and the parity check they share.

    g = Tiny({"x": [1, 4, 5, 5]})
    y = g.op("Conv", ["x", g.init("w", rand(6, 4, 3, 3))], pads=[1, 1, 1, 1])
    proto = g.proto(y)                  # a ModelProto (opset 17)
    model = tiny.fresh(proto)           # an onnx_ir.Model, new each call (passes work in place)
    assert_parity(proto, model, feeds)  # ORT outputs equal (max abs error / max |ref| <= 1e-5)
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime

TOLERANCE = 1e-5
RNG = np.random.default_rng(0)


def rand(*shape: int, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Seeded float32 values: standard normal, or uniform in [low, high)."""
    if low is not None:
        return RNG.uniform(low, high, shape).astype(np.float32)
    return RNG.standard_normal(shape).astype(np.float32)


def bn_params(c: int) -> list[np.ndarray]:
    """Non-trivial BatchNormalization scale, bias, mean, var for ``c`` channels."""
    return [rand(c, low=0.5, high=1.5), rand(c), rand(c), rand(c, low=0.5, high=2.0)]


class Tiny:
    """Builds a graph node by node; ``op`` returns the new output's name."""

    def __init__(self, inputs: dict[str, list[int | str]], opset: int = 17) -> None:
        self.inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()]
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opset = opset
        self._ids = itertools.count()

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        """A Constant node (not an initializer)."""
        self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const",
                                           value=numpy_helper.from_array(np.asarray(array))))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, outputs: int = 1, **attrs) -> str:
        i = next(self._ids)
        name = name or f"{op_type.lower()}{i}"
        outs = [f"{name}_out{j}" if j else f"{name}_out" for j in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0]

    def bn(self, x: str, c: int, name: str | None = None, **attrs) -> str:
        name = name or f"bn{next(self._ids)}"
        params = [self.init(f"{name}.{p}", a) for p, a in zip(("scale", "bias", "mean", "var"), bn_params(c))]
        return self.op("BatchNormalization", [x, *params], name=name, **attrs)

    def proto(self, *outputs: str) -> onnx.ModelProto:
        outs = [onnx.ValueInfoProto(name=o) for o in outputs]  # type and shape inferred below
        graph = helper.make_graph(self.nodes, "tiny", self.inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)  # output shapes (the checker wants them)
        del model.graph.value_info[:]  # as exporters often leave them: passes must not need them
        onnx.checker.check_model(model)
        return model


def fresh(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def feeds_for(proto: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    return runtime.random_inputs(fresh(proto), batch=2, seed=seed)


def max_error(reference: np.ndarray, candidate: np.ndarray, floor: float = 1e-12) -> float:
    """max |candidate - reference| / max(max |reference|, floor) (shapes must match)."""
    assert reference.shape == candidate.shape, (reference.shape, candidate.shape)
    scale = max(float(np.abs(reference).max()), floor)
    return float(np.abs(reference.astype(np.float64) - candidate).max()) / scale


def assert_parity(reference, model, feeds=None, tolerance: float = TOLERANCE, floor: float = 1e-12) -> None:
    """``model``'s outputs equal ``reference``'s in ONNX Runtime, output by output.

    ``floor`` bounds the scale from below, for outputs that are tiny by cancellation.
    """
    if isinstance(reference, onnx.ModelProto):
        reference = fresh(reference)
    feeds = feeds if feeds is not None else runtime.random_inputs(reference, batch=2, seed=1)
    expected = runtime.run(reference, feeds)
    got = runtime.run(model, feeds)
    assert list(got) == list(expected), (list(got), list(expected))
    for name, ref in expected.items():
        err = max_error(ref, got[name], floor)
        assert err <= tolerance, f"output {name}: error {err:.3g} > {tolerance:g} (max |ref| {np.abs(ref).max():.3g})"


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def snapshot(model: ir.Model) -> bytes:
    """The model serialized: equal snapshots mean nothing changed."""
    return ir.to_proto(model).SerializeToString(deterministic=True)


def offset_classifier(rng: np.random.Generator) -> onnx.ModelProto:
    """Class logits as a tiny signal on an offset of 1000 (magika's quirk in small): INT8 loses
    the argmax unless the Add stays float. Input x [N, 16], output p [N, 10]."""
    w = numpy_helper.from_array((rng.standard_normal((16, 10)) * 0.01).astype(np.float32), "W")
    offset = numpy_helper.from_array(np.full(10, 1000, np.float32), "off")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["l"], name="fc"),
             helper.make_node("Add", ["l", "off"], ["p"], name="offset")]
    graph = helper.make_graph(nodes, "offset", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 10])], [w, offset])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
