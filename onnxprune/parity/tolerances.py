"""What "parity holds" means: elementwise tolerances and model-level criteria, and presets.

Elementwise (Polygraphy-style, per output): an element is within tolerance when
``|c - r| <= atol + rtol * |r|`` (numpy.isclose). The statistic decides how many may not be:

* ``max``: none (every element within tolerance);
* ``mean``: ``mean|c - r| <= atol + rtol * mean|r|``;
* ``pNN`` (e.g. ``p99``, ``p99.9``): at least NN % of the elements within tolerance, i.e.
  the NN-th percentile of ``|c - r| - rtol*|r|`` is at most ``atol`` (counted exactly,
  not estimated).

Model-level criteria (for quantized models, where elementwise tolerances say little):
``min_cosine``, ``min_sqnr`` (dB), ``min_top1`` / ``min_topk`` agreement and
``max_accuracy_drop`` (reference accuracy minus candidate accuracy, on labels).

Presets: ``exact`` (our exact passes: every element within 1e-4 + 1e-4*|r|) and ``int8``
(no elementwise check; cosine >= 0.99, SQNR >= 15 dB, top-1 agreement >= 98 %, accuracy
drop <= 1 point) and ``pruned`` (top-1 agreement >= 95 %, accuracy drop <= 1 point). ``auto``
picks ``pruned`` when the candidate's metadata says onnxprune pruned it, else ``int8`` when only
the candidate is quantized, else ``exact``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping

from onnxprune.errors import UsageError
from onnxprune.passes.quantize.detect import is_quantized_op

PRESETS: dict[str, dict] = {
    "exact": {"atol": 1e-4, "rtol": 1e-4, "stat": "max"},
    "int8": {
        "atol": None,
        "rtol": 0.0,
        "stat": "max",
        "min_cosine": 0.99,
        "min_sqnr": 15.0,
        "min_top1": 0.98,
        "max_accuracy_drop": 0.01,
    },
    # Pruning without retraining changes the outputs by design: only what a classifier is
    # judged by counts (what `compress` checks after pruning, and `check --preset auto` on a
    # model whose metadata says it was pruned).
    "pruned": {"atol": None, "rtol": 0.0, "stat": "max", "min_top1": 0.95, "max_accuracy_drop": 0.01},
}
_STAT = re.compile(r"^(max|mean|p(\d{1,2}(\.\d+)?))$")


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Per-output tolerances (``atol``/``rtol`` maps override the defaults by output name)."""

    atol: float | None = 1e-4  # None: no elementwise check
    rtol: float = 1e-4
    stat: str = "max"
    per_output_atol: Mapping[str, float | None] = dataclasses.field(default_factory=dict)
    per_output_rtol: Mapping[str, float] = dataclasses.field(default_factory=dict)
    min_cosine: float | None = None
    min_sqnr: float | None = None
    min_top1: float | None = None
    min_topk: float | None = None
    top_k: int = 5
    max_accuracy_drop: float | None = None
    preset: str = "custom"

    def __post_init__(self) -> None:
        if not _STAT.match(self.stat) or (self.quantile is not None and not 0 < self.quantile < 100):
            raise UsageError(f"unknown error statistic '{self.stat}' (use max, mean or pNN, e.g. p99)")
        if self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}")
        for flag, value, low in (("--min-top1", self.min_top1, 0), ("--min-topk", self.min_topk, 0),
                                 ("--max-accuracy-drop", self.max_accuracy_drop, 0),
                                 ("--min-cosine", self.min_cosine, -1)):
            if value is not None and not low <= value <= 1:  # shares, not percentages: 0.99, not 99
                raise UsageError(f"{flag} must be between {low} and 1 (a share, e.g. 0.99), got {value:g}")
        for name, value in [("atol", self.atol), ("rtol", self.rtol), *self.per_output_atol.items(),
                            *self.per_output_rtol.items()]:
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise UsageError(f"tolerance for '{name}' must be a finite number >= 0, got {value}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> Tolerances:
        """A preset with some fields overridden (``None`` overrides are ignored)."""
        if name not in PRESETS:
            raise UsageError(f"unknown preset '{name}' (choose from: auto, {', '.join(PRESETS)})")
        fields = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(preset=name, **fields)

    @property
    def quantile(self) -> float | None:
        return float(self.stat[1:]) if self.stat.startswith("p") else None

    def atol_for(self, name: str) -> float | None:
        return self.per_output_atol.get(name, self.atol)

    def rtol_for(self, name: str) -> float:
        return self.per_output_rtol.get(name, self.rtol)

    def named(self) -> set[str]:
        return set(self.per_output_atol) | set(self.per_output_rtol)

    def judge(self, name: str, stats: Mapping, *, model_level: bool = True) -> list[str]:
        """Why ``stats`` (an OutputStats summary) of tensor ``name`` breaks parity; [] if it holds.

        ``model_level=False`` (intermediate tensors) skips top-k and accuracy criteria.
        """
        failures = []
        atol, rtol = self.atol_for(name), self.rtol_for(name)
        if atol is not None:
            failures += self._judge_elementwise(stats, atol, rtol)
        elif stats["nonfinite_mismatches"]:
            failures.append(f"{stats['nonfinite_mismatches']} elements are NaN/Inf in one model only")
        if self.min_cosine is not None and not stats["cosine"] >= self.min_cosine:
            failures.append(f"cosine {stats['cosine']:.5f} < {self.min_cosine:g}")
        if self.min_sqnr is not None and not stats["sqnr_db"] >= self.min_sqnr:
            failures.append(f"SQNR {stats['sqnr_db']:.1f} dB < {self.min_sqnr:g} dB")
        if not model_level or stats.get("top1_agreement") is None:
            return failures
        if self.min_top1 is not None and stats["top1_agreement"] < self.min_top1:
            failures.append(f"top-1 agreement {stats['top1_agreement']:.2%} < {self.min_top1:.2%}")
        if self.min_topk is not None and stats["topk_agreement"] < self.min_topk:
            failures.append(
                f"top-{stats['top_k']} agreement {stats['topk_agreement']:.2%} < {self.min_topk:.2%}"
            )
        drop = stats.get("accuracy_drop")
        if self.max_accuracy_drop is not None and drop is not None and drop > self.max_accuracy_drop + 1e-12:
            failures.append(
                f"accuracy drop {drop:.2%} > {self.max_accuracy_drop:.2%} (reference "
                f"{stats['accuracy_reference']:.2%}, candidate {stats['accuracy_candidate']:.2%})"
            )
        return failures

    def _judge_elementwise(self, stats: Mapping, atol: float, rtol: float) -> list[str]:
        bound = f"atol {atol:g} + rtol {rtol:g}*|ref|"
        if self.stat == "mean":
            limit = atol + rtol * stats["mean_abs_reference"]
            if stats["nonfinite_mismatches"] or not stats["mean_abs"] <= limit:
                return [f"mean abs error {stats['mean_abs']:.3g} > {limit:.3g} ({bound} on the mean)"
                        + _nonfinite(stats)]
            return []
        allowed = 0.0 if self.quantile is None else 1 - self.quantile / 100
        if stats["mismatch_fraction"] > allowed + 1e-12:
            within = f" (allowed {allowed:.2%} for {self.stat})" if allowed else ""
            return [
                f"{stats['mismatches']} of {stats['elements']} elements outside {bound}{within}; "
                f"max abs error {stats['max_abs']:.3g}" + _nonfinite(stats)
            ]
        return []

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["per_output_atol"] = dict(self.per_output_atol)
        data["per_output_rtol"] = dict(self.per_output_rtol)
        return data


def _nonfinite(stats: Mapping) -> str:
    n = stats["nonfinite_mismatches"]
    return f" ({n} NaN/Inf in one model only)" if n else ""


def is_quantized(op_types: Iterable[str]) -> bool:
    """Whether any of these ops marks a quantized model (the ops quantize refuses to requantize)."""
    return any(is_quantized_op(op) for op in op_types)


def parse_tolerance_specs(specs: Iterable[str], option: str) -> tuple[float | None, dict[str, float]]:
    """``["1e-4", "logits:1e-2"]`` -> (1e-4, {"logits": 0.01}); the last colon splits name:value."""
    default, per_output = None, {}
    for spec in specs:
        name, _, text = spec.rpartition(":")
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{option} {spec!r}: expected a number or OUTPUT:NUMBER") from None
        if name:
            per_output[name] = value
        else:
            default = value
    return default, per_output
