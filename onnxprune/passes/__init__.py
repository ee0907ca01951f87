"""Graph-rewrite passes. Clean-up passes are registered here by their CLI name."""

from __future__ import annotations

from onnxprune.errors import UsageError
from onnxprune.passes.base import Pass, PassResult
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

PASSES: dict[str, type[Pass]] = {
    cls.name: cls
    for cls in (
        ShapeInference,
        FoldConstants,
        EliminateIdentity,
        LiftConstants,
        RemoveUnused,
        TopologicalSort,
        FoldBatchNorm,
        FoldAffine,
        BatchNormToAffine,
    )
}


def get_pass(name: str) -> Pass:
    """Instantiate the registered pass called ``name``."""
    try:
        return PASSES[name]()
    except KeyError:
        raise UsageError(f"unknown pass '{name}' (available: {', '.join(PASSES)})") from None


__all__ = ["PASSES", "Pass", "PassResult", "get_pass"]
