"""fold-affine: constant per-channel Mul/Add/Sub/Div after a linear layer folded into it.

Why not onnxscript's ``ConvAffineFusion``: it only matches ``Conv * scalar + scalar`` on a
Conv that already has a bias, not per-channel constants, a lone Mul or Add, Sub/Div,
ConvTranspose, Gemm or MatMul.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import const_array
from onnxprune.passes._affine import Linear, is_linear_output, per_channel
from onnxprune.passes._rewrite import Rule, RulePass, bypass, present_input, remove

_OPS = ("Mul", "Add", "Sub", "Div")


@dataclasses.dataclass
class _Match:
    node: ir.Node
    side: int  # which input is the linear layer's output
    constant: np.ndarray
    linear: Linear | None = None
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None


class AffineIntoProducer(Rule):
    """``L(x) op c -> L'(x)`` for a constant ``c`` that is per output channel of ``L``.

    Each form is ``y * s + t`` with, per channel: ``y * c`` (s = c, t = 0), ``y + c``
    (s = 1, t = c), ``y - c`` (s = 1, t = -c), ``c - y`` (s = -1, t = c), ``y / c``
    (s = 1 / c, c != 0), folded as ``W' = W * s``, ``b' = b * s + t``. ``c`` may be a scalar
    or have one non-1 dimension aligned with the channel axis (``[C, 1, 1]``, ``[1, C, 1, 1]``
    for Conv; ``[C]`` for Gemm/MatMul) and must not raise the output's rank. Division is
    replaced by a multiplication by ``1 / c`` (within one rounding of the original).
    """

    name = "affine-into-producer"

    def pattern(self, node: ir.Node) -> _Match | None:
        if node.op_type not in _OPS or node.domain != "" or len(node.inputs) != 2:
            return None
        for side in (0, 1):
            y, c = node.inputs[side], node.inputs[1 - side]
            if not is_linear_output(y) or (node.op_type == "Div" and side == 1):
                continue
            producer = y.producer()
            if node.op_type == "Add" and producer is not None and producer.op_type == "MatMul":
                continue  # that Add *is* the MatMul's bias
            constant = const_array(c)
            if constant is not None:
                return _Match(node, side, constant)
        return None

    def check(self, match: _Match) -> str | None:
        linear = Linear.of(present_input(match.node, match.side))
        if isinstance(linear, str):
            return linear
        if not np.issubdtype(match.constant.dtype, np.floating):
            return f"constant of type {match.constant.dtype}"
        c = per_channel(match.constant, linear.channels, linear.rank, linear.channel_axis)
        if isinstance(c, str):
            return c
        op, ones, zeros = match.node.op_type, np.ones_like(c), np.zeros_like(c)
        if op == "Div" and not np.all(c):
            return "division by a constant with zeros"
        match.scale, match.shift = {
            "Mul": (c, zeros),
            "Add": (ones, c),
            "Sub": (ones, -c) if match.side == 0 else (-ones, c),
            "Div": (1.0 / np.where(c == 0, 1.0, c), zeros),
        }[op]
        match.linear = linear
        return None

    def rewrite(self, match: _Match) -> str:
        assert match.linear is not None and match.scale is not None and match.shift is not None  # set by check
        output = match.linear.absorb(match.scale, match.shift)
        bypass(match.node.outputs[0], output)
        remove(match.node)
        node = match.linear.node
        return f"{match.node.name}: {match.node.op_type} by a constant folded into {node.op_type} '{node.name}'"


class FoldAffine(RulePass):
    """Fold constant per-channel Mul/Add/Sub/Div after a Conv/ConvTranspose/Gemm/MatMul into it (exact)."""

    name = "fold-affine"
    rules = (AffineIntoProducer(),)
