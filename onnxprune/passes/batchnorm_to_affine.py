"""batchnorm-to-affine: the BatchNormalization nodes fold-batchnorm could not absorb.

A BN after a graph input, an Add or a Concat has no producer to fold into. It is folded
*forward* into the Conv/Gemm that reads it when that is exact, else rewritten as the
per-channel ``Mul`` + ``Add`` it computes at inference (no training-mode semantics left for
runtimes and quantizers to handle, two constant vectors instead of four).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import attr, const_array, only_consumer
from onnxprune.passes._affine import batchnorm_affine, bias_name, constant_weight_and_bias
from onnxprune.passes._rewrite import (
    Rule,
    RulePass,
    bypass,
    const_input,
    insert_node,
    present_input,
    remove,
    set_const_input,
)
from onnxprune.passes.base import PassResult
from onnxprune.passes.cleanup import ShapeInference


@dataclasses.dataclass
class _Match:
    bn: ir.Node
    scale: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))  # set by check
    shift: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))


@dataclasses.dataclass
class _ForwardMatch(_Match):
    consumer: ir.Node = dataclasses.field(kw_only=True)
    weight: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))  # set by check
    bias: np.ndarray | None = None


def _forward_match(node: ir.Node, op_type: str) -> _ForwardMatch | None:
    """A BN whose only reader is an ``op_type`` node reading it as its data input."""
    if node.op_type != "BatchNormalization" or node.domain != "":
        return None
    consumer = only_consumer(node.outputs[0])
    if consumer is None or consumer.op_type != op_type or consumer.domain != "":
        return None
    if consumer.inputs[0] is not node.outputs[0]:  # BN feeds the weight or bias: not ours
        return None
    return _ForwardMatch(node, consumer=consumer)


def _check_forward(match: _ForwardMatch) -> str | None:
    """Fill the BN's affine map and the consumer's constant weight/bias; else the reason why not."""
    affine = batchnorm_affine(match.bn)
    if isinstance(affine, str):
        return affine
    match.scale, match.shift = affine
    node = match.consumer
    constants = constant_weight_and_bias(node, node.inputs[2] if len(node.inputs) > 2 else None)
    if isinstance(constants, str):
        return constants
    match.weight, match.bias = constants
    return None


def _finish_forward(match: _ForwardMatch, weight: np.ndarray, bias: np.ndarray) -> str:
    node, dtype = match.consumer, match.weight.dtype
    set_const_input(node, 1, weight.astype(dtype), present_input(node, 1).name or "weight")
    set_const_input(node, 2, bias.astype(dtype), bias_name(present_input(node, 1)))
    bypass(match.bn.outputs[0], present_input(match.bn, 0))
    remove(match.bn)
    return f"{match.bn.name}: folded forward into {node.op_type} '{node.name}'"


class BatchNormIntoNextConv(Rule):
    """``Conv(BN(x)) -> Conv'(x)`` when the Conv reads no padding (or BN has no shift).

    With ``BN(x)[i] = x[i] * s[i] + t[i]`` on input channel i (of group g(o) for output o)::

        Conv(BN(x))[o] = sum_{i,k} W[o,i,k] * (x[i] * s[i] + t[i]) + b[o]
                       = sum_{i,k} (W[o,i,k] * s[i]) * x[i] + (b[o] + sum_{i,k} W[o,i,k] * t[i])

    The second sum is the same at every output position only if each window sees real input
    everywhere. Zero padding feeds 0 where BN would have fed ``t[i]``, so at the borders the
    fold would be wrong: it is declined unless pads are 0 (or ``t`` is 0: then only W scales).
    """

    name = "batchnorm-into-next-conv"

    def pattern(self, node: ir.Node) -> _ForwardMatch | None:
        return _forward_match(node, "Conv")

    def check(self, match: _ForwardMatch) -> str | None:
        if reason := _check_forward(match):
            return reason
        conv, group = match.consumer, attr(match.consumer, "group", 1)
        if match.weight.shape[1] * group != match.scale.size:
            return f"BN has {match.scale.size} channels, Conv '{conv.name}' reads {match.weight.shape[1] * group}"
        padded = attr(conv, "auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") or any(attr(conv, "pads", []) or [])
        if padded and np.any(match.shift):
            return f"Conv '{conv.name}' pads with zeros where BN would shift (not exact at borders)"
        return None

    def rewrite(self, match: _ForwardMatch) -> str:
        w = match.weight.astype(np.float64)
        cout, group = w.shape[0], attr(match.consumer, "group", 1)
        # Per output channel o, the input channels of its group: [Cout, Cin/group].
        scale = np.repeat(match.scale.reshape(group, -1), cout // group, axis=0)
        shift = np.repeat(match.shift.reshape(group, -1), cout // group, axis=0)
        extra = (1,) * (w.ndim - 2)
        bias = match.bias.astype(np.float64) if match.bias is not None else np.zeros(cout)
        bias = bias + (w * shift.reshape(*shift.shape, *extra)).sum(axis=tuple(range(1, w.ndim)))
        return _finish_forward(match, w * scale.reshape(*scale.shape, *extra), bias)


class BatchNormIntoNextGemm(Rule):
    """``Gemm(BN(x)) -> Gemm'(x)`` (transA = 0, so BN's channels are Gemm's K).

    With ``B`` as ``[K, N]`` (transposed back when transB)::

        alpha * (x * s + t) @ B + beta * C = alpha * x @ (s[:, None] * B) + (beta * C + alpha * t @ B)

    so ``B' = s[:, None] * B``, ``C' = beta * C + alpha * t @ B`` and beta becomes 1.
    """

    name = "batchnorm-into-next-gemm"

    def pattern(self, node: ir.Node) -> _ForwardMatch | None:
        return _forward_match(node, "Gemm")

    def check(self, match: _ForwardMatch) -> str | None:
        if reason := _check_forward(match):
            return reason
        gemm = match.consumer
        if attr(gemm, "transA", 0):
            return f"Gemm '{gemm.name}' transposes its input (BN's channels are not its K)"
        k = match.weight.shape[1 if attr(gemm, "transB", 0) else 0]
        if k != match.scale.size:
            return f"BN has {match.scale.size} channels, Gemm '{gemm.name}' has K = {k}"
        return None

    def rewrite(self, match: _ForwardMatch) -> str:
        gemm, trans_b = match.consumer, attr(match.consumer, "transB", 0)
        b = match.weight.astype(np.float64)
        b = b.T if trans_b else b
        c = match.bias.astype(np.float64) if match.bias is not None else np.zeros(())
        c = c * attr(gemm, "beta", 1.0) + attr(gemm, "alpha", 1.0) * (match.shift @ b)
        gemm.attributes.pop("beta", None)
        b = match.scale[:, None] * b
        return _finish_forward(match, b.T if trans_b else b, c)


class BatchNormToMulAdd(Rule):
    """``BN(x) -> x * s + t`` with ``s``, ``t`` shaped ``[C, 1, ..., 1]`` to broadcast on axis 1.

    ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``: the same arithmetic BN does at
    inference. A unit scale or zero shift is left out.
    """

    name = "batchnorm-to-mul-add"

    def pattern(self, node: ir.Node) -> _Match | None:
        return _Match(node) if node.op_type == "BatchNormalization" and node.domain == "" else None

    def check(self, match: _Match) -> str | None:
        affine = batchnorm_affine(match.bn)
        if isinstance(affine, str):
            return affine
        x = present_input(match.bn, 0)  # batchnorm_affine checked all 5 inputs
        shape = x.shape if x.shape is not None else match.bn.outputs[0].shape
        if shape is None or len(shape) < 2:
            return f"the rank of '{x.name}' is unknown (run shape-inference first)"
        match.scale, match.shift = (v.reshape(-1, *[1] * (len(shape) - 2)) for v in affine)
        return None

    def rewrite(self, match: _Match) -> str:
        bn, x = match.bn, present_input(match.bn, 0)
        if x.dtype is not None:
            dtype = x.dtype.numpy()
        else:
            scale_array = const_array(bn.inputs[1])
            assert scale_array is not None  # batchnorm_affine found it constant
            dtype = scale_array.dtype
        value, name = x, bn.name or "batchnorm"
        if not np.all(match.scale == 1) or not np.any(match.shift):  # keep one node at least
            scale = const_input(bn, dtype, match.scale, f"{name}_scale")
            value = insert_node(bn, "Mul", [value, scale], f"{name}_mul", after=False).outputs[0]
        if np.any(match.shift):
            shift = const_input(bn, dtype, match.shift, f"{name}_shift")
            value = insert_node(bn, "Add", [value, shift], f"{name}_add", after=False).outputs[0]
        bypass(bn.outputs[0], value)
        remove(bn)
        return f"{bn.name}: BatchNormalization as Mul + Add"


class BatchNormToAffine(RulePass):
    """Fold a standalone BatchNormalization forward into the next Conv/Gemm when exact, else make it Mul + Add."""

    name = "batchnorm-to-affine"
    rules = (BatchNormIntoNextConv(), BatchNormIntoNextGemm(), BatchNormToMulAdd())

    def call(self, model: ir.Model) -> PassResult:
        # Mul + Add need the input's rank; exporters often leave intermediate shapes out.
        # Shape inference runs once, and only when a BN needs it (weights are not serialized).
        if any(_rank_unknown(n) for g in model.graphs() for n in g if n.op_type == "BatchNormalization"):
            ShapeInference()(model)
        return super().call(model)


def _rank_unknown(bn: ir.Node) -> bool:
    return bn.inputs[0] is not None and bn.inputs[0].shape is None and bn.outputs[0].shape is None
