"""How channels travel through the ops that carry them (the dependency rules of the analysis).

A rule relates one channel dimension of a node's input or output (a :class:`Dim`) to the
dimensions it is coupled with at the node's other inputs/outputs, and to the per-channel
constants (Role.PARAM slots) sliced with it. Rules work in both directions (from an input
or from an output), so that the analysis can close a group over residual ties and
concatenations. A node a rule cannot map raises :class:`Decline` with the reason.

Layers that create or consume channels (Conv, Gemm, MatMul...) live in ``layers.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import attr, const_array
from onnxprune.passes.prune.group import Role, Slot


class Decline(Exception):
    """A group cannot be pruned; the message says why (one line, naming the node)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dim:
    """Group channels ``lo <= c < hi`` at indices ``offset + (c - lo) * block`` (each ``block``
    long) along ``axis`` of ``value``. The same mapping as :class:`Slot`'s."""

    value: ir.Value
    axis: int
    offset: int
    block: int
    lo: int
    hi: int

    @property
    def span(self) -> tuple[int, int]:
        """The index interval the channels occupy along ``axis``."""
        return self.offset, self.offset + (self.hi - self.lo) * self.block

    def moved(self, value: ir.Value, axis: int, shift: int = 0) -> Dim:
        return Dim(value, axis, self.offset + shift, self.block, self.lo, self.hi)

    def scaled(self, value: ir.Value, axis: int, num: int, den: int) -> Dim | None:
        """Each index becomes ``num/den`` indices (None when channels stop being whole slices)."""
        if (self.offset * num) % den or (self.block * num) % den:
            return None
        return Dim(value, axis, self.offset * num // den, self.block * num // den, self.lo, self.hi)

    def within(self, value: ir.Value, axis: int, start: int, stop: int) -> Dim | None:
        """The channels lying in indices ``[start, stop)``, re-based at ``start`` (None: none).

        Raises Decline when the cut falls inside one channel's block.
        """
        first, last = self.span
        lo_cut, hi_cut = max(start, first), min(stop, last)
        if lo_cut >= hi_cut:
            return None
        if (lo_cut - first) % self.block or (hi_cut - first) % self.block:
            raise Decline(f"a slice of '{value.name}' cuts through one channel's features")
        lo = self.lo + (lo_cut - first) // self.block
        hi = self.lo + (hi_cut - first) // self.block
        return Dim(value, axis, lo_cut - start, self.block, lo, hi)

    def slot(self, role: Role, node: ir.Node, value: ir.Value, axis: int, **kw: Any) -> Slot:
        return Slot(role, node, value, axis, self.offset, self.block, self.lo, self.hi, **kw)


@dataclasses.dataclass(frozen=True)
class Divisions:
    """A grouped Conv splits the channels it reads/writes into ``count`` equal divisions."""

    count: int
    length: int  # the Conv's channel count: the group must be exactly these channels
    node: ir.Node


class RuleContext(Protocol):
    """What a rule may know about the whole model."""

    graph: ir.Graph
    opset: int


Item = Dim | Slot | Divisions  # a rule's findings: coupled dims, per-channel constants, divisions
Rule = Callable[[ir.Node, str, int, Dim, "RuleContext"], list[Item]]


def desc(node: ir.Node) -> str:
    return f"{node.op_type} '{node.name}'"


def forwarded(value: ir.Value | None) -> ir.Value | None:
    """The value an Identity chain forwards (the legacy exporter shares equal initializers,
    e.g. every fresh BatchNorm's zero mean, through Identity nodes)."""
    while value is not None:
        producer = value.producer()
        if producer is None or producer.op_type != "Identity" or producer.domain != "":
            return value
        value = producer.inputs[0]
    return value


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The constant array of ``value`` (looking through Identity), else None."""
    return const_array(forwarded(value))


def is_const(value: ir.Value | None) -> bool:
    """A constant (initializer or Constant output, maybe via Identity), without loading data."""
    value = forwarded(value)
    if value is None or value.is_graph_input():
        return False
    if value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain == ""


def dims(value: ir.Value | None) -> list[int | None] | None:
    """Static dims (None where symbolic/unknown), or None when the rank is unknown."""
    if value is None:
        return None
    shape: ir.ShapeProtocol | None = value.shape
    if shape is None and value.const_value is not None:
        shape = value.const_value.shape
    if shape is None:
        return None
    return [d if isinstance(d, int) else None for d in shape]


def present(node: ir.Node, index: int) -> ir.Value:
    """Input ``index`` of ``node`` (Decline when it is missing)."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        raise Decline(f"{desc(node)} has no input {index}")
    return value


def rank(value: ir.Value | None) -> int:
    shape = dims(value)
    if shape is None:
        raise Decline(f"the rank of '{value.name if value else None}' is unknown (run shape inference)")
    return len(shape)


def size(value: ir.Value | None, axis: int) -> int:
    shape = dims(value)
    length = shape[axis] if shape is not None else None
    if length is None:
        raise Decline(f"dimension {axis} of '{value.name if value else None}' is only known at runtime")
    return length


def ints(node: ir.Node, name: str, input_index: int | None = None) -> list[int] | None:
    """An int-list parameter given as an attribute or (newer opsets) a constant input.

    Raises Decline when it is an input computed at runtime.
    """
    if name in node.attributes:
        return [int(v) for v in attr(node, name)]
    if input_index is not None and len(node.inputs) > input_index and node.inputs[input_index] is not None:
        array = constant(node.inputs[input_index])
        if array is None:
            raise Decline(f"the {name} of {desc(node)} are computed at runtime")
        return [int(v) for v in array.reshape(-1)]
    return None


def _only_first(node: ir.Node, side: str, index: int, dim: Dim) -> None:
    """Carried ops map their data input 0 to output 0; channels elsewhere are not supported."""
    if index != 0:
        where = "input" if side == "in" else "output"
        raise Decline(f"channels reach {where} {index} of {desc(node)}: not supported")
    for extra in node.outputs[1:]:
        if extra.uses() or extra.is_graph_output():
            raise Decline(f"the extra output '{extra.name}' of {desc(node)} is used")


def _across(node: ir.Node, side: str, dim: Dim, axis: int | None = None) -> Dim:
    """The dim on the other side of a one-input one-output op (``axis``: same if None)."""
    other = node.outputs[0] if side == "in" else present(node, 0)
    return dim.moved(other, dim.axis if axis is None else axis)


def unary(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    """Element-wise on one tensor (activations, Cast, Identity, Dropout, Clip): same channels."""
    _only_first(node, side, index, dim)
    return [_across(node, side, dim)]


def per_channel(params: tuple[int, ...], channel_axis: int | None = 1) -> Rule:
    """BatchNorm-like ops: channels on ``channel_axis``, per-channel constants on ``params``."""

    def rule(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
        _only_first(node, side, index, dim)
        if channel_axis is not None and dim.axis != channel_axis:
            raise Decline(f"{desc(node)} works on axis {channel_axis}, the channels are on {dim.axis}")
        items: list[Item] = [_across(node, side, dim)]
        for i in params:
            value = node.inputs[i] if i < len(node.inputs) else None
            if value is None:
                continue
            if not is_const(value):
                raise Decline(f"input {i} of {desc(node)} is computed at runtime")
            items.append(dim.slot(Role.PARAM, node, value, 0))
        return items

    return rule


def broadcast(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    """Add/Sub/Mul/Div/...: inputs broadcast together; a full-size channel axis ties them.

    A constant input with the channel axis is a per-channel PARAM; a computed one carries the
    same channels (residual Add, x*sigmoid(x), squeeze-excitation Mul); size 1 broadcasts.
    """
    out = node.outputs[0]
    r = rank(out)
    length = size(dim.value, dim.axis)
    aligned = dim.axis + (r - rank(node.inputs[index])) if side == "in" else dim.axis
    items: list[Item] = [dim.moved(out, aligned)] if side == "in" else []
    for j, value in enumerate(node.inputs):
        if value is None or (side == "in" and j == index):
            continue
        axis = aligned - (r - rank(value))
        if axis < 0:
            continue
        other = size(value, axis)
        if other == 1 and length != 1:
            continue
        if other != length:
            raise Decline(f"{desc(node)} broadcasts {other} onto {length} channels")
        items.append(dim.slot(Role.PARAM, node, value, axis) if is_const(value) else dim.moved(value, axis))
    return items


def softmax(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    """Softmax-like: fine unless it normalises across the channel axis."""
    _only_first(node, side, index, dim)
    r = rank(node.inputs[0])
    axis = attr(node, "axis", -1 if ctx.opset >= 13 else 1) % r
    mixed = dim.axis == axis if ctx.opset >= 13 else dim.axis >= axis
    if mixed:
        raise Decline(f"{desc(node)} normalises across the channels")
    return [_across(node, side, dim)]


def layer_norm(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    _only_first(node, side, index, dim)
    if dim.axis >= attr(node, "axis", -1) % rank(node.inputs[0]):
        raise Decline(f"{desc(node)} normalises across the channels")
    return [_across(node, side, dim)]


def pooling(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    """Max/Average/Lp/Global pooling: spatial only, channels (axis 1) pass through."""
    _only_first(node, side, index, dim)
    if dim.axis != 1:
        raise Decline(f"{desc(node)} pools over axis {dim.axis}, which carries channels")
    return [_across(node, side, dim)]


def pad(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    _only_first(node, side, index, dim)
    pads = ints(node, "pads", 1)
    r = rank(node.inputs[0])
    axes = ints(node, "axes", 3) or list(range(r))
    axes = [a % r for a in axes]
    if dim.axis in axes:
        k = axes.index(dim.axis)
        if pads is None or pads[k] or pads[k + len(axes)]:
            raise Decline(f"{desc(node)} pads the channel axis")
    return [_across(node, side, dim)]


def resize(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    """Resize/Upsample: fine when the channel axis keeps scale 1 (or a size we can update)."""
    _only_first(node, side, index, dim)
    if "axes" in node.attributes:
        raise Decline(f"{desc(node)} with 'axes' is not supported")
    scale_input = 1 if node.op_type == "Upsample" or ctx.opset < 11 else 2
    scales = constant(node.inputs[scale_input]) if len(node.inputs) > scale_input and node.inputs[scale_input] else None
    if scales is None and "scales" in node.attributes:
        scales = attr(node, "scales")
    if scales is not None and len(scales):
        if float(scales[dim.axis]) != 1.0:
            raise Decline(f"{desc(node)} scales the channel axis")
    elif node.op_type == "Upsample" or len(node.inputs) < 4 or constant(node.inputs[3]) is None:
        raise Decline(f"the output size of {desc(node)} is computed at runtime")
    return [_across(node, side, dim)]


def transpose(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    _only_first(node, side, index, dim)
    perm = attr(node, "perm") or list(reversed(range(rank(node.inputs[0]))))
    axis = list(perm).index(dim.axis) if side == "in" else perm[dim.axis]
    return [_across(node, side, dim, axis)]


def _kept_axes(r_in: int, dropped: list[int]) -> list[int]:
    return [a for a in range(r_in) if a not in dropped]


def _across_removed_axes(node: ir.Node, side: str, dim: Dim, kept: list[int], long_side: str, verb: str) -> list[Item]:
    """Channels through an op that drops axes (Squeeze, Reduce without keepdims; Unsqueeze is
    the same read backwards): ``kept`` lists the long side's axes that the short side keeps."""
    if side == long_side:
        if dim.axis not in kept:
            raise Decline(f"{desc(node)} {verb} the channel axis")
        return [_across(node, side, dim, kept.index(dim.axis))]
    return [_across(node, side, dim, kept[dim.axis])]


def squeeze(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    _only_first(node, side, index, dim)
    shape = dims(node.inputs[0])
    r = rank(node.inputs[0])
    axes = ints(node, "axes", 1)
    if axes is None:
        if shape is None or None in shape:
            raise Decline(f"{desc(node)} squeezes dims that are not static")
        axes = [a for a, d in enumerate(shape) if d == 1]
    return _across_removed_axes(node, side, dim, _kept_axes(r, [a % r for a in axes]), "in", "squeezes")


def unsqueeze(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    _only_first(node, side, index, dim)
    r_out = rank(node.outputs[0])
    axes = [a % r_out for a in (ints(node, "axes", 1) or [])]
    return _across_removed_axes(node, side, dim, _kept_axes(r_out, axes), "out", "inserts")


def reduce(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    """ReduceMean/Max/...: fine when the channel axis is kept."""
    _only_first(node, side, index, dim)
    r = rank(node.inputs[0])
    axes = ints(node, "axes", 1)
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return [_across(node, side, dim)]
        raise Decline(f"{desc(node)} reduces all axes, the channels included")
    axes = sorted(a % r for a in axes)
    if attr(node, "keepdims", 1):
        if side == "in" and dim.axis in axes:
            raise Decline(f"{desc(node)} reduces the channel axis")
        return [_across(node, side, dim)]
    return _across_removed_axes(node, side, dim, _kept_axes(r, axes), "in", "reduces")


def shape(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    """Shape: harmless when no consumer reads the channel count (e.g. only the batch size)."""
    r = rank(node.inputs[0])
    start, end = (min(max(v + r if v < 0 else v, 0), r) for v in (attr(node, "start", 0), attr(node, "end", r)))
    if not start <= dim.axis < end:
        return []
    position = dim.axis - start
    for user, _ in node.outputs[0].uses():
        picked = constant(user.inputs[1]) if user.op_type == "Gather" and len(user.inputs) > 1 else None
        if picked is None or position in {int(i) % (end - start) for i in picked.reshape(-1)}:
            raise Decline(f"{desc(node)} reads the channel count of '{dim.value.name}' at runtime")
    if node.outputs[0].is_graph_output():
        raise Decline(f"{desc(node)} outputs the channel count of '{dim.value.name}'")
    return []
