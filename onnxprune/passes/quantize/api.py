"""`quantize(...)`: the Python API behind `onnxprune quantize`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxprune import runtime, stats
from onnxprune.api import as_model
from onnxprune.errors import UnsupportedError, UsageError
from onnxprune.io import check_output_path, save_model, weights_nbytes
from onnxprune.passes.quantize.config import QuantConfig, check_exclusions
from onnxprune.passes.quantize.detect import check_not_quantized
from onnxprune.passes.quantize.quantize_pass import QuantizePass, nothing_to_quantize
from onnxprune.pipeline import DEFAULT_PIPELINE, PipelineResult, run_pipeline

METHODS = ("minmax", "percentile", "entropy", "mse")


@dataclasses.dataclass
class QuantizeResult:
    """The quantized model and what it took: counts, sizes, latencies, pass records."""

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
    table: object | None = None  # the CalibrationTable used (None when ranges were given)
    output: Path | None = None

    def to_dict(self) -> dict:
        keep = ("activations", "weights", "biases", "absorbed", "nodes_int8", "declined",
                "size_before", "size_after", "latency_before_ms", "latency_after_ms")
        return {
            "output": str(self.output) if self.output else None,
            "config": self.config.to_dict(),
            "calibration": self.calibration,
            **{k: getattr(self, k) for k in keep},
            "ops": stats.summarize(self.model)["ops"],
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
    progress: bool = False,
) -> QuantizeResult:
    """Quantize ``model`` to INT8 (QDQ format) and optionally save it.

    Ranges come from ``calib`` (anything ``onnxprune.calibration.open_dataset`` reads: an .npz,
    a folder of .npy/.npz/images, arrays, an iterable of feeds; at most ``samples`` of them,
    calibrated with ``method``) or from ``table`` (a CalibrationTable, its JSON file, or a
    {tensor: (min, max)} mapping). ``clean`` first runs the exact clean-up pipeline (BatchNorm
    folding matters: a BatchNormalization left between a Conv and its Q/DQ keeps the Conv
    float). ``latency`` times ONNX Runtime CPU (one thread) before and after on a batch of
    ``latency_batch`` calibration samples.
    """
    config = QuantConfig(activation_type, symmetric, per_channel, reduce_range, frozenset(exclude))
    if (calib is None and not synthetic) == (table is None):
        raise UsageError("give calibration data (calib) or a calibration table (table), not both or neither")
    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}' (choose: {', '.join(METHODS)})")
    if batch_size < 1 or (samples is not None and samples < 1):
        raise UsageError("batch size and samples must be at least 1")
    loaded, path = as_model(model)
    if output is not None:
        check_output_path(output, path)
    if save_table is not None:
        check_output_path(save_table)
    check_not_quantized(loaded)
    check_exclusions(config.exclude, {n.name for n in loaded.graph}, {n.op_type for n in loaded.graph})

    size_before = weights_nbytes(loaded)
    feeds = _latency_feeds(loaded, calib, table, preprocess, synthetic, latency_batch) if latency else None
    latency_before = runtime.latency_ms(loaded, feeds) if feeds is not None else None

    calibration: dict = {}
    used_tables: list = []
    if table is not None:
        ranges = _load_table(table)
        calibration.update(source=str(table) if isinstance(table, (str, os.PathLike)) else "given",
                           tensors=len(ranges))
        quantize_pass = QuantizePass(ranges, config)
    else:
        def calibrator(graph_model: ir.Model, tensors: list[str]) -> Mapping[str, object]:
            from onnxprune.calibration import calibrate, open_dataset  # noqa: PLC0415

            dataset = open_dataset(calib, graph_model, limit=samples, preprocess=preprocess, synthetic=synthetic)
            result = calibrate(graph_model, dataset, method=method, tensors=tensors, batch_size=batch_size,
                               percentile=percentile, progress=progress)
            calibration.update(method=method, samples=len(dataset), tensors=len(tensors), source=str(calib))
            used_tables.append(result)
            return result

        quantize_pass = QuantizePass(config=config, calibrator=calibrator)

    passes = [*DEFAULT_PIPELINE, quantize_pass] if clean else [quantize_pass]
    result = run_pipeline(loaded, passes, progress=progress)
    emitted = quantize_pass.emitted
    if emitted is None:
        raise UnsupportedError(nothing_to_quantize(result.model, quantize_pass.plan.declined))
    latency_after = runtime.latency_ms(result.model, feeds) if feeds is not None else None
    if save_table is not None:  # written only once everything worked
        (used_tables[0] if used_tables else _as_table(ranges)).save(save_table)
    saved = save_model(result.model, output, input_path=path) if output is not None else None
    declined = _declined(quantize_pass)
    return QuantizeResult(
        model=result.model,
        config=config,
        pipeline=result,
        calibration=calibration,
        activations=emitted.activations,
        weights=emitted.weights,
        biases=emitted.biases,
        absorbed=emitted.absorbed,
        nodes_int8=emitted.nodes,
        declined=declined,
        size_before=size_before,
        size_after=weights_nbytes(result.model),
        latency_before_ms=latency_before,
        latency_after_ms=latency_after,
        table=used_tables[0] if used_tables else (table if not isinstance(table, (str, os.PathLike)) else None),
        output=saved,
    )


def _declined(quantize_pass: QuantizePass) -> dict[str, str]:
    return dict(quantize_pass.plan.declined) if quantize_pass.plan is not None else {}


def _load_table(table) -> Mapping[str, object]:
    if isinstance(table, (str, os.PathLike)):
        from onnxprune.calibration import CalibrationTable  # noqa: PLC0415

        return CalibrationTable.load(table)
    if not isinstance(table, Mapping):
        raise UsageError(f"a calibration table must be a mapping or a file, not {type(table).__name__}")
    return table


def _as_table(ranges: Mapping[str, object]):
    from onnxprune.calibration import CalibrationTable  # noqa: PLC0415

    return ranges if isinstance(ranges, CalibrationTable) else CalibrationTable(
        {name: tuple(r) if not hasattr(r, "min") else (r.min, r.max) for name, r in ranges.items()})


def _latency_feeds(model: ir.Model, calib, table, preprocess, synthetic: bool, batch: int) -> dict[str, np.ndarray]:
    """One batch of real samples when we have them (ranges of values matter little for timing)."""
    if calib is not None:
        from onnxprune.calibration import open_dataset  # noqa: PLC0415

        dataset = open_dataset(calib, model, limit=batch, preprocess=preprocess)
        return next(iter(dataset.batches(batch)))
    return runtime.random_inputs(model, batch=batch)
