"""Refusing models that are already quantized: quantizing twice only loses accuracy."""

from __future__ import annotations

import onnx_ir as ir

from onnxprune.errors import UnsupportedError

QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
    "MatMulIntegerToFloat", "QGemm", "QAttention", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM",
    "QEmbedLayerNormalization", "MatMulNBits", "MatMulBnb4", "QOrderedMatMul",
}


def is_quantized_op(op_type: str) -> bool:
    """Whether a node of this op type only occurs in a quantized model."""
    return op_type in QUANTIZED_OPS or op_type.startswith("QLinear")


def quantized_node(model: ir.Model) -> ir.Node | None:
    """The first node (subgraphs included) that shows the model is already quantized."""
    for node in model.graph.all_nodes():
        if is_quantized_op(node.op_type):
            return node
    return None


def check_not_quantized(model: ir.Model) -> None:
    node = quantized_node(model)
    if node is not None:
        raise UnsupportedError(
            f"already quantized: node '{node.name}' is {node.op_type}; quantize the float model instead"
        )
