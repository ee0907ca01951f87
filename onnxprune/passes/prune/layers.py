"""Rules for the layers that create channels (producers) and read them (consumers).

Conv ``W[out, in/groups, k...]``, ConvTranspose ``W[in, out/groups, k...]``,
Gemm ``B[K, N]`` (``[N, K]`` with transB) and MatMul with a constant 2-D ``B[K, N]``:
their output channels are a group's root (weight rows/columns + bias are PRODUCER slots),
and the input channels they read are CONSUMER slots of the weight's other axis.

Depthwise Conv (``groups == C_in``, ``W[C_in*m, 1, k...]``) creates nothing: output channels
``c*m ... c*m+m-1`` are computed from input channel ``c`` alone, so input and output belong
to one group (blocks of ``m``) and W, B are per-channel PARAMs (``group`` is updated).
Grouped Conv (1 < groups < C_in) keeps a dense weight only if each division of its input
and output channels keeps as many channels: the group gets that constraint (``Divisions``).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnxprune.graphutils import attr
from onnxprune.passes.prune.group import Role
from onnxprune.passes.prune.rules import (
    Decline,
    Dim,
    Divisions,
    Item,
    RuleContext,
    desc,
    dims,
    is_const,
    present,
    rank,
    size,
)


@dataclasses.dataclass(frozen=True)
class Weight:
    """A constant weight as a layer sees it, possibly through Transpose nodes.

    The legacy exporter writes ``Linear`` on 3-D inputs as ``MatMul(x, Transpose(W))``:
    axis ``i`` of what the layer reads is axis ``perm[i]`` of ``value``, used by ``user``.
    """

    value: ir.Value
    user: ir.Node
    perm: tuple[int, ...]


def resolve_weight(node: ir.Node, index: int) -> Weight | None:
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        return None
    user, perm = node, tuple(range(len(dims(value) or ())))
    while not is_const(value):
        producer = value.producer()
        single_use = len(value.uses()) == 1 and not value.is_graph_output()
        if producer is None or producer.op_type != "Transpose" or not single_use:
            return None
        step = attr(producer, "perm") or list(reversed(range(len(perm))))
        perm = tuple(step[i] for i in perm)
        value, user = producer.inputs[0], producer
        if value is None:
            return None
    return Weight(value, user, perm)


def is_depthwise(node: ir.Node) -> bool:
    """A Conv with one input channel per conv group (``W[C_in*m, 1, k...]``, groups > 1)."""
    if node.op_type != "Conv" or attr(node, "group", 1) == 1:
        return False
    shape = dims(node.inputs[1])
    return shape is not None and shape[1] == 1


def _conv_parts(node: ir.Node) -> tuple[ir.Value, ir.Value | None]:
    weight = node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if weight is None or not is_const(weight) or (bias is not None and not is_const(bias)):
        raise Decline(f"{desc(node)} has weights computed at runtime")
    return weight, bias


def _producer_slots(
    dim: Dim, node: ir.Node, weight: ir.Value, axis: int, bias: ir.Value | None, role: Role = Role.PRODUCER
) -> list[Item]:
    items: list[Item] = [dim.slot(role, node, weight, axis)]
    if bias is not None:
        items.append(dim.slot(role, node, bias, 0, bias=role is Role.PRODUCER))
    return items


def conv(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    weight, bias = _conv_parts(node)
    if index != 0:
        raise Decline(f"channels reach input {index} of {desc(node)}: not supported")
    if dim.axis != 1:
        raise Decline(f"{desc(node)} sees the channels on axis {dim.axis}, not 1")
    groups = attr(node, "group", 1)
    if is_depthwise(node):
        mult = size(weight, 0) // groups
        if side == "in":
            out = dim.scaled(node.outputs[0], 1, mult, 1)
            assert out is not None  # a whole multiple: never None
            return [out, *_producer_slots(out, node, weight, 0, bias, Role.PARAM)]
        inp = dim.scaled(present(node, 0), 1, 1, mult)
        if inp is None:
            raise Decline(f"depthwise {desc(node)} ties its output channels in blocks of {mult}")
        return [inp, *_producer_slots(dim, node, weight, 0, bias, Role.PARAM)]
    if side == "in":
        return [dim.slot(Role.CONSUMER, node, weight, 1, groups=groups), *_divisions(node, dim, groups)]
    return [*_producer_slots(dim, node, weight, 0, bias), *_divisions(node, dim, groups)]


def _divisions(node: ir.Node, dim: Dim, groups: int) -> list[Item]:
    if groups == 1:
        return []
    length = size(dim.value, 1)
    if dim.offset or dim.block != 1 or dim.lo or dim.hi != length:
        raise Decline(
            f"grouped {desc(node)} (groups={groups}) shares its channels with other tensors "
            "at an offset: equal counts per conv group cannot be guaranteed"
        )
    return [Divisions(groups, length, node)]


def conv_transpose(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    weight, bias = _conv_parts(node)
    if attr(node, "group", 1) != 1:
        raise Decline(f"grouped {desc(node)} is not supported")
    if index != 0 or dim.axis != 1:
        raise Decline(f"{desc(node)} sees the channels on input {index}, axis {dim.axis}")
    if side == "in":
        return [dim.slot(Role.CONSUMER, node, weight, 0)]
    return _producer_slots(dim, node, weight, 1, bias)


def gemm(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    weight = resolve_weight(node, 1)
    if weight is None:
        raise Decline(f"{desc(node)} multiplies by a matrix computed at runtime")
    trans_b = attr(node, "transB", 0)
    if side == "in":
        if index != 0 or attr(node, "transA", 0) or dim.axis != 1:
            raise Decline(f"{desc(node)} sees the channels on input {index}, axis {dim.axis}")
        return [dim.slot(Role.CONSUMER, weight.user, weight.value, weight.perm[1 if trans_b else 0])]
    if dim.axis != 1:
        raise Decline(f"{desc(node)} output rows carry channels: not supported")
    items: list[Item] = [dim.slot(Role.PRODUCER, weight.user, weight.value, weight.perm[0 if trans_b else 1])]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None:
        shape = dims(bias)
        if shape and shape[-1] == size(node.outputs[0], 1) and shape[-1] != 1:
            if not is_const(bias):
                raise Decline(f"the bias of {desc(node)} is computed at runtime")
            items.append(dim.slot(Role.PRODUCER, node, bias, len(shape) - 1, bias=True))
    return items


def matmul(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    a, y = present(node, 0), node.outputs[0]
    weight = resolve_weight(node, 1) if len(dims(node.inputs[1]) or ()) == 2 else None
    ra, r = rank(a), rank(y)
    if side == "in" and index == 0 and dim.axis == ra - 1:
        if weight is None:
            raise Decline(f"{desc(node)} contracts the channels with a tensor computed at runtime")
        return [dim.slot(Role.CONSUMER, weight.user, weight.value, weight.perm[0])]
    if side == "out" and dim.axis == r - 1:
        if weight is None:
            raise Decline(f"{desc(node)} multiplies by a matrix computed at runtime")
        return [dim.slot(Role.PRODUCER, weight.user, weight.value, weight.perm[1])]
    if weight is None or index != 0 or ra < 2:
        raise Decline(f"channels reach {desc(node)} on input {index}, axis {dim.axis}: not supported")
    # rows (or batch axes) of A pass through A @ B unchanged
    if side == "in":
        return [dim.moved(y, dim.axis + r - ra)]
    if dim.axis - (r - ra) < 0:
        raise Decline(f"{desc(node)} broadcasts its output over the channel axis")
    return [dim.moved(a, dim.axis - (r - ra))]


def root(node: ir.Node) -> tuple[ir.Value, int, int] | None:
    """(output, channel axis, channel count) of a layer that creates channels, else None.

    Layers whose weights are computed at runtime are roots too: their group is then
    declined by the rules, with that reason, instead of not being reported at all.
    """
    if node.domain not in ("", "ai.onnx") or not node.outputs or len(node.inputs) < 2:
        return None
    op, out, weight = node.op_type, node.outputs[0], dims(node.inputs[1])
    if weight is None:
        return None
    if op == "Conv" and not is_depthwise(node):
        axis, count = 1, weight[0]
    elif op == "ConvTranspose":
        axis, count = 1, weight[1] and weight[1] * attr(node, "group", 1)
    elif op == "Gemm":
        axis, count = 1, weight[0 if attr(node, "transB", 0) else 1]
    elif op == "MatMul" and len(weight) == 2:
        shape = dims(out) or dims(node.inputs[0])
        if shape is None:
            return None
        axis, count = len(shape) - 1, weight[1]
    else:
        return None
    shape = dims(out)
    if shape is not None and shape[axis] is not None:
        count = shape[axis]
    return (out, axis, count) if count else None
