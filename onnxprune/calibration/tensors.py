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


def _is_constant(value: ir.Value) -> bool:
    if value.is_initializer() and not value.is_graph_input():
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx")


def _maybe_float(value: ir.Value) -> bool:
    """Float, or of unknown type (non-float ones are dropped when their values arrive)."""
    return value.dtype is None or value.dtype in FLOAT_TYPES


def default_tensors(model: ir.Model) -> list[str]:
    """Float inputs and outputs of quantizable ops in the main graph, in graph order."""
    names: dict[str, None] = {}
    for node in model.graph:
        if node.op_type not in QUANTIZABLE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for value in (*node.inputs, *node.outputs):
            if value is not None and value.name and not _is_constant(value) and _maybe_float(value):
                names.setdefault(value.name)
    return list(names)


def select_tensors(model: ir.Model, tensors: Sequence[str] | None) -> list[str]:
    """``tensors`` checked against the graph, or the default selection."""
    if tensors is None:
        names = default_tensors(model)
        if not names:
            raise UsageError("the model has no tensors to calibrate (no quantizable ops with float data)")
        return names
    values = {v.name: v for v in model.graph.inputs}
    values.update((o.name, o) for node in model.graph for o in node.outputs)
    names = list(dict.fromkeys(tensors))
    for name in names:
        if name not in values:
            if name in model.graph.initializers:
                raise UsageError(f"tensor '{name}' is a weight (initializer); only activations are calibrated")
            raise UsageError(f"tensor '{name}' is not a value of the model's main graph")
    if not names:
        raise UsageError("no tensors to calibrate were given")
    return names
