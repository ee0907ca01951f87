"""What the user chooses about structured pruning, in one place: :class:`PruneOptions`.

One value, validated once, shared by :class:`~onnxprune.passes.prune.PrunePass`, the
file-level ``prune()``, ``compress(prune_options=...)`` and ``onnxprune prune`` (whose flags
tests/test_cli_prune_options.py checks against these fields and defaults). What is not a choice
about the pruning itself (the calibration data, progress bars, where to write, timing) stays
with the caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from onnxprune.errors import UsageError
from onnxprune.passes.prune.importance import CRITERIA
from onnxprune.passes.prune.planner import check_constraints

# Kept channel counts are multiples of 8 unless asked otherwise: ONNX Runtime's CPU convolutions
# (MLAS NCHWc, blocks of 8 or 16 channels) and GPU tensor cores want them: unrounded counts
# can make a pruned model slower than the original (`bench/prune_bench.py --latency`).
DEFAULT_ROUND_TO = 8
# The criterion when calibration data is given and none is named: measured on real models
# (bench/accuracy_bench.py), see README "Accuracy after pruning".
DATA_CRITERION = "thinet"
REFIT_INPUTS = ("original", "pruned")


def check_ratio(ratio: float, what: str = "ratio") -> float:
    if not 0 <= ratio < 1:
        raise UsageError(f"{what} is the share of channels to remove and must be in [0, 1) (given {ratio})")
    return float(ratio)


@dataclasses.dataclass(frozen=True)
class PruneOptions:
    """How much to prune, how channels are ranked, and how the rest is made up for.

    How much (exactly one of ``ratio``, ``target_macs``, ``target_params``, or only
    ``group_ratios``): ``ratio`` is the share of channels to remove, ranked across all layers
    (within each with ``uniform``); ``target_macs``/``target_params`` the share of MACs/parameters
    to keep (the ratio is searched); ``group_ratios`` ({node name or glob: ratio}) an own ratio
    for the groups of matching nodes. ``criterion``: a name of :data:`~.importance.CRITERIA`;
    None: :data:`DATA_CRITERION` with calibration data, else l1. ``round_to``: kept channel
    counts are multiples of it (1: the ranking alone decides); ``min_channels``: every group
    keeps at least this many. ``exclude``: node names or globs left untouched. ``compensate``:
    fold the removed channels' mean into the next layer's bias (calibration means, else
    BatchNorm statistics). ``reconstruct`` (None: on with calibration data): refit the layers
    reading pruned channels by least squares; ``refit_inputs``: their inputs from the
    "original" model or the "pruned" one. ``dry_run``: plan and report, change nothing.
    ``distill``: then train the pruned weights to match the original's outputs on the
    calibration data (the ``distill`` extra; run by ``prune()``, not the pass), for at most
    ``distill_epochs`` epochs / ``distill_time`` seconds, also matching ``distill_hints``
    intermediate tensors whose channels were kept.
    """

    criterion: str | None = None
    ratio: float | None = None
    target_macs: float | None = None
    target_params: float | None = None
    uniform: bool = False
    group_ratios: Mapping[str, float] = dataclasses.field(default_factory=dict)
    round_to: int = DEFAULT_ROUND_TO
    min_channels: int = 1
    exclude: Sequence[str] = ()
    compensate: bool = True
    reconstruct: bool | None = None
    refit_inputs: str = "original"
    dry_run: bool = False
    distill: bool = False
    distill_epochs: int = 30
    distill_time: float = 60.0
    distill_hints: int = 0

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.ratio, self.target_macs, self.target_params)]
        if sum(given) > 1:
            raise UsageError("give only one of --ratio, --target-macs and --target-params")
        if sum(given) == 0 and not self.group_ratios:
            raise UsageError("say how much to prune: --ratio, --target-macs, --target-params or --group-ratio")
        if self.ratio is not None:
            object.__setattr__(self, "ratio", check_ratio(self.ratio))
        for option, target in (("--target-macs", self.target_macs), ("--target-params", self.target_params)):
            if target is not None and not 0 < target <= 1:
                raise UsageError(f"{option} is the share to keep and must be in (0, 1] (given {target})")
        ratios = {k: check_ratio(v, f"ratio of '{k}'") for k, v in (self.group_ratios or {}).items()}
        object.__setattr__(self, "group_ratios", ratios)
        if self.criterion is not None and self.criterion not in CRITERIA:
            raise UsageError(f"unknown criterion '{self.criterion}' (available: {', '.join(CRITERIA)})")
        if self.refit_inputs not in REFIT_INPUTS:
            raise UsageError(f"--refit-inputs must be 'pruned' or 'original' (given '{self.refit_inputs}')")
        check_constraints(self.min_channels, self.round_to)
        if self.distill and self.dry_run:
            raise UsageError("--distill trains the pruned model and --dry-run prunes nothing: choose one")
        if self.distill_epochs < 1 or self.distill_time <= 0 or self.distill_hints < 0:
            raise UsageError("--distill-epochs must be at least 1, --distill-time above 0 and --distill-hints "
                             f"at least 0 (given {self.distill_epochs}, {self.distill_time}, {self.distill_hints})")
        exclude = [self.exclude] if isinstance(self.exclude, str) else self.exclude  # "name", not n, a, m, e
        object.__setattr__(self, "exclude", tuple(exclude))

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (for the command line's flags)."""
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        return field.default

    def replace(self, **changes: Any) -> PruneOptions:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def criterion_for(self, has_data: bool) -> str:
        """The criterion's name: the one chosen, else the default for the data at hand."""
        if self.criterion is not None:
            return self.criterion
        return DATA_CRITERION if has_data else "l1"

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["exclude"] = list(self.exclude)
        data["group_ratios"] = dict(self.group_ratios)
        return data


__all__ = ["DATA_CRITERION", "DEFAULT_ROUND_TO", "PruneOptions", "check_ratio"]
