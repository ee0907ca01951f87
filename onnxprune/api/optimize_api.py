"""The Python API behind `onnxprune inspect` and `onnxprune optimize`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxprune import stats
from onnxprune.io import ModelLike, as_model, check_output_path, save_model
from onnxprune.passes.base import Pass
from onnxprune.pipeline import DEFAULT_PIPELINE, PipelineResult, Verifier, run_pipeline
from onnxprune.report import short_repr


def inspect(model: ModelLike) -> dict:
    """Inputs/outputs, op histogram, parameters, MACs per layer and in total, size."""
    loaded, path = as_model(model)
    return stats.summarize(loaded, path)


@dataclasses.dataclass
class OptimizeResult:
    __repr__ = short_repr  # a line, not the whole graph

    model: ir.Model
    before: dict
    after: dict
    pipeline: PipelineResult
    output: Path | None = None
    verify_note: str | None = None  # the shapes --verify ran at, when it probed open dims

    def to_dict(self) -> dict:
        keep = (*stats.SIZE_KEYS, "ops")
        return {
            "output": str(self.output) if self.output else None,
            "before": {k: self.before[k] for k in keep},
            "after": {k: self.after[k] for k in keep},
            **self.pipeline.to_dict(),
            **({"verify_inputs": self.verify_note} if self.verify_note else {}),
        }


def optimize(
    model: ModelLike,
    output: str | os.PathLike | None = None,
    *,
    passes: Sequence[str | Pass] = DEFAULT_PIPELINE,
    verify: bool = False,
    feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
    tolerance: float = 1e-5,
    progress: bool = False,
) -> OptimizeResult:
    """Run the exact clean-up pipeline (or ``passes``) and optionally save the result.

    With ``verify``, each pass is followed by the ONNX checker, an ONNX Runtime load and a
    parity check on ``feeds`` (random inputs if none, open dims probed: see
    :mod:`onnxprune.probe`); the first failure raises an error
    naming the pass.
    """
    loaded, path = as_model(model)
    if output is not None:
        check_output_path(output, path)
    before = stats.summarize(loaded)
    verifier = Verifier(feeds, tolerance) if verify else None
    result = run_pipeline(loaded, passes, verify=verifier, progress=progress)
    after = stats.summarize(result.model)
    saved = save_model(result.model, output, input_path=path) if output is not None else None
    return OptimizeResult(result.model, before, after, result, saved, verifier.note if verifier else None)
