"""Accuracy parity between a reference model and an optimized candidate (`onnxprune check`).

``check(reference, candidate, data)`` runs both on the same inputs on every requested ONNX
Runtime execution provider (and across providers), compares each output with streaming
statistics (metrics.py), judges them against tolerances or presets (tolerances.py) and, on
request, localises the error to the first intermediate tensor that exceeds the tolerance
(layerwise.py). The result (result.py) is truthy when parity holds and serialises to a
versioned JSON schema.
"""

from onnxprune.parity.compare import check
from onnxprune.parity.metrics import OutputStats
from onnxprune.parity.result import SCHEMA_VERSION, CheckResult
from onnxprune.parity.tolerances import PRESETS, Tolerances

__all__ = ["PRESETS", "SCHEMA_VERSION", "CheckResult", "OutputStats", "Tolerances", "check"]
