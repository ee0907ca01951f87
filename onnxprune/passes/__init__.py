"""Graph-rewrite passes. Clean-up passes are registered here by their CLI name.

The registry is built on first use (PEP 562): ``import onnxprune.passes.base`` loads no pass
module, no onnxscript and no ONNX Runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from onnxprune.errors import UsageError
from onnxprune.passes.base import Pass, PassResult

if TYPE_CHECKING:
    from onnxprune.passes.batchnorm_to_affine import BatchNormToAffine
    from onnxprune.passes.cleanup import (
        EliminateIdentity,
        FoldConstants,
        LiftConstants,
        RemoveUnused,
        ShapeInference,
        TopologicalSort,
    )
    from onnxprune.passes.fold_affine import FoldAffine
    from onnxprune.passes.fold_batchnorm import FoldBatchNorm

# CLI name order = the order `onnxprune optimize --list` shows them in.
_REGISTERED = (
    ("onnxprune.passes.cleanup", "ShapeInference"),
    ("onnxprune.passes.cleanup", "FoldConstants"),
    ("onnxprune.passes.cleanup", "EliminateIdentity"),
    ("onnxprune.passes.cleanup", "LiftConstants"),
    ("onnxprune.passes.cleanup", "RemoveUnused"),
    ("onnxprune.passes.cleanup", "TopologicalSort"),
    ("onnxprune.passes.fold_batchnorm", "FoldBatchNorm"),
    ("onnxprune.passes.fold_affine", "FoldAffine"),
    ("onnxprune.passes.batchnorm_to_affine", "BatchNormToAffine"),
)
_CLASSES = {cls: module for module, cls in _REGISTERED}


def _registry() -> dict[str, type[Pass]]:
    classes = [getattr(importlib.import_module(module), cls) for module, cls in _REGISTERED]
    return {cls.name: cls for cls in classes}


def get_pass(name: str) -> Pass:
    """Instantiate the registered pass called ``name``."""
    registry: dict[str, type[Pass]] = __getattr__("PASSES")
    try:
        return registry[name]()
    except KeyError:
        raise UsageError(f"unknown pass '{name}' (available: {', '.join(registry)})") from None


def __getattr__(name: str) -> Any:
    if name == "PASSES":
        value: Any = _registry()
    elif name in _CLASSES:
        value = getattr(importlib.import_module(_CLASSES[name]), name)
    else:
        raise AttributeError(f"module 'onnxprune.passes' has no attribute '{name}'")
    globals()[name] = value
    return value


__all__ = [
    "PASSES", "BatchNormToAffine", "EliminateIdentity", "FoldAffine", "FoldBatchNorm", "FoldConstants",
    "LiftConstants", "Pass", "PassResult", "RemoveUnused", "ShapeInference", "TopologicalSort", "get_pass",
]
