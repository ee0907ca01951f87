"""The result of a parity check and its JSON schema.

``CheckResult.to_dict()`` (and ``onnxprune check --json FILE``) has this schema; keys are
only ever added, a change of meaning bumps ``schema_version``. Non-finite statistics are
written as ``null`` (JSON has no Infinity): ``sqnr_db`` is null when the outputs are equal
(infinite SQNR); statistics that do not apply (top-k of a non-classifier output) are null.

.. code-block:: text

    schema_version   1
    passed           bool: every judged comparison holds
    reference        model path (or graph name of an in-memory model)
    candidate        likewise
    data             {source, samples, batch_size, synthetic, labels}
    providers        {requested: [names], used: [names], unavailable: [{provider, reason}],
                      options: {provider: {key: value}} as given to ONNX Runtime,
                      placement: {provider: {reference: {provider: nodes}, candidate: {...},
                                  share: of the nodes the provider ran itself}},
                      precision: [{provider, base, samples, options, fp32_options, max_abs,
                                   max_abs_fp32, sqnr_db, sqnr_db_fp32, collapsed}]}
                     precision: the reference rerun with the provider's fp32 hint when its
                     drift from the base provider is beyond fp32 rounding; collapsed: the
                     drift was the provider's reduced precision (bf16/fp16/TF32)
    tolerances       {preset, atol, rtol, stat, per_output_atol, per_output_rtol, min_cosine,
                      min_sqnr, min_top1, min_topk, top_k, max_accuracy_drop}
    comparisons      [{name, reference: {model, provider}, candidate: {model, provider},
                       judged, passed, outputs: {OUTPUT: STATS + {passed, failures: [str]}}}]
                     judged=false: the reference against itself across providers (the
                     providers' own drift, shown for context, never failing the check)
    failures         [str]: one line per failing output of a judged comparison
    notes            [str]: what the user should know (random inputs, missing providers...)
    layerwise        null, or {reference_provider, candidate_provider, samples,
                      tensors: [{name, node, op_type, candidate_node, candidate_tensor,
                                 status, reference_shape, candidate_shape, passed, failures,
                                 max_abs, mean_abs, max_rel, cosine, sqnr_db, mismatches,
                                 mismatch_fraction}],
                      first_failures: [tensor names], matched, unmatched}
                     tensors in the reference's topological order; node/op_type: the
                     reference producer; candidate_tensor: what it was compared with (a
                     DequantizeLinear output in QDQ models); status: compared |
                     surviving-channels (pruned, compared on the kept channels) |
                     shape-differs (pruned, channel map unknown: statistics null);
                     first_failures: failing tensors with nothing failing upstream
    seconds          wall time of the check
    unevaluated      [criterion]: criteria of the preset that no output could evaluate (e.g.
                     max_accuracy_drop without labels); a criterion asked for by name that
                     cannot be evaluated is an error instead
    layerwise_providers  null, or {provider: layerwise report of the reference on the first
                     provider vs the reference on this one}: where each provider departs
    execution        null (one process), or {mode, workers, units, retries, seconds,
                      per_worker: [{worker, units, samples, seconds, load_seconds, peak_rss}]}

    STATS            elements, samples, max_abs, mean_abs, p50_abs, p99_abs, max_rel,
                     mean_rel, p99_rel, mean_abs_reference, cosine, cosine_min, sqnr_db,
                     mismatches, mismatch_fraction, nonfinite_mismatches, top1_agreement,
                     topk_agreement, top_k, accuracy_reference, accuracy_candidate,
                     accuracy_drop  (see onnxprune.parity.metrics for the definitions)
"""

from __future__ import annotations

import dataclasses
import math

from onnxprune.errors import ParityError
from onnxprune.parity.tolerances import Tolerances
from onnxprune.report import short_repr

SCHEMA_VERSION = 1


@dataclasses.dataclass
class CheckResult:
    """Truthy when parity holds (like Polygraphy's comparison results)."""

    __repr__ = short_repr  # a line, not the whole graph

    passed: bool
    reference: str
    candidate: str
    data: dict
    providers: dict
    tolerances: Tolerances
    comparisons: list[dict]
    failures: list[str]
    notes: list[str]
    layerwise: dict | None = None
    seconds: float = 0.0
    unevaluated: list[str] = dataclasses.field(default_factory=list)
    layerwise_providers: dict | None = None
    execution: dict | None = None  # workers and their timing, when several shared the work

    def __bool__(self) -> bool:
        return self.passed

    def output(self, name: str, comparison: int = 0) -> dict:
        """Statistics of output ``name`` in the ``comparison``-th comparison (0: same provider)."""
        return self.comparisons[comparison]["outputs"][name]

    def to_dict(self) -> dict:
        return _finite_or_none({
            "schema_version": SCHEMA_VERSION,
            "passed": self.passed,
            "reference": self.reference,
            "candidate": self.candidate,
            "data": self.data,
            "providers": self.providers,
            "tolerances": self.tolerances.to_dict(),
            "comparisons": self.comparisons,
            "failures": self.failures,
            "notes": self.notes,
            "layerwise": self.layerwise,
            "seconds": self.seconds,
            "unevaluated": self.unevaluated,
            "layerwise_providers": self.layerwise_providers,
            "execution": self.execution,
        })

    def raise_on_failure(self) -> CheckResult:
        """Raise :class:`ParityError` (exit code 1) naming the first failure; else return self."""
        if not self.passed:
            more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            raise ParityError(f"parity failed: {self.failures[0]}{more}")
        return self

    def __str__(self) -> str:
        from onnxprune.parity.render import render

        return render(self)


def _finite_or_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj
