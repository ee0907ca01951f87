"""Model statistics: parameters, MACs per layer, op histogram, I/O signature."""

from __future__ import annotations

import collections
import dataclasses
import math
from pathlib import Path

import onnx_ir as ir

from onnxprune.graphutils import attr, param_count
from onnxprune.io import weights_nbytes
from onnxprune.passes.cleanup import ShapeInference

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# The figures a compression changes: what the commands show before and after.
SIZE_KEYS = ("nodes", "parameters", "weights_bytes", "macs")


@dataclasses.dataclass
class LayerMacs:
    node: str
    op_type: str
    macs: int


def _dims(value: ir.Value | None) -> list[int] | None:
    """Concrete dims of a value; symbolic/unknown dims count as 1 (batch of one)."""
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else 1 for d in value.shape]


def _weight_dims(value: ir.Value | None) -> list[int] | None:
    if value is not None and value.const_value is not None:
        return list(value.const_value.shape.numpy())
    return _dims(value)


def node_macs(node: ir.Node) -> int | None:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul at batch 1, or None if unknown."""
    if node.domain != "" or node.op_type not in MAC_OPS:
        return None
    out = _dims(node.outputs[0])
    if node.op_type == "Conv":
        w = _weight_dims(node.inputs[1])
        if out is None or w is None:
            return None
        return math.prod(out[1:]) * math.prod(w[1:])
    if node.op_type == "ConvTranspose":
        x, w = _dims(node.inputs[0]), _weight_dims(node.inputs[1])
        if x is None or w is None:
            return None
        return math.prod(x[1:]) * math.prod(w[1:])
    # Gemm / MatMul: every output element is a dot product over K. The first output dim is
    # the batch (like Conv's N above), so a model exported at batch 8 is not counted 8 times.
    a = _weight_dims(node.inputs[0])
    if out is None or not a:
        return None
    k = a[0] if node.op_type == "Gemm" and attr(node, "transA", 0) else a[-1]
    return math.prod(out[1:] if len(out) > 1 else out) * k


def layer_macs(model: ir.Model) -> list[LayerMacs]:
    layers = []
    for node in model.graph.all_nodes():
        macs = node_macs(node)
        if macs is not None:
            layers.append(LayerMacs(node.name or node.outputs[0].name, node.op_type, macs))
    return layers


def total_macs(model: ir.Model) -> int:
    return sum(layer.macs for layer in layer_macs(model))


def _signature(values) -> list[dict]:
    return [
        {
            "name": v.name,
            "dtype": str(v.dtype) if v.dtype is not None else "?",
            "shape": [d if isinstance(d, int) else str(d) for d in (v.shape or ())],
        }
        for v in values
    ]


def summarize(model: ir.Model, path: str | Path | None = None, *, infer_shapes: bool = True) -> dict:
    """Everything ``onnxprune inspect`` shows, as a JSON-ready dict.

    With ``infer_shapes`` the model's value shapes are filled in place (needed for MACs).
    """
    if infer_shapes:
        ShapeInference()(model)
    ops = collections.Counter(
        f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.all_nodes()
    )
    layers = layer_macs(model)
    info = {
        "graph": model.graph.name,
        "producer": f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        "opsets": dict(model.opset_imports),
        "inputs": _signature(v for v in model.graph.inputs if not v.is_initializer()),
        "outputs": _signature(model.graph.outputs),
        "nodes": sum(ops.values()),
        "ops": dict(ops.most_common()),
        "parameters": param_count(model),
        "weights_bytes": weights_nbytes(model),
        "macs": sum(layer.macs for layer in layers),
        "layers": [dataclasses.asdict(layer) for layer in layers],
    }
    if path is not None:
        path = Path(path)
        info["file"] = str(path)
        info["file_bytes"] = path.stat().st_size
    return info


def size_summary(model: ir.Model) -> dict:
    """The :data:`SIZE_KEYS` figures of :func:`summarize` (shapes inferred in place)."""
    info = summarize(model)
    return {key: info[key] for key in SIZE_KEYS}
