"""The file-level APIs of the stages: load (or take) a model, run its passes, check, measure, save.

They sit above the IR passes (:mod:`onnxprune.passes`, which do no I/O and run no ONNX
Runtime) and below the command line (:mod:`onnxprune.cli`).
"""

from onnxprune.api.optimize_api import OptimizeResult, inspect, optimize
from onnxprune.api.prune_api import PREPARE, PruneResult, prune
from onnxprune.api.quantize_api import QuantizeResult, quantize
from onnxprune.io import ModelLike, as_model

__all__ = [
    "PREPARE",
    "ModelLike",
    "OptimizeResult",
    "PruneResult",
    "QuantizeResult",
    "as_model",
    "inspect",
    "optimize",
    "prune",
    "quantize",
]
