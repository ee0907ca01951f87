"""onnxprune: compress trained ONNX models at the graph level.

Clean-up and folding (exact), structured channel pruning, static INT8 quantization, and
accuracy parity checks, each usable from Python or from the ``onnxprune`` command.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# Names resolve on first use (PEP 562): ``import onnxprune`` (and any ``import
# onnxprune.passes...``, which runs this file first) loads neither ONNX Runtime nor the stages.
_LAZY = {
    "OptimizeResult": "onnxprune.api", "PruneResult": "onnxprune.api", "QuantizeResult": "onnxprune.api",
    "inspect": "onnxprune.api", "optimize": "onnxprune.api", "prune": "onnxprune.api", "quantize": "onnxprune.api",
    "OnnxPruneError": "onnxprune.errors",
    "load_model": "onnxprune.io", "save_model": "onnxprune.io",
    "DEFAULT_PIPELINE": "onnxprune.pipeline", "run_pipeline": "onnxprune.pipeline",
    "CheckResult": "onnxprune.parity", "Tolerances": "onnxprune.parity", "check": "onnxprune.parity",
    "CompressResult": "onnxprune.compress", "compress": "onnxprune.compress",
    "input_shapes": "onnxprune.shapes",
    "PruneOptions": "onnxprune.passes.prune",
}

if TYPE_CHECKING:
    from onnxprune.api import OptimizeResult, PruneResult, QuantizeResult, inspect, optimize, prune, quantize
    from onnxprune.compress import CompressResult, compress
    from onnxprune.errors import OnnxPruneError
    from onnxprune.io import load_model, save_model
    from onnxprune.parity import CheckResult, Tolerances, check
    from onnxprune.passes.prune import PruneOptions
    from onnxprune.pipeline import DEFAULT_PIPELINE, run_pipeline
    from onnxprune.shapes import input_shapes


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'onnxprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


class _Package(types.ModuleType):
    """``onnxprune.compress`` is the function, as it was with eager imports: importing the
    submodule of that name must not replace it (the import system sets the attribute)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "compress" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PIPELINE",
    "CheckResult",
    "CompressResult",
    "OnnxPruneError",
    "OptimizeResult",
    "PruneOptions",
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
