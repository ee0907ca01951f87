"""Bias correction: give back each output channel the mean that weight rounding takes away.

Rounding a layer's weights to int8 (W_q = W - E) shifts every output channel's mean by
``-E · E[x]``: small per weight, systematic per channel, and it adds up through a network,
most in depthwise convolutions (9 or 25 weights per channel; Nagel et al. 2019, "Data-Free
Quantization", section 4.2). Measured on calibration data (the mean of every input channel,
``means``), the shift is added back into the bias, ``b' = b + E · E[x]``, so that the INT8
layer ``W_q x + b'`` has the float layer's mean output. The rounding is the quantize pass's own
(the same per-channel or per-tensor int8 scales, :func:`qparams.weight_qparams`).

Conv (grouped too) and Gemm (transA = 0, alpha = beta = 1); a missing bias is created. The
float model's outputs change (``exact`` is False): run it just before QuantizePass, on a
model nothing else will run in float.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import add_initializer, attr, const_array
from onnxprune.passes.base import Pass, PassResult
from onnxprune.passes.quantize import qparams as qp
from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.rules import weight_axis

OPS = ("Conv", "Gemm")


def correctable(node: ir.Node) -> bool:
    """A Conv or plain Gemm with a constant weight (and a constant bias, if any)."""
    weight = const_array(node.inputs[1]) if node.op_type in OPS and len(node.inputs) > 1 else None
    if weight is None or node.domain != "":
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None and const_array(node.inputs[2]) is None:
        return False
    if node.op_type == "Gemm":
        scalars = attr(node, "alpha", 1.0) == 1.0 and attr(node, "beta", 1.0) == 1.0
        return scalars and not attr(node, "transA", 0) and weight.ndim == 2
    return True


def rounding_error(node: ir.Node, weight: np.ndarray, config: QuantConfig) -> np.ndarray:
    """E = W - W_q, W_q rounded as the quantize pass rounds it."""
    axis = weight_axis(node, weight.ndim) if config.per_channel and weight.ndim > 1 else None
    params = qp.weight_qparams(weight, axis, config.weight_qmax)
    scale = params.scale if axis is None else params.scale.reshape([-1 if i == axis else 1 for i in range(weight.ndim)])
    rounded = qp.quantize(weight, params, np.dtype(np.int8)).astype(np.float64) * scale.astype(np.float64)
    error: np.ndarray = weight.astype(np.float64) - rounded
    return error


def shift(node: ir.Node, error: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """E · E[x] per output channel (``mean``: per input channel; Conv: axis 1, Gemm: the last)."""
    if node.op_type == "Gemm":
        matrix = error.T if attr(node, "transB", 0) else error  # [K, N]
        moved: np.ndarray = mean.astype(np.float64) @ matrix
        return moved
    groups = int(attr(node, "group", 1) or 1)
    per_group = error.shape[0] // groups
    inputs = error.shape[1]
    summed = error.reshape(error.shape[0], inputs, -1).sum(axis=2)  # [M, C/g]: the kernel taps
    means = mean.astype(np.float64).reshape(groups, inputs)
    per_output: np.ndarray = np.einsum("mc,mc->m", summed, np.repeat(means, per_group, axis=0))
    return per_output


class BiasCorrectionPass(Pass):
    """Add to each Conv/Gemm bias the output mean its int8 weight rounding removes."""

    name = "bias-correction"
    exact = False

    def __init__(self, means: Mapping[str, np.ndarray], config: QuantConfig | None = None) -> None:
        super().__init__()
        self.means = means  # input tensor name -> mean per channel on calibration data
        self.config = config or QuantConfig()

    def call(self, model: ir.Model) -> PassResult:
        changes = []
        for node in model.graph:
            data = node.inputs[0] if node.inputs else None
            if data is None or data.name is None or data.name not in self.means or not correctable(node):
                continue
            if self.config.excludes(node.name or "", node.op_type):
                continue  # stays float: its weights are not rounded
            weight = np.asarray(const_array(node.inputs[1]), np.float32)
            mean = np.asarray(self.means[data.name], np.float64).reshape(-1)
            expected = weight.shape[1] * int(attr(node, "group", 1) or 1) if node.op_type == "Conv" else (
                weight.shape[1] if attr(node, "transB", 0) else weight.shape[0])
            if mean.size != expected:
                continue  # not measured per channel of this input (another layout)
            delta = shift(node, rounding_error(node, weight, self.config), mean)
            bias_value = node.inputs[2] if len(node.inputs) > 2 else None
            bias = np.zeros(delta.shape, np.float32) if bias_value is None else np.asarray(const_array(bias_value))
            if bias.size != delta.size:
                continue  # a broadcast Gemm bias: left alone
            new = add_initializer(model.graph, f"{node.name or 'node'}_bias_corrected",
                                  (bias.reshape(-1) + delta).astype(np.float32).reshape(bias.shape))
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(2, new)
            largest = float(np.max(np.abs(delta), initial=0.0))
            changes.append(f"{node.name}: bias corrected by up to {largest:.3g} per channel")
        return PassResult(model, bool(changes), changes)
