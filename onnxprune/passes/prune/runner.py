"""How data-driven pruning runs a model: an interface the stage API fills in.

Activation statistics, the consumer-aware criteria and the least-squares refit need the model's
intermediate tensors on calibration batches. Running a model is the runtime layer's job
(:class:`onnxprune.runtime.OrtRunner`, ONNX Runtime), so the passes only see this interface and
stay pure IR: whoever builds a :class:`~.prune_pass.PrunePass` with calibration data hands it a
runner (``onnxprune.prune()`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np
import onnx_ir as ir

from onnxprune.errors import UsageError


class Session(Protocol):
    """A model ready to run: the named outputs (graph outputs, extra ones included) for ``feeds``."""

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


class ModelRunner(Protocol):
    """Opens sessions on in-memory models (the outputs as the graph lists them at opening time)."""

    def input_names(self, model: ir.Model) -> set[str]: ...

    def session(self, model: ir.Model) -> AbstractContextManager[Session]: ...


def required(runner: ModelRunner | None, what: str) -> ModelRunner:
    """``runner``, or a UsageError saying that ``what`` runs the model and needs one."""
    if runner is None:
        raise UsageError(f"{what} runs the model on calibration data: give the pass a runner "
                         "(runner=onnxprune.runtime.OrtRunner())")
    return runner
