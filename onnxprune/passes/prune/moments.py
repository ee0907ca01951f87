"""Data-free estimate of each channel's mean at the consumers, from BatchNorm statistics.

A removed channel still contributed ``W[:, c] * E[x_c]`` (on average) to the next layer;
folding that into the bias is what keeps accuracy after pruning without retraining (the
"none" and "BN stats" columns of ``bench/prune_bench.py --digits``). Calibration data gives
``E[x_c]`` directly (:func:`.activations.collect_channel_stats`); without data, BatchNorm tells
it: in inference BN normalises with the training statistics,
so its output for channel c is, over the data it was trained on, close to

    y_c ~ N(β_c, γ_c²)

and the ops between BN and the consumer are followed with Gaussian moment matching:

- an activation f: E f(y), Var f(y) by quadrature over N(μ, σ²);
- a residual Add of two branches: means and variances add (branches taken as independent);
- average pooling, Flatten, Identity, Dropout: the mean is kept (the variance bound too).

Anything else (MaxPool, Mul, Concat of unrelated tensors...) leaves the channel unknown, and
unknown channels are simply not compensated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import attr, const_array
from onnxprune.passes.prune.constants import ELEMENTWISE
from onnxprune.passes.prune.group import Group, Role, Slot

# Expectations over N(0, 1) on a dense grid over ±8σ. Gauss–Hermite rules converge slowly
# across the kinks of ReLU/Clip/HardSwish (1 % error with 32 nodes); this grid is exact to
# ~1e-5 for them, at a cost of channels × 2001 evaluations.
_NODES = np.linspace(-8.0, 8.0, 2001)
_WEIGHTS = np.exp(-(_NODES**2) / 2)
_WEIGHTS /= _WEIGHTS.sum()
# The activations followed by moment matching; other ops leave the channel unknown.
_ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Elu", "Gelu")


def _clip(node: ir.Node) -> Callable[[np.ndarray], np.ndarray] | None:
    lo = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else attr(node, "min")
    hi = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else attr(node, "max")
    lo = -np.inf if lo is None else float(np.asarray(lo))
    hi = np.inf if hi is None else float(np.asarray(hi))
    return lambda x: np.clip(x, lo, hi)


def _activation(node: ir.Node) -> Callable[[np.ndarray], np.ndarray] | None:
    """The elementwise function ``node`` computes, in numpy, if it is one we know."""
    op = node.op_type
    if op in ("Identity", "Dropout"):
        return lambda x: x
    if op == "Clip":
        return _clip(node)
    if op in _ACTIVATIONS:
        return lambda x: ELEMENTWISE[op](x, node)
    return None


_MEAN_KEEPING = ("GlobalAveragePool", "AveragePool", "Flatten")


class _Moments:
    """Per-channel (mean, variance) of the values of one group, memoised per value."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.bn: dict[int, Slot] = {
            id(s.node): s
            for s in group.by_role(Role.PARAM)
            if s.node.op_type == "BatchNormalization" and s.node.inputs[1] is s.value
        }
        self.memo: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}

    def of(self, value: ir.Value | None, depth: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        if value is None or depth > 64:
            return None
        if id(value) not in self.memo:
            self.memo[id(value)] = self._compute(value, depth)
        return self.memo[id(value)]

    def _compute(self, value: ir.Value, depth: int) -> tuple[np.ndarray, np.ndarray] | None:
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if id(node) in self.bn:
            return self._batchnorm(node, self.bn[id(node)])
        if node.op_type in _MEAN_KEEPING:
            return self.of(node.inputs[0], depth + 1)
        if node.op_type == "Add" and all(const_array(v) is None for v in node.inputs):
            parts = [p for p in (self.of(v, depth + 1) for v in node.inputs) if p is not None]
            if len(parts) < len(node.inputs):
                return None
            return parts[0][0] + parts[1][0], parts[0][1] + parts[1][1]
        f = _activation(node)
        moments = self.of(node.inputs[0], depth + 1) if f is not None else None
        if f is None or moments is None:
            return None
        mean, var = moments
        with np.errstate(over="ignore"):  # exp may overflow far out on the grid (Elu, Sigmoid): harmless
            samples = f(mean[:, None] + np.sqrt(np.maximum(var, 0))[:, None] * _NODES[None, :])
        out_mean = samples @ _WEIGHTS
        return out_mean, np.maximum((samples**2) @ _WEIGHTS - out_mean**2, 0)

    def _batchnorm(self, node: ir.Node, slot: Slot) -> tuple[np.ndarray, np.ndarray] | None:
        gamma, beta = const_array(node.inputs[1]), const_array(node.inputs[2])
        if gamma is None or beta is None:
            return None
        size = self.group.size
        mean, var = np.full(size, np.nan), np.full(size, np.nan)
        channels = np.arange(slot.lo, size if slot.hi is None else slot.hi)
        # A group channel covers ``slot.block`` BN channels (after a depthwise Conv with a channel
        # multiplier): one (mean, variance) per group channel only where they all agree.
        index = slot.positions(channels, size).reshape(len(channels), slot.block)
        betas = beta.astype(np.float64)[index]
        variances = gamma.astype(np.float64)[index] ** 2
        same = (betas == betas[:, :1]).all(axis=1) & (variances == variances[:, :1]).all(axis=1)
        mean[channels] = np.where(same, betas[:, 0], np.nan)
        var[channels] = np.where(same, variances[:, 0], np.nan)
        return mean, var


def batchnorm_channel_means(group: Group, hooked: list[Slot]) -> np.ndarray | None:
    """Estimated mean of each channel on the ``hooked`` values (what the consumers read).

    Channels without an estimate get 0 (not compensated); None when no channel has one.
    """
    moments = _Moments(group)
    total, count = np.zeros(group.size), np.zeros(group.size)
    for slot in hooked:
        m = moments.of(slot.value)
        if m is None:
            continue
        known = ~np.isnan(m[0])
        total[known] += m[0][known]
        count[known] += 1
    if not count.any():
        return None
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)
