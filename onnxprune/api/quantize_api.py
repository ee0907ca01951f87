"""`quantize(...)`: the Python API behind `onnxprune quantize`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxprune import profiling, runtime, stats
from onnxprune import providers as eps
from onnxprune.api import fidelity_guard, opset_upgrade, recovery
from onnxprune.api.kernel_profile import profiles
from onnxprune.api.placement import place
from onnxprune.calibration import METHODS, CalibrationTable, calibrate, open_dataset
from onnxprune.calibration.collect import activation_batch
from onnxprune.calibration.data import Dataset
from onnxprune.distributed import resolve_executor
from onnxprune.errors import UnsupportedError, UsageError
from onnxprune.graphutils import named
from onnxprune.io import as_model, check_output_path, has_external_data, save_model, weights_nbytes
from onnxprune.passes.quantize.config import QuantConfig, check_exclusions
from onnxprune.passes.quantize.detect import check_not_quantized
from onnxprune.passes.quantize.quantize_pass import MIN_OPSET, QuantizePass, nothing_to_quantize
from onnxprune.passes.quantize.rules import activation_values
from onnxprune.pipeline import DEFAULT_PIPELINE, PipelineResult, run_pipeline
from onnxprune.report import short_repr

LATENCY_BIG_MODEL = 50 << 20  # bytes of weights above which latency is timed on 3 runs, not 10


@dataclasses.dataclass
class QuantizeResult:
    """The quantized model and what it took: counts, sizes, latencies, pass records."""

    __repr__ = short_repr  # a line, not the whole graph

    model: ir.Model
    config: QuantConfig
    pipeline: PipelineResult
    calibration: dict  # method, samples, tensors (or the table file reused)
    activations: int  # tensors with a Q/DQ pair
    weights: int
    biases: int
    absorbed: int
    nodes_int8: int
    declined: dict[str, str]  # quantizable nodes left float, and why
    size_before: int
    size_after: int
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    target_provider: str = eps.CPU  # where latency was measured
    table: object | None = None  # the CalibrationTable used (None when ranges were given)
    output: Path | None = None
    converted: str | None = None  # how an old-opset model was brought up to date
    fidelity: dict | None = None  # the guard's comparison with the float model, nodes it kept float
    placement: dict | None = None  # latency-aware placement: what was measured (see placement.py)
    recovery: dict | None = None  # bias correction: nodes corrected, kept or not (held-out fidelity)

    def to_dict(self) -> dict:
        keep = ("activations", "weights", "biases", "absorbed", "nodes_int8", "declined",
                "size_before", "size_after", "latency_before_ms", "latency_after_ms", "placement",
                "target_provider")
        return {
            "output": str(self.output) if self.output else None,
            "config": self.config.to_dict(),
            "calibration": self.calibration,
            "converted": self.converted,
            "fidelity": self.fidelity,
            "recovery": self.recovery,
            **{k: getattr(self, k) for k in keep},
            "ops": stats.summarize(self.model, infer_shapes=False)["ops"],  # counts need no shape inference
            "ranges": {name: _bounds(r) for name, r in (self.table or {}).items()},
            **self.pipeline.to_dict(),
        }


def quantize(
    model,
    output: str | os.PathLike | None = None,
    *,
    calib=None,
    table=None,
    method: str = "minmax",
    samples: int | None = None,
    batch_size: int = 32,
    percentile: float = 99.99,
    preprocess=None,
    synthetic: bool = False,
    activation_type: str = "uint8",
    symmetric: bool = False,
    per_channel: bool = True,
    reduce_range: bool = False,
    exclude: Iterable[str] = (),
    clean: bool = True,
    save_table: str | os.PathLike | None = None,
    latency: bool = False,
    latency_batch: int = 32,
    guard: bool = True,
    strict: bool = False,
    min_fidelity: float | None = None,
    bias_correction: bool = False,
    equalize: bool = False,
    placement: bool = False,
    placement_batch: int = 8,
    provider: str = "CPUExecutionProvider",
    target_provider: str | None = None,
    provider_options: Mapping[str, Mapping[str, str]] | None = None,
    progress: bool = False,
    executor=None,
) -> QuantizeResult:
    """Quantize ``model`` to INT8 (QDQ format) and optionally save it.

    Ranges come from ``calib`` (anything ``onnxprune.calibration.open_dataset`` reads: an .npz,
    a folder of .npy/.npz/images, arrays, an iterable of feeds; at most ``samples`` of them,
    calibrated with ``method``) or from ``table`` (a CalibrationTable, its JSON file, or a
    {tensor: (min, max)} mapping). ``clean`` first runs the exact clean-up pipeline (BatchNorm
    folding matters: a BatchNormalization left between a Conv and its Q/DQ keeps the Conv
    float). ``latency`` times ONNX Runtime (one thread) before and after on a batch of
    ``latency_batch`` calibration samples, on ``target_provider`` (default ``provider``, CPU; e.g.
    "openvino", with ``provider_options``; a missing one is a UsageError naming what to
    install); placement is judged there too. Calibration always runs on the CPU provider.
    ``guard`` (with calibration data): compare with the float model on held-out samples and
    keep in float the fewest nodes, ranked by the error they add, that bring every output to
    ``min_fidelity`` (cosine, and argmax agreement for classifier/sequence outputs; default
    0.9: :mod:`.fidelity_guard`); ``strict`` fails (exit 1) naming them instead.
    ``bias_correction``: add back into each Conv/Gemm bias the output mean its weight rounding
    removes, measured on the calibration data (:mod:`.recovery`); with the guard, kept only
    when held-out fidelity is at least that of the uncorrected model (the report says which).
    ``equalize``: first move per-channel activation ranges into the weights of the layers that
    read them, where that is exact in float (:mod:`onnxprune.passes.quantize.equalize`).
    ``placement`` then keeps float the nodes that INT8 would not make faster on ``provider``,
    measured on up to ``placement_batch`` samples (fewer where calibration's memory budget
    says so; see :mod:`.placement`; skipped for models over 512 MB of weights). An
    ``ir.Model`` passed in is changed in place (the result's ``model`` is the quantized one: the guard and placement may
    re-emit on a copy).
    ``executor``: calibrate on several workers (a number of local processes, 'ray:ADDRESS' or
    an onnxprune.distributed Executor); the table is the same bit for bit.
    """
    config = QuantConfig(activation_type, symmetric, per_channel, reduce_range, exclude)
    if (calib is None and not synthetic) == (table is None):
        raise UsageError("give calibration data (--calib) or a calibration table (--table), not both or neither")
    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}' (choose: {', '.join(METHODS)})")
    if bias_correction and (calib is None or synthetic):
        raise UsageError("bias correction measures channel means on calibration data: give --calib")
    if equalize and (calib is None or synthetic):
        raise UsageError("equalization measures channel ranges on calibration data: give --calib")
    if min_fidelity is not None and not 0 < min_fidelity <= 1:
        raise UsageError(f"min_fidelity is a cosine/agreement in (0, 1] (given {min_fidelity})")
    if batch_size < 1 or (samples is not None and samples < 1):
        raise UsageError("batch size and samples must be at least 1")
    loaded, path = as_model(model)
    for target in (output, save_table):  # fail before any work
        if target is not None:
            check_output_path(target, path)
    target = eps.require(target_provider) if target_provider else eps.resolve(provider)
    timing = {"providers": [target, eps.CPU] if target != eps.CPU else [eps.CPU], "provider_options": provider_options}
    check_not_quantized(loaded)
    loaded, config, converted = _recent_enough(loaded, config)
    check_exclusions(config.exclude, {n.name for n in loaded.graph}, {n.op_type for n in loaded.graph})

    size_before = weights_nbytes(loaded)
    feeds = _latency_feeds(loaded, calib, preprocess, latency_batch) if latency else None
    runs = 10 if size_before < LATENCY_BIG_MODEL else 3  # medians of a few runs, bounded time
    latency_before = runtime.latency_ms(loaded, feeds, runs=runs, **timing) if feeds is not None else None

    source = _RangeSource(calib, table, method, samples, batch_size, percentile, preprocess, synthetic, progress,
                          resolve_executor(executor))
    quantize_pass = source.make_pass(config)
    rereadable = isinstance(calib, (str, os.PathLike, Mapping, list, tuple, Dataset))  # not a one-shot iterator
    float_copy = _copy(loaded) if guard and rereadable and not synthetic else None
    source.for_guard = float_copy is not None and method == "minmax"  # what the guard's tries may need: ~free now
    cleaned = run_pipeline(loaded, DEFAULT_PIPELINE, progress=progress) if clean else None
    equalized = _equalize(loaded, source) if equalize else None
    plain_base = _copy(loaded) if equalized is not None and float_copy is not None else None
    corrected = _correct_biases(loaded, source, config) if bias_correction else None
    corrected_base = _copy(loaded) if corrected is not None and float_copy is not None else None
    placing = placement and size_before <= runtime.SESSION_BYTES_LIMIT
    before_pass = loaded.clone() if placing else None  # shares the weights: the pass replaces, never writes
    result = run_pipeline(loaded, [quantize_pass], progress=progress)
    result.records[:0] = [*(cleaned.records if cleaned is not None else []),
                          *(equalized.records if equalized else []), *(corrected.records if corrected else [])]
    if quantize_pass.emitted is None:
        raise UnsupportedError(nothing_to_quantize(result.model, quantize_pass.plan.declined))
    guarded = None
    recovered = {"bias_correction": {"nodes": len(corrected.records[-1].changes), "kept": True}} if corrected else None
    if equalized is not None:
        recovered = {**(recovered or {}), "equalize": {"regions": len(equalized.records[-1].changes)}}
    feeds_for: dict[str, np.ndarray] = {}
    if placing:  # on a batch the calibration's memory budget allows (large activations: a small one)
        batch = min(placement_batch, activation_batch(before_pass))
        feeds_for = _latency_feeds(before_pass, calib, preprocess, batch)
    if float_copy is not None:
        savings = _savings(before_pass, result.model, feeds_for, target) if placing else None
        with profiling.phase("fidelity guard"):
            guarded, quantize_pass = _guard(float_copy, result, quantize_pass, source, config, clean, strict,
                                            progress, fidelity_guard.Target.of(min_fidelity), corrected_base,
                                            recovered, plain_base, savings)
        result.model = guarded.model if guarded is not None else result.model
    placed = None
    if placing:
        placed = place(before_pass, result.model, quantize_pass, source.extend, quantize_pass.config, feeds_for,
                       target)
        result.model, quantize_pass = placed.model, placed.quantize_pass
    emitted = quantize_pass.emitted
    latency_after = runtime.latency_ms(result.model, feeds, runs=runs, **timing) if feeds is not None else None
    if save_table is not None:  # written only once everything worked
        _as_table(source.used).save(save_table)
    saved = save_model(result.model, output, input_path=path) if output is not None else None
    return QuantizeResult(
        model=result.model,
        config=config,
        pipeline=result,
        calibration=source.info,
        activations=emitted.activations,
        weights=emitted.weights,
        biases=emitted.biases,
        absorbed=emitted.absorbed,
        nodes_int8=emitted.nodes,
        declined={**quantize_pass.plan.declined, **_guard_reasons(guarded), **(placed.excluded if placed else {})},
        size_before=size_before,
        size_after=weights_nbytes(result.model),
        latency_before_ms=latency_before,
        latency_after_ms=latency_after,
        target_provider=target,
        table=source.used,
        output=saved,
        converted=converted,
        fidelity=guarded.to_dict() if guarded is not None else None,
        recovery=recovered,
        placement=placed.to_dict() if placed else None,
    )


def _guard_reasons(guarded: fidelity_guard.GuardResult | None) -> dict[str, str]:
    """Nodes the guard kept float, with its reason (the pass only knows they were excluded)."""
    return {name: f"fidelity guard: {why}" for name, why in (guarded.kept_float if guarded else {}).items()}


def _copy(model: ir.Model) -> ir.Model | None:
    """An independent copy (None for models with external data: the guard is skipped)."""
    return None if has_external_data(model) else ir.from_proto(ir.to_proto(model))


def _equalize(model: ir.Model, source: _RangeSource) -> PipelineResult:
    """Channel equalization of the float model about to be quantized (in place, exact in float)."""
    data = open_dataset(source.calib, model, limit=source.samples, preprocess=source.preprocess)
    batches = data.batches(recovery.batch_for(model, source.batch_size))
    return run_pipeline(model, [recovery.EqualizeStep(batches)])


def _correct_biases(model: ir.Model, source: _RangeSource, config: QuantConfig) -> PipelineResult:
    """Bias correction of the float model about to be quantized (in place; see :mod:`.recovery`)."""
    data = open_dataset(source.calib, model, limit=source.samples, preprocess=source.preprocess)
    means = recovery.input_means(model, data.batches(recovery.batch_for(model, source.batch_size)), config)
    return run_pipeline(model, [recovery.BiasCorrectionPass(means, config)])


def _savings(float_model: ir.Model, quantized: ir.Model, feeds, provider: str):
    """What the guard calls to learn the time INT8 saves per node: kernel time (with its Q/DQ)
    in ``float_model`` minus that in ``quantized``, profiled side by side."""
    def measure() -> dict[str, float]:
        fp32, int8 = profiles([float_model, quantized], feeds, provider)
        return {name: fp32.nodes.get(name, 0.0) - micros for name, micros in int8.nodes.items()}

    return measure


def _guard(float_model, result, quantize_pass, source, config, clean, strict, progress, target, corrected=None,
           recovered=None, plain=None, savings=None):
    """The fidelity guard around one quantization (see :mod:`.fidelity_guard`); with a
    bias-corrected float model ``corrected``, first whether the correction helps (``recovered``
    records it); ``plain``: the float model the tries start from without it (equalized)."""
    reference = run_pipeline(float_model, DEFAULT_PIPELINE).model if clean else float_model
    passes = {id(result.model): quantize_pass}
    tables: dict[int, object] = {}
    start = plain if plain is not None else reference
    base = {"model": corrected if corrected is not None else start}  # what the tries start from

    clipped = _clipped(source.used) if source.table is None and source.method != "minmax" else []

    def requantize(kept: frozenset[str], widened: frozenset[str] = frozenset(), fresh: bool = False
                   ) -> ir.Model | None:
        """``fresh``: ranges calibrated again on this float model (not the one they were made on)."""
        model = _copy(base["model"])
        ranges = source.used  # the same ranges; calibrated again only if a new tensor needs one
        if widened:  # the observed min/max for these tensors (the method had clipped them)
            ranges = _widened(ranges, widened)

        def calibrator(m: ir.Model, needed: list[str]):
            if source.table is not None:
                return ranges
            used, info = source.used, source.info
            if fresh:  # its own ranges; the caller decides whether they replace the table
                emitted_with[0] = source.calibrate(m, needed)
                source.used, source.info = used, info
                return emitted_with[0]
            missing = [n for n in needed if n not in ranges and n not in getattr(ranges, "skipped", {})]
            if not missing:
                return ranges
            # only what is new, and at once every tensor a later try may need (a pass each cost
            # magika 4 passes): the table stays whole
            more = [named(v) for v in activation_values(m, config, any_subset=True) if named(v) not in used]
            new = source.calibrate(m, list(dict.fromkeys([*missing, *more])))
            source.used = _merged(used, new)
            source.info = {**info, "tensors": len(source.used)}  # the first calibration's, with the table's count
            emitted_with[0] = _merged(ranges, new)
            return emitted_with[0]

        emitted_with = [ranges]

        made = QuantizePass(config=dataclasses.replace(config, exclude=config.exclude | kept), calibrator=calibrator)
        model = run_pipeline(model, [made]).model
        if made.emitted is None:
            return None  # nothing left in INT8: not a quantization
        passes[id(model)] = made  # the guard keeps the best of its tries: its pass has the counts
        tables[id(model)] = emitted_with[0]  # and its ranges (for placement and --save-table)
        return model

    dataset = open_dataset(source.calib, reference, limit=(source.samples or 0) + fidelity_guard.HELD_OUT,
                           preprocess=source.preprocess)
    if any(axis != 0 for axis in dataset.batch_axes.values()):
        return None, quantize_pass  # samples are cut along axis 0: not for states [2, batch, ..] nor scalars yet
    feeds = fidelity_guard.held_out(dataset.batches(1), source.samples or 0)  # a sample at a time: 32 are kept
    first = result.model
    with profiling.phase("float outputs"):
        outputs = fidelity_guard.run(reference, feeds)  # once: every candidate is compared with them
    if corrected is not None and recovered is not None:  # a recovery step never silently hurts
        base["model"] = start
        plain = requantize(frozenset(), fresh=True)  # its own ranges: the corrected model's are not its
        with_it, without = (fidelity_guard.measure(reference, m, feeds, target, reference_outputs=outputs)
                            for m in (first, plain))
        keep = recovery.better(with_it, without)
        recovered["bias_correction"].update(kept=keep, fidelity_with=with_it.to_dict(),
                                            fidelity_without=without.to_dict())
        base["model"] = corrected if keep else start
        first = first if keep else plain
        quantize_pass = passes[id(first)]
        if not keep:
            source.used = tables[id(plain)]
    guarded = fidelity_guard.guard(reference, first, feeds, requantize, strict=strict, progress=progress,
                                   target=target, int8={n.name for n in quantize_pass.plan.nodes if n.name},
                                   clipped=clipped, savings=savings, reference_outputs=outputs)
    if guarded.widened:
        source.used = tables[id(guarded.model)]
    return guarded, passes[id(guarded.model)]


def _clipped(table) -> list[tuple[str, str]]:
    """Tensors whose calibrated range is narrower than the observed one, the most cut first."""
    summary = getattr(table, "summary", None) or {}
    found = []
    for name, r in table.items():
        seen = summary.get(name)
        if not seen or seen["max"] - seen["min"] <= 0 or r.max - r.min >= (seen["max"] - seen["min"]) * (1 - 1e-6):
            continue
        why = (f"{table.method} range [{r.min:.4g}, {r.max:.4g}] cut the observed [{seen['min']:.4g}, "
               f"{seen['max']:.4g}]")
        found.append(((r.max - r.min) / (seen["max"] - seen["min"]), name, why))
    return [(name, why) for _, name, why in sorted(found)]


def _widened(ranges, names: set[str]):
    """``ranges`` with the tensors ``names`` at their observed min/max (a table's summary)."""
    summary = ranges.summary
    wide = {n: (summary[n]["min"], summary[n]["max"]) if n in names and n in summary else tuple(r)
            for n, r in ranges.items()}
    return CalibrationTable(wide, method=ranges.method, samples=ranges.samples, options=ranges.options,
                            summary=summary, skipped=ranges.skipped)


def _merged(table, fresh):
    """One table of two calibrations of the same data (the guard's re-emissions need a few more)."""
    if not isinstance(table, CalibrationTable) or not isinstance(fresh, CalibrationTable):
        return {**{n: table[n] for n in table}, **fresh}
    return CalibrationTable({**table.as_dict(), **fresh.as_dict()}, method=table.method, samples=table.samples,
                            options=table.options, summary={**table.summary, **fresh.summary},
                            skipped={**table.skipped, **fresh.skipped})


def _recent_enough(model: ir.Model, config: QuantConfig) -> tuple[ir.Model, QuantConfig, str | None]:
    """An old-opset model converted to the opset QDQ needs (said in the output and report);
    per-tensor weights where the converter fails (QDQ per tensor needs opset 10 only)."""
    model, note, failure = opset_upgrade.upgrade(model, MIN_OPSET)
    if failure is not None and config.per_channel:
        return model, dataclasses.replace(config, per_channel=False), f"{failure}: per-tensor weights instead"
    return model, config, note


@dataclasses.dataclass
class _RangeSource:
    """Where the ranges come from: a given table, or calibration of the model as the pass gets it."""

    calib: object
    table: object
    method: str
    samples: int | None
    batch_size: int
    percentile: float
    preprocess: object
    synthetic: bool
    progress: bool
    executor: object = None
    symmetric: bool = False  # the activations' quantization grid
    config: QuantConfig | None = None
    for_guard: bool = False  # also range what the guard's tries may need (min/max: a reduction more each)
    info: dict = dataclasses.field(default_factory=dict)  # for the report
    used: Mapping[str, object] | None = None  # the ranges the pass used

    def make_pass(self, config: QuantConfig) -> QuantizePass:
        self.symmetric = config.symmetric  # ranges for the grid they will get (entropy levels...)
        self.config = config
        if self.table is None:
            return QuantizePass(config=config, calibrator=self.calibrate)
        self.used = _load_table(self.table)
        self.info = {"source": str(self.table) if isinstance(self.table, (str, os.PathLike)) else "given",
                     "tensors": len(self.used)}
        return QuantizePass(self.used, config)

    def extend(self, model: ir.Model, needed: list[str]) -> Mapping[str, object]:
        """The ranges used so far, with those of ``needed`` tensors not in them calibrated now and
        kept (placement's re-emissions with nodes kept float need ranges the first emission did
        not; the saved table then has every range)."""
        first, info = self.used, self.info
        if first is None:
            return self.calibrate(model, needed)
        skipped = getattr(first, "skipped", {})
        missing = [n for n in needed if n not in first and n not in skipped]
        if not missing or self.table is not None:
            return first
        more = self.calibrate(model, missing)
        merged = _merged(first, more)
        if isinstance(merged, CalibrationTable):
            merged.execution = getattr(first, "execution", None)
        self.used, self.info = merged, {**info, "tensors": len(merged)}
        return merged

    def calibrate(self, model: ir.Model, tensors: list[str]) -> CalibrationTable:
        if self.for_guard and self.used is None and self.config is not None:  # the first calibration
            tensors = list(dict.fromkeys([*tensors, *(named(v) for v in activation_values(model, self.config,
                                                                                          any_subset=True))]))
        with profiling.phase("calibration"):
            return self._calibrate(model, tensors)

    def _calibrate(self, model: ir.Model, tensors: list[str]) -> CalibrationTable:
        dataset = open_dataset(self.calib, model, limit=self.samples, preprocess=self.preprocess,
                               synthetic=self.synthetic)
        self.used = calibrate(model, dataset, method=self.method, tensors=tensors, batch_size=self.batch_size,
                              percentile=self.percentile, symmetric=self.symmetric, progress=self.progress,
                              executor=self.executor)
        self.info = {"method": self.method, "samples": len(dataset), "tensors": len(tensors),
                     "source": "synthetic" if self.synthetic else str(self.calib), "notes": list(dataset.notes)}
        if self.used.execution is not None:
            self.info["execution"] = self.used.execution
        return self.used


def _bounds(value) -> tuple[float, float]:
    """(min, max) of a table entry: a TensorRange or a (min, max) pair."""
    return (float(value.min), float(value.max)) if hasattr(value, "min") else (float(value[0]), float(value[1]))


def _load_table(table) -> Mapping[str, object]:
    if isinstance(table, (str, os.PathLike)):
        return CalibrationTable.load(table)
    if not isinstance(table, Mapping):
        raise UsageError(f"a calibration table must be a mapping or a file, not {type(table).__name__}")
    return table


def _as_table(ranges: Mapping[str, object]) -> CalibrationTable:
    if isinstance(ranges, CalibrationTable):
        return ranges
    return CalibrationTable({name: (r.min, r.max) if hasattr(r, "min") else tuple(r) for name, r in ranges.items()})


def _latency_feeds(model: ir.Model, calib, preprocess, batch: int) -> dict[str, np.ndarray]:
    """One batch of real samples when there are some (for timing, random inputs do as well)."""
    if calib is None:
        return runtime.random_inputs(model, batch=batch)
    return next(iter(open_dataset(calib, model, limit=batch, preprocess=preprocess).batches(batch)))
