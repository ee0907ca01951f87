"""Structured channel pruning as an IR pass: :class:`PrunePass` and its report.

The file-level ``prune()`` (load, prepare, verify, measure, save) is one layer up, in
:mod:`onnxprune.api.prune_api`.
"""

from onnxprune.passes.prune.importance import CRITERIA
from onnxprune.passes.prune.options import DATA_CRITERION, DEFAULT_ROUND_TO, PruneOptions, check_ratio
from onnxprune.passes.prune.prune_pass import PrunePass, PrunePassResult
from onnxprune.passes.prune.report import GroupReport, PruneReport, control_flow_note

__all__ = [
    "CRITERIA",
    "DATA_CRITERION",
    "DEFAULT_ROUND_TO",
    "GroupReport",
    "PruneOptions",
    "PrunePass",
    "PrunePassResult",
    "PruneReport",
    "check_ratio",
    "control_flow_note",
]
