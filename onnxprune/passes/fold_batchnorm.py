"""fold-batchnorm: BatchNormalization folded into the Conv/ConvTranspose/Gemm/MatMul before it.

Why not onnxscript's ``_fuse_batchnorm`` rules: they cover Conv, ConvTranspose and Gemm only
(no MatMul(+Add), which is how exporters write Linear layers), need the parameters to be
initializers (not Constant nodes), refuse weights shared with another node, compute the fused
weights in float32, and re-create the Conv under a new name with renamed values. Ours keeps
node and weight names, handles the cases above and reports each fold.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxprune.passes._affine import Linear, batchnorm_affine, is_linear_output
from onnxprune.passes._rewrite import Rule, RulePass, bypass, present_input, remove


@dataclasses.dataclass
class _Match:
    bn: ir.Node
    linear: Linear | None = None
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None


class BatchNormIntoProducer(Rule):
    """``BN(L(x)) -> L'(x)`` for a linear layer ``L(x) = W * x + b`` with constant W, b.

    With ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s`` (per output channel c)::

        BN(L(x))[c] = (W[c] * x + b[c]) * s[c] + t[c] = (W[c] * s[c]) * x + (b[c] * s[c] + t[c])

    so ``W'[c] = W[c] * s[c]`` along the weight's output-channel axis (axis 0 for Conv and
    Gemm with transB, axis 1 for Gemm/MatMul ``[K, N]``, and per group ``[g, Cin/g, Cout/g, k]``
    for ConvTranspose) and ``b' = b * s + t``; a missing bias is created. A bias-less MatMul
    keeps ``t`` in an Add (BN becomes one Add). Exact up to one float rounding per weight.
    """

    name = "batchnorm-into-producer"

    def pattern(self, node: ir.Node) -> _Match | None:
        if node.op_type == "BatchNormalization" and node.domain == "" and is_linear_output(node.inputs[0]):
            return _Match(node)
        return None

    def check(self, match: _Match) -> str | None:
        affine = batchnorm_affine(match.bn)
        if isinstance(affine, str):
            return affine
        linear = Linear.of(present_input(match.bn, 0))
        if isinstance(linear, str):
            return linear
        layer = f"{linear.node.op_type} '{linear.node.name}'"
        if linear.channel_axis != 1:
            return f"BN normalizes axis 1 but {layer} has its channels on axis {linear.channel_axis}"
        if affine[0].size != linear.channels:
            return f"BN has {affine[0].size} channels, {layer} has {linear.channels}"
        match.linear, (match.scale, match.shift) = linear, affine
        return None

    def rewrite(self, match: _Match) -> str:
        assert match.linear is not None and match.scale is not None and match.shift is not None  # set by check
        output = match.linear.absorb(match.scale, match.shift)
        bypass(match.bn.outputs[0], output)
        remove(match.bn)
        node = match.linear.node
        return f"{match.bn.name}: folded into {node.op_type} '{node.name}'"


class FoldBatchNorm(RulePass):
    """Fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm/MatMul (exact)."""

    name = "fold-batchnorm"
    rules = (BatchNormIntoProducer(),)
