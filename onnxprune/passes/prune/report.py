"""What :class:`~onnxprune.passes.prune.prune_pass.PrunePass` reports: one row per group."""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx_ir as ir

from onnxprune.passes.prune.refit import LayerFit
from onnxprune.validate import control_flow_nodes


@dataclasses.dataclass
class GroupReport:
    """One group's line in the report."""

    id: int
    name: str
    channels: int
    kept: int
    status: str  # "pruned", "kept", "declined", "excluded"
    reason: str | None = None  # why declined / excluded, or the criterion's fallback note
    scores: dict[str, Any] | None = None  # normalised score summary: min/median/max, best removed
    members: list[str] = dataclasses.field(default_factory=list)  # layers whose output channels these are
    readers: list[str] = dataclasses.field(default_factory=list)  # layers reading them (input channels)
    removed: list[int] = dataclasses.field(default_factory=list)  # removed channel indices

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PruneReport:
    criterion: str
    ratio: float  # the global (or uniform) ratio used, found by search for a target
    target: dict[str, Any] | None
    groups: list[GroupReport]
    macs: tuple[int, int]  # before, after (estimated on the graph the pass saw)
    params: tuple[int, int]
    changes: list[str] = dataclasses.field(default_factory=list)
    compensation: str | None = None  # where the removed channels' means came from, if folded
    reconstruction: list[LayerFit] | None = None  # layers refit by least squares (calibration)
    notes: list[str] = dataclasses.field(default_factory=list)  # what the user should know (one line each)

    @property
    def channels(self) -> tuple[int, int]:
        return sum(g.channels for g in self.groups), sum(g.kept for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "ratio": self.ratio,
            "target": self.target,
            "channels": {"before": self.channels[0], "after": self.channels[1]},
            "estimated": {
                "macs": {"before": self.macs[0], "after": self.macs[1]},
                "parameters": {"before": self.params[0], "after": self.params[1]},
            },
            "groups": [g.to_dict() for g in self.groups],
            "compensation": self.compensation,
            "reconstruction": [f.to_dict() for f in self.reconstruction] if self.reconstruction is not None else None,
            "changes": self.changes,
            "notes": self.notes,
        }


def control_flow_note(model: ir.Model) -> str | None:
    """One line saying that If/Loop/Scan bodies are not pruned, when the model has any.

    The analysis walks the main graph only: a node inside a subgraph is never pruned, and a
    group whose channels an If/Loop/Scan reads (as an input or from its body) is declined.
    """
    nodes = control_flow_nodes(model)
    if not nodes:
        return None
    ops = "/".join(sorted({n.op_type for n in nodes}))
    first = nodes[0].name or nodes[0].outputs[0].name
    count = f"{len(nodes)} control-flow node{'s' if len(nodes) > 1 else ''}"
    return (f"{count} ({ops}, e.g. '{first}'): subgraphs are left as they are (nothing inside them is "
            "pruned, and channels they read are kept)")
