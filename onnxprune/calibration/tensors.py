"""Which tensors to calibrate."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from onnxprune.errors import UsageError

# Ops whose inputs/outputs a QDQ quantizer places Q/DQ pairs on: the union of ONNX Runtime's
# QDQ and QLinear registries (onnxruntime.quantization.registry), plus Sub and GlobalMaxPool.
QUANTIZABLE_OPS = frozenset({
    "Add", "ArgMax", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "ConvTranspose",
    "CumSum", "Flatten", "Gather", "GatherElements", "Gemm", "GlobalAveragePool", "GlobalMaxPool",
    "InstanceNormalization", "LayerNormalization", "LeakyRelu", "MatMul", "MaxPool", "Mul", "Pad",
    "Relu", "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "Split", "Squeeze", "Sub", "TopK",
    "Transpose", "Unsqueeze", "Where",
})  # fmt: skip

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


def _constant_values(graph: ir.Graph) -> set[ir.Value]:
    """Values computable from weights alone: initializers, Constant outputs, and outputs of
    nodes whose inputs are all such (the legacy PyTorch exporter aliases shared weights
    through Identity nodes, for instance)."""
    constant = {v for v in graph.initializers.values() if not v.is_graph_input()}
    for node in graph:  # topological order
        inputs = [v for v in node.inputs if v is not None]
        if (node.op_type == "Constant" and node.domain in ("", "ai.onnx")) or (
            inputs and all(v in constant for v in inputs)
        ):
            constant.update(node.outputs)
    return constant


def _maybe_float(value: ir.Value) -> bool:
    """Float, or of unknown type (non-float ones are dropped when their values arrive)."""
    return value.dtype is None or value.dtype in FLOAT_TYPES


def default_tensors(model: ir.Model) -> list[str]:
    """Float inputs and outputs of quantizable ops in the main graph, in graph order."""
    names: dict[str, None] = {}
    constant = _constant_values(model.graph)
    for node in model.graph:
        if node.op_type not in QUANTIZABLE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for value in (*node.inputs, *node.outputs):
            if value is not None and value.name and value not in constant and _maybe_float(value):
                names.setdefault(value.name)
    return list(names)


def select_tensors(model: ir.Model, tensors: Sequence[str] | None) -> list[str]:
    """``tensors`` checked against the graph, or the default selection."""
    if tensors is None:
        names = default_tensors(model)
        if not names:
            raise UsageError("the model has no tensors to calibrate (no quantizable ops with float data)")
        return names
    values = graph_values(model)
    names = list(dict.fromkeys(tensors))
    for name in names:
        if name not in values:
            if name in model.graph.initializers:
                raise UsageError(f"tensor '{name}' is a weight (initializer); only activations are calibrated")
            raise UsageError(f"tensor '{name}' is not a value of the model's main graph")
    if not names:
        raise UsageError("no tensors to calibrate were given")
    return names


def graph_values(model: ir.Model) -> dict[str, ir.Value]:
    """The main graph's values by name: its inputs and every node output (not initializers)."""
    values = {v.name: v for v in model.graph.inputs if v.name is not None}
    values.update((o.name, o) for node in model.graph for o in node.outputs if o.name is not None)
    return values
