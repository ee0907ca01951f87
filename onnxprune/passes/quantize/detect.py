"""Refusing models that are already quantized: quantizing twice only loses accuracy."""

from __future__ import annotations

import onnx_ir as ir

from onnxprune.errors import UnsupportedError

QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
    "MatMulIntegerToFloat", "QGemm", "QAttention", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM",
    "QEmbedLayerNormalization", "MatMulNBits", "MatMulBnb4", "QOrderedMatMul",
}


def quantized_node(model: ir.Model) -> ir.Node | None:
    """The first node (subgraphs included) that shows the model is already quantized."""
    for node in model.graph.all_nodes():
        if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
            return node
    return None


def check_not_quantized(model: ir.Model) -> None:
    node = quantized_node(model)
    if node is not None:
        raise UnsupportedError(
            f"already quantized: node '{node.name}' is {node.op_type}; quantize the float model instead"
        )
