"""Accuracy-driven pruning: the strongest MAC reduction that holds a budget on held-out data.

``prune_within(model, calib=..., eval_data=..., max_accuracy_drop=0.01, labels=...)`` (or
``min_fidelity=0.98`` without labels: top-1 agreement for classifier outputs, else the mean
per-sample cosine, :func:`.sensitivity_api.score`) searches the share of MACs to keep
(:func:`search_keep`: a coarse grid from the strongest setting up, then bisection): each
probe prunes a fresh copy of the model and measures it on ``eval_data``, never on the
calibration data the pruning saw. The result is the smallest share whose probe met the
budget (to ``tolerance``), or the original model when none did; every probe is in the trace.
Bisection assumes more pruning never helps the metric, which holds closely, not exactly: a
probe that fails above a passing one only makes the search stop early (more conservative).
``compress`` searches the same way, each probe judged after quantization (:mod:`onnxprune.compress`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

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


class Judge:
    """The original's outputs on the held-out ``eval_data``, and the score of any candidate
    against them (:func:`.sensitivity_api.score`): fidelity, and accuracy on ``labels``."""

    def __init__(self, original: ir.Model, dataset, labels: np.ndarray | None, max_accuracy_drop: float | None,
                 min_fidelity: float | None, batch_size: int = 32, label_key: str | None = None) -> None:
        self.dataset, self.labels, self.batch_size = dataset, labels, batch_size
        self.ref = _outputs(original, self.dataset, batch_size)
        self.baseline = score(self.ref, self.ref, labels)
        self.budget = {"max_accuracy_drop": max_accuracy_drop, "min_fidelity": min_fidelity, "labels": label_key}

    def __call__(self, model: ir.Model) -> dict:
        return score(self.ref, _outputs(model, self.dataset, self.batch_size), self.labels)

    def meets(self, measured: dict) -> bool:
        return meets(self.baseline, measured, self.budget["max_accuracy_drop"], self.budget["min_fidelity"])


def check_budget(eval_data, labels: str | None, max_accuracy_drop: float | None, min_fidelity: float | None,
                 named_labels: bool = True) -> None:
    """One budget, held-out data, and (``named_labels``) the labels named for an accuracy budget."""
    if (max_accuracy_drop is None) == (min_fidelity is None):
        raise UsageError("give one budget: max_accuracy_drop (with labels) or min_fidelity")
    if named_labels and max_accuracy_drop is not None and labels is None:
        raise UsageError("max_accuracy_drop is measured on labels: name them (labels=KEY), or use min_fidelity")
    if eval_data is None:
        raise UsageError("the search measures held-out data: give eval_data (not the calibration data)")


def search_keep(probe: Callable[[float], Probe], lowest: float = 0.2, tolerance: float = 0.025,
                step: float | None = 0.2) -> float:
    """The smallest share of MACs to keep whose probe passed (1.0: none did).

    Strongest first: the grid ``lowest, lowest + step, ...`` is probed up to its first pass,
    then the interval below that pass is bisected to ``tolerance``. The grid makes the result
    at least as strong as any grid setting that passes below the first pass's neighbour, even
    where the metric is not monotonic in the share kept; ``step=None`` bisects [lowest, 1]."""
    grid = [round(float(k), 6) for k in np.arange(lowest, 1.0 - 1e-9, step)] if step else [lowest]
    lo, hi = None, 1.0  # invariant: hi passes (1.0: the original), lo failed
    for keep in grid:
        if probe(keep).passed:
            hi = keep
            break
        lo = keep
    if lo is not None:
        while hi - lo > tolerance:
            mid = (lo + hi) / 2
            if probe(mid).passed:
                hi = mid
            else:
                lo = mid
    return hi


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
    step: float | None = 0.2,
    batch_size: int = 32,
    **prune_options,
) -> SearchResult:
    """The smallest ``target_macs`` in [``lowest``, 1] meeting the budget (:func:`search_keep`)."""
    from onnxprune.api.prune_api import prune

    check_budget(eval_data, labels, max_accuracy_drop, min_fidelity)
    for key in ("ratio", "target_macs", "target_params"):
        if prune_options.get(key) is not None:
            raise UsageError(f"the search chooses how much to prune: do not give {key}")
    original, _ = as_model(model)
    proto = ir.to_proto(original)
    dataset = open_dataset(eval_data, original, labels=labels)
    judge = Judge(original, dataset, dataset.labels, max_accuracy_drop, min_fidelity, batch_size, labels)
    probes: list[Probe] = []
    results: dict[float, object] = {}

    def probe(keep: float) -> Probe:
        copy = ir.serde.deserialize_model(proto)
        result = prune(copy, target_macs=keep, calib=calib, batch_size=batch_size, latency_runs=0, guard=False,
                       **prune_options)  # the search measures every probe itself
        measured = judge(result.model)
        macs = result.before["macs"], result.after["macs"]
        p = Probe(keep, 1 - macs[1] / macs[0] if macs[0] else 0.0, measured["fidelity"], measured["accuracy"],
                  judge.meets(measured))
        probes.append(p)
        if p.passed:
            results[keep] = result
        return p

    hi = search_keep(probe, lowest, tolerance, step)
    if hi >= 1.0:
        kept = ir.serde.deserialize_model(proto)
        saved = save_model(kept, output) if output is not None else None
        return SearchResult(kept, judge.baseline, None, probes, judge.budget, None, str(saved) if saved else None)
    best = next(p for p in probes if p.keep_macs == hi)
    result = results[hi]
    saved = save_model(result.model, output) if output is not None else None
    return SearchResult(result.model, judge.baseline, best, probes, judge.budget, result, str(saved) if saved else None)
