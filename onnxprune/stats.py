"""Model statistics: parameters, MACs per layer, op histogram, I/O signature."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import onnx_ir as ir

from onnxprune import _maptypes, shapes
from onnxprune.errors import UsageError
from onnxprune.graphutils import node_macs, param_count
from onnxprune.io import weights_nbytes
from onnxprune.passes.cleanup import ShapeInference

# The figures a compression changes: what the commands show before and after.
SIZE_KEYS = ("nodes", "parameters", "weights_bytes", "macs")


@dataclasses.dataclass
class LayerMacs:
    node: str | None  # the node's name, else its first output's
    op_type: str
    macs: int


def layer_macs(model: ir.Model) -> list[LayerMacs]:
    layers = []
    for node in model.graph.all_nodes():
        macs = node_macs(node)
        if macs is not None:
            layers.append(LayerMacs(node.name or node.outputs[0].name, node.op_type, macs))
    return layers


def total_macs(model: ir.Model) -> int:
    return sum(layer.macs for layer in layer_macs(model))


def _macs_at_input_shapes(model: ir.Model) -> tuple[list[LayerMacs], str | None]:
    """MACs at the shapes :mod:`onnxprune.shapes` decides (on a copy with those input shapes),
    or at 1 per open dim with a note saying so when nobody decided them."""
    shapes.given(model)  # the user's shapes must fit the model, dynamic or not
    if not shapes.is_dynamic(model):
        return layer_macs(model), None
    try:
        concrete = shapes.resolve(model)
    except UsageError as exc:
        return layer_macs(model), f"open input dims counted as 1 ({exc})"
    static = ir.from_proto(ir.to_proto(model))
    for value in static.graph.inputs:
        if value.name in concrete:
            value.shape = ir.Shape(concrete[value.name])
    for node in static.graph.all_nodes():  # inferred again from the concrete inputs
        for value in node.outputs:
            value.shape = None
    ShapeInference()(static)
    return layer_macs(static), None


def _signature(values, model: ir.Model) -> list[dict]:
    return [
        {
            "name": v.name,
            "dtype": str(v.dtype) if v.dtype is not None else _maptypes.describe(model, v.name),
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
    layers, note = _macs_at_input_shapes(model)
    info = {
        "graph": model.graph.name,
        "producer": f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        "opsets": dict(model.opset_imports),
        "inputs": _signature((v for v in model.graph.inputs if not v.is_initializer()), model),
        "outputs": _signature(model.graph.outputs, model),
        "nodes": sum(ops.values()),
        "ops": dict(ops.most_common()),
        "parameters": param_count(model),
        "weights_bytes": weights_nbytes(model),
        "macs": sum(layer.macs for layer in layers),
        "layers": [dataclasses.asdict(layer) for layer in layers],
    }
    if note:
        info["macs_note"] = note
    if path is not None:
        path = Path(path)
        info["file"] = str(path)
        info["file_bytes"] = path.stat().st_size
    return info


def size_summary(model: ir.Model) -> dict:
    """The :data:`SIZE_KEYS` figures of :func:`summarize` (shapes inferred in place)."""
    info = summarize(model)
    return {key: info[key] for key in SIZE_KEYS}
