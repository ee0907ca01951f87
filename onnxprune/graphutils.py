"""Small helpers over onnx-ir graphs shared by the passes."""

from __future__ import annotations

import itertools

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
    taken.update(v.name for v in graph.inputs)
    taken.update(o.name for node in graph for o in node.outputs)
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
