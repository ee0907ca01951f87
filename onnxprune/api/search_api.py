"""Accuracy-driven pruning: the strongest MAC reduction that holds a budget on held-out data.

``prune_within(model, calib=..., eval_data=..., max_accuracy_drop=0.01, labels=...)`` (or
``min_fidelity=0.98`` without labels: top-1 agreement for classifier outputs, else the mean
per-sample cosine, :func:`.sensitivity_api.score`) bisects the share of MACs to keep: each
probe prunes a fresh copy of the model and measures it on ``eval_data``, never on the
calibration data the pruning saw. The result is the smallest share whose probe met the
budget (to ``tolerance``), or the original model when none did; every probe is in the trace.
Bisection assumes more pruning never helps the metric, which holds closely, not exactly: a
probe that fails above a passing one only makes the search stop early (more conservative).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import onnx_ir as ir

from onnxprune import runtime
from onnxprune.api.sensitivity_api import score
from onnxprune.calibration import open_dataset
from onnxprune.errors import UsageError
from onnxprune.io import ModelLike, as_model, save_model


@dataclasses.dataclass
class Probe:
    keep_macs: float  # the target given to prune()
    macs_removed: float  # measured on the pruned model
    fidelity: float
    accuracy: float | None
    passed: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SearchResult:
    model: ir.Model
    baseline: dict  # the original on the evaluation data
    best: Probe | None  # None: no probe met the budget (the model is the original)
    probes: list[Probe]
    budget: dict
    prune_result: object = None
    output: str | None = None

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "budget": self.budget, "best": self.best.to_dict() if self.best else None,
                "probes": [p.to_dict() for p in self.probes], "output": self.output}


def _outputs(model: ir.Model, dataset, batch_size: int) -> np.ndarray:
    parts = []
    with runtime.session(model) as sess:
        names = [o.name for o in sess.get_outputs()][:1]
        for feeds in dataset.batches(batch_size):
            parts.append(runtime.run_session(sess, names, feeds)[0])
    return np.concatenate(parts)


def meets(baseline: dict, measured: dict, max_accuracy_drop: float | None, min_fidelity: float | None) -> bool:
    """Whether ``measured`` stays within the budget relative to ``baseline``."""
    if max_accuracy_drop is not None and baseline["accuracy"] - measured["accuracy"] > max_accuracy_drop + 1e-12:
        return False
    return min_fidelity is None or measured["fidelity"] >= min_fidelity


def prune_within(
    model: ModelLike,
    output: str | os.PathLike | None = None,
    *,
    calib,
    eval_data,
    labels: str | None = None,
    max_accuracy_drop: float | None = None,
    min_fidelity: float | None = None,
    lowest: float = 0.2,
    tolerance: float = 0.025,
    batch_size: int = 32,
    **prune_options,
) -> SearchResult:
    """Bisect ``target_macs`` in [``lowest``, 1] for the smallest share meeting the budget."""
    from onnxprune.api.prune_api import prune

    if (max_accuracy_drop is None) == (min_fidelity is None):
        raise UsageError("give one budget: max_accuracy_drop (with labels) or min_fidelity")
    if max_accuracy_drop is not None and labels is None:
        raise UsageError("max_accuracy_drop is measured on labels: name them (labels=KEY), or use min_fidelity")
    if eval_data is None:
        raise UsageError("the search measures held-out data: give eval_data (not the calibration data)")
    for key in ("ratio", "target_macs", "target_params"):
        if prune_options.get(key) is not None:
            raise UsageError(f"the search chooses how much to prune: do not give {key}")
    original, _ = as_model(model)
    proto = ir.to_proto(original)
    dataset = open_dataset(eval_data, original, labels=labels)
    ref = _outputs(original, dataset, batch_size)
    truth = dataset.labels
    baseline = score(ref, ref, truth)
    probes: list[Probe] = []
    results: dict[float, object] = {}

    def probe(keep: float) -> Probe:
        copy = ir.serde.deserialize_model(proto)
        result = prune(copy, target_macs=keep, calib=calib, batch_size=batch_size, latency_runs=0, **prune_options)
        measured = score(ref, _outputs(result.model, dataset, batch_size), truth)
        macs = result.before["macs"], result.after["macs"]
        p = Probe(keep, 1 - macs[1] / macs[0] if macs[0] else 0.0, measured["fidelity"], measured["accuracy"],
                  meets(baseline, measured, max_accuracy_drop, min_fidelity))
        probes.append(p)
        if p.passed:
            results[keep] = result
        return p

    lo, hi = lowest, 1.0  # invariant: hi passes (1.0: the original), lo unknown or failing
    if probe(lo).passed:
        hi = lo
    else:
        while hi - lo > tolerance:
            mid = (lo + hi) / 2
            if probe(mid).passed:
                hi = mid
            else:
                lo = mid
    budget = {"max_accuracy_drop": max_accuracy_drop, "min_fidelity": min_fidelity, "labels": labels}
    if hi >= 1.0:
        kept = ir.serde.deserialize_model(proto)
        saved = save_model(kept, output) if output is not None else None
        return SearchResult(kept, baseline, None, probes, budget, None, str(saved) if saved else None)
    best = next(p for p in probes if p.keep_macs == hi)
    result = results[hi]
    saved = save_model(result.model, output) if output is not None else None
    return SearchResult(result.model, baseline, best, probes, budget, result, str(saved) if saved else None)
