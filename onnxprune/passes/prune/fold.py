"""Folding the contribution of removed channels into the next layer's bias.

A consumer layer computes ``y[o] = sum_i W[o, i] * x[i] (+ b[o])`` over its input channels.
When channel ``c`` is removed but was a constant ``k_c`` (the same value at every position
and for every input), it contributed a constant ``sum_{i in c} W[o, i] * k_c`` to ``y[o]``
(summed over the kernel window for a Conv, over the ``block`` features of a flattened
channel for Gemm/MatMul); adding that to ``b[o]`` keeps ``y`` unchanged:

    b'[o] = b[o] + sum_c k_c * sum_{i in c} sum_{window} W[o, i, ...]        (Conv)
    C'[n] = C[n] + alpha / beta * sum_c k_c * sum_{i in c} B[i, n]           (Gemm)

When is ``k_c`` known? If the channel's producer filter is all zero, the producer outputs
its bias ``b_c`` everywhere, and every op the group carries maps a constant to a constant:
BatchNorm ``(k - mean) / sqrt(var + eps) * gamma + beta``, activations ``f(k)``, per-channel
constants ``k + a_c`` / ``k * a_c``, a residual Add ``k_1 + k_2``, pooling/resize/reshape of a
constant (same value), a depthwise Conv ``k * sum(W_c) + b_c``. :func:`channel_values`
propagates these analytically, so removing zero filters is lossless.

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

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import add_initializer, attr, set_initializer, unique_name
from onnxprune.passes.prune.group import Group, Role, Slot
from onnxprune.passes.prune.layers import resolve_weight
from onnxprune.passes.prune.rules import constant

_PRODUCER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_PASS_THROUGH = set(
    "Identity Dropout Cast Transpose Squeeze Unsqueeze Reshape Flatten Split Slice Resize Upsample "
    "MaxPool GlobalAveragePool GlobalMaxPool ReduceMean ReduceMax ReduceMin".split()
)


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.logaddexp(0.0, x)


_UNARY = {
    "Relu": lambda x, n: np.maximum(x, 0.0),
    "LeakyRelu": lambda x, n: np.where(x >= 0, x, attr(n, "alpha", 0.01) * x),
    "Sigmoid": lambda x, n: _sigmoid(x),
    "HardSigmoid": lambda x, n: np.clip(attr(n, "alpha", 0.2) * x + attr(n, "beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda x, n: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "Swish": lambda x, n: x * _sigmoid(attr(n, "alpha", 1.0) * x),
    "Tanh": lambda x, n: np.tanh(x),
    "Elu": lambda x, n: np.where(x > 0, x, attr(n, "alpha", 1.0) * np.expm1(x)),
    "Selu": lambda x, n: attr(n, "gamma", 1.0507009873554805)
    * np.where(x > 0, x, attr(n, "alpha", 1.6732632423543772) * np.expm1(x)),
    "Celu": lambda x, n: np.maximum(x, 0) + np.minimum(0, attr(n, "alpha", 1.0) * np.expm1(x / attr(n, "alpha", 1.0))),
    "Softplus": lambda x, n: _softplus(x),
    "Softsign": lambda x, n: x / (1.0 + np.abs(x)),
    "Mish": lambda x, n: x * np.tanh(_softplus(x)),
    "Gelu": lambda x, n: 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))
    if attr(n, "approximate", "none") == "tanh" else 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "Erf": lambda x, n: _erf(x),
    "Exp": lambda x, n: np.exp(x),
    "Abs": lambda x, n: np.abs(x),
    "Neg": lambda x, n: -x,
    "ThresholdedRelu": lambda x, n: np.where(x > attr(n, "alpha", 1.0), x, 0.0),
}
_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
    "Max": np.maximum, "Min": np.minimum, "PRelu": lambda x, s: np.where(x >= 0, x, s * x),
}


def _per_channel(slot: Slot, array: np.ndarray, channels: np.ndarray, size: int) -> np.ndarray:
    """The value of ``array`` for each channel along ``slot.axis`` (NaN: not covered, or the
    channel's entries differ, e.g. a spatially varying constant)."""
    out = np.full(len(channels), np.nan)
    hi = size if slot.hi is None else slot.hi
    covered = (channels >= slot.lo) & (channels < hi)
    if not covered.any():
        return out
    moved = np.moveaxis(np.asarray(array, dtype=np.float64), slot.axis, 0)
    index = slot.indices(channels[covered], size).reshape(-1, slot.block)
    entries = moved[index].reshape(index.shape[0], -1)
    same = entries.min(axis=1) == entries.max(axis=1)
    out[covered] = np.where(same, entries[:, 0], np.nan)
    return out


def _uniform(array: np.ndarray) -> float:
    """A constant's single value when all its entries are equal (else NaN)."""
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    return float(flat[0]) if flat.size and (flat == flat[0]).all() else float("nan")


class _Propagation:
    """Analytic constant values of the removed channels along one group's activations."""

    def __init__(self, group: Group, channels: np.ndarray, order: dict[int, int]) -> None:
        self.group, self.channels = group, channels
        self.acts: dict[int, list[Slot]] = {}
        for slot in group.by_role(Role.ACTIVATION):
            self.acts.setdefault(id(slot.value), []).append(slot)
        self.params = {(id(s.node), id(s.value)): s for s in group.by_role(Role.PARAM)}
        self.producers = {id(s.value): s for s in group.by_role(Role.PRODUCER)}
        self.values: dict[int, np.ndarray] = {}
        firsts = sorted(
            (order.get(id(s[0].value.producer()), -1), key) for key, s in self.acts.items()
        )
        for _, key in firsts:
            self.values[key] = self._evaluate(self.acts[key][0].value)

    def of(self, value: ir.Value | None) -> np.ndarray:
        """Per removed channel: the value's constant (NaN when unknown or not a constant)."""
        if value is not None and id(value) in self.values:
            return self.values[id(value)]
        array = constant(value) if value is not None else None
        return np.full(len(self.channels), np.nan if array is None else _uniform(array))

    def _input(self, node: ir.Node, i: int) -> np.ndarray:
        value = node.inputs[i] if i < len(node.inputs) else None
        slot = self.params.get((id(node), id(value)))
        if slot is not None:
            return _per_channel(slot, constant(value), self.channels, self.group.size)
        return self.of(value)

    def _evaluate(self, value: ir.Value) -> np.ndarray:
        node = value.producer()
        nan = np.full(len(self.channels), np.nan)
        if node is None:
            return nan
        op = node.op_type
        with np.errstate(all="ignore"):
            if op in _PRODUCER_OPS and not _is_carried_conv(node):
                return self._produced(node)
            if op in _UNARY:
                return _UNARY[op](self._input(node, 0), node)
            if op in _BINARY and len(node.inputs) == 2:
                return _BINARY[op](self._input(node, 0), self._input(node, 1))
            if op == "Clip":
                low, high = (
                    self._input(node, i) if len(node.inputs) > i and node.inputs[i] is not None
                    else attr(node, name, default)
                    for i, name, default in ((1, "min", -np.inf), (2, "max", np.inf))
                )
                return np.clip(self._input(node, 0), low, high)
            if op == "BatchNormalization":
                x, scale, bias, mean, var = (self._input(node, i) for i in range(5))
                return (x - mean) / np.sqrt(var + attr(node, "epsilon", 1e-5)) * scale + bias
            if op == "InstanceNormalization":  # a constant channel normalises to 0
                return np.where(np.isnan(self._input(node, 0)), np.nan, self._input(node, 2))
            if op == "AveragePool" and not (attr(node, "count_include_pad", 0) and any(attr(node, "pads", []))):
                return self._input(node, 0)
            if op == "Pad":
                return self._padded(node)
            if op == "Concat":  # each input covers its own channels
                merged = nan
                for v in node.inputs:
                    merged = np.where(np.isnan(merged), self.of(v) if id(v) in self.values else nan, merged)
                return merged
            if op == "Conv":
                return self._depthwise(node)
            if op in _PASS_THROUGH:
                return self._input(node, 0)
        return nan

    def _padded(self, node: ir.Node) -> np.ndarray:
        x = self._input(node, 0)
        if attr(node, "mode", "constant") != "constant":
            return x
        fill = constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else 0.0
        return np.where(x == float(np.asarray(fill).reshape(-1)[0]), x, np.nan)

    def _depthwise(self, node: ir.Node) -> np.ndarray:
        """Depthwise Conv of a constant ``k``: ``k * sum(W_c) + b_c`` (exact: k == 0 or no padding)."""
        x = self._input(node, 0)
        if not _no_padding(node):
            x = np.where(x == 0, x, np.nan)
        weight = self.params.get((id(node), id(node.inputs[1])))
        if weight is None:
            return np.full(len(self.channels), np.nan)
        w = constant(node.inputs[1])
        sums = w.reshape(w.shape[0], -1).sum(axis=1, dtype=np.float64)
        out = x * _per_channel(weight, sums, self.channels, self.group.size)
        bias = self._input(node, 2) if len(node.inputs) > 2 and node.inputs[2] is not None else 0.0
        return out + bias

    def _produced(self, node: ir.Node) -> np.ndarray:
        """A producer's output channel is its bias where its filter row is all zero."""
        out = np.full(len(self.channels), np.nan)
        weight = resolve_weight(node, 1)
        slot = self.producers.get(id(weight.value)) if weight is not None else None
        if slot is None:
            return out
        w = constant(weight.value)
        rows = np.abs(np.moveaxis(w, slot.axis, 0)).reshape(w.shape[slot.axis], -1).max(axis=1)
        zero = _per_channel(dataclasses.replace(slot, axis=0), rows, self.channels, self.group.size) == 0
        bias_value = node.inputs[2] if len(node.inputs) > 2 else None
        bias_slot = self.producers.get(id(bias_value)) if bias_value is not None else None
        if bias_slot is not None:
            bias = _per_channel(bias_slot, constant(bias_value), self.channels, self.group.size)
            bias = bias * (attr(node, "beta", 1.0) if node.op_type == "Gemm" else 1.0)
        elif bias_value is not None:
            bias = self.of(bias_value)
        else:
            bias = np.zeros(len(self.channels))
        return np.where(zero, bias, np.nan)


def _is_carried_conv(node: ir.Node) -> bool:
    if node.op_type != "Conv" or attr(node, "group", 1) == 1:
        return False
    shape = node.inputs[1].shape
    return shape is not None and shape[1] == 1


def _no_padding(node: ir.Node) -> bool:
    return attr(node, "auto_pad", "NOTSET") in ("NOTSET", "VALID") and not any(attr(node, "pads", []) or [])


def _exact_for_constants(layer: ir.Node) -> bool:
    """Whether a spatially constant input channel adds a constant to the layer's output."""
    if layer.op_type == "Conv":
        return _no_padding(layer)
    return layer.op_type in ("Gemm", "MatMul")


def _layer(slot: Slot) -> ir.Node:
    """The layer a consumer slot's weight feeds (through the Transposes the exporter adds)."""
    node = slot.node
    while node.op_type == "Transpose":
        node = next(iter(node.outputs[0].uses())).node
    return node


def _contribution(layer: ir.Node, slot: Slot, channels: np.ndarray, k: np.ndarray, size: int) -> np.ndarray:
    """``delta[o] = sum_c k_c * sum_{i in c} sum_window W[o, i]`` over the layer's outputs."""
    weight = resolve_weight(layer, 1)
    w = np.transpose(constant(weight.value), weight.perm)  # as the layer reads it
    op = layer.op_type
    if op in ("Gemm", "MatMul"):
        if op == "Gemm" and attr(layer, "transB", 0):
            w = w.T
        rows = w[slot.indices(channels, size).reshape(len(channels), -1)].sum(axis=1, dtype=np.float64)
        return (k @ rows) * (attr(layer, "alpha", 1.0) if op == "Gemm" else 1.0)
    sums = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2, dtype=np.float64)
    if op == "ConvTranspose":  # [in, out]: the mean over positions of a strided scatter
        cols = sums[slot.indices(channels, size).reshape(len(channels), -1)].sum(axis=1)
        return (k @ cols) / math.prod(attr(layer, "strides", None) or [1])
    if slot.groups == 1:
        cols = sums[:, slot.indices(channels, size).reshape(len(channels), -1)].sum(axis=2)
        return cols @ k
    delta = np.zeros(sums.shape[0])
    rows_per = sums.shape[0] // slot.groups
    width = sums.shape[1]
    for c, value in zip(slot.positions(channels, size), k):
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
    prop = _Propagation(group, channels, order)
    # per channel, the worst over its consumers: 0 exact, 1 approximate, 2 constant but the
    # consumer pads (not folded without means), 3 not constant (not folded)
    status = np.zeros(len(channels), dtype=np.int8)
    deltas = []
    for slot in group.by_role(Role.CONSUMER):
        layer = _layer(slot)
        hi = group.size if slot.hi is None else slot.hi
        covered = (channels >= slot.lo) & (channels < hi)
        k = prop.of(layer.inputs[0])
        constant = ~np.isnan(k)
        exact = constant & (_exact_for_constants(layer) | (k == 0))
        if means is not None:
            value = np.where(exact, k, np.where(constant, k, means[channels]))
            state = np.where(exact, 0, 1)
        else:
            value = np.where(exact, k, np.nan)
            state = np.where(exact, 0, np.where(constant, 2, 3))
        status = np.maximum(status, np.where(covered, state, 0))
        use = covered & ~np.isnan(value) & (value != 0)
        if use.any():
            deltas.append((layer, _contribution(layer, slot, channels[use], value[use], group.size)))
    counts = np.bincount(status, minlength=4)
    return GroupFold(deltas, *(int(c) for c in counts))


def install(graph: ir.Graph, deltas: list[tuple[ir.Node, np.ndarray]], removed_outputs) -> None:
    """Add the deltas to the layers' biases, after slicing (``removed_outputs(layer)`` gives
    the output channels the layer lost, so deltas are cut the same way)."""
    totals: dict[int, tuple[ir.Node, np.ndarray]] = {}
    for layer, delta in deltas:
        previous = totals.get(id(layer), (layer, 0.0))[1]
        totals[id(layer)] = (layer, previous + delta)
    for layer, delta in totals.values():
        delta = np.delete(delta, removed_outputs(layer))
        if layer.op_type in ("Conv", "ConvTranspose"):
            _add_to_input(graph, layer, 2, delta)
        elif layer.op_type == "Gemm":
            beta = attr(layer, "beta", 1.0)
            if beta == 0.0:  # C is ignored: the delta replaces it
                layer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
                if len(layer.inputs) > 2:
                    layer.replace_input_with(2, None)
                beta = 1.0
            _add_to_input(graph, layer, 2, delta / beta)
        else:
            _matmul_bias(graph, layer, delta)


def _dtype(layer: ir.Node) -> np.dtype:
    return constant(resolve_weight(layer, 1).value).dtype


def _add_to_input(graph: ir.Graph, node: ir.Node, index: int, delta: np.ndarray) -> None:
    """``node.inputs[index] += delta`` (created when absent, copied when shared)."""
    value = node.inputs[index] if index < len(node.inputs) else None
    dtype = _dtype(node) if node.op_type != "Add" else constant(value).dtype
    if value is None:
        new = add_initializer(graph, f"{node.name or node.op_type}_bias", delta.astype(dtype))
        node.resize_inputs(index + 1)
        node.replace_input_with(index, new)
        return
    array = (constant(value) + delta).astype(dtype)
    users = {id(user) for user, _ in value.uses()}
    if value.is_initializer() and users == {id(node)} and not value.is_graph_output():
        set_initializer(value, array)
    else:
        new = add_initializer(graph, f"{value.name}_folded", array)
        for i, v in enumerate(node.inputs):
            if v is value:
                node.replace_input_with(i, new)


def _matmul_bias(graph: ir.Graph, layer: ir.Node, delta: np.ndarray) -> None:
    """Fold into the ``Add(MatMul, bias)`` that follows (torch's Linear), or insert one."""
    out = layer.outputs[0]
    uses = list(out.uses())
    if len(uses) == 1 and not out.is_graph_output() and uses[0].node.op_type == "Add":
        add, index = uses[0].node, 1 - uses[0].idx
        array = constant(add.inputs[index])
        if array is not None and array.ndim >= 1 and array.size == len(delta) == array.shape[-1]:
            _add_to_input(graph, add, index, delta.reshape(array.shape))
            return
    bias = add_initializer(graph, f"{layer.name or 'MatMul'}_bias", delta.astype(_dtype(layer)))
    folded = ir.Value(name=unique_name(graph, f"{out.name}_biased"), shape=out.shape, type=out.type)
    out.replace_all_uses_with(folded, replace_graph_outputs=True)
    if folded.is_graph_output():  # keep the model's output name
        name = out.name
        out.name, folded.name = folded.name, name
    add = ir.Node("", "Add", [out, bias], outputs=[folded], name=unique_name(graph, f"{layer.name}_bias_add"))
    graph.insert_after(layer, add)
