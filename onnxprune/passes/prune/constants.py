"""Analytic constant values of removed channels, propagated along a group's activations.

A channel whose producer filter is all zero outputs its bias ``b_c`` at every position of
every input. Every op a group carries maps a constant to a constant that numpy computes
exactly (the same formula the op applies element-wise):

* BatchNorm: ``(k - mean) / sqrt(var + eps) * gamma + beta``; InstanceNorm: ``beta``
* activations ``f(k)`` (Relu, Clip, Sigmoid, HardSwish, Gelu, Erf...)
* per-channel or scalar constants ``k + a``, ``k * a``...; ties ``k_1 + k_2``, ``k * g``
* pooling, resize, reshape, slicing, concatenation of a constant: the same constant
* a depthwise Conv ``k * sum(W_c) + b_c``, exact without padding or for ``k == 0``

Anything else (a spatially varying constant, an unknown op, padding with another value)
makes the channel's value unknown (NaN): it is then not folded exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import MAC_OPS, attr
from onnxprune.passes.prune.group import Group, Role, Slot
from onnxprune.passes.prune.layers import is_depthwise, resolve_weight
from onnxprune.passes.prune.rules import constant

_PASS_THROUGH = set(
    "Identity Dropout Cast Transpose Squeeze Unsqueeze Reshape Flatten Split Slice Resize Upsample "
    "MaxPool GlobalAveragePool GlobalMaxPool ReduceMean ReduceMax ReduceMin".split()
)


def _erf(x: np.ndarray) -> np.ndarray:
    erf: np.ndarray = np.vectorize(math.erf, otypes=[np.float64])(x)
    return erf


def _sigmoid(x: np.ndarray) -> np.ndarray:
    sigmoid: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return sigmoid


def _softplus(x: np.ndarray) -> np.ndarray:
    softplus: np.ndarray = np.logaddexp(0.0, x)
    return softplus


# Element-wise ops in numpy, ``f(x, node)`` (also the activations moments.py integrates over).
ELEMENTWISE: dict[str, Callable[[np.ndarray, ir.Node], np.ndarray]] = {
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
_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
    "Max": np.maximum, "Min": np.minimum, "PRelu": lambda x, s: np.where(x >= 0, x, s * x),
}


def _channel_constant(slot: Slot, array: np.ndarray, channels: np.ndarray, size: int) -> np.ndarray:
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


def _known(value: ir.Value | None) -> np.ndarray:
    """The array of a slot's value: the analysis makes PARAM/PRODUCER slots of constants only."""
    array = constant(value)
    assert array is not None, f"'{value.name if value else None}' is not a constant"
    return array


def _uniform(array: np.ndarray) -> float:
    """A constant's single value when all its entries are equal (else NaN)."""
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    return float(flat[0]) if flat.size and (flat == flat[0]).all() else float("nan")


class ChannelConstants:
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
            return _channel_constant(slot, _known(value), self.channels, self.group.size)
        return self.of(value)

    def _evaluate(self, value: ir.Value) -> np.ndarray:
        node = value.producer()
        nan = np.full(len(self.channels), np.nan)
        if node is None:
            return nan
        op = node.op_type
        with np.errstate(all="ignore"):
            if op in MAC_OPS and not is_depthwise(node):  # a depthwise Conv carries channels
                return self._produced(node)
            if op in ELEMENTWISE:
                return ELEMENTWISE[op](self._input(node, 0), node)
            if op in _BINARY and len(node.inputs) == 2:
                return _BINARY[op](self._input(node, 0), self._input(node, 1))
            if op == "Clip":
                low, high = (
                    self._input(node, i) if len(node.inputs) > i and node.inputs[i] is not None
                    else attr(node, name, default)
                    for i, name, default in ((1, "min", -np.inf), (2, "max", np.inf))
                )
                clipped: np.ndarray = np.clip(self._input(node, 0), low, high)
                return clipped
            if op == "BatchNormalization":
                x, scale, bias, mean, var = (self._input(node, i) for i in range(5))
                normalized: np.ndarray = (x - mean) / np.sqrt(var + attr(node, "epsilon", 1e-5)) * scale + bias
                return normalized
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
        if not no_padding(node):
            x = np.where(x == 0, x, np.nan)
        weight = self.params.get((id(node), id(node.inputs[1])))
        if weight is None:
            return np.full(len(self.channels), np.nan)
        w = _known(node.inputs[1])
        sums = w.reshape(w.shape[0], -1).sum(axis=1, dtype=np.float64)
        out = x * _channel_constant(weight, sums, self.channels, self.group.size)
        bias = self._input(node, 2) if len(node.inputs) > 2 and node.inputs[2] is not None else 0.0
        result: np.ndarray = out + bias
        return result

    def _produced(self, node: ir.Node) -> np.ndarray:
        """A producer's output channel is its bias where its filter row is all zero."""
        out = np.full(len(self.channels), np.nan)
        weight = resolve_weight(node, 1)
        slot = self.producers.get(id(weight.value)) if weight is not None else None
        if weight is None or slot is None:
            return out
        hi = self.group.size if slot.hi is None else slot.hi
        covered = (self.channels >= slot.lo) & (self.channels < hi)
        rows = np.take(_known(weight.value), slot.indices(self.channels[covered], self.group.size), slot.axis)
        rows = np.moveaxis(rows, slot.axis, 0).reshape(int(covered.sum()), -1)  # only the removed rows
        zero = np.zeros(len(self.channels), dtype=bool)
        zero[covered] = ~rows.any(axis=1)
        bias_value = node.inputs[2] if len(node.inputs) > 2 else None
        bias_slot = self.producers.get(id(bias_value)) if bias_value is not None else None
        if bias_slot is not None:
            bias = _channel_constant(bias_slot, _known(bias_value), self.channels, self.group.size)
            bias = bias * (attr(node, "beta", 1.0) if node.op_type == "Gemm" else 1.0)
        elif bias_value is not None:
            bias = self.of(bias_value)
        else:
            bias = np.zeros(len(self.channels))
        return np.where(zero, bias, np.nan)


def no_padding(node: ir.Node) -> bool:
    return attr(node, "auto_pad", "NOTSET") in ("NOTSET", "VALID") and not any(attr(node, "pads", []) or [])
