"""Channel equalization: move per-channel activation ranges into the next layer's weights.

One per-tensor activation scale serves every channel of a tensor: where a few channels reach
70 and the median channel 8 (PP-LCNetV3's learnable-affine outputs in the PP-OCRv4
recognizer), the quiet channels get a few levels each. Dividing channel c of such a tensor by
``s_c`` and multiplying the weights that read channel c by ``s_c`` leaves the float model's
outputs unchanged and evens the ranges (Nagel et al. 2019, "Data-Free Quantization",
cross-layer equalization; SmoothQuant's migration strength 0.5): ``s_c = sqrt(a_c / w_c)``
with ``a_c`` the channel's measured activation range and ``w_c`` the largest weight reading it,
so that both end up at ``sqrt(a_c w_c)``. Per-channel int8 weights are quantized per output
channel, so the scaled input channels cost them little.

A *region* is the set of tensors that carry the same scaled channels (axis 1, NCHW):

* it starts where the scale can be absorbed exactly: a Conv's output channel (its weight and
  bias divided), or a Mul by a per-channel constant (the constant divided);
* it passes through what commutes with a positive per-channel scale: Add of a constant (the
  constant divided) or of another region tensor, Mul by a gate that is not in the region (a
  squeeze-excitation's sigmoid), Relu, MaxPool, AveragePool, GlobalAveragePool;
* it ends in the layers that read it: a Conv (group 1: its weights' input channel c times
  ``s_c``; depthwise: its filter c times ``s_c``).

Anything else in the way (HardSwish, Clip, Concat, Reshape, a graph output...) and the region is
left alone: only exact rewrites. HardSwish between a depthwise and a pointwise convolution, as
in MobileNetV3 and PP-LCNet, is not positively homogeneous, so those pairs are not equalized;
the learnable affine and squeeze-excitation that follow it are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import add_initializer, attr, const_array
from onnxprune.passes.base import Pass, PassResult

THROUGH = {"Relu", "MaxPool", "AveragePool", "GlobalAveragePool"}
GATES = {"Sigmoid", "HardSigmoid"}
Join = Callable[[ir.Value | None], bool]  # add a tensor to the region (False: it cannot be)
Role = Callable[[ir.Node, str], bool]  # give a node its role (False: it already has another)
LIMIT = 32.0  # largest scale either way: a channel that is ~0 everywhere is left as it is


@dataclasses.dataclass
class Region:
    """Tensors scaled together, where the scale is absorbed and where it is given back."""

    channels: int
    members: dict[str, ir.Value] = dataclasses.field(default_factory=dict)
    sources: list[tuple[ir.Node, int | None]] = dataclasses.field(default_factory=list)  # Conv (None) / Mul const
    constants: list[tuple[ir.Node, int]] = dataclasses.field(default_factory=list)  # Add's constant input
    sinks: list[ir.Node] = dataclasses.field(default_factory=list)

    @property
    def start(self) -> str:
        return next(iter(self.members))


def _channels(value: ir.Value) -> int | None:
    shape = value.shape
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
        return None
    return int(shape[1])


def _per_channel(array: np.ndarray | None, channels: int) -> bool:
    """A constant that broadcasts over N, H, W only (scalars too)."""
    if array is None or array.ndim > 4 or array.dtype.kind != "f":
        return False
    full = (1,) * (4 - array.ndim) + tuple(array.shape)
    return full[0] == 1 and full[2] == 1 and full[3] == 1 and full[1] in (1, channels)


def _gate(value: ir.Value | None) -> bool:
    """A squeeze-excitation's gate (never scaled: nothing scaled passes a sigmoid)."""
    producer = value.producer() if value is not None else None
    return producer is not None and producer.op_type in GATES


def _conv_weight(node: ir.Node) -> np.ndarray | None:
    if node.op_type != "Conv" or node.domain != "" or len(node.inputs) < 2:
        return None
    weight = const_array(node.inputs[1])
    if weight is None or weight.ndim != 4:
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None and const_array(node.inputs[2]) is None:
        return None
    return weight


def find_region(start: ir.Value) -> Region | None:
    """The region around ``start`` (the input of a Conv), or None when it is not exact."""
    channels = _channels(start)
    if channels is None:
        return None
    region = Region(channels)
    roles: dict[int, str] = {}  # node id -> its role, one only
    queue = [start]
    region.members[start.name or ""] = start

    def join(value: ir.Value | None) -> bool:
        if value is None or value.is_graph_output() or value.is_graph_input() or _channels(value) != channels:
            return False
        if (value.name or "") not in region.members:
            region.members[value.name or ""] = value
            queue.append(value)
        return True

    def role(node: ir.Node, what: str) -> bool:
        return roles.setdefault(id(node), what) == what

    while queue:
        value = queue.pop()
        if value.is_graph_output():
            return None
        producer = value.producer()
        if producer is None or not _backward(producer, region, join, role):
            return None
        for consumer, index in value.uses():
            if not _forward(consumer, index, region, join, role):
                return None
    for node, k in region.sources:  # a Mul source whose other input is scaled too would scale twice
        other = node.inputs[1 - k] if k is not None else None
        if other is not None and (other.name or "") in region.members:
            return None
    return region if region.sinks else None


def _backward(node: ir.Node, region: Region, join: Join, role: Role) -> bool:
    """``node`` produces a region tensor: absorb the scale there or pass it further up."""
    op, c = node.op_type, region.channels
    if node.domain != "":
        return False
    if op == "Conv":
        weight = _conv_weight(node)
        if weight is None or weight.shape[0] != c or not role(node, "source"):
            return False
        if (node, None) not in region.sources:
            region.sources.append((node, None))
        return True
    if op in THROUGH:
        return role(node, "through") and join(node.inputs[0])
    if op in ("Add", "Mul") and len(node.inputs) == 2:
        consts = [i for i in (0, 1) if const_array(node.inputs[i]) is not None]
        if len(consts) == 1:
            k = consts[0]
            if not _per_channel(const_array(node.inputs[k]), c):
                return False
            if op == "Mul":  # the constant absorbs the scale; its other input is not scaled
                if not role(node, "source"):
                    return False
                if (node, k) not in region.sources:
                    region.sources.append((node, k))
                return True
            if not role(node, "through"):
                return False
            if (node, k) not in region.constants:
                region.constants.append((node, k))
            return join(node.inputs[1 - k])
        if consts:
            return False
        if op == "Add":
            return role(node, "through") and join(node.inputs[0]) and join(node.inputs[1])
        gates = [i for i in (0, 1) if _gate(node.inputs[i])]
        return len(gates) == 1 and role(node, "through") and join(node.inputs[1 - gates[0]])
    return False


def _forward(node: ir.Node, index: int, region: Region, join: Join, role: Role) -> bool:
    """``node`` reads a region tensor (input ``index``): give the scale back there, or pass it on."""
    op, c = node.op_type, region.channels
    if node.domain != "":
        return False
    if op == "Conv":
        weight = _conv_weight(node)
        if weight is None or index != 0 or not role(node, "sink"):
            return False
        group = int(attr(node, "group", 1) or 1)
        if not (group == 1 and weight.shape[1] == c) and not (group == c == weight.shape[0] and weight.shape[1] == 1):
            return False
        if node not in region.sinks:
            region.sinks.append(node)
        return True
    if op in THROUGH:
        return index == 0 and role(node, "through") and join(node.outputs[0])
    if op in ("Add", "Mul") and len(node.inputs) == 2:
        other = node.inputs[1 - index]
        constant = const_array(other)
        if constant is not None:
            if not _per_channel(constant, c) or not role(node, "through"):
                return False
            if op == "Add" and (node, 1 - index) not in region.constants:
                region.constants.append((node, 1 - index))
            return join(node.outputs[0])
        if op == "Add":
            return role(node, "through") and join(other) and join(node.outputs[0])
        return _gate(other) and role(node, "through") and join(node.outputs[0])
    return False


def regions(model: ir.Model) -> list[Region]:
    """Every exact region of ``model``, each tensor in one at most."""
    found: list[Region] = []
    taken: set[str] = set()
    for node in model.graph:
        if node.op_type != "Conv" or not node.inputs or node.inputs[0] is None:
            continue
        start = node.inputs[0]
        if (start.name or "") in taken:
            continue
        region = find_region(start)
        if region is None or taken & set(region.members):
            continue
        taken |= set(region.members)
        found.append(region)
    return found


def scales(region: Region, absmax: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """``s_c = sqrt(a_c / w_c)`` (see the module docstring), None without measurements."""
    measured = [np.asarray(absmax[n], np.float64).reshape(-1) for n in region.members if n in absmax]
    measured = [m for m in measured if m.size == region.channels]
    if not measured:
        return None
    act = np.max(measured, axis=0)
    weights = []
    for sink in region.sinks:
        w = np.abs(np.asarray(const_array(sink.inputs[1]), np.float64))
        per_input = w.max(axis=(1, 2, 3)) if int(attr(sink, "group", 1) or 1) > 1 else w.max(axis=(0, 2, 3))
        weights.append(per_input)
    wmax = np.max(weights, axis=0)
    ok = (act > 0) & (wmax > 0)
    s = np.ones(region.channels)
    s[ok] = np.sqrt(act[ok] / wmax[ok])
    s[ok] /= np.exp(np.mean(np.log(s[ok])))  # geometric mean 1: the weights keep their magnitude
    return np.clip(s, 1 / LIMIT, LIMIT)


class ChannelEqualizePass(Pass):
    """Even out per-channel activation ranges by moving them into the next layer's weights."""

    name = "equalize"
    exact = True  # in float, up to rounding

    def __init__(self, absmax: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.absmax = absmax  # tensor name -> max |x| per channel (axis 1) on calibration data

    def call(self, model: ir.Model) -> PassResult:
        changes = []
        for region in regions(model):
            s = scales(region, self.absmax)
            if s is None or np.allclose(s, 1.0):
                continue
            _apply(model.graph, region, s)
            changes.append(f"{region.start}: {len(region.members)} tensors equalized into {len(region.sinks)} "
                           f"layers (scales {s.min():.3g}-{s.max():.3g})")
        return PassResult(model, bool(changes), changes)


def _apply(graph: ir.Graph, region: Region, s: np.ndarray) -> None:
    shaped = s.reshape(1, -1, 1, 1)

    def replace(node: ir.Node, index: int, array: np.ndarray, what: str) -> None:
        new = add_initializer(graph, f"{node.name or 'node'}_{what}", array.astype(np.float32))
        node.replace_input_with(index, new)

    for node, index in region.sources:
        if index is None:  # a Conv: output channel o divided by s_o
            weight = np.asarray(const_array(node.inputs[1]), np.float64)
            replace(node, 1, weight / s.reshape(-1, 1, 1, 1), "equalized_w")
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                replace(node, 2, np.asarray(const_array(node.inputs[2]), np.float64) / s, "equalized_b")
        else:
            constant = np.asarray(const_array(node.inputs[index]), np.float64)
            replace(node, index, _as_rank4(constant) / shaped, "equalized")
    for node, index in region.constants:
        constant = np.asarray(const_array(node.inputs[index]), np.float64)
        replace(node, index, _as_rank4(constant) / shaped, "equalized")
    for node in region.sinks:
        weight = np.asarray(const_array(node.inputs[1]), np.float64)
        axis = (-1, 1, 1, 1) if int(attr(node, "group", 1) or 1) > 1 else (1, -1, 1, 1)
        replace(node, 1, weight * s.reshape(axis), "equalized_w")


def _as_rank4(array: np.ndarray) -> np.ndarray:
    return array.reshape((1,) * (4 - array.ndim) + tuple(array.shape))
