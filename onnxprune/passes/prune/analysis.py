"""Dependency analysis: which channel dimensions of a graph must be pruned together.

Every producer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) roots a group at
its output channels. From there the analysis walks the graph in both directions, through
the rules of ``rules.py`` / ``layout.py`` / ``layers.py``: forward to every op that
carries the channels (BatchNorm, activations, pooling, per-channel constants...) until the
consumers that read them (the next layer's weight), and backward from every value it
reaches, so that a residual Add pulls in the producers of its other branch, and a Concat
the producers of its other inputs. The walk closes over all ties; a group is complete
when every tensor whose shape depends on its channels has a slot.

Whatever a rule cannot map (an unknown op, channels reaching a graph output, a reshape
that scrambles channels, a shape computed at runtime) declines the group with the reason;
the walk still finishes so that every coupled producer is marked as covered and no other
group is started from it. Nothing is guessed and nothing is skipped silently.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from onnxprune.passes.cleanup import ShapeInference
from onnxprune.passes.prune import layers, layout, rules
from onnxprune.passes.prune.group import Group, Role, Slot
from onnxprune.passes.prune.rules import Decline, Dim, Divisions

_UNARY = (
    "Relu LeakyRelu PRelu Sigmoid HardSigmoid HardSwish Swish Tanh Elu Selu Celu Softplus Softsign "
    "Gelu Erf Exp Log Sqrt Abs Neg Reciprocal Floor Ceil Round Sign Sin Cos Mish ThresholdedRelu "
    "Clip Cast Identity Dropout"
).split()
_POOLING = "MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split()
_BINARY = "Add Sub Mul Div Pow Max Min Sum Mean PRelu".split()
_REDUCE = (
    "ReduceMean ReduceMax ReduceMin ReduceSum ReduceProd ReduceL1 ReduceL2 ReduceSumSquare ReduceLogSumExp"
).split()

RULES = {
    **{op: rules.unary for op in _UNARY},
    **{op: rules.pooling for op in _POOLING},
    **{op: rules.broadcast for op in _BINARY},
    **{op: rules.reduce for op in _REDUCE},
    "BatchNormalization": rules.per_channel((1, 2, 3, 4)),
    "InstanceNormalization": rules.per_channel((1, 2)),
    "Softmax": rules.softmax,
    "LogSoftmax": rules.softmax,
    "LayerNormalization": rules.layer_norm,
    "Pad": rules.pad,
    "Resize": rules.resize,
    "Upsample": rules.resize,
    "Transpose": rules.transpose,
    "Squeeze": rules.squeeze,
    "Unsqueeze": rules.unsqueeze,
    "Shape": rules.shape,
    "Concat": layout.concat,
    "Split": layout.split,
    "Slice": layout.slice_,
    "Flatten": layout.flatten,
    "Reshape": layout.reshape,
    "Conv": layers.conv,
    "ConvTranspose": layers.conv_transpose,
    "Gemm": layers.gemm,
    "MatMul": layers.matmul,
}
# PRelu's slope is a broadcast input: the binary rule makes it a per-channel PARAM.


class _Context:
    def __init__(self, model: ir.Model) -> None:
        self.graph = model.graph
        self.opset = model.opset_imports.get("", 17)


def analyze(model: ir.Model) -> list[Group]:
    """Every group of coupled channel dimensions of ``model``'s main graph.

    Shapes are inferred first when missing (the rules need channel counts). Groups are
    numbered in graph order; each is prunable or carries the reason it is not.
    """
    if any(v.shape is None for node in model.graph for v in node.outputs):
        ShapeInference()(model)
    ctx = _Context(model)
    covered: dict[tuple[int, int], list[tuple[int, int, Group]]] = {}
    groups: list[Group] = []
    for node in model.graph:
        found = layers.root(node)
        if found is None:
            continue
        value, axis, length = found
        spans = [(a, b) for a, b, _ in covered.get((id(value), axis), [])]
        for start, stop in _gaps(spans, length):
            group = Group(id=len(groups), size=stop - start, origin=node)
            _Walk(group, ctx).run(Dim(value, axis, start, 1, 0, stop - start))
            _claim(covered, group)
            groups.append(group)
    return groups


def _gaps(intervals: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The parts of ``[0, length)`` no interval covers."""
    gaps, at = [], 0
    for start, stop in sorted(intervals):
        if start > at:
            gaps.append((at, start))
        at = max(at, stop)
    if at < length:
        gaps.append((at, length))
    return gaps


def _claim(covered: dict[tuple[int, int], list[tuple[int, int, Group]]], group: Group) -> None:
    """Record the indices the group covers. Two groups sharing indices would be cut twice:
    the walk's closure rules that out, and this check makes sure (both are declined)."""
    for slot in group.by_role(Role.ACTIVATION):
        spans = covered.setdefault((id(slot.value), slot.axis), [])
        hi = group.size if slot.hi is None else slot.hi
        start, stop = slot.offset, slot.offset + (hi - slot.lo) * slot.block
        for other_start, other_stop, owner in spans:
            if owner is not group and start < other_stop and other_start < stop:
                reason = f"channels of '{slot.value.name}' were claimed by two groups (internal)"
                for g in (group, owner):
                    g.declined = g.declined or reason
        spans.append((start, stop, group))


class _Walk:
    """Closes one group over the rules, starting from its root dimension."""

    def __init__(self, group: Group, ctx: _Context) -> None:
        self.group, self.ctx = group, ctx
        self.seen: dict[tuple[int, int], list[Dim]] = {}
        self.slot_keys: set[tuple[object, ...]] = set()
        self.reasons: list[str] = []
        self.queue: list[Dim] = []

    def run(self, root: Dim) -> None:
        self.visit(root)
        while self.queue:
            dim = self.queue.pop()
            value = dim.value
            if value.is_graph_output():
                self.decline(f"channels reach graph output '{value.name}'")
            producer = value.producer()
            index = value.index()
            if producer is not None and index is not None:  # index: always set on a node output
                self.apply(producer, "out", index, dim)
            elif value.is_graph_input():
                self.decline(f"channels come from graph input '{value.name}'")
            else:
                self.decline(f"channels come from constant '{value.name}'")
            for node, index in value.uses():
                self.apply(node, "in", index, dim)
        if self.reasons:
            more = f" (+{len(self.reasons) - 2} more)" if len(self.reasons) > 2 else ""
            self.group.declined = "; ".join(self.reasons[:2]) + more

    def decline(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    def visit(self, dim: Dim) -> None:
        """Walk ``dim`` unless already known; the same indices mapped to other channels
        (a tensor tied to itself shifted, e.g. ``Add(x, Concat(...x...))``) decline."""
        known = self.seen.setdefault((id(dim.value), dim.axis), [])
        start, stop = dim.span
        for k in known:
            if start < k.span[1] and k.span[0] < stop:
                same = k.block == dim.block and k.offset - k.lo * k.block == dim.offset - dim.lo * dim.block
                if not same:
                    self.decline(f"channels of '{dim.value.name}' are tied to themselves at other positions")
                    return
                if k.span[0] <= start and stop <= k.span[1]:
                    return  # a part of what is known (e.g. back from one Split output)
        known.append(dim)
        node = dim.value.producer() or next((n for n, _ in dim.value.uses()), None)
        assert node is not None, f"'{dim.value.name}' reached without a node"  # rules move along nodes
        self.add(dim.slot(Role.ACTIVATION, node, dim.value, dim.axis))
        self.queue.append(dim)

    def add(self, slot: Slot) -> None:
        key = (slot.role, id(slot.node), id(slot.value), slot.axis, slot.offset, slot.block, slot.lo, slot.hi)
        if key not in self.slot_keys:
            self.slot_keys.add(key)
            self.group.slots.append(slot)

    def apply(self, node: ir.Node, side: str, index: int, dim: Dim) -> None:
        if node.graph is not self.ctx.graph:
            self.decline(f"channels are used inside a subgraph ({rules.desc(node)})")
            return
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            verb = "consumed" if side == "in" else "produced"
            self.decline(f"{verb} by {rules.desc(node)}: not supported")
            return
        try:
            items = rule(node, side, index, dim, self.ctx)
        except Decline as exc:
            self.decline(str(exc))
            return
        except Exception as exc:  # an odd node must not stop the analysis: decline, say so
            self.decline(f"could not analyse {rules.desc(node)} ({type(exc).__name__}: {exc})")
            return
        for item in items:
            if isinstance(item, Dim):
                self.visit(item)
            elif isinstance(item, Divisions):
                self.divide(item)
            else:
                self.add(item)

    def divide(self, item: Divisions) -> None:
        group = self.group
        count = math.lcm(group.divisions, item.count)
        if group.size != item.length or group.size % count:
            self.decline(
                f"grouped {rules.desc(item.node)} (groups={item.count}) needs equal counts per conv "
                f"group, which the group's {group.size} channels cannot provide"
            )
            return
        group.divisions = count
