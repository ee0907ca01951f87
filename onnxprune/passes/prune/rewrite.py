"""Applying a prune plan to a model: every slot sliced once, consistently.

Cuts are gathered per tensor first, so that a tensor touched by several groups (a Conv
weight: output channels by one group, input channels by another; a BatchNorm after a
Concat: one range per group) is sliced once with all of its cuts, copying its data once.
Constants shared by nodes that are cut differently are copied per node. Then the inputs and
attributes that state channel counts are updated (depthwise Conv ``group``, Reshape target
shapes, Split sizes, Slice bounds, Resize sizes), the removed channels' constant
contribution is folded into the consumers' biases (``fold.py``) and the shapes of the
carried values are updated. Graph inputs and outputs never change shape.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxprune.errors import UsageError
from onnxprune.graphutils import add_initializer, attr, set_initializer
from onnxprune.passes.prune import fold, layout
from onnxprune.passes.prune.group import Group, PrunePlan, Role, Slot
from onnxprune.passes.prune.layers import is_depthwise
from onnxprune.passes.prune.rules import constant, dims, ints, rank, size

SetInput = Callable[[ir.Node, int, np.ndarray], Callable[[], None]]


def _known(value: ir.Value | None) -> np.ndarray:
    """The array of a constant the analysis sliced or reads (it checked it is constant)."""
    array = constant(value)
    assert array is not None, f"'{value.name if value else None}' is not a constant"
    return array


def apply_plan(
    model: ir.Model,
    groups: Sequence[Group],
    plan: PrunePlan,
    *,
    channel_constants: Mapping[int, np.ndarray] | None = None,
) -> list[str]:
    """Remove the channels ``plan`` drops from ``model`` (in place); one change line per group.

    ``groups`` must come from ``analyze(model)`` on this very model. The plan is checked
    (UsageError) before anything changes. ``channel_constants``
    (group id -> per-channel mean of the activation the group's consumers read, from
    calibration data) lets removed channels that are not exactly constant be folded
    approximately into the consumers' biases; without it only exact folds are made.
    """
    graph = model.graph
    removed = checked_removals(groups, plan)
    if not removed:
        return []
    pruned = [g for g in groups if g.id in removed]
    for group in pruned:
        _check_current(graph, group)
    means = _means(groups, channel_constants)
    order = {id(node): i for i, node in enumerate(graph)}
    folds = {g.id: fold.plan_fold(g, removed[g.id], order, means.get(g.id)) for g in pruned}
    cuts = _Cuts()
    for group in pruned:
        for slot in group.slots:
            cuts.add(slot, removed[group.id], group.size)
    outputs = [(value, value.shape) for value in graph.outputs]
    edits = _edits(model, cuts)  # computed on the original shapes and constants
    cuts.slice_constants(graph)
    for edit in edits:
        edit()
    cuts.update_shapes()
    fold.install(graph, [d for f in folds.values() for d in f.deltas], cuts.removed_outputs)
    for value, shape in outputs:
        if value.shape != shape:
            raise AssertionError(f"pruning changed the shape of graph output '{value.name}'")
    lines = []
    for group in pruned:
        kept = group.size - len(removed[group.id])
        tensors = sum(s.role is not Role.ACTIVATION for s in group.slots)
        note = folds[group.id].note()
        lines.append(
            f"{group.name}: {group.size} -> {kept} channels ({tensors} tensors sliced)"
            + (f"; {note}" if note else "")
        )
    return lines


def checked_removals(groups: Sequence[Group], plan: PrunePlan) -> dict[int, np.ndarray]:
    """The channels each group loses, after checking the plan against the groups."""
    by_id = {g.id: g for g in groups}
    removed = {}
    for gid, kept in plan.keep.items():
        group = by_id.get(gid)
        if group is None:
            raise UsageError(f"the prune plan names group {gid}, which the analysis did not find")
        kept = np.asarray(kept)
        if kept.ndim != 1 or (kept.size and not np.issubdtype(kept.dtype, np.integer)):
            raise UsageError(f"the kept channels of group '{group.name}' must be a 1-D list of indices")
        if len(kept) == group.size and (kept == np.arange(group.size)).all():
            continue
        if not group.prunable:
            raise UsageError(f"group '{group.name}' cannot be pruned: {group.declined}")
        if len(kept) == 0:
            raise UsageError(f"the prune plan removes every channel of group '{group.name}'")
        if kept[0] < 0 or kept[-1] >= group.size or (np.diff(kept) <= 0).any():
            raise UsageError(
                f"the kept channels of group '{group.name}' must be sorted, unique and in [0, {group.size})"
            )
        counts = group.division_counts(kept)
        if len(set(counts.tolist())) > 1:
            raise UsageError(
                f"group '{group.name}' feeds a grouped Conv: keep as many channels in each of its "
                f"{group.divisions} divisions (plan keeps {counts.tolist()})"
            )
        removed[gid] = np.setdiff1d(np.arange(group.size), kept)
    return removed


def _check_current(graph: ir.Graph, group: Group) -> None:
    """Groups are views of one model as it was analysed: refuse others' and stale ones."""
    for slot in group.slots:
        if slot.node.graph is not graph:
            raise UsageError(f"group '{group.name}' belongs to another model: run analyze() on this one")
        shape = dims(slot.value)
        length = shape[slot.axis] if shape is not None and slot.axis < len(shape) else None
        hi = group.size if slot.hi is None else slot.hi
        if length is not None and length * slot.groups < slot.offset + (hi - slot.lo) * slot.block:
            raise UsageError(
                f"group '{group.name}' no longer matches '{slot.value.name}' (pruned already?): run analyze() again"
            )


def _means(groups: Sequence[Group], constants: Mapping[int, np.ndarray] | None) -> dict[int, np.ndarray]:
    sizes = {g.id: g.size for g in groups}
    means = {}
    for gid, values in (constants or {}).items():
        values = np.asarray(values, dtype=np.float64)
        if gid not in sizes or values.shape != (sizes[gid],):
            raise UsageError(f"channel_constants[{gid}] must hold one value per channel of group {gid}")
        means[gid] = values
    return means


class _TensorCut:
    """The indices one node's constant input loses, per axis."""

    def __init__(self, node: ir.Node, value: ir.Value) -> None:
        self.node, self.value = node, value
        self.axes: dict[int, list[np.ndarray]] = {}
        self.groups: dict[int, int] = {}

    def add(self, slot: Slot, channels: np.ndarray, size: int) -> None:
        self.axes.setdefault(slot.axis, []).append(slot.positions(channels, size))
        if slot.groups > 1:
            self.groups[slot.axis] = slot.groups

    def removed(self) -> dict[int, np.ndarray]:
        return {axis: np.unique(np.concatenate(parts)) for axis, parts in self.axes.items()}

    def signature(self) -> tuple[tuple[int, tuple[int, ...], int], ...]:
        return tuple(sorted((a, tuple(i.tolist()), self.groups.get(a, 1)) for a, i in self.removed().items()))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The sliced copy: grouped axes first (row blocks in original order), then the rest
        in one fancy-indexing copy."""
        removed = self.removed()
        for axis, groups in self.groups.items():
            blocks = np.split(array, groups, axis=0)
            width = array.shape[axis]
            cut = removed.pop(axis)
            blocks = [np.delete(b, cut[(cut >= j * width) & (cut < (j + 1) * width)] - j * width, axis)
                      for j, b in enumerate(blocks)]
            array = np.concatenate(blocks, axis=0)
        kept = [np.setdiff1d(np.arange(n), removed[a]) if a in removed else np.arange(n)
                for a, n in enumerate(array.shape)]
        if len(removed) == 1:
            (axis, _), = removed.items()
            return np.take(array, kept[axis], axis=axis)
        return array[np.ix_(*kept)] if removed else array


class _Cuts:
    def __init__(self) -> None:
        self.tensors: dict[tuple[int, int], _TensorCut] = {}
        self.acts: dict[int, tuple[ir.Value, dict[int, list[np.ndarray]]]] = {}

    def add(self, slot: Slot, channels: np.ndarray, size: int) -> None:
        if slot.role is Role.ACTIVATION:
            _, axes = self.acts.setdefault(id(slot.value), (slot.value, {}))
            axes.setdefault(slot.axis, []).append(slot.positions(channels, size))
        else:
            key = (id(slot.node), id(slot.value))
            self.tensors.setdefault(key, _TensorCut(slot.node, slot.value)).add(slot, channels, size)

    def axes(self, value: ir.Value) -> dict[int, list[np.ndarray]]:
        """The axes of an activation that lose indices (empty: untouched)."""
        return self.acts.get(id(value), (None, {}))[1]

    def removed(self, value: ir.Value, axis: int) -> np.ndarray:
        parts = self.axes(value).get(axis)
        return np.unique(np.concatenate(parts)) if parts else np.array([], dtype=np.int64)

    def removed_outputs(self, layer: ir.Node) -> np.ndarray:
        out = layer.outputs[0]
        return self.removed(out, rank(out) - 1 if layer.op_type == "MatMul" else 1)

    def slice_constants(self, graph: ir.Graph) -> None:
        by_value: dict[int, list[_TensorCut]] = {}
        for cut in self.tensors.values():
            by_value.setdefault(id(cut.value), []).append(cut)
        for cuts in by_value.values():
            value = cuts[0].value
            array = _known(value)
            users = {id(user) for user, _ in value.uses()}
            shared = users != {id(c.node) for c in cuts} or len({c.signature() for c in cuts}) > 1
            if value.is_initializer() and not shared:
                set_initializer(value, cuts[0].apply(array))
            else:
                for cut in cuts:  # copies per node (shared constants, Constant nodes)
                    _replace_input(graph, cut.node, value, cut.apply(array))
            for cut in cuts:
                _transposed_shapes(cut.node)

    def update_shapes(self) -> None:
        for value, axes in self.acts.values():
            if value.shape is None:
                continue
            shape: list[int | ir.SymbolicDim | None] = list(value.shape)
            for axis, parts in axes.items():
                count = len(np.unique(np.concatenate(parts)))
                length = shape[axis]
                shape[axis] = length - count if isinstance(length, int) else None
            value.shape = ir.Shape(shape)


def _transposed_shapes(node: ir.Node) -> None:
    """Weights read through Transpose nodes (``MatMul(x, Transpose(W))``): new shapes."""
    while node.op_type == "Transpose" and node.inputs[0] is not None and node.inputs[0].shape is not None:
        shape = node.inputs[0].shape
        perm = attr(node, "perm") or list(reversed(range(len(shape))))
        node.outputs[0].shape = ir.Shape([shape[p] for p in perm])
        node = next(iter(node.outputs[0].uses())).node


def _replace_input(graph: ir.Graph, node: ir.Node, old: ir.Value, array: np.ndarray) -> None:
    """Give ``node`` a new initializer in place of ``old``, then drop what that orphaned."""
    new = add_initializer(graph, old.name or f"{node.name}_const", array)
    for i, v in enumerate(node.inputs):
        if v is old:
            node.replace_input_with(i, new)
    _drop_orphan(graph, old)


def _drop_orphan(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove an unused initializer, or an unused Constant/Identity chain that held a constant."""
    while value is not None and not value.uses() and not value.is_graph_output():
        producer = value.producer()
        if value.is_initializer() and not value.is_graph_input():
            assert value.name is not None  # initializers are stored by name
            graph.initializers.pop(value.name)
            return
        if producer is None or producer.op_type not in ("Constant", "Identity") or len(producer.outputs) != 1:
            return
        graph.remove(producer, safe=True)
        value = producer.inputs[0] if producer.inputs else None


def _edits(model: ir.Model, cuts: _Cuts) -> list[Callable[[], None]]:
    """Updates of the inputs/attributes that state channel counts (computed before slicing)."""
    graph, opset = model.graph, model.opset_imports.get("", 17)
    edits: list[Callable[[], None]] = []
    pieces: dict[tuple[int, int], tuple[ir.Node, int, np.ndarray]] = {}

    def set_input(node: ir.Node, index: int, array: np.ndarray) -> Callable[[], None]:
        def edit() -> None:
            old = node.inputs[index]
            if old is None:
                node.replace_input_with(index, add_initializer(graph, f"{node.name}_{index}", array))
            else:
                _replace_input(graph, node, old, array)

        return edit

    for node in graph:
        op = node.op_type
        source = node.inputs[0] if node.inputs else None
        cut_axes = cuts.axes(source) if source is not None else {}
        if op == "Conv" and source is not None and is_depthwise(node) and 1 in cut_axes:
            count = attr(node, "group") - len(cuts.removed(source, 1))  # depthwise: one per channel
            edits.append(_set_attribute(node, ir.AttrInt64("group", count)))
        elif op == "Reshape":
            out = node.outputs[0]
            for axis in cuts.axes(out):
                entry = layout.target_entry(node, axis)
                if entry is not None:
                    holder, index, position = entry
                    piece = layout.piece_values(holder, index)
                    assert piece is not None  # target_entry found the entry in a constant
                    start = (holder, index, piece.copy())
                    values = pieces.setdefault((id(holder), index), start)[2]
                    values[position] = _target_size(node, axis) - len(cuts.removed(out, axis))
        elif op == "Split" and source is not None and cut_axes:
            axis = attr(node, "axis", 0) % rank(source)
            lost = cuts.removed(source, axis)
            if len(lost):
                sizes = layout.split_sizes(node, size(source, axis))
                bounds = [0, *itertools.accumulate(sizes)]
                new = np.array([s - ((lost >= a) & (lost < b)).sum() for s, a, b in zip(sizes, bounds, bounds[1:])])
                edits.append(_split_edit(node, new, opset, set_input))
        elif op == "Slice" and source is not None:
            for axis in cut_axes:
                span = layout.slice_bounds(node, axis)
                if span is not None:
                    edits.extend(_slice_edits(node, axis, span, cuts.removed(source, axis), set_input))
        elif op == "Resize" and source is not None and cut_axes and len(node.inputs) > 3 and node.inputs[3] is not None:
            sizes = _known(node.inputs[3]).copy()
            for axis in cut_axes:
                sizes[axis] -= len(cuts.removed(source, axis))
            edits.append(set_input(node, 3, sizes))
    for holder, index, values in pieces.values():
        edits.append(set_input(holder, index, values.astype(np.int64)))
    return edits


def _target_size(reshape: ir.Node, axis: int) -> int:
    """The static size of output ``axis`` of a Reshape the analysis mapped channels through."""
    target = layout.reshape_dims(reshape)
    length = target[axis] if target is not None else None
    assert length is not None, f"{reshape.name}: output axis {axis} is not static"
    return length


def _set_attribute(node: ir.Node, attribute: ir.Attr) -> Callable[[], None]:
    def edit() -> None:
        node.attributes[attribute.name] = attribute

    return edit


def _split_edit(node: ir.Node, sizes: np.ndarray, opset: int, set_input: SetInput) -> Callable[[], None]:
    if opset < 13:
        return _set_attribute(node, ir.AttrInt64s("split", sizes.tolist()))

    def edit() -> None:
        node.attributes.pop("num_outputs", None)
        if len(node.inputs) < 2:
            node.resize_inputs(2)
        set_input(node, 1, sizes.astype(np.int64))()

    return edit


def _slice_edits(
    node: ir.Node, axis: int, bounds: tuple[int, int], lost: np.ndarray, set_input: SetInput
) -> list[Callable[[], None]]:
    """Slice bounds shift left by the channels removed before them."""
    r = rank(node.inputs[0])
    axes = ints(node, "axes", 3)
    k = [a % r for a in axes].index(axis) if axes is not None else axis
    edits = []
    for name, index, bound in (("starts", 1, bounds[0]), ("ends", 2, bounds[1])):
        new = bound - int((lost < bound).sum())
        if name in node.attributes:  # opset < 10
            values = list(attr(node, name))
            values[k] = new
            edits.append(_set_attribute(node, ir.AttrInt64s(name, values)))
        else:
            values = _known(node.inputs[index]).copy()
            values[k] = new
            edits.append(set_input(node, index, values))
    return edits
