"""Non-uniform pruning ratios from sensitivity curves (``prune --sensitivity``).

Separate from :mod:`.sensitivity_api` (which runs prune() to measure the curves) so that
prune() can use the curves without an import cycle. Curves come from the JSON that
``onnxprune sensitivity -o`` writes (or a result object with ``curves()``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onnxprune.errors import UsageError


def curves_of(data: dict) -> dict[str, list[tuple[float, float, float, float]]]:
    """Per group: (ratio, loss, MACs share removed, parameters share removed), by ratio;
    loss = fidelity lost (accuracy lost when labels were given)."""
    baseline = data["baseline"]
    key = "accuracy" if baseline.get("accuracy") is not None else "fidelity"
    out: dict[str, list] = {}
    for row in data["units"]:
        if row["kind"] == "prune":
            loss = baseline[key] - row[key]
            out.setdefault(row["name"], []).append((row["ratio"], loss, row["macs_removed"], row["params_removed"]))
    return {k: sorted(v) for k, v in out.items()}


def allocate(curves: dict[str, list[tuple]], share: float, *, what: str = "macs") -> dict[str, float]:
    """Per-group ratios removing ``share`` of the MACs (or parameters), greedily: the next
    ratio step of the group with the least loss per share removed, until the sum of the
    groups' removals reaches ``share`` (an estimate: groups feeding one layer overlap)."""
    column = 2 if what == "macs" else 3
    state = {name: 0 for name in curves}  # steps taken
    removed, ratios = 0.0, {}
    while removed < share:
        best, best_cost = None, np.inf
        for name, points in curves.items():
            step = state[name]
            if step >= len(points):
                continue
            prev = points[step - 1] if step else (0.0, 0.0, 0.0, 0.0)
            gain = points[step][column] - prev[column]
            if gain <= 0:
                continue
            cost = max(points[step][1] - prev[1], 0.0) / gain
            if cost < best_cost:
                best, best_cost = name, cost
        if best is None:
            break
        points, step = curves[best], state[best]
        removed += points[step][column] - (points[step - 1][column] if step else 0.0)
        ratios[best] = points[step][0]
        state[best] = step + 1
    return ratios


def allocated_ratios(model, sensitivity, *, target_macs: float | None = None, target_params: float | None = None,
                     **plan_options) -> dict[str, float]:
    """Group ratios from the curves meeting a MAC/parameter target on ``model`` (prepared as
    prune() prepares it): :func:`allocate` on the curves, then the share actually removed is
    estimated on the model (groups feeding one layer overlap) and the allocation topped up."""
    from onnxprune.passes.prune import PruneOptions, PrunePass

    if hasattr(sensitivity, "curves"):
        curves = sensitivity.curves()
    else:
        curves = curves_of(json.loads(Path(sensitivity).read_text()))
    if not curves:
        raise UsageError("the sensitivity results have no pruning curves")
    what = "macs" if target_macs is not None else "params"
    share = 1.0 - (target_macs if target_macs is not None else target_params)
    wanted, ratios = share, {}
    for _ in range(8):
        ratios = allocate(curves, wanted, what=what)
        if not ratios:
            break
        report = PrunePass(PruneOptions("l1", group_ratios=ratios, dry_run=True, **plan_options))(model).report
        before, after = report.macs if what == "macs" else report.params
        removed = 1 - after / before if before else 0.0
        if removed >= share - 0.005:
            break
        wanted += share - removed
    return ratios
