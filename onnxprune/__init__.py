"""onnxprune: compress trained ONNX models at the graph level.

Clean-up and folding (exact), structured channel pruning, static INT8 quantization, and
accuracy parity checks, each usable from Python or from the ``onnxprune`` command.
"""

from onnxprune.api import OptimizeResult, PruneResult, QuantizeResult, inspect, optimize, prune, quantize
from onnxprune.errors import OnnxPruneError
from onnxprune.io import load_model, save_model
from onnxprune.pipeline import DEFAULT_PIPELINE, run_pipeline
from onnxprune.parity import CheckResult, Tolerances, check
from onnxprune.compress import CompressResult, compress
from onnxprune.shapes import input_shapes

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PIPELINE",
    "CheckResult",
    "CompressResult",
    "OnnxPruneError",
    "OptimizeResult",
    "PruneResult",
    "QuantizeResult",
    "Tolerances",
    "check",
    "compress",
    "input_shapes",
    "inspect",
    "load_model",
    "optimize",
    "prune",
    "quantize",
    "run_pipeline",
    "save_model",
]
