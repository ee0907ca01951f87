"""Streaming collection of activation statistics with ONNX Runtime.

ONNX Runtime's calibrators make every calibrated tensor a graph output, run the samples
and keep every output of every sample in a list until the end (histogram methods), so memory
grows with the number of samples. Here:

* the tensors become extra outputs only for the session's creation (the model is restored
  right after), and each batch's outputs update running statistics and are dropped at once;
* minmax needs no tensor at all: ``ReduceMin``/``ReduceMax`` nodes are added inside the
  graph and only two scalars per tensor come back (ORT computes them in C++, and the
  activations are not pinned as outputs, so its memory planner can reuse them);
* ONNX Runtime allocates every graph output of a session on each run, fetched or not,
  so exposed tensors cost (sum of their sizes x batch). The batch is shrunk to fit
  ``memory_limit`` (sizes estimated by ONNX shape inference on the first sample's shapes);
  if even one sample does not fit, the tensors are split into groups, each with its own
  session, one data pass per group, one session alive at a time.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from tqdm import tqdm

from onnxprune.calibration.calibrators import HISTOGRAM_METHODS, METHODS
from onnxprune.calibration.data import Dataset
from onnxprune.calibration.histogram import DEFAULT_BINS, TensorStats
from onnxprune.calibration.statistics import Statistics
from onnxprune.calibration.table import CalibrationTable
from onnxprune.calibration.tensors import select_tensors
from onnxprune.errors import DataError, UsageError
from onnxprune.io import (
    EXTERNAL_DATA_THRESHOLD,
    has_external_data,
    load_model,
    weights_nbytes,
)
from onnxprune.runtime import run_session, session

DEFAULT_MEMORY_LIMIT = 1 << 30  # bytes of exposed tensors per run
# No graph optimisation, as ONNX Runtime's own calibrators: fusions (Conv+BatchNorm...) apply
# or not depending on which values are exposed, which would make a tensor's values depend on
# what else is calibrated with it. Unoptimised, they are the same in every pass.
_LEVEL = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
# ORT's default order runs nodes whose outputs are graph outputs last, so the added
# reductions would keep every activation alive to the end (+300 MB at batch 20 on a 3 MB
# CNN); the priority-based order runs them right after their producer (peak = plain inference).
_ORDER = ort.ExecutionOrder.PRIORITY_BASED
_REDUCTIONS = (("ReduceMin", "__onnxprune_min"), ("ReduceMax", "__onnxprune_max"), ("Size", "__onnxprune_size"))


def collect(
    model: ir.Model | str | os.PathLike,
    dataset: Dataset,
    tensors: Sequence[str] | None = None,
    *,
    histogram: bool = True,
    bins: int = DEFAULT_BINS,
    batch_size: int = 32,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    progress: bool = False,
) -> Statistics:
    """Run ``dataset`` through ``model`` and accumulate statistics of ``tensors``.

    ``histogram=False`` tracks min/max only (in-graph reductions, cheapest). ``tensors``
    defaults to the float inputs/outputs of quantizable ops (see ``select_tensors``).
    """
    if not isinstance(model, ir.Model):
        model = load_model(model)
    inputs = _model_inputs(model, dataset)
    names = select_tensors(model, tensors)
    stats = Statistics({n: TensorStats(bins, histogram=histogram) for n in names})
    stats.samples = len(dataset)
    graph_inputs = {v.name for v in model.graph.inputs}
    fed = [n for n in names if n in graph_inputs]  # read from the feeds, not from ORT
    computed = [n for n in names if n not in graph_inputs]
    if not histogram:
        _collect_reduced(model, dataset, inputs, computed, fed, stats, batch_size, providers, progress)
        return stats.finish()
    first = next(dataset.batches(1))  # a fixed-batch model gets its fixed size
    samples_in_first = len(next(iter(first.values())))
    sizes = {n: -(-b // samples_in_first) for n, b in _bytes_per_sample(model, computed, first).items()}
    batch = dataset.fixed_batch or min(batch_size, max(1, memory_limit // max(1, sum(sizes.values()))))
    groups = _pack(computed, sizes, memory_limit // batch) or [[]]
    total = math.ceil(len(dataset) / batch) * len(groups)
    with tqdm(total=total, desc="calibrating", unit="batch", disable=not progress, leave=False) as bar:
        for number, group in enumerate(groups):
            with _exposed_session(model, group, providers) as sess:
                for feeds in dataset.batches(batch):
                    feeds = {k: feeds[k] for k in inputs}
                    if number == 0:
                        for name in fed:
                            stats.update(name, feeds[name])
                    outputs = run_session(sess, group, feeds) if group else []
                    for i, name in enumerate(group):
                        stats.update(name, outputs[i])
                        outputs[i] = None  # drop each output as soon as it is counted
                    bar.update()
    return stats.finish()


def _model_inputs(model: ir.Model, dataset: Dataset) -> list[str]:
    """The model's inputs, all of which the data must provide (other data arrays are not fed)."""
    wanted = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
    missing = [n for n in wanted if n not in dataset.input_names]
    if missing:
        raise DataError(
            f"the data has no input '{missing[0]}' for this model (data inputs: {', '.join(dataset.input_names)})"
        )
    return wanted


def _collect_reduced(model, dataset, inputs, computed, fed, stats, batch_size, providers, progress):
    total = math.ceil(len(dataset) / (dataset.fixed_batch or batch_size))
    batches = dataset.batches(batch_size)
    with _reduced_session(model, computed, providers) as (sess, outputs):
        for feeds in tqdm(batches, total=total, desc="calibrating", unit="batch", disable=not progress, leave=False):
            feeds = {k: feeds[k] for k in inputs}
            for name in fed:
                stats.update(name, feeds[name])
            if outputs:
                values = iter(run_session(sess, outputs, feeds))
                for name in computed:
                    stats.update_range(name, *(next(values) for _ in _REDUCTIONS))


@contextlib.contextmanager
def _session_with_outputs(model: ir.Model, outputs: Sequence[ir.Value], providers, nodes=()):
    """A session on ``model`` with extra ``outputs`` (and ``nodes``, inserted right after their
    input's producer); the model is restored as soon as the session exists."""
    original = list(model.graph.outputs)
    with contextlib.ExitStack() as stack:
        for node in nodes:
            producer = node.inputs[0].producer()
            if producer is None:
                model.graph.insert_before(next(iter(model.graph)), node)
            else:
                model.graph.insert_after(producer, node)
        model.graph.outputs.extend(v for v in outputs if v not in original)
        try:
            sess = stack.enter_context(
                session(model, providers, optimization_level=_LEVEL, execution_order=_ORDER)
            )
        finally:
            model.graph.outputs.clear()
            model.graph.outputs.extend(original)
            if nodes:
                model.graph.remove(nodes, safe=True)
        yield sess


def _exposed_session(model: ir.Model, names: Sequence[str], providers):
    """A session whose extra outputs are the tensors ``names``."""
    return _session_with_outputs(model, _values(model, names), providers)


@contextlib.contextmanager
def _reduced_session(model: ir.Model, names: Sequence[str], providers) -> Iterator:
    """A session returning (min, max, size) of each of ``names``, reduced inside the graph."""
    if not names:
        yield None, []
        return
    nodes = []
    for value in _values(model, names):
        for op, suffix in _REDUCTIONS:
            attributes = {"keepdims": 0} if op != "Size" else {}
            node = ir.node(op, [value], attributes=attributes, name=value.name + suffix)
            node.outputs[0].name = value.name + suffix
            nodes.append(node)
    outputs = [n.outputs[0] for n in nodes]  # (min, max, size) per tensor, in ``names`` order
    with _session_with_outputs(model, outputs, providers, nodes) as sess:
        yield sess, [v.name for v in outputs]


def _values(model: ir.Model, names: Sequence[str]) -> list[ir.Value]:
    by_name = {v.name: v for v in model.graph.inputs}
    by_name.update((o.name, o) for node in model.graph for o in node.outputs)
    return [by_name[n] for n in names]


def _bytes_per_sample(model: ir.Model, names: Sequence[str], sample: dict[str, np.ndarray]) -> dict[str, int]:
    """Estimated bytes of each tensor for one sample, by ONNX shape inference.

    Input shapes are fixed to the sample's; a tensor whose shape stays unknown is assumed
    as large as the largest known one.
    """
    known: dict[str, int] = {}
    if names and (has_external_data(model) or weights_nbytes(model) < EXTERNAL_DATA_THRESHOLD):
        proto = ir.to_proto(model)
        for value_info in proto.graph.input:
            if value_info.name in sample:
                shape = value_info.type.tensor_type.shape
                shape.ClearField("dim")
                for d in sample[value_info.name].shape:
                    shape.dim.add().dim_value = d
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError, RuntimeError):
            # only an estimate: fall back below
            inferred = proto
        wanted = set(names)
        for vi in [*inferred.graph.value_info, *inferred.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            if vi.name in wanted and dims and all(d.HasField("dim_value") for d in dims):
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).itemsize
                known[vi.name] = int(np.prod([d.dim_value for d in dims])) * itemsize
    fallback = max(known.values(), default=sum(a.nbytes for a in sample.values()) * 4)
    return {n: known.get(n, fallback) for n in names}


def _pack(names: Sequence[str], sizes: dict[str, int], budget: int) -> list[list[str]]:
    """Consecutive groups of tensors whose sizes add up to at most ``budget`` (>= 1 each)."""
    groups: list[list[str]] = []
    used = 0
    for name in names:
        if not groups or (used + sizes[name] > budget and groups[-1]):
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += sizes[name]
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
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    progress: bool = False,
) -> CalibrationTable:
    """Ranges of ``tensors`` (default: quantizable activations) of ``model`` on ``dataset``.

    ``method``: minmax | percentile (``percentile``, ``symmetric``) | entropy (TensorRT KL) |
    mse (``symmetric``). Memory does not grow with the number of samples.
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
        batch_size=batch_size,
        memory_limit=memory_limit,
        providers=providers,
        progress=progress,
    )
    options = {}
    if method == "percentile":
        options["percentile"] = percentile
    if method in ("percentile", "mse"):
        options["symmetric"] = symmetric
    return stats.compute(method, **options)
