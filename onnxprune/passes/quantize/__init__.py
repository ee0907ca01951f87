"""Static INT8 quantization in QDQ format (QuantizeLinear/DequantizeLinear pairs)."""

from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.detect import check_not_quantized
from onnxprune.passes.quantize.quantize_pass import QuantizePass
from onnxprune.passes.quantize.rules import activation_values, plan

__all__ = ["QuantConfig", "QuantizePass", "activation_values", "check_not_quantized", "plan"]
