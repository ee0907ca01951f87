"""`sensitivity(...)`: how much each channel group (and each quantized node) costs the outputs.

The sweep is a list of independent evaluation units (:class:`Unit`: one group pruned at one
ratio, or the model quantized with one node kept in float), each evaluated by the pure
function :func:`evaluate_unit` from a picklable :class:`SensitivitySpec`, so an executor
(onnxprune.distributed: this process, local worker processes, a Ray cluster) runs them
anywhere, in any order; the model travels once per worker and rows come back in unit order
(the same rows, in the same order, as one process gives). A unit prunes only its
group (``group_ratios``) and measures, on the evaluation data (the calibration data when none
is given), its fidelity to the original: top-1 agreement for classifier outputs
([batch, classes]), else the mean per-sample cosine similarity of the first output; and the
accuracy against labels when given. Quantization units measure what keeping one node in
float gives back over the fully quantized model (the contribution a budget ranks by).

The curves feed :func:`allocate`: non-uniform ratios for a MAC/parameter target, greedily
taking the next ratio step with the least loss per MAC saved.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxprune import runtime
from onnxprune.api.allocation import allocate, allocated_ratios, curves_of  # noqa: F401  (re-exported)
from onnxprune.calibration import open_dataset
from onnxprune.distributed import SerialExecutor, Task, resolve_executor
from onnxprune.errors import UsageError
from onnxprune.io import has_external_data, load_model

DEFAULT_RATIOS = (0.25, 0.5, 0.75)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One independent evaluation: ``kind`` "prune" (group ``name`` at ``ratio``), or
    "quantize" (all quantized but node ``name``; ``name`` None: all quantized)."""

    kind: str
    name: str | None
    ratio: float | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class SensitivitySpec:
    """Everything a unit's evaluation needs (picklable: paths and arrays, no sessions)."""

    model: str
    calib: object
    eval_data: object = None
    labels: str | None = None
    criterion: str | None = None  # None: prune()'s default (data-aware with calibration data)
    round_to: int = 1
    reconstruct: bool | None = None
    batch_size: int = 32
    limit: int | None = None
    token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)  # names it in a worker's cache


_REFERENCE: dict[tuple, tuple] = {}  # per process: the latest (spec, model)'s reference outputs and labels


def _evaluation(spec: SensitivitySpec, model: ir.Model | None = None):
    data = spec.eval_data if spec.eval_data is not None else spec.calib
    model = model if model is not None else load_model(spec.model)
    return open_dataset(data, model, limit=spec.limit, labels=spec.labels), model


def _outputs(model, dataset, batch_size: int) -> np.ndarray:
    first = None
    parts = []
    for feeds in dataset.batches(batch_size):
        out = runtime.run(model, feeds)
        first = first or next(iter(out))
        parts.append(out[first])
    return np.concatenate(parts)


def reference(spec: SensitivitySpec, model: ir.Model | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The original's first output on the evaluation data, and the labels: computed once per
    process for one spec (its token) and model (a worker's units share both)."""
    key = (spec.token, id(model))
    if key not in _REFERENCE:
        dataset, loaded = _evaluation(spec, model)
        _REFERENCE.clear()  # one sweep at a time: a long-lived worker does not pile them up
        _REFERENCE[key] = (model, _outputs(loaded, dataset, spec.batch_size), dataset.labels)
    return _REFERENCE[key][1:]


def score(ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Fidelity of ``out`` to ``ref`` (top-1 agreement or mean per-sample cosine), accuracy,
    and the cosine also for classifiers (a finer signal than agreement on few samples)."""
    a, b = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = float(np.where(norms > 0, np.sum(a * b, axis=1) / np.maximum(norms, 1e-300), 1.0).mean())
    result = {"accuracy": None, "cosine": cosine}
    if ref.ndim == 2 and ref.shape[1] >= 2:
        result["metric"] = "top-1 agreement"
        result["fidelity"] = float(np.mean(ref.argmax(1) == out.argmax(1)))
        if labels is not None:
            result["accuracy"] = float(np.mean(out.argmax(1) == np.asarray(labels).reshape(-1)))
    else:
        result["metric"] = "cosine"
        result["fidelity"] = cosine
    return result


def evaluate_unit(spec: SensitivitySpec, unit: Unit, model: ir.Model | None = None) -> dict:
    """Evaluate one unit (pure: reads only ``spec`` and ``model``, the original, default
    ``spec.model`` loaded; never changed: each unit works on its own copy)."""
    from onnxprune.api.prune_api import prune
    from onnxprune.api.quantize_api import quantize

    ref, labels = reference(spec, model)
    dataset, original = _evaluation(spec, model)
    copy = _copy(original) if model is not None else original
    row = dataclasses.asdict(unit)
    if unit.kind == "prune":
        result = prune(copy, criterion=spec.criterion, group_ratios={unit.name: unit.ratio},
                       round_to=spec.round_to, calib=spec.calib, batch_size=spec.batch_size,
                       reconstruct=spec.reconstruct, fold=False, latency_runs=0,
                       guard=False)  # the curve is the damage: measured, not undone
        macs, params = result.report.macs, result.report.params
        row["macs_removed"] = (macs[0] - macs[1]) / macs[0] if macs[0] else 0.0
        row["params_removed"] = (params[0] - params[1]) / params[0] if params[0] else 0.0
        out = result.model
    elif unit.kind == "quantize":
        exclude = [unit.name] if unit.name else []
        out = quantize(copy, calib=spec.calib, batch_size=spec.batch_size, exclude=exclude).model
    else:
        raise UsageError(f"unknown unit kind '{unit.kind}' (prune, quantize)")
    row.update(score(ref, _outputs(out, dataset, spec.batch_size), labels))
    return row


def sweep_unit(models: Mapping[str, ir.Model], unit: tuple[SensitivitySpec, Unit]) -> dict:
    """One unit on a worker (see onnxprune.distributed): the model is the worker's copy."""
    spec, item = unit
    return evaluate_unit(spec, item, models["model"])


def _copy(model: ir.Model) -> ir.Model:
    """An independent copy (external weights are shared: memory-mapped, passes replace them)."""
    return model.clone() if has_external_data(model) else ir.from_proto(ir.to_proto(model))


def plan_units(spec: SensitivitySpec, ratios: Sequence[float] = DEFAULT_RATIOS, *, prune: bool = True,
               quantize: bool = False) -> list[Unit]:
    """The sweep: every prunable group at every ratio, then (``quantize``) the fully quantized
    model and every quantizable node kept in float."""
    from onnxprune.api.prune_api import PREPARE
    from onnxprune.passes.prune.analysis import analyze
    from onnxprune.pipeline import run_pipeline

    for r in ratios:
        if not 0 < r < 1:
            raise UsageError(f"sensitivity ratios are shares of channels in (0, 1) (given {r})")
    units: list[Unit] = []
    if prune:
        model = load_model(spec.model)
        run_pipeline(model, PREPARE)
        names = dict.fromkeys(g.name for g in analyze(model) if g.prunable and g.size > 1 and g.root is not None)
        units += [Unit("prune", name, float(r)) for name in names for r in sorted(ratios)]
    if quantize:
        from onnxprune.api.quantize_api import quantize as run_quantize

        base = run_quantize(spec.model, calib=spec.calib, batch_size=spec.batch_size).model
        float_names = {n.name for n in load_model(spec.model).graph}
        quantized = [n.name for n in base.graph if n.name in float_names and any(
            i is not None and i.producer() is not None and i.producer().op_type == "DequantizeLinear"
            for i in n.inputs)]
        units += [Unit("quantize", None)] + [Unit("quantize", name) for name in quantized]
    return units


@dataclasses.dataclass
class SensitivityResult:
    """The baseline (the original on the evaluation data) and one row per unit."""

    baseline: dict
    rows: list[dict]
    execution: dict | None = None  # per-worker timing when the sweep ran on several workers

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "units": self.rows,
                **({"execution": self.execution} if self.execution else {})}

    def save(self, path: str | os.PathLike) -> None:
        from onnxprune.report import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SensitivityResult:
        data = json.loads(Path(path).read_text())
        return cls(data["baseline"], data["units"], data.get("execution"))

    def curves(self) -> dict[str, list[tuple[float, float, float, float]]]:
        """Per group: (ratio, loss, MACs share removed, parameters share removed), by ratio."""
        return curves_of(self.to_dict())

    def node_ranking(self) -> list[tuple[str, float]]:
        """Quantized nodes by what keeping each in float gives back (largest first)."""
        full = next((r for r in self.rows if r["kind"] == "quantize" and r["name"] is None), None)
        if full is None:
            return []
        gains = [(r["name"], r["fidelity"] - full["fidelity"])
                 for r in self.rows if r["kind"] == "quantize" and r["name"]]
        return sorted(gains, key=lambda item: -item[1])


def sensitivity(
    model: str | os.PathLike,
    calib,
    *,
    eval_data=None,
    labels: str | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    criterion: str | None = None,
    prune: bool = True,
    quantize: bool = False,
    round_to: int = 1,
    batch_size: int = 32,
    limit: int | None = None,
    executor=None,
    progress: bool = False,
) -> SensitivityResult:
    """Measure every unit of the sweep (see the module docstring). ``executor``: run the
    units on several workers (a number of local processes, 'ray:ADDRESS' or an
    onnxprune.distributed Executor; default: this process, one after the other); the rows
    are the same either way. ``progress``: one bar over the units (of every worker)."""
    if calib is None:
        raise UsageError("sensitivity needs calibration data (calib)")
    spec = SensitivitySpec(str(model), calib, eval_data, labels, criterion, round_to, None, batch_size, limit)
    runner = resolve_executor(executor)
    units = plan_units(spec, ratios, prune=prune, quantize=quantize)
    ref, truth = reference(spec)
    baseline = score(ref, ref, truth)
    task = Task(sweep_unit, [(spec, unit) for unit in units], {"model": spec.model}, desc="sensitivity",
                progress=progress)
    try:
        rows = (runner or SerialExecutor()).run(task)
    finally:
        _REFERENCE.clear()  # this process holds no model once the sweep is done
    return SensitivityResult(baseline, rows, runner.report if runner is not None else None)
