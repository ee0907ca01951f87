"""Per-channel affine maps ``y -> y * s + t`` and the linear layers that can absorb them.

Where the maps come from: inference BatchNormalization (``s = gamma / sqrt(var + eps)``,
``t = beta - mean * s``) and constant Mul/Add/Sub/Div. Where they go: a Conv, ConvTranspose,
Gemm or MatMul(+Add) whose weights are constants, by scaling each output channel's weights
by ``s`` and its bias ``b`` to ``b * s + t``. All arithmetic is done in float64 and cast back
once, so folding adds a single rounding per weight.
"""

from __future__ import annotations

import dataclasses
from typing import TypeGuard

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import attr, const_array, only_consumer
from onnxprune.passes._rewrite import const_input, insert_node, present_input, set_const_input

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def is_linear_output(value: ir.Value | None) -> TypeGuard[ir.Value]:
    """Structural test: ``value`` comes out of a linear op (or a MatMul's bias Add)."""
    node = value.producer() if value is not None else None
    if node is None or node.domain != "":
        return False
    return node.op_type in LINEAR_OPS or (node.op_type == "Add" and _matmul_input(node) is not None)


def _matmul_input(add: ir.Node) -> int | None:
    """Index of the Add input produced by a MatMul when the other input is a constant bias."""
    if len(add.inputs) != 2:
        return None
    for i in (0, 1):
        value = add.inputs[i]
        mm = value.producer() if value is not None else None
        if mm is not None and mm.op_type == "MatMul" and mm.domain == "" and const_array(add.inputs[1 - i]) is not None:
            return i
    return None


def constant_weight_and_bias(
    node: ir.Node, bias: ir.Value | None
) -> tuple[np.ndarray, np.ndarray | None] | str:
    """The float constant weight (input 1) of a linear ``node`` and the constant value of
    its ``bias`` (None when it has none), or why they are not constants."""
    weight = const_array(node.inputs[1])
    if weight is None or not np.issubdtype(weight.dtype, np.floating):
        return f"the weight of {node.op_type} '{node.name}' is not a float constant"
    bias_array = const_array(bias) if bias is not None else None
    if bias is not None and bias_array is None:
        return f"the bias of {node.op_type} '{node.name}' is not a constant"
    return weight, bias_array


def bias_name(weight: ir.Value) -> str:
    """'conv1.weight' -> 'conv1.bias': a name for a bias created next to ``weight``."""
    name = weight.name or "weight"
    return name[: -len("weight")] + "bias" if name.endswith("weight") else name + "_bias"


@dataclasses.dataclass
class Linear:
    """A layer ``y = W * x + b`` with constant ``W``/``b`` and ``channels`` outputs on ``channel_axis``."""

    node: ir.Node  # Conv, ConvTranspose, Gemm or MatMul
    weight: np.ndarray
    bias: np.ndarray | None  # Conv/ConvTranspose [C]; Gemm's C (any broadcastable shape); MatMul's Add operand
    bias_add: ir.Node | None  # the Add carrying a MatMul's bias
    channels: int
    rank: int | None  # rank of the output, None when unknown
    channel_axis: int  # axis of the output holding the channels (-1: the last, rank unknown)

    @property
    def output(self) -> ir.Value:
        return (self.bias_add or self.node).outputs[0]

    @classmethod
    def of(cls, value: ir.Value) -> Linear | str:
        """The linear layer producing ``value``, or why it cannot absorb anything."""
        if not is_linear_output(value):
            return f"'{value.name}' does not come out of a {'/'.join(LINEAR_OPS)}"
        node, bias_add, bias_value = value.producer(), None, None
        assert node is not None  # is_linear_output found it
        if node.op_type == "Add":
            bias_add, index = node, _matmul_input(node)
            assert index is not None  # is_linear_output found the MatMul
            matmul = present_input(node, index).producer()
            assert matmul is not None
            node, bias_value = matmul, node.inputs[1 - index]
            if only_consumer(node.outputs[0]) is not bias_add:
                return f"the output of MatMul '{node.name}' is also read elsewhere"
        elif len(node.inputs) > 2:
            bias_value = node.inputs[2]
        if only_consumer(value) is None:
            return f"'{value.name}' is read by more than one node or is a graph output"
        constants = constant_weight_and_bias(node, bias_value)
        if isinstance(constants, str):
            return constants
        weight, bias = constants
        rank: int | None = weight.ndim
        axis = 1
        if node.op_type == "Conv":
            channels = weight.shape[0]
        elif node.op_type == "ConvTranspose":
            group = attr(node, "group", 1)
            if weight.shape[0] % group:
                return f"ConvTranspose '{node.name}': {weight.shape[0]} input channels not divisible by group {group}"
            channels = weight.shape[1] * group
        elif node.op_type == "Gemm":
            channels, rank = weight.shape[0 if attr(node, "transB", 0) else 1], 2
        else:  # MatMul: [.., K] @ [K, N] -> [.., N]; rank of the output is the rank of x
            if weight.ndim != 2:
                return f"MatMul '{node.name}': weight of rank {weight.ndim} (only 2-D weights fold)"
            channels, rank = weight.shape[1], _rank(value) or _rank(node.inputs[0])
            axis = rank - 1 if rank else -1
        return cls(node, weight, bias, bias_add, channels, rank, axis)

    def absorb(self, scale: np.ndarray, shift: np.ndarray) -> ir.Value:
        """Fold ``y * scale + shift`` (float64 vectors of ``channels``) into W and b.

        ``W'[c] = W[c] * scale[c]`` along the output-channel axis of the weight and
        ``b' = b * scale + shift`` (Gemm: ``b' = beta * C * scale + shift`` and beta becomes 1).
        Returns the value now holding the result (a new Add for a bias-less MatMul).
        """
        node, w = self.node, self.weight.astype(np.float64)
        op, dtype = node.op_type, self.weight.dtype
        if op == "Conv":
            w *= scale.reshape(-1, *[1] * (w.ndim - 1))
        elif op == "ConvTranspose":  # W is [Cin, Cout/group, k...]: channel c = g * Cout/group + j
            group = attr(node, "group", 1)
            grouped = w.reshape(group, w.shape[0] // group, w.shape[1], *w.shape[2:])
            w = (grouped * scale.reshape(group, 1, w.shape[1], *[1] * (w.ndim - 2))).reshape(w.shape)
        elif op == "Gemm" and attr(node, "transB", 0):
            w *= scale[:, None]
        else:  # Gemm without transB and MatMul: W is [K, N]
            w *= scale[None, :]
        set_const_input(node, 1, w.astype(dtype), present_input(node, 1).name or "weight")

        bias = self.bias.astype(np.float64) if self.bias is not None else np.zeros(())
        if op == "Gemm":
            bias = bias * attr(node, "beta", 1.0)
            node.attributes.pop("beta", None)
        new_bias = (bias * scale + shift).astype(dtype)
        if op != "MatMul":
            set_const_input(node, 2, new_bias, bias_name(present_input(node, 1)))
            return self.output
        if self.bias_add is not None:
            matmul_index = _matmul_input(self.bias_add)
            assert matmul_index is not None  # found by Linear.of
            index = 1 - matmul_index
            set_const_input(self.bias_add, index, new_bias, present_input(self.bias_add, index).name or "bias")
            return self.output
        if not np.any(shift):
            return self.output
        bias_value = const_input(node, dtype, new_bias, bias_name(present_input(node, 1)))
        return insert_node(node, "Add", [node.outputs[0], bias_value], f"{node.name}_bias").outputs[0]


def _rank(value: ir.Value | None) -> int | None:
    return len(value.shape) if value is not None and value.shape is not None else None


def per_channel(constant: np.ndarray, channels: int, rank: int | None, axis: int) -> np.ndarray | str:
    """``constant`` as a float64 vector of ``channels`` when it broadcasts per channel along
    ``axis`` of a rank-``rank`` tensor without changing its shape; else the reason why not."""
    if constant.size == 1 and (constant.ndim == 0 or (rank is not None and constant.ndim <= rank)):
        return np.full(channels, float(constant.reshape(())), dtype=np.float64)
    if rank is None:
        if axis == -1 and constant.ndim == 1 and constant.shape[0] == channels:
            return constant.astype(np.float64)  # a vector always broadcasts along the last axis
        return f"constant of shape {list(constant.shape)} against an output of unknown rank"
    if constant.ndim > rank:
        return f"constant of shape {list(constant.shape)} would broadcast the rank-{rank} output up"
    padded = (1,) * (rank - constant.ndim) + constant.shape
    axis %= rank
    if any(d != 1 for i, d in enumerate(padded) if i != axis) or padded[axis] not in (1, channels):
        return (
            f"constant of shape {list(constant.shape)} is not per-channel for {channels} "
            f"channels on axis {axis} of a rank-{rank} output"
        )
    vector: np.ndarray = np.broadcast_to(constant.reshape(-1).astype(np.float64), (channels,)).copy()
    return vector


def batchnorm_affine(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | str:
    """``(s, t)`` with ``BN(x) = x * s + t`` per channel, or why BN is not a constant affine map.

    Inference BatchNormalization: ``y = gamma * (x - mean) / sqrt(var + eps) + beta``,
    so ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``.
    """
    if len(bn.inputs) != 5 or any(v is None for v in bn.inputs):
        return "BatchNormalization without its 5 inputs"
    if attr(bn, "training_mode", 0) or any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
        return "BatchNormalization in training mode (running statistics are outputs)"
    if attr(bn, "spatial", 1) == 0:
        return "BatchNormalization with spatial=0 (per-element statistics)"
    params = [p for p in (const_array(v) for v in bn.inputs[1:]) if p is not None]
    if len(params) != 4:
        return "its scale/bias/mean/var are not all constants"
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    if not gamma.size == beta.size == mean.size == var.size:
        return "scale/bias/mean/var have different sizes"
    denominator = var + attr(bn, "epsilon", 1e-5)
    if np.any(denominator <= 0):
        return "var + epsilon <= 0 in some channel"
    scale = gamma / np.sqrt(denominator)
    shift = beta - mean * scale
    # A shift within the rounding of BN's own arithmetic in its dtype is zero (beta = mean * s
    # stored in float32 leaves ~1e-9): it lets a scale-only BN fold through a padded Conv.
    noise = 4 * np.finfo(params[0].dtype).eps * (np.abs(beta) + np.abs(mean * scale))
    return scale, np.where(np.abs(shift) <= noise, 0.0, shift)
