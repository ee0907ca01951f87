"""Which channels a pruning kept, stored in the model for `check --layerwise`.

The map lives in the model's metadata under :data:`CHANNEL_MAP_KEY` as JSON
``{tensor: {"axis": int, "removed": [indices]}}``; :mod:`onnxprune.parity.layerwise` reads it
to compare a pruned tensor with the original on its surviving channels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from onnxprune.passes.prune.group import Group, PrunePlan, Role

CHANNEL_MAP_KEY = "onnxprune.kept_channels"


def channel_map_from_plan(groups: Sequence[Group], plan: PrunePlan) -> dict[str, dict[str, Any]]:
    """{activation tensor: {"axis", "removed"}} of a prune plan,
    in the form :data:`CHANNEL_MAP_KEY` stores; a tensor shared by several groups (a Concat)
    gets the union of their removed positions."""
    entries: dict[str, dict[str, Any]] = {}
    for group in groups:
        removed = plan.removed(group)
        if not removed.size:
            continue
        for slot in group.slots:
            if slot.role is not Role.ACTIVATION or not slot.value.name:
                continue
            entry = entries.setdefault(slot.value.name, {"axis": slot.axis, "removed": []})
            entry["removed"] = sorted(set(entry["removed"]) | set(slot.positions(removed, group.size).tolist()))
    return entries


def record_channel_map(model: ir.Model, groups: Sequence[Group], plan: PrunePlan) -> None:
    """Store the plan's channel map in ``model``'s metadata for ``check --layerwise``."""
    entries = channel_map_from_plan(groups, plan)
    if entries:
        model.metadata_props[CHANNEL_MAP_KEY] = json.dumps(entries, separators=(",", ":"))
