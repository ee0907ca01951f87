"""The planner: which channels of which groups to remove.

Input: the prunable groups and their normalised scores (:mod:`.importance`). Output: a
:class:`PrunePlan`. Three ways to say how much:

- a global ``ratio``: all channels of all candidate groups are ranked together and the
  lowest ``ratio`` share is removed (layers that matter less lose more);
- per-group ratios (``uniform``, or ``group_ratios`` by name pattern): each group removes
  its own lowest ``ratio`` share;
- a target (``target_macs=0.6`` keeps 60 % of the MACs, ``target_params``): bisection on the
  ratio, each step costed by :class:`CostModel` without rewriting the model, then
  :func:`give_back` restores the rounding steps the target does not need.

Constraints applied to every group: at least ``min_channels`` (>= 1) kept, never all
removed; the kept count rounded *up* to a multiple of ``round_to`` (hardware-friendly
channel counts; rounding up keeps the result within the requested ratio); grouped
convolutions keep the same count in each conv group. The ratio is therefore an upper bound
on the share removed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxprune.errors import UsageError
from onnxprune.graphutils import MAC_OPS, node_macs, param_count
from onnxprune.passes.cleanup import ShapeInference
from onnxprune.passes.prune.group import Group, PrunePlan, Role, Slot


@dataclasses.dataclass(eq=False)
class Candidate:
    """A prunable group with its normalised scores and the constraints on its kept count."""

    group: Group
    scores: np.ndarray
    min_keep: int = 1
    step: int = 1  # kept count is a multiple of step (or the whole group)
    blocks: int = 1  # equal contiguous divisions (grouped Conv) that keep equal counts
    ratio: float | None = None  # a per-group ratio (local ranking) instead of the global one

    def kept_count(self, remove: int) -> int:
        keep = max(self.group.size - remove, self.min_keep)
        return min(self.group.size, math.ceil(keep / self.step) * self.step)

    def keep(self, count: int) -> np.ndarray:
        """The ``count`` best channels, sorted (the same number from each block)."""
        size, per_block = self.group.size // self.blocks, count // self.blocks
        kept = [
            b * size + np.argsort(-self.scores[b * size : (b + 1) * size], kind="stable")[:per_block]
            for b in range(self.blocks)
        ]
        return np.sort(np.concatenate(kept))


def check_constraints(min_channels: int, round_to: int) -> None:
    """The per-group constraints must be at least 1 (UsageError otherwise)."""
    if min_channels < 1:
        raise UsageError(f"--min-channels must be at least 1 (given {min_channels})")
    if round_to < 1:
        raise UsageError(f"--round-to must be at least 1 (given {round_to})")


def make_candidates(
    groups: Sequence[Group],
    scores: Mapping[int, np.ndarray],
    *,
    min_channels: int = 1,
    round_to: int = 1,
    excluded: Iterable[int] = (),
    group_ratios: Mapping[int, float] | None = None,
) -> list[Candidate]:
    """Candidates for every prunable, non-excluded group (``group_ratios``: id -> local ratio)."""
    check_constraints(min_channels, round_to)
    excluded, group_ratios = set(excluded), dict(group_ratios or {})
    result = []
    for group in groups:
        if not group.prunable or group.id in excluded or group.size < 2:
            continue
        step = math.lcm(round_to, group.divisions)
        result.append(
            Candidate(group, np.asarray(scores[group.id], dtype=np.float64), min_channels,
                      step, group.divisions, group_ratios.get(group.id))
        )
    return result


def plan_at(candidates: Sequence[Candidate], ratio: float, *, uniform: bool = False) -> PrunePlan:
    """The plan removing ``ratio`` of the candidates' channels (global ranking unless ``uniform``).

    Candidates with their own ``ratio`` always use it, ranked within their group.
    """
    removal = {}
    pooled = [c for c in candidates if c.ratio is None and not uniform]
    for c in candidates:
        if c not in pooled:
            local = c.ratio if c.ratio is not None else ratio
            removal[c.group.id] = int(local * c.group.size)
    if pooled:
        scores = np.concatenate([c.scores for c in pooled])
        owner = np.concatenate([np.full(c.group.size, i) for i, c in enumerate(pooled)])
        lowest = owner[np.argsort(scores, kind="stable")[: int(ratio * len(scores))]]
        counts = np.bincount(lowest, minlength=len(pooled))
        removal.update({c.group.id: int(n) for c, n in zip(pooled, counts)})
    keep = {}
    for c in candidates:
        count = c.kept_count(removal[c.group.id])
        if count < c.group.size:
            keep[c.group.id] = c.keep(count)
    return PrunePlan(keep)


class CostModel:
    """MACs and parameters of the model a plan would produce, without rewriting it.

    Every slot of a constant (producer, param, consumer) loses ``len(slot.indices(removed))``
    entries along its axis; a tensor pruned on several axes keeps the product of what each
    axis keeps. The MACs of Conv/ConvTranspose/Gemm/MatMul are proportional to the number of
    elements of their weight at fixed spatial size (stats.node_macs: out[1:]·W[1:], x[1:]·W[1:],
    M·N·K), so each scales by its weight's kept share.
    """

    def __init__(self, model: ir.Model, groups: Sequence[Group]) -> None:
        self.slots: dict[int, list[tuple[Group, Slot]]] = {}  # id(value) -> [(group, slot)]
        self.values: dict[int, ir.Value] = {}
        self.groups = list(groups)
        for group in groups:
            for slot in group.slots:
                if slot.role is not Role.ACTIVATION and slot.value.const_value is not None:
                    self.slots.setdefault(id(slot.value), []).append((group, slot))
                    self.values[id(slot.value)] = slot.value
        mac_nodes = [n for n in model.graph.all_nodes() if n.op_type in MAC_OPS and n.domain == ""]
        if any(n.outputs[0].shape is None for n in mac_nodes):
            ShapeInference()(model)  # MACs need the output shapes
        self.node_macs: list[tuple[int, int]] = []  # (macs, id(weight)) of MAC nodes with pruned weights
        self.macs = 0
        for node in mac_nodes:
            macs = node_macs(node)
            if macs is None:
                continue
            self.macs += macs
            operands = [*node.inputs[1:2], *node.inputs[:1]]
            weight = next((v for v in operands if v is not None and id(v) in self.slots), None)
            if weight is not None:
                self.node_macs.append((macs, id(weight)))
        self.params = param_count(model)

    def kept_share(self, plan: PrunePlan) -> dict[int, float]:
        """Kept share of the elements of every constant the plan touches (id(value) -> share).

        Removed indices are united per axis, so slots that cut the same entries count once;
        a grouped Conv weight's columns (``Slot.groups > 1``) differ per division, and lose
        ``Slot.removed_count`` each.
        """
        removed = {g.id: plan.removed(g) for g in self.groups}
        shares: dict[int, float] = {}
        for key, pairs in self.slots.items():
            cut: dict[int, np.ndarray] = {}
            grouped: dict[int, int] = {}
            for group, slot in pairs:
                gone = removed[group.id]
                if not len(gone):
                    continue
                if slot.groups > 1:
                    grouped[slot.axis] = grouped.get(slot.axis, 0) + slot.removed_count(gone, group.size)
                else:
                    idx = slot.indices(gone, group.size)
                    cut[slot.axis] = np.union1d(cut.get(slot.axis, idx[:0]), idx)
            if cut or grouped:
                dims = list(self._shape(key))
                lost = [len(cut.get(a, ())) + grouped.get(a, 0) for a in range(len(dims))]
                shares[key] = math.prod((d - n) / d for d, n in zip(dims, lost) if d)
        return shares

    def estimate(self, plan: PrunePlan) -> tuple[int, int]:
        """(MACs, parameters) after the plan."""
        shares = self.kept_share(plan)
        macs = self.macs - sum(m * (1 - shares[w]) for m, w in self.node_macs if w in shares)
        params = self.params - sum(int(np.prod(self._shape(k))) * (1 - s) for k, s in shares.items())
        return round(macs), round(params)

    def _shape(self, key: int) -> Sequence[int]:
        tensor = self.values[key].const_value
        assert tensor is not None  # __init__ keeps constants only
        return tensor.shape.numpy()


def search_ratio(
    candidates: Sequence[Candidate],
    cost: CostModel,
    *,
    target_macs: float | None = None,
    target_params: float | None = None,
    uniform: bool = False,
) -> tuple[float, PrunePlan]:
    """The smallest ratio whose plan keeps at most the target share of MACs (or params).

    Cost is monotone in the ratio (more removed never costs more), so bisection finds it;
    :func:`give_back` then trims the overshoot of rounded kept counts.
    """
    if (target_macs is None) == (target_params is None):
        raise UsageError("give exactly one of --target-macs and --target-params")
    if target_macs is not None:
        option, kind, target = "target_macs", "MACs", target_macs
    else:
        assert target_params is not None  # exactly one is given: checked above
        option, kind, target = "target_params", "parameters", target_params
    if not 0 < target <= 1:
        raise UsageError(f"{option} is the share to keep and must be in (0, 1] (given {target})")
    base = cost.macs if kind == "MACs" else cost.params

    def share(plan: PrunePlan) -> float:
        macs, params = cost.estimate(plan)
        return (macs if kind == "MACs" else params) / max(base, 1)

    def fits(plan: PrunePlan) -> bool:
        return share(plan) <= target + 1e-9

    deepest = plan_at(candidates, 1.0, uniform=uniform)
    if not fits(deepest):
        raise UsageError(
            f"target {kind} {target:.0%} is out of reach: at most {1 - share(deepest):.1%} of the {kind} "
            f"can be removed ({len(candidates)} prunable group{'s' if len(candidates) != 1 else ''}, the others are "
            f"declined or excluded; "
            f"each keeps at least its minimum channel count)"
        )
    if fits(plan_at(candidates, 0.0, uniform=uniform)):
        return 0.0, plan_at(candidates, 0.0, uniform=uniform)
    lo, hi, best = 0.0, 1.0, deepest
    for _ in range(40):  # enough to resolve one channel among millions
        mid = (lo + hi) / 2
        plan = plan_at(candidates, mid, uniform=uniform)
        if fits(plan):
            hi, best = mid, plan
        else:
            lo = mid
    return hi, give_back(candidates, best, fits)


def give_back(candidates: Sequence[Candidate], plan: PrunePlan, fits: Callable[[PrunePlan], bool]) -> PrunePlan:
    """Restore whole steps of removed channels, best-scored first, while the plan still ``fits``.

    Bisection stops at the first ratio whose plan fits the target; with kept counts rounded
    to ``round_to``, the group that crossed it may have dropped a whole step (8 channels of a
    64-channel layer is 12 % of two layers' MACs) and overshot. Giving back the steps that
    still fit brings the result close to the target without breaking it.
    """
    keep = dict(plan.keep)
    while True:
        options = []
        for c in candidates:
            kept = keep.get(c.group.id)
            if kept is None:
                continue
            removed = np.sort(np.delete(c.scores, kept))[::-1]
            count = min(c.group.size, len(kept) + c.step)
            options.append((float(removed[: count - len(kept)].mean()), c, count))
        for _, c, count in sorted(options, key=lambda o: -o[0]):
            trial = {**keep, c.group.id: c.keep(count)}
            if count >= c.group.size:
                del trial[c.group.id]
            if fits(PrunePlan(trial)):
                keep = trial
                break
        else:
            return PrunePlan(keep)


def match_groups(
    model: ir.Model,
    groups: Sequence[Group],
    patterns: Sequence[str],
    what: str = "exclusion",
    roles: Iterable[Role] | None = None,
) -> dict[str, set[int]]:
    """Group ids with a slot on a node whose name matches each pattern (exact name or glob).

    ``roles`` limits the slots considered: an exclusion leaves a node untouched, so every
    group slicing any of its tensors matches (all roles); a per-group ratio names the layers
    whose output channels form the group (``roles=[Role.PRODUCER]``), not those reading them.
    A pattern that matches no node of the model is an error (a typo would otherwise silently
    prune the layer the user meant to keep).
    """
    names = [n.name for n in model.graph.all_nodes() if n.name]
    roles = set(roles) if roles is not None else set(Role)
    result = {}
    for pattern in patterns:
        matched = {n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)}
        if not matched:
            raise UsageError(f"{what} '{pattern}' names no node of the model")
        result[pattern] = {g.id for g in groups if any(s.node.name in matched for s in g.slots if s.role in roles)}
    return result
