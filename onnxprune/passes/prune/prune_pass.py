"""Structured channel pruning: :class:`PrunePass`.

The pass chains the pieces: :func:`analysis.analyze` finds the groups of coupled channels, a
criterion (:mod:`.importance`) scores them, the planner (:mod:`.planner`) picks what to remove
and :func:`rewrite.apply_plan` slices the tensors. Checking the result (ONNX checker, ONNX
Runtime run, output shapes unchanged) is the caller's job: ``prune()`` (onnxprune.api) runs
the pipeline's :class:`~onnxprune.pipeline.ShapeVerifier` after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from onnxprune.errors import UsageError
from onnxprune.passes.base import Pass, PassResult
from onnxprune.passes.prune.activations import collect_channel_stats, hooked_slots
from onnxprune.passes.prune.analysis import analyze
from onnxprune.passes.prune.channel_map import CHANNEL_MAP_KEY, record_channel_map
from onnxprune.passes.prune.group import Group, PrunePlan, Role
from onnxprune.passes.prune.importance import CRITERIA, Criterion, get_criterion, normalize
from onnxprune.passes.prune.moments import batchnorm_channel_means
from onnxprune.passes.prune.options import DEFAULT_ROUND_TO, PruneOptions, check_ratio
from onnxprune.passes.prune.planner import CostModel, make_candidates, match_groups, plan_at, search_ratio
from onnxprune.passes.prune.reconstruct import prune_and_refit
from onnxprune.passes.prune.refit import LayerFit
from onnxprune.passes.prune.report import GroupReport, PruneReport, control_flow_note
from onnxprune.passes.prune.rewrite import apply_plan
from onnxprune.passes.prune.runner import ModelRunner, required
from onnxprune.passes.prune.selection import ConsumerEnergy

Batches = Callable[[], Iterable[Mapping[str, np.ndarray]]]


def _members(group: Group) -> list[str]:
    """The layers whose output channels form ``group``, in graph order, each once."""
    return list(dict.fromkeys(s.node.name for s in group.by_role(Role.PRODUCER) if s.node.name))


@dataclasses.dataclass
class PrunePassResult(PassResult):
    report: PruneReport | None = None
    plan: PrunePlan | None = None


def _criterion(name: str, data: Batches | None, progress: bool, runner: ModelRunner | None) -> Criterion:
    """:func:`get_criterion`, plus the consumer-aware ones (:mod:`.selection` builds on
    :mod:`.importance`, so they are looked up here, not there)."""
    if name in ("energy", "thinet"):
        return ConsumerEnergy(data, name == "thinet", progress, runner)
    return get_criterion(name, data, progress, runner)


class PrunePass(Pass):
    """Remove whole channels with the lowest importance (changes the outputs: not exact).

    What and how much: ``options`` (:class:`PruneOptions`).
    ``calibration`` (a callable returning fresh batches) feeds data-driven criteria, the means
    that ``compensate`` folds into the next layers' biases (without it, estimated from BatchNorm
    statistics: :mod:`.moments`) and the least-squares refit of ``reconstruct`` (on by default
    with it: :mod:`.reconstruct`; ``refit_inputs="pruned"`` reads each layer's inputs from the
    pruned model, upstream error included, one pass per depth of refitted layers).
    ``criterion``: a :class:`~.importance.Criterion` of one's own, instead of the named one.
    ``runner`` runs the model on the calibration data (:mod:`.runner`; the pass itself stays
    pure IR): needed with ``calibration``, e.g. ``onnxprune.runtime.OrtRunner()``.

    In a pipeline, run ``eliminate-identity`` and ``fold-constants`` before it (as ``prune()``
    does): parameters hidden behind Identity/Constant nodes make the analysis decline groups.
    """

    name = "prune"
    exact = False

    def __init__(
        self,
        options: PruneOptions,
        *,
        calibration: Batches | None = None,
        criterion: Criterion | None = None,
        progress: bool = False,
        runner: ModelRunner | None = None,
    ) -> None:
        super().__init__()
        self.options = options
        if calibration is not None:
            required(runner, "pruning with calibration data")
        name = options.criterion_for(calibration is not None)
        self.criterion = criterion if criterion is not None else _criterion(name, calibration, progress, runner)
        if self.criterion.needs_data and calibration is None:
            raise UsageError(f"criterion '{self.criterion.name}' needs calibration data (--calib)")
        if options.reconstruct and calibration is None:
            raise UsageError("reconstruction refits layers on calibration data: give it (--calib)")
        self.calibration, self.progress, self.runner = calibration, progress, runner
        self.reconstruct = calibration is not None if options.reconstruct is None else options.reconstruct

    def call(self, model: ir.Model) -> PrunePassResult:
        # Steps, not a percentage: the rewrite step (with the refit) is most of the time, and a bar
        # at 75 % through it looked stuck; the refit shows its own bars with totals.
        with tqdm(total=4, desc="prune", unit="step", disable=not self.progress, leave=False,
                  bar_format="{desc}: step {n_fmt}/{total_fmt}{postfix} [{elapsed}]") as bar:
            return self._run(model, bar)

    def _run(self, model: ir.Model, bar: tqdm) -> PrunePassResult:
        o = self.options
        self.criterion.notes.clear()  # group ids are per model
        bar.set_postfix_str("analysis")
        groups = analyze(model)
        bar.update()
        bar.set_postfix_str(f"scores ({self.criterion.name})")
        excluded = self._matched(model, groups, o.exclude, "exclusion")
        local, acted = {}, []
        by_id = {g.id: g for g in groups}
        for pattern, ratio in o.group_ratios.items():
            matched = match_groups(model, groups, [pattern], "group ratio", roles=[Role.PRODUCER])[pattern]
            local.update(dict.fromkeys(matched, ratio))
            acted += [f"--group-ratio '{pattern}={ratio:g}' acts on group {by_id[gid].name}, which couples "
                      + ", ".join(_members(by_id[gid])) for gid in sorted(matched)
                      if len(_members(by_id[gid])) > 1]  # tied through a residual or Concat: say so
        active = [g for g in groups if g.prunable and g.id not in excluded and g.size > 1]
        if local and not o.ratio and o.target_macs is None and o.target_params is None:
            active = [g for g in active if g.id in local]  # only they lose channels: score only them
        self.criterion.prepare(model, active)
        raw = {g.id: np.asarray(self.criterion(g), dtype=np.float64) for g in active}
        scores = {gid: normalize(s) for gid, s in raw.items()}
        bar.update()
        bar.set_postfix_str("plan")
        candidates = make_candidates(
            active, scores, min_channels=o.min_channels, round_to=o.round_to, group_ratios=local
        )
        cost = CostModel(model, groups)
        ratio, target = o.ratio or 0.0, None
        if o.target_macs is not None or o.target_params is not None:
            ratio, plan = search_ratio(
                candidates, cost, target_macs=o.target_macs, target_params=o.target_params, uniform=o.uniform
            )
            target = {"macs": o.target_macs} if o.target_macs is not None else {"params": o.target_params}
        else:
            plan = plan_at(candidates, ratio, uniform=o.uniform)
        macs, params = cost.estimate(plan)
        report = PruneReport(
            self.criterion.name, ratio, target, self._rows(groups, excluded, scores, plan),
            (cost.macs, macs), (cost.params, params),
        )
        report.notes = [note for note in (control_flow_note(model),) if note] + acted
        report.notes += self._rounding_notes(report, ratio, target, set(local))
        bar.update()
        if o.dry_run or not plan.keep:
            return PrunePassResult(model, False, [], report, plan)
        bar.set_postfix_str("rewrite")
        if self.reconstruct:
            report.changes, report.reconstruction, report.compensation = self._refit(model, groups, plan)
        else:
            means, report.compensation = self._channel_means(model, groups, plan)
            report.changes = apply_plan(model, groups, plan, channel_constants=means)
        # Which channels survive, for `check --layerwise` against the original. A second
        # pruning would need the maps composed: drop the stale one rather than mislead.
        if model.metadata_props.pop(CHANNEL_MAP_KEY, None) is None:
            record_channel_map(model, groups, plan)
        bar.update()
        return PrunePassResult(model, True, list(report.changes), report, plan)

    @staticmethod
    def _matched(model: ir.Model, groups: list[Group], patterns: Sequence[str], what: str) -> set[int]:
        return set().union(*match_groups(model, groups, patterns, what).values()) if patterns else set()

    def _rounding_notes(
        self, report: PruneReport, ratio: float | None, target: dict[str, Any] | None, own: set[int]
    ) -> list[str]:
        """--round-to can undo a small ratio (nothing removed) or overshoot one: say so (over
        the groups the ratio ranks: not declined, excluded or with their own --group-ratio)."""
        ranked = [g for g in report.groups if g.status in ("pruned", "kept") and g.id not in own]
        before, after = sum(g.channels for g in ranked), sum(g.kept for g in ranked)
        round_to = self.options.round_to
        if round_to <= 1 or target is not None or not ratio or not before:
            return []
        removed = (before - after) / before
        if removed == 0:
            return [f"--ratio {ratio:g} removed no channel: --round-to {round_to} keeps channel counts "
                    f"multiples of {round_to} (--round-to 1 for exact counts)"]
        if abs(removed - ratio) > 0.02:
            return [f"--ratio {ratio:g} removed {removed:.1%} of the channels: --round-to {round_to} "
                    f"rounds each group's kept count to a multiple of {round_to} (--round-to 1 for exact counts)"]
        return []

    def _rows(
        self, groups: list[Group], excluded: set[int], scores: dict[int, np.ndarray], plan: PrunePlan
    ) -> list[GroupReport]:
        rows = []
        for g in groups:
            if not g.prunable:
                rows.append(GroupReport(g.id, g.name, g.size, g.size, "declined", g.declined))
                continue
            if g.id in excluded:
                rows.append(GroupReport(g.id, g.name, g.size, g.size, "excluded", "excluded by --exclude"))
                continue
            kept = plan.keep.get(g.id)
            row = GroupReport(g.id, g.name, g.size, g.size if kept is None else len(kept),
                              "kept" if kept is None else "pruned")
            row.reason = self.criterion.notes.get(g.id)
            if g.id in scores:
                s, removed = scores[g.id], plan.removed(g)
                row.scores = {
                    "min": float(s.min()), "median": float(np.median(s)), "max": float(s.max()),
                    "max_removed": float(s[removed].max()) if len(removed) else None,
                }
            elif g.size < 2:
                row.reason = "a single channel"
            rows.append(row)
        for g, row in zip(groups, rows):
            row.members = _members(g)
            row.readers = sorted({s.node.name for s in g.by_role(Role.CONSUMER) if s.node.name})
            row.removed = plan.removed(g).tolist() if g.id in plan.keep else []
        return rows

    def _channel_means(
        self, model: ir.Model, groups: Sequence[Group], plan: PrunePlan
    ) -> tuple[dict[int, np.ndarray] | None, str | None]:
        """Each pruned group's channel means at its consumers, folded into their biases for the
        removed channels: from calibration data when given, else estimated from BatchNorm."""
        if not self.options.compensate:
            return None, None
        pruned = [g for g in groups if g.id in plan.keep]
        if self.calibration is not None:
            stats = getattr(self.criterion, "stats", None)  # already collected by a data-driven criterion
            if not stats or any(g.id not in stats for g in pruned):
                stats = collect_channel_stats(model, pruned, self.calibration(), progress=self.progress,
                                              runner=required(self.runner, "mean compensation"))
            return {g.id: stats[g.id].mean for g in pruned}, "calibration means"
        means = {g.id: m for g in pruned if (m := batchnorm_channel_means(g, hooked_slots(g))) is not None}
        return (means, "BatchNorm statistics (data-free)") if means else (None, None)

    def _refit(
        self, model: ir.Model, groups: list[Group], plan: PrunePlan
    ) -> tuple[list[str], list[LayerFit], str | None]:
        """apply_plan with least-squares refits; means only for the groups still read by a
        layer that is not refit (a refit's bias is its own mean compensation)."""
        assert self.calibration is not None  # __init__ turns reconstruct on only with data
        changes, fits = prune_and_refit(
            model, groups, plan, self.calibration, runner=required(self.runner, "reconstruction"),
            channel_means=lambda part: self._channel_means(model, groups, part)[0],
            sequential=self.options.refit_inputs == "pruned", progress=self.progress,
        )
        return changes, fits, "calibration means" if self.options.compensate else None


__all__ = ["CRITERIA", "DEFAULT_ROUND_TO", "PruneOptions", "PrunePass", "PrunePassResult", "check_ratio"]
