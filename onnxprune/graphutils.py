"""Small helpers over onnx-ir graphs shared by the passes."""

from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
import onnx_ir as ir


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant numpy value of ``value`` (initializer or Constant node output), else None.

    Graph inputs that have an initializer (overridable defaults) are not constants.
    """
    if value is None:
        return None
    if value.is_graph_input():
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.value.numpy()
        for name, cast in (("value_float", np.float32), ("value_int", np.int64)):
            if name in producer.attributes:
                return np.asarray(producer.attributes[name].value, dtype=cast)
        for name, cast in (("value_floats", np.float32), ("value_ints", np.int64)):
            if name in producer.attributes:
                return np.asarray(list(producer.attributes[name].value), dtype=cast)
    return None


def unique_name(graph: ir.Graph, base: str) -> str:
    """A value name not used in ``graph`` (initializers, inputs, node outputs)."""
    taken = set(graph.initializers)
    taken.update(v.name for v in graph.inputs if v.name is not None)
    taken.update(o.name for node in graph for o in node.outputs if o.name is not None)
    if base not in taken:
        return base
    for i in itertools.count(1):
        candidate = f"{base}_{i}"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable")


def _contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous copy if needed; unlike np.ascontiguousarray, keeps 0-d scalars 0-d."""
    return np.require(array, requirements="C")


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray, *, exact: bool = False) -> ir.Value:
    """Register ``array`` as a new initializer (name made unique unless ``exact``)."""
    if not exact:
        name = unique_name(graph, name)
    tensor = ir.tensor(_contiguous(array), name=name)
    value = ir.Value(
        name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def set_initializer(value: ir.Value, array: np.ndarray) -> None:
    """Replace the data of an initializer value in place (shape may change)."""
    value.const_value = ir.tensor(_contiguous(array), name=value.name)
    value.shape = ir.Shape(array.shape)


def only_consumer(value: ir.Value) -> ir.Node | None:
    """The single node using ``value``, if it has exactly one use and is no graph output."""
    if value.is_graph_output():
        return None
    users = {id(node): node for node, _ in value.uses()}
    return next(iter(users.values())) if len(users) == 1 else None


def attr(node: ir.Node, name: str, default=None):
    """An attribute's Python value, or ``default``."""
    a = node.attributes.get(name)
    return default if a is None else a.value


def param_count(model: ir.Model) -> int:
    """Number of elements in all initializers (the model's parameters)."""
    return sum(
        int(np.prod(v.const_value.shape.numpy())) if v.const_value is not None else 0
        for g in model.graphs()
        for v in g.initializers.values()
    )


def node_count(model: ir.Model) -> int:
    return sum(len(list(g)) for g in model.graphs())


def release_mapping(tensor: ir.TensorProtocol) -> None:
    """Unmap one external tensor's data (it maps again on the next read)."""
    if isinstance(tensor, ir.ExternalTensor) and tensor.raw is not None:
        with contextlib.suppress(BufferError):  # a caller still holds a view: keep it mapped
            tensor.release()


MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


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


def name_unnamed_nodes(model: ir.Model) -> int:
    """Give every unnamed node a stable name, ``{op_type}_{k}`` (k counts that op's unnamed
    nodes in graph order, subgraphs included), so that tables can show it and ``--exclude``
    / ``--group-ratio`` can name it; names already taken are skipped. Returns how many."""
    nodes = list(model.graph.all_nodes())
    taken = {n.name for n in nodes if n.name}
    counters: dict[str, int] = {}
    named = 0
    for node in nodes:
        if node.name:
            continue
        while True:
            k = counters.get(node.op_type, 0)
            counters[node.op_type] = k + 1
            name = f"{node.op_type}_{k}"
            if name not in taken:
                break
        node.name = name
        taken.add(name)
        named += 1
    return named


def named(value: ir.Value) -> str:
    """The name of a value that has one by construction (a graph input, a node output ONNX
    Runtime fetches, a value we created with a name)."""
    assert value.name is not None, "an unnamed value where a name is needed"
    return value.name
