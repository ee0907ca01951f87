"""Streaming collection of activation statistics with ONNX Runtime.

ONNX Runtime's calibrators make every calibrated tensor a graph output, run the samples
and keep every output of every sample in a list until the end (histogram methods), so memory
grows with the number of samples. Here each batch's results update running statistics and
are dropped at once, and little comes back per batch (see ``probes``): each tensor's exact
min, max and count, reduced inside the graph, and for the histogram methods a systematic
sample of its values (every k-th value, k a prime) sized so that about ``sample`` values of
each tensor are counted over the whole dataset (``sample=None``: every value). Each sampled
value counts k times, so the histograms estimate those of all values. Counting is what a
histogram costs (1.5-2 ns a value in numpy: on the quantize benchmark's ResNet, 500 samples,
2.1 s for every value, as long as ORT's forward passes). With the default, 0.6 s there, and
ranges (percentile 99.99 / entropy / mse) move by at most 0.3 / 2.3 / 0.7% of the tensor's
width from those of every value, less than between the two halves of the data (0.8 / 7.1 /
1.4%); see ``bench/calib_sampling.py``.

Whole tensors come back only where a tensor is small enough to count every value (or of a
type ORT cannot reduce). Session outputs are allocated by ONNX Runtime on each run: the batch
is shrunk to keep them under ``memory_limit`` (sizes estimated by ONNX shape inference on the
first sample's shapes); if even one sample does not fit, the tensors are split into groups,
each with its own session, one data pass per group, one session alive at a time. Where a
batch of a tensor holds NaN/Inf, that batch is run again with the tensor whole, and its
finite values are counted.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from onnxprune.calibration.calibrators import HISTOGRAM_METHODS, METHODS
from onnxprune.calibration.data import Dataset
from onnxprune.calibration.histogram import DEFAULT_BINS, TensorStats
from onnxprune.calibration.probes import (
    REDUCIBLE,
    Probe,
    probed_session,
    sample_stride,
    tensor_infos,
)
from onnxprune.calibration.statistics import Statistics
from onnxprune.calibration.table import CalibrationTable
from onnxprune.calibration.tensors import FLOAT_TYPES, graph_values, select_tensors
from onnxprune.errors import DataError, UsageError
from onnxprune.io import load_model, trim_heap
from onnxprune.runtime import run_session

DEFAULT_MEMORY_LIMIT = 1 << 30  # bytes of session outputs per run
DEFAULT_SAMPLE = 1 << 23  # histogram values counted per tensor (about), over the whole dataset
# ONNX Runtime's working memory per run grows with the batch (its arena keeps the largest
# run's blocks, measured at 6-10x the largest activation): the batch is cut so that 8 copies
# of the largest activation fit in this. Throughput hardly depends on the batch on CPU
# (magika, 2 MB activations per sample: batch 2 as fast as 32, 90 MB less peak RSS).
ACTIVATION_BUDGET = 16 << 20
# Whole tensors and samples a run returns (histogram methods): the batch is cut to keep them
# under this; ``memory_limit`` only splits tensors into passes when one sample exceeds it.
# (PP-OCR's text classifier, entropy: 180 small tensors returned whole, 470 -> 200 MB peak.)
OUTPUT_BUDGET = 24 << 20


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
) -> Statistics:
    """Run ``dataset`` through ``model`` and accumulate statistics of ``tensors``.

    ``histogram=False`` tracks min/max only (cheapest). ``sample``: about how many values of
    each tensor the histograms count, spread evenly over the samples (None: all).
    ``tensors`` defaults to the float inputs/outputs of quantizable ops (see ``select_tensors``).
    """
    if not isinstance(model, ir.Model):
        model = load_model(model)
    inputs = _model_inputs(model, dataset)
    names = select_tensors(model, tensors)
    stats = Statistics({n: TensorStats(bins, histogram=histogram) for n in names})
    stats.samples = len(dataset)
    first = next(dataset.batches(1))  # a fixed-batch model gets its fixed size
    values = graph_values(model)
    # sizes (histogram strides, batch sizing of a dynamic batch) or types needed
    infer = histogram or not dataset.fixed_batch or any(values[n].dtype is None for n in names)
    infos = tensor_infos(model, names, {k: first[k] for k in inputs} if infer else None)
    per_sample = sample and -(-sample // len(dataset))  # histogram values per tensor and sample
    probes: list[Probe] = []
    for name in names:
        dtype = infos[name].dtype
        if dtype is not None and dtype not in FLOAT_TYPES:
            stats.skip(name, f"not a float tensor ({dtype.numpy()})")
        elif not histogram:
            probes.append(Probe(name, reduce=dtype is None or dtype in REDUCIBLE))
        else:
            stride = sample_stride(infos[name].per_sample or 0, per_sample)
            reduce = (dtype is None or dtype in REDUCIBLE) and stride > 1
            probes.append(Probe(name, reduce=reduce, stride=stride))
    graph_inputs = {v.name for v in model.graph.inputs}
    fed = [p for p in probes if p.name in graph_inputs]  # read from the feeds, not from ORT
    probes = [p for p in probes if p.name not in graph_inputs]
    sizes = {p.name: _bytes_per_sample(p, infos[p.name], infos) for p in probes}
    returned = max(1, math.ceil(sum(sizes.values())))  # bytes the session hands back per sample
    batch = dataset.fixed_batch or min(batch_size, max(1, int(memory_limit // returned)),
                                       max(1, OUTPUT_BUDGET // returned), activation_batch(model, infos))
    groups = _pack(probes, sizes, memory_limit // batch) or [[]]
    total = math.ceil(len(dataset) / batch) * len(groups)
    trim_heap()  # what loading and clean-up freed goes back before the session's arena grows
    with tqdm(total=total, desc="calibrating", unit="batch", disable=not progress, leave=False) as bar:
        for number, group in enumerate(groups):
            with _Reader(model, group, providers, stats) as reader:
                for feeds in dataset.batches(batch):
                    feeds = {k: feeds[k] for k in inputs}
                    if number == 0:
                        for probe in fed:
                            array = feeds[probe.name]
                            stride = sample_stride(array[:1].size, per_sample) if histogram else 1
                            stats.update(probe.name, array, stride)
                    reader.read(feeds)
                    bar.update()
    return stats.finish()


def activation_batch(model: ir.Model, infos: dict | None = None, budget: int = ACTIVATION_BUDGET) -> int:
    """The largest batch whose biggest activation, eight times over, fits ``budget`` bytes
    (sizes from the shapes the model declares, and those inferred for the first sample in
    ``infos``; unknown sizes do not count)."""
    known = [i.per_sample * (i.dtype.itemsize if i.dtype else 4) for i in (infos or {}).values() if i.per_sample]
    largest = math.ceil(max(known, default=0))
    for value in graph_values(model).values():
        shape, dtype = value.shape, value.dtype
        if shape is None or dtype is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
            continue
        largest = max(largest, math.ceil(math.prod(shape[1:]) * dtype.itemsize))  # int4: itemsize 0.5
    return max(1, budget // max(1, 8 * largest))


class _Reader(contextlib.ExitStack):
    """Runs batches through a probed session and hands the results to ``stats``."""

    def __init__(self, model: ir.Model, probes: list[Probe], providers, stats: Statistics):
        super().__init__()
        self.model, self.probes, self.providers, self.stats = model, probes, providers, stats
        self.session, self.outputs = (
            self.enter_context(probed_session(model, probes, providers)) if probes else (None, [])
        )
        self.whole: dict[str, Probe] = {}  # tensors that had NaN/Inf, read whole by ...
        self.whole_session: contextlib.ExitStack | None = None  # ... a session opened when needed
        self.whole_outputs: tuple = (None, [])  # (its session, its output names)

    def read(self, feeds: dict[str, np.ndarray]) -> None:
        if not self.probes:
            return
        results = iter(run_session(self.session, self.outputs, feeds))
        dirty = []
        for probe in self.probes:
            got = [next(results) for _ in range(probe.outputs)]
            if not probe.reduce:
                self.stats.update(probe.name, got[0], probe.stride or 1)  # minmax: stride None
            elif not self.stats.update_reduced(probe.name, *got, stride=probe.stride or 1):
                dirty.append(probe)
        if dirty:
            self._read_whole(dirty, feeds)

    def _read_whole(self, probes: list[Probe], feeds: dict[str, np.ndarray]) -> None:
        """Run the batch again with these tensors whole: their reductions were not finite."""
        if any(p.name not in self.whole for p in probes):
            if self.whole_session is not None:
                self.whole_session.close()
            self.whole.update((p.name, p) for p in probes)
            self.whole_session = contextlib.ExitStack()
            self.callback(self.whole_session.close)
            exposed = [Probe(name, reduce=False) for name in self.whole]
            self.whole_outputs = self.whole_session.enter_context(probed_session(self.model, exposed, self.providers))
        sess, outputs = self.whole_outputs
        arrays = dict(zip(outputs, run_session(sess, outputs, feeds)))
        for probe in probes:
            self.stats.update(probe.name, arrays[probe.name], probe.stride or 1)


def _model_inputs(model: ir.Model, dataset: Dataset) -> list[str]:
    """The model's inputs, all of which the data must provide (other data arrays are not fed)."""
    wanted = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
    missing = [n for n in wanted if n not in dataset.input_names]
    if missing:
        raise DataError(
            f"the data has no input '{missing[0]}' for this model (data inputs: {', '.join(dataset.input_names)})"
        )
    return wanted


def _bytes_per_sample(probe: Probe, info, infos) -> int:
    """Estimated bytes a probe's outputs take per sample (reductions: nothing to speak of)."""
    if probe.reduce and probe.stride is None:
        return 0
    itemsize = info.dtype.itemsize if info.dtype is not None else 4
    known = [i.per_sample for i in infos.values() if i.per_sample]
    per_sample = info.per_sample or max(known, default=1 << 20)  # unknown: as large as the largest
    return -(-per_sample // (probe.stride or 1)) * itemsize


def _pack(probes: Sequence[Probe], sizes: dict[str, int], budget: int) -> list[list[Probe]]:
    """Consecutive groups of probes whose sizes add up to at most ``budget`` (>= 1 each)."""
    groups: list[list[Probe]] = []
    used = 0
    for probe in probes:
        if not groups or (used + sizes[probe.name] > budget and groups[-1]):
            groups.append([])
            used = 0
        groups[-1].append(probe)
        used += sizes[probe.name]
    if len(groups) > 1:
        warnings.warn(
            f"the tensors to calibrate do not fit the memory limit even for one sample: "
            f"{len(groups)} passes over the data",
            stacklevel=3,
        )
    return groups


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
) -> CalibrationTable:
    """Ranges of ``tensors`` (default: quantizable activations) of ``model`` on ``dataset``.

    ``method``: minmax | percentile (``percentile``, ``symmetric``) | entropy (TensorRT KL) |
    mse (``symmetric``). ``symmetric`` also tells entropy how many levels a non-negative
    tensor gets. ``sample``: histogram values per tensor and sample (None: all; see
    ``collect``). Memory does not grow with the number of samples.
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
    )
    options = {}
    if method == "percentile":
        options["percentile"] = percentile
    if method in ("percentile", "mse", "entropy"):
        options["symmetric"] = symmetric
    return stats.compute(method, **options)
