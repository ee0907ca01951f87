"""Rules for ops that move channels to other positions: Concat, Split, Slice, Reshape, Flatten.

Concat places each input's channels at an offset; Split and Slice take a range back out.
Reshape and Flatten keep the row-major order of elements, so a channel stays a contiguous
run: after ``[N, C, H, W] -> [N, C*H*W]`` channel ``c`` is the block of features
``c*H*W ... (c+1)*H*W - 1``. In general, let the channel axis ``a`` of the source shape
``d`` and an axis ``b`` of the target shape ``e`` have equal tail sizes
``prod(d[a:]) == prod(e[b:])`` (the same elements, in the same order). An index ``i`` along
``a`` covers the flat tail range ``[i*T, (i+1)*T)`` with ``T = prod(d[a+1:])``, which is
the run of indices ``[i*T/T', (i+1)*T/T')`` along ``b``, ``T' = prod(e[b+1:])``: block and
offset scale by ``T/T'``, and the mapping holds exactly when those stay integers. When it
does not (``[N, C, H, W] -> [N, g, C/g, H, W]``, channel shuffle or attention heads) one
channel would be split across indices, and the group is declined.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import attr
from onnxprune.passes.prune.rules import (
    Decline,
    Dim,
    Item,
    RuleContext,
    _only_first,
    constant,
    desc,
    dims,
    ints,
    present,
    rank,
    size,
)


def concat(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    out = node.outputs[0]
    axis = attr(node, "axis") % rank(out)
    if dim.axis != axis:  # concatenated along another axis: every input shares the channels
        return [dim.moved(v, dim.axis) for v in (*node.inputs, out) if v is not None and v is not dim.value]
    sizes: list[int | None] = [(dims(v) or [None] * (axis + 1))[axis] for v in node.inputs]
    if sizes.count(None) == 1:  # one input sized at runtime: the output size tells
        sizes[sizes.index(None)] = size(out, axis) - sum(s for s in sizes if s is not None)
    if None in sizes:
        raise Decline(f"the inputs of {desc(node)} have sizes known only at runtime")
    starts = [0, *itertools.accumulate(s for s in sizes if s is not None)]
    if side == "in":
        return [dim.moved(out, axis, starts[index])]
    parts = (dim.within(present(node, i), axis, starts[i], starts[i + 1]) for i in range(len(node.inputs)))
    return [p for p in parts if p is not None]


def split_sizes(node: ir.Node, length: int) -> list[int]:
    """The sizes of Split's outputs along its axis (explicit, or equal parts)."""
    sizes = ints(node, "split", 1)
    if sizes is None:
        count = len(node.outputs)
        part = -(-length // count)
        sizes = [part] * (count - 1) + [length - part * (count - 1)]
    return sizes


def split(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    source = present(node, 0)
    if side == "in" and index != 0:
        raise Decline(f"channels reach input {index} of {desc(node)}: not supported")
    axis = attr(node, "axis", 0) % rank(source)
    if dim.axis != axis:
        return [dim.moved(v, dim.axis) for v in (source, *node.outputs) if v is not dim.value]
    starts = [0, *itertools.accumulate(split_sizes(node, size(source, axis)))]
    if side == "out":
        return [dim.moved(source, axis, starts[index])]
    parts = (dim.within(v, axis, starts[i], starts[i + 1]) for i, v in enumerate(node.outputs))
    return [p for p in parts if p is not None]


def slice_bounds(node: ir.Node, axis: int) -> tuple[int, int] | None:
    """``(start, stop)`` of a Slice along ``axis`` of its input (None: axis not sliced)."""
    data = node.inputs[0]
    r = rank(data)
    starts = ints(node, "starts", 1)
    axes = ints(node, "axes", 3)
    axes = [a % r for a in axes] if axes is not None else list(range(len(starts or ())))
    if axis not in axes:
        return None
    k = axes.index(axis)
    ends, steps = ints(node, "ends", 2), ints(node, "steps", 4)
    if starts is None or ends is None:
        raise Decline(f"{desc(node)} has no starts/ends")
    if steps is not None and steps[k] != 1:
        raise Decline(f"{desc(node)} slices the channels with step {steps[k]}")
    length = size(data, axis)

    def clamp(v: int) -> int:
        return min(max(v + length if v < 0 else v, 0), length)

    return clamp(starts[k]), clamp(ends[k])


def slice_(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    _only_first(node, side, index, dim)
    data, out = present(node, 0), node.outputs[0]
    bounds = slice_bounds(node, dim.axis)
    if bounds is None:
        return [dim.moved(out if side == "in" else data, dim.axis)]
    if side == "out":
        return [dim.moved(data, dim.axis, bounds[0])]
    part = dim.within(out, dim.axis, *bounds)
    return [part] if part is not None else []


def _remap(node: ir.Node, side: str, dim: Dim, source: list[int | None], target: list[int | None]) -> Dim:
    """Map ``dim`` across a reshape from ``source`` dims to ``target`` dims (module docstring)."""
    frm, to = (source, target) if side == "in" else (target, source)
    other = node.outputs[0] if side == "in" else present(node, 0)
    tail = [d for d in frm[dim.axis:] if d is not None]
    if len(tail) < len(frm[dim.axis:]):
        raise Decline(f"the shape of '{dim.value.name}' at {desc(node)} is not static")
    total, inner = math.prod(tail), math.prod(tail[1:])
    acc, axis = 1, None
    for b in range(len(to) - 1, -1, -1):
        length = to[b]
        if length is None:
            raise Decline(f"the shape of '{other.name}' at {desc(node)} is not static")
        acc *= length
        if acc == total:
            axis = b
            break
        if acc > total:
            break
    mapped = None
    if axis is not None:  # the loop above found every entry after axis static
        mapped = dim.scaled(other, axis, inner, math.prod(d for d in to[axis + 1:] if d is not None))
    if mapped is None:
        shuffle = any(  # Reshape -> Transpose -> Reshape back: a channel shuffle
            u.op_type == "Transpose" and any(w.op_type == "Reshape" for w, _ in u.outputs[0].uses())
            for u, _ in node.outputs[0].uses()
        )
        kind = " (channel shuffle)" if shuffle else ""
        raise Decline(f"{desc(node)} splits or merges the channel axis{kind}: channel order is not kept")
    return mapped


def flatten(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    _only_first(node, side, index, dim)
    data = present(node, 0)
    source = dims(data)
    if source is None:
        raise Decline(f"the rank of '{data.name}' is unknown")
    k = attr(node, "axis", 1)
    k = k + len(source) if k < 0 else k
    if (side == "in" and dim.axis < k) or (side == "out" and dim.axis == 0):
        raise Decline(f"{desc(node)} merges the channels into the outer dimension")
    inner = [d for d in source[k:] if d is not None]
    target = [None, None if len(inner) < len(source[k:]) else math.prod(inner)]
    return [_remap(node, side, dim, source, target)]


def reshape(node: ir.Node, side: str, index: int, dim: Dim, ctx: RuleContext) -> list[Item]:
    _only_first(node, side, index, dim)
    source, target = dims(node.inputs[0]), reshape_dims(node)
    if source is None or target is None:
        raise Decline(f"the shapes around {desc(node)} are unknown (run shape inference)")
    mapped = _remap(node, side, dim, source, target)
    target_entry(node, mapped.axis if side == "in" else dim.axis)  # declines when not updatable
    return [mapped]


def reshape_dims(node: ir.Node) -> list[int | None] | None:
    """A Reshape's output dims, resolving the ``-1`` that shape inference leaves unknown
    when the runtime part of the target copies input dims (``x.view(x.size(0), -1)``):
    ``-1 = prod(input dims not copied) / prod(the other constant entries)``."""
    inferred = dims(node.outputs[0])
    if inferred is not None and None not in inferred[1:]:
        return inferred
    source, entries = dims(node.inputs[0]), _target_entries(node)
    if source is None or entries is None:
        return inferred
    copied = {k for kind, k in entries if kind == "copy"}
    rest = [source[j] for j in range(len(source)) if j not in copied]
    static = [d for d in rest if d is not None]
    known = [v for kind, v in entries if kind == "const" and v != -1]
    if len(static) < len(rest) or math.prod(static) % max(math.prod(known), 1):
        return inferred
    return [
        source[v] if kind == "copy" else (math.prod(static) // math.prod(known) if v == -1 else v)
        for kind, v in entries
    ]


def _target_entries(node: ir.Node) -> list[tuple[str, int]] | None:
    """The target shape as ("const", value) / ("copy", input axis) entries, or None."""
    zero_copies = not attr(node, "allowzero", 0)
    target = present(node, 1)
    array = constant(target)
    pieces: list[ir.Value | None] | None = [target] if array is not None else None
    producer = target.producer()
    if pieces is None and producer is not None and producer.op_type == "Concat":
        pieces = list(producer.inputs)
    if pieces is None:
        return None
    entries: list[tuple[str, int]] = []
    for piece in pieces:
        if piece is None:
            return None
        values = _piece(piece)
        if values is not None:
            entries.extend(("copy", len(entries)) if v == 0 and zero_copies else ("const", int(v)) for v in values)
            continue
        axis = _copied_axis(piece, present(node, 0))
        if axis is None:
            return None
        entries.append(("copy", axis))
    return entries


def _copied_axis(piece: ir.Value, source: ir.Value) -> int | None:
    """``k`` when ``piece`` is ``[Unsqueeze](Gather(Shape(source), k))``."""
    producer = piece.producer()
    if producer is not None and producer.op_type == "Unsqueeze":
        producer = _producer(producer.inputs[0])
    if producer is None or producer.op_type != "Gather":
        return None
    shape_node = _producer(producer.inputs[0])
    index = constant(producer.inputs[1])
    if shape_node is None or shape_node.op_type != "Shape" or shape_node.inputs[0] is not source:
        return None
    if index is None or index.size != 1 or "start" in shape_node.attributes:
        return None
    return int(index.reshape(-1)[0]) % rank(source)


def _producer(value: ir.Value | None) -> ir.Node | None:
    return value.producer() if value is not None else None


def _piece(value: ir.Value | None) -> np.ndarray | None:
    """A 1-D constant, looking through Unsqueeze (torch exports shapes as Unsqueeze(scalar))."""
    array = constant(value)
    producer = _producer(value)
    if array is None and producer is not None and producer.op_type == "Unsqueeze":
        array = constant(producer.inputs[0])
    return None if array is None else array.reshape(-1)


def target_entry(node: ir.Node, axis: int) -> tuple[ir.Node, int, int] | None:
    """Where Reshape ``node`` states the size of output ``axis``: (node, input, position).

    None when the entry is -1 (inferred, nothing to update). The shape may be a constant
    or a Concat of 1-D constants and runtime pieces (``x.view(x.size(0), -1)``).
    """
    shape_value = present(node, 1)
    array = constant(shape_value)
    if array is not None:
        return None if int(array[axis]) == -1 else (node, 1, axis)
    producer = shape_value.producer()
    if producer is not None and producer.op_type == "Concat" and len(shape_value.uses()) == 1:
        position = axis
        for i, piece in enumerate(producer.inputs):
            count = size(piece, 0)
            if position < count:
                values = _piece(piece)
                if values is None:
                    break
                return None if int(values[position]) == -1 else (producer, i, position)
            position -= count
    raise Decline(f"the target shape of {desc(node)} is computed at runtime")


def piece_values(holder: ir.Node, index: int) -> np.ndarray | None:
    """The constant values held at ``holder.inputs[index]`` (see :func:`target_entry`)."""
    return _piece(holder.inputs[index])
