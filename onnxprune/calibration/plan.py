"""The plan of a calibration pass and its execution over (part of) a dataset.

The plan (which tensors, reduced or sampled at which stride, in which session groups, at
which batch size) is made once from the model and the whole dataset; ``run_plan`` carries it
out over any range of the samples, so workers given parts of the data do exactly what one
process does over all of it (see ``collect`` for the streaming design).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

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
from onnxprune.calibration.tensors import FLOAT_TYPES, graph_values, select_tensors
from onnxprune.errors import DataError
from onnxprune.graphutils import named
from onnxprune.io import trim_heap
from onnxprune.runtime import run_session

DEFAULT_MEMORY_LIMIT = 1 << 30  # bytes of session outputs per run
DEFAULT_SAMPLE = 1 << 23  # histogram values counted per tensor (about), over the whole dataset
# ONNX Runtime's working memory per run grows with the batch (its arena keeps the largest
# run's blocks, several times the largest activation): the batch is cut so that 8 copies
# of the largest activation fit in this. Throughput hardly depends on the batch on CPU.
ACTIVATION_BUDGET = 16 << 20
# Whole tensors and samples a run returns (histogram methods): the batch is cut to keep them
# under this; ``memory_limit`` only splits tensors into passes when one sample exceeds it.
# (PP-OCR's text classifier, entropy: 180 small tensors returned whole.)
OUTPUT_BUDGET = 24 << 20


@dataclasses.dataclass
class Plan:
    """What every pass over the data does, decided once from the model and the whole dataset
    (so that workers running parts of the data do exactly what one process would)."""

    inputs: list[str]
    names: list[str]
    histogram: bool
    bins: int
    skipped: dict[str, str]  # tensors known not to be float
    per_sample: int | None  # histogram values per tensor and sample
    fed: list[Probe]  # graph inputs, read from the feeds
    groups: list[list[Probe]]  # one session (and data pass) per group
    batch: int
    providers: Sequence[str]

    def statistics(self, samples: int) -> Statistics:
        stats = Statistics({n: TensorStats(self.bins, histogram=self.histogram) for n in self.names}, samples)
        for name, why in self.skipped.items():
            stats.skip(name, why)
        return stats


def make_plan(model: ir.Model, dataset: Dataset, tensors: Sequence[str] | None = None, *, histogram: bool = True,
              bins: int = DEFAULT_BINS, sample: int | None = DEFAULT_SAMPLE, batch_size: int = 32,
              memory_limit: int = DEFAULT_MEMORY_LIMIT,
              providers: Sequence[str] = ("CPUExecutionProvider",)) -> Plan:
    inputs = _model_inputs(model, dataset)
    names = select_tensors(model, tensors)
    first = next(dataset.batches(1))  # a fixed-batch model gets its fixed size
    values = graph_values(model)
    # sizes (histogram strides, batch sizing of a dynamic batch) or types needed
    infer = histogram or not dataset.fixed_batch or any(values[n].dtype is None for n in names)
    infos = tensor_infos(model, names, {k: first[k] for k in inputs} if infer else None)
    per_sample = sample and -(-sample // len(dataset))  # histogram values per tensor and sample
    probes: list[Probe] = []
    skipped = {}
    for name in names:
        dtype = infos[name].dtype
        if dtype is not None and dtype not in FLOAT_TYPES:
            skipped[name] = f"not a float tensor ({dtype.numpy()})"
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
    return Plan(inputs, names, histogram, bins, skipped, per_sample, fed, groups, batch, tuple(providers))


def activation_batch(model: ir.Model, infos: dict | None = None, budget: int = ACTIVATION_BUDGET) -> int:
    """The largest batch whose biggest activation, eight times over, fits ``budget`` bytes
    (sizes from the shapes the model declares, and those inferred for the first sample in
    ``infos``; unknown sizes do not count)."""
    known = [i.per_sample * (i.dtype.itemsize if i.dtype else 4) for i in (infos or {}).values() if i.per_sample]
    largest = math.ceil(max(known, default=0))
    for value in graph_values(model).values():
        shape, dtype = value.shape, value.dtype
        sizes = [d for d in shape[1:] if isinstance(d, int)] if shape is not None else []
        if shape is None or dtype is None or len(shape) < 2 or len(sizes) < len(shape) - 1:
            continue
        largest = max(largest, math.ceil(math.prod(sizes) * dtype.itemsize))  # int4: itemsize 0.5
    return max(1, budget // max(1, 8 * largest))


def run_plan(model: ir.Model, dataset: Dataset, plan: Plan, *, progress: bool = False) -> Statistics:
    """One plan over ``dataset`` (the whole data, or a worker's range of it)."""
    stats = plan.statistics(len(dataset))
    total = math.ceil(len(dataset) / plan.batch) * len(plan.groups)
    trim_heap()  # what loading and clean-up freed goes back before the session's arena grows
    with tqdm(total=total, desc="calibrating", unit="batch", disable=not progress, leave=False) as bar:
        for number, group in enumerate(plan.groups):
            with _Reader(model, group, plan.providers, stats) as reader:
                for feeds in dataset.batches(plan.batch):
                    feeds = {k: feeds[k] for k in plan.inputs}
                    if number == 0:
                        for probe in plan.fed:
                            array = feeds[probe.name]
                            stride = sample_stride(array[:1].size, plan.per_sample) if plan.histogram else 1
                            stats.update(probe.name, array, stride)
                    reader.read(feeds)
                    bar.update()
    return stats


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
            elif not self.stats.update_reduced(probe.name, got[0], got[1], got[2], got[3],
                                               got[4] if len(got) > 4 else None, stride=probe.stride or 1):
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
    wanted = [named(v) for v in model.graph.inputs if v.name not in model.graph.initializers]
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
