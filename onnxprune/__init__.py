"""onnxprune: compress trained ONNX models at the graph level.

Clean-up and folding (exact), structured channel pruning, static INT8 quantization, and
accuracy parity checks, each usable from Python or from the ``onnxprune`` command.
"""

from onnxprune.api import OptimizeResult, inspect, optimize
from onnxprune.errors import OnnxPruneError
from onnxprune.io import load_model, save_model
from onnxprune.pipeline import DEFAULT_PIPELINE, run_pipeline
from onnxprune.parity import CheckResult, Tolerances, check
from onnxprune.passes.quantize.api import QuantizeResult, quantize
from onnxprune.passes.prune import PruneResult, prune

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PIPELINE",
    "OnnxPruneError",
    "OptimizeResult",
    "inspect",
    "load_model",
    "optimize",
    "run_pipeline",
    "save_model",
]
