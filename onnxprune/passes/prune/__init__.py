"""Structured channel pruning as an IR pass: :class:`PrunePass` and its report.

The file-level ``prune()`` (load, prepare, verify, measure, save) is one layer up, in
:mod:`onnxprune.api.prune_api`.
"""

from onnxprune.passes.prune.importance import CRITERIA
from onnxprune.passes.prune.prune_pass import DEFAULT_ROUND_TO, PrunePass, PrunePassResult, check_ratio
from onnxprune.passes.prune.report import GroupReport, PruneReport, control_flow_note

__all__ = [
    "CRITERIA",
    "DEFAULT_ROUND_TO",
    "GroupReport",
    "PrunePass",
    "PrunePassResult",
    "PruneReport",
    "check_ratio",
    "control_flow_note",
]
