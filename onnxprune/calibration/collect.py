"""Streaming collection of activation statistics with ONNX Runtime.

ONNX Runtime's calibrators make every calibrated tensor a graph output, run the samples
and keep every output of every sample in a list until the end (histogram methods), so memory
grows with the number of samples. Here each batch's results update running statistics and
are dropped at once, and little comes back per batch (see ``probes``): each tensor's exact
min, max and count, reduced inside the graph, and for the histogram methods a systematic
sample of its values (every k-th value, k a prime) sized so that about ``sample`` values of
each tensor are counted over the whole dataset (``sample=None``: every value). Each sampled
value counts k times, so the histograms estimate those of all values. Counting is what a
histogram costs (counting every value can take as long as ORT's forward passes). With the
default, ranges (percentile / entropy / mse) move less from those of every value than between
the two halves of the data: ``bench/calib_sampling.py`` measures both.

Whole tensors come back only where a tensor is small enough to count every value (or of a
type ORT cannot reduce). Session outputs are allocated by ONNX Runtime on each run: the batch
is shrunk to keep them under ``memory_limit`` (sizes estimated by ONNX shape inference on the
first sample's shapes); if even one sample does not fit, the tensors are split into groups,
each with its own session, one data pass per group, one session alive at a time. Where a
batch of a tensor holds NaN/Inf, that batch is run again with the tensor whole, and its
finite values are counted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import onnx_ir as ir

from onnxprune.calibration.calibrators import HISTOGRAM_METHODS, METHODS
from onnxprune.calibration.data import Dataset
from onnxprune.calibration.histogram import DEFAULT_BINS
from onnxprune.calibration.plan import (
    ACTIVATION_BUDGET,
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_SAMPLE,
    activation_batch,
    make_plan,
    run_plan,
)
from onnxprune.calibration.sharded import collect_sharded
from onnxprune.calibration.statistics import Statistics
from onnxprune.calibration.table import CalibrationTable
from onnxprune.distributed import resolve_executor
from onnxprune.errors import UsageError
from onnxprune.io import load_model

__all__ = ["ACTIVATION_BUDGET", "DEFAULT_MEMORY_LIMIT", "DEFAULT_SAMPLE", "activation_batch", "calibrate", "collect"]


def collect(
    model: ir.Model | str | os.PathLike,
    dataset: Dataset,
    tensors: Sequence[str] | None = None,
    *,
    histogram: bool = True,
    bins: int = DEFAULT_BINS,
    sample: int | None = DEFAULT_SAMPLE,
    batch_size: int = 32,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    progress: bool = False,
    executor=None,
) -> Statistics:
    """Run ``dataset`` through ``model`` and accumulate statistics of ``tensors``.

    ``histogram=False`` tracks min/max only (cheapest). ``sample``: about how many values of
    each tensor the histograms count, spread evenly over the samples (None: all).
    ``tensors`` defaults to the float inputs/outputs of quantizable ops (see ``select_tensors``).
    ``executor`` (see onnxprune.distributed: a number of local processes, a Ray address or
    an Executor) splits the samples into ranges of whole batches run by its workers; merged,
    their statistics are the very ones of a single pass (bit for bit).
    """
    loaded = model if isinstance(model, ir.Model) else load_model(model)
    plan = make_plan(loaded, dataset, tensors, histogram=histogram, bins=bins, sample=sample,
                     batch_size=batch_size, memory_limit=memory_limit, providers=providers)
    executor = resolve_executor(executor)
    if executor is None:
        return run_plan(loaded, dataset, plan, progress=progress).finish()
    return collect_sharded(loaded, dataset, plan, executor, progress).finish()


def calibrate(
    model: ir.Model | str | os.PathLike,
    dataset: Dataset,
    *,
    method: str = "minmax",
    tensors: Sequence[str] | None = None,
    batch_size: int = 32,
    percentile: float = 99.99,
    symmetric: bool = False,
    bins: int = DEFAULT_BINS,
    sample: int | None = DEFAULT_SAMPLE,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    progress: bool = False,
    executor=None,
) -> CalibrationTable:
    """Ranges of ``tensors`` (default: quantizable activations) of ``model`` on ``dataset``.

    ``method``: minmax | percentile (``percentile``, ``symmetric``) | entropy (TensorRT KL) |
    mse (``symmetric``). ``symmetric`` also tells entropy how many levels a non-negative
    tensor gets. ``sample``: histogram values per tensor and sample (None: all; see
    ``collect``). Memory does not grow with the number of samples. ``executor``: see ``collect``.
    """
    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}' (known: {', '.join(METHODS)})")
    if method == "percentile" and not 0 < percentile <= 100:
        raise UsageError(f"percentile must be in (0, 100] (got {percentile})")
    stats = collect(
        model,
        dataset,
        tensors,
        histogram=method in HISTOGRAM_METHODS,
        bins=bins,
        sample=sample,
        batch_size=batch_size,
        memory_limit=memory_limit,
        providers=providers,
        progress=progress,
        executor=executor,
    )
    options = {}
    if method == "percentile":
        options["percentile"] = percentile
    if method in ("percentile", "mse", "entropy"):
        options["symmetric"] = symmetric
    return stats.compute(method, **options)
