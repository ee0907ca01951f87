"""Folding the contribution of removed channels into the next layer's bias.

A consumer layer computes ``y[o] = sum_i W[o, i] * x[i] (+ b[o])`` over its input channels.
When channel ``c`` is removed but was a constant ``k_c`` (the same value at every position
and for every input), it contributed a constant ``sum_{i in c} W[o, i] * k_c`` to ``y[o]``
(summed over the kernel window for a Conv, over the ``block`` features of a flattened
channel for Gemm/MatMul); adding that to ``b[o]`` keeps ``y`` unchanged:

    b'[o] = b[o] + sum_c k_c * sum_{i in c} sum_{window} W[o, i, ...]        (Conv)
    C'[n] = C[n] + alpha / beta * sum_c k_c * sum_{i in c} B[i, n]           (Gemm)

When is ``k_c`` known? If the channel's producer filter is all zero, the producer outputs
its bias ``b_c`` everywhere, and the ops the group carries map it to a known constant at
the consumers (``constants.ChannelConstants``: BatchNorm, activations, residual Adds,
pooling...): removing zero filters is then lossless.

Padding breaks constancy: a Conv with zero padding sees 0 instead of ``k`` at the borders,
so there the fold is exact only for ``k == 0`` (and a ConvTranspose only for ``k == 0``:
its output is a position-dependent pattern of ``W``). Otherwise the removed channels are
folded only from data (``channel_constants``: per-channel means of the activation the
consumers read, from calibration), exact in the interior and approximate at borders, and
the change line says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import add_initializer, attr, unique_name
from onnxprune.passes._rewrite import set_const_input
from onnxprune.passes.prune.constants import ChannelConstants, no_padding
from onnxprune.passes.prune.group import Group, Role, Slot
from onnxprune.passes.prune.layers import resolve_weight
from onnxprune.passes.prune.rules import constant


def _exact_for_constants(layer: ir.Node) -> bool:
    """Whether a spatially constant input channel adds a constant to the layer's output."""
    if layer.op_type == "Conv":
        return no_padding(layer)
    return layer.op_type in ("Gemm", "MatMul")


def consumer_layer(slot: Slot) -> ir.Node:
    """The layer a consumer slot's weight feeds (through the Transposes the exporter adds)."""
    node = slot.node
    while node.op_type == "Transpose":
        node = next(iter(node.outputs[0].uses())).node
    return node


def _layer_weight(layer: ir.Node) -> tuple[np.ndarray, tuple[int, ...]]:
    """The constant weight of a layer the analysis made a consumer, and its Transpose perm."""
    weight = resolve_weight(layer, 1)
    array = constant(weight.value) if weight is not None else None
    assert weight is not None and array is not None, f"{layer.op_type} '{layer.name}': no constant weight"
    return array, weight.perm


def _contribution(layer: ir.Node, slot: Slot, channels: np.ndarray, k: np.ndarray, size: int) -> np.ndarray:
    """``delta[o] = sum_c k_c * sum_{i in c} sum_window W[o, i]`` over the layer's outputs."""
    w = np.transpose(*_layer_weight(layer))  # as the layer reads it
    op = layer.op_type
    delta: np.ndarray
    if op in ("Gemm", "MatMul"):
        if op == "Gemm" and attr(layer, "transB", 0):
            w = w.T
        rows = w[slot.indices(channels, size).reshape(len(channels), -1)].sum(axis=1, dtype=np.float64)
        delta = (k @ rows) * (attr(layer, "alpha", 1.0) if op == "Gemm" else 1.0)
        return delta
    index = slot.indices(channels, size)
    if op == "ConvTranspose":  # W[in, out, ...]: the mean over positions of a strided scatter
        scattered = np.take(w, index, axis=0).reshape(len(channels), -1, w.shape[1], math.prod(w.shape[2:]))
        delta = (k @ scattered.sum(axis=(1, 3), dtype=np.float64)) / math.prod(attr(layer, "strides", None) or [1])
        return delta
    if slot.groups == 1:  # W[out, in, ...]: the removed columns summed over their window
        cols = np.take(w, index, axis=1).reshape(w.shape[0], len(channels), -1)
        delta = cols.sum(axis=2, dtype=np.float64) @ k
        return delta
    sums = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2, dtype=np.float64)
    delta = np.zeros(sums.shape[0])
    rows_per, width = sums.shape[0] // slot.groups, sums.shape[1]
    for c, value in zip(slot.positions(channels, size), k):  # division c // width feeds one row block
        rows = slice(c // width * rows_per, (c // width + 1) * rows_per)
        delta[rows] += sums[rows, c % width] * value
    return delta


@dataclasses.dataclass
class GroupFold:
    """What folding one group's removed channels does: bias deltas per consumer layer."""

    deltas: list[tuple[ir.Node, np.ndarray]]  # (layer, delta over its original output channels)
    exact: int = 0  # removed channels folded exactly (a known constant, no padding at play)
    approximate: int = 0  # folded from the calibration means (or a constant through padding)
    padded: int = 0  # constant, but a padded consumer makes the fold inexact: not folded
    unfolded: int = 0  # not constant and no means given: simply removed

    def note(self) -> str:
        parts = []
        if self.exact:
            parts.append(f"{self.exact} constant channels folded exactly into the next biases")
        if self.approximate:
            parts.append(f"{self.approximate} folded approximately (calibration means)")
        if self.padded:
            parts.append(f"{self.padded} constant channels not folded (padded consumer)")
        return "; ".join(parts)


def plan_fold(
    group: Group, channels: np.ndarray, order: dict[int, int], means: np.ndarray | None = None
) -> GroupFold:
    """How the removed ``channels`` of ``group`` fold into its consumers (reads weights only).

    ``order`` maps id(node) to its position in the graph (topological), ``means`` gives each
    group channel's calibration mean at the consumers' inputs (optional).
    """
    prop = ChannelConstants(group, channels, order)
    # per channel, the worst over its consumers: 0 exact, 1 approximate, 2 constant but the
    # consumer pads (not folded without means), 3 not constant (not folded)
    status = np.zeros(len(channels), dtype=np.int8)
    deltas = []
    for slot in group.by_role(Role.CONSUMER):
        layer = consumer_layer(slot)
        hi = group.size if slot.hi is None else slot.hi
        covered = (channels >= slot.lo) & (channels < hi)
        k = prop.of(layer.inputs[0])
        known = ~np.isnan(k)
        exact = known & (_exact_for_constants(layer) | (k == 0))
        if means is not None:  # the analytic constant when known, else the data mean
            value = np.where(known, k, means[channels])
            state = np.where(exact, 0, 1)
        else:
            value = np.where(exact, k, np.nan)
            state = np.where(exact, 0, np.where(known, 2, 3))
        status = np.maximum(status, np.where(covered, state, 0))
        use = covered & ~np.isnan(value) & (value != 0)
        if use.any():
            deltas.append((layer, _contribution(layer, slot, channels[use], value[use], group.size)))
    counts = np.bincount(status, minlength=4)
    return GroupFold(deltas, *(int(c) for c in counts))


def install(
    graph: ir.Graph, deltas: list[tuple[ir.Node, np.ndarray]], removed_outputs: Callable[[ir.Node], np.ndarray]
) -> None:
    """Add the deltas to the layers' biases, after slicing (``removed_outputs(layer)`` gives
    the output channels the layer lost, so deltas are cut the same way)."""
    totals: dict[int, tuple[ir.Node, np.ndarray]] = {}
    for layer, delta in deltas:
        previous = totals.get(id(layer), (layer, 0.0))[1]
        totals[id(layer)] = (layer, previous + delta)
    for layer, delta in totals.values():
        delta = np.delete(delta, removed_outputs(layer))
        if layer.op_type in ("Conv", "ConvTranspose"):
            _add_to_input(layer, 2, delta)
        elif layer.op_type == "Gemm":
            beta = attr(layer, "beta", 1.0)
            if beta == 0.0:  # C is ignored: the delta replaces it
                layer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
                if len(layer.inputs) > 2:
                    layer.replace_input_with(2, None)
                beta = 1.0
            _add_to_input(layer, 2, delta / beta)
        else:
            _matmul_bias(graph, layer, delta)


def _dtype(layer: ir.Node) -> np.dtype:
    return _layer_weight(layer)[0].dtype


def _add_to_input(node: ir.Node, index: int, delta: np.ndarray) -> None:
    """``node.inputs[index] += delta`` (created when absent; a copy when shared, see set_const_input)."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        set_const_input(node, index, delta.astype(_dtype(node)), f"{node.name or node.op_type}_bias")
        return
    array = constant(value)
    assert array is not None, f"'{value.name}' is not a constant"  # checked by the analysis
    dtype = array.dtype if node.op_type == "Add" else _dtype(node)
    set_const_input(node, index, (array + delta).astype(dtype), f"{value.name}_folded")


def _matmul_bias(graph: ir.Graph, layer: ir.Node, delta: np.ndarray) -> None:
    """Fold into the ``Add(MatMul, bias)`` that follows (torch's Linear), or insert one."""
    out = layer.outputs[0]
    uses = list(out.uses())
    if len(uses) == 1 and not out.is_graph_output() and uses[0].node.op_type == "Add":
        add, index = uses[0].node, 1 - uses[0].idx
        array = constant(add.inputs[index])
        if array is not None and array.ndim >= 1 and array.size == len(delta) == array.shape[-1]:
            _add_to_input(add, index, delta.reshape(array.shape))
            return
    bias = add_initializer(graph, f"{layer.name or 'MatMul'}_bias", delta.astype(_dtype(layer)))
    folded = ir.Value(name=unique_name(graph, f"{out.name}_biased"), shape=out.shape, type=out.type)
    out.replace_all_uses_with(folded, replace_graph_outputs=True)
    if folded.is_graph_output():  # keep the model's output name
        name = out.name
        out.name, folded.name = folded.name, name
    add = ir.Node("", "Add", [out, bias], outputs=[folded], name=unique_name(graph, f"{layer.name}_bias_add"))
    graph.insert_after(layer, add)
