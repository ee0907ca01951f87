"""Sessions that return small summaries of a model's tensors instead of the tensors.

ONNX Runtime allocates every graph output of a session on each run, fetched or not, and an
exposed tensor cannot be reused by its memory planner. So each calibrated tensor ``x`` gets
nodes right after its producer, inside the graph:

* ``ReduceMin(x)``, ``ReduceMax(x)``, ``Size(x)`` (exact range and count), and
  ``ReduceSum(x)``, whose only job is to be NaN when x holds a NaN: ORT's ReduceMin/Max skip
  NaNs except in first position, so they cannot tell;
* for histograms, ``Slice(Reshape(x, [-1]), step=k)``: every k-th value (a systematic sample,
  see ``sample_stride``).

The nodes are added to the model for the session's creation only (the model is restored
right after). ORT optimises the probed graph (``ORT_ENABLE_ALL``: NCHWc convolutions,
fusions), which a probed tensor survives (graph outputs are never fused away) with values
changed by float rounding only (ranges within 3e-7 relative of an unoptimised session's).
That costs less CPU time than an unoptimised session (ORT's own calibrators run
unoptimised), once the nodes run in a good order (see ``_optimised_session``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import math
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from google.protobuf.message import DecodeError

from onnxprune import profiling
from onnxprune.calibration.tensors import graph_values
from onnxprune.errors import OnnxPruneError
from onnxprune.graphutils import named
from onnxprune.io import EXTERNAL_DATA_THRESHOLD, has_external_data, trim_heap, weights_nbytes
from onnxprune.runtime import session

_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # of the graph the probed session runs
# ORT's default order runs nodes whose outputs are graph outputs last, so the added
# reductions would keep every activation alive to the end (hundreds of MB on a small CNN);
# the priority-based order runs ready nodes by index: in the order of the graph.
_ORDER = ort.ExecutionOrder.PRIORITY_BASED
REDUCTIONS = ("ReduceMin", "ReduceMax", "Size", "ReduceSum")  # outputs per reduced tensor, in order
_PROBE_TAG = "__onnxprune_"  # in the names of the nodes probes add
_EXTERNAL_FILE = "session.optimized_model_external_initializers_file_name"
_EXTERNAL_MIN_SIZE = "session.optimized_model_external_initializers_min_size_in_bytes"
REDUCIBLE = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE})  # float16 sums overflow; no bfloat16 kernels


@dataclasses.dataclass(frozen=True)
class Probe:
    """What a session returns for one tensor: its reductions (and a sample with ``stride``),
    or, when ``reduce`` is False, the whole tensor."""

    name: str
    reduce: bool = True
    stride: int | None = None  # None: no sample (minmax); 1: every value

    @property
    def outputs(self) -> int:
        return (len(REDUCTIONS) + (self.stride is not None)) if self.reduce else 1


@contextlib.contextmanager
def probed_session(model: ir.Model, probes: Sequence[Probe], providers) -> Iterator[tuple[object, list[str]]]:
    """A session returning, per probe in order, its outputs (see ``Probe``); and their names."""
    values = graph_values(model)
    constants: dict[tuple, ir.Value] = {}
    head: list[ir.Node] = []  # shared constants, at the start of the graph
    chains: list[tuple[ir.Value, list[ir.Node]]] = []
    outputs: list[ir.Value] = []

    def constant(*items: int) -> ir.Value:
        if items not in constants:
            node = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(items, np.int64))})
            node.outputs[0].name = f"__onnxprune_const_{len(constants)}"
            head.append(node)
            constants[items] = node.outputs[0]
        return constants[items]

    for probe in probes:
        value = values[probe.name]
        if not probe.reduce:
            outputs.append(value)
            continue
        nodes = [_node(op, [value], f"{value.name}__onnxprune_{op}", keepdims=0) for op in REDUCTIONS]
        if probe.stride is not None:
            flat = _node("Reshape", [value, constant(-1)], f"{value.name}__onnxprune_flat")
            step = [constant(0), constant(2**62), constant(0), constant(probe.stride)]
            nodes += [flat, _node("Slice", [flat.outputs[0], *step], f"{value.name}__onnxprune_sample")]
        chains.append((value, nodes))
        outputs += [n.outputs[0] for n in nodes if n.op_type != "Reshape"]
    with contextlib.ExitStack() as stack:
        with profiling.phase("calibration session"), _augmented(model, head, chains, outputs):
            sess = stack.enter_context(_optimised_session(model, providers))  # model restored now
        yield sess, [named(v) for v in outputs]


@contextlib.contextmanager
def _optimised_session(model: ir.Model, providers) -> Iterator[ort.InferenceSession]:
    """A session on ORT's optimised graph, its nodes ordered so that probes run early.

    ORT's priority-based order runs ready nodes by index, and the optimiser appends the nodes
    it adds (NCHWc ReorderOutput before each probe of a convolution output) at the end: the
    probes would run last and every probed tensor would stay alive. So the optimised graph is
    saved (weights to a side file), its nodes re-sorted with probes first among ready nodes,
    and loaded as it is (a second session load). If ORT cannot save it, the graph runs unoptimised.
    """
    folder = Path(tempfile.mkdtemp(prefix="onnxprune-probes-"))
    try:
        path = folder / "optimised.onnx"

        def save(options: ort.SessionOptions) -> None:
            options.optimized_model_filepath = str(path)
            options.add_session_config_entry(_EXTERNAL_FILE, "weights.bin")
            options.add_session_config_entry(_EXTERNAL_MIN_SIZE, "1024")
            options.add_session_config_entry("session.disable_prepacking", "1")  # never run

        try:
            with session(model, providers, optimization_level=_LEVEL, configure=save):
                pass
            trim_heap()  # that session's memory goes back before the next one grows
            proto = onnx.load(str(path), load_external_data=False)
        except (OnnxPruneError, OSError, DecodeError):  # e.g. an execution provider's compiled nodes
            proto = None
        source: ir.Model | Path = model  # as a fallback: unoptimised, probes placed by us
        if proto is not None:
            _probes_first(proto.graph)
            onnx.save(proto, str(path))
            source = path
        unoptimised = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options = {"optimization_level": unoptimised, "execution_order": _ORDER, "configure": _lean}
        with session(source, providers, **options) as sess:
            shutil.rmtree(folder, ignore_errors=True)  # ORT holds what it needs
            yield sess
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _lean(options: ort.SessionOptions) -> None:
    # Memory patterns (one block planned per input shape after a first run) come on top of
    # the arena chunks of that first run: more memory for no measurable speed.
    options.enable_mem_pattern = False


def _probes_first(graph: onnx.GraphProto) -> None:
    """Topological re-sort of ``graph``'s nodes: among ready nodes, probes first, then the
    original order. A probe is one of our nodes, or a node that only feeds probes."""
    nodes = list(graph.node)
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, node in enumerate(nodes):
        for j in {producer[name] for name in node.input if name in producer}:
            users[j].append(i)
            waiting[i] += 1
    exposed = {o.name for o in graph.output}
    probe = [_PROBE_TAG in node.name for node in nodes]
    for i in reversed(range(len(nodes))):  # users come later in a topological order
        if users[i] and all(probe[u] for u in users[i]) and not exposed.intersection(nodes[i].output):
            probe[i] = True
    ready = [(not probe[i], i) for i in range(len(nodes)) if not waiting[i]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users[i]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, (not probe[u], u))
    del graph.node[:]
    graph.node.extend(order)


def _node(op: str, inputs: list[ir.Value], name: str, **attributes) -> ir.Node:
    if op in ("Size", "Reshape", "Slice"):
        attributes = {}
    node = ir.node(op, inputs, attributes=attributes, name=name)
    node.outputs[0].name = name
    return node


@contextlib.contextmanager
def _augmented(model: ir.Model, head, chains, outputs) -> Iterator[None]:
    """``model`` with the probe nodes and extra outputs while the block runs, then as before."""
    graph = model.graph
    original = list(graph.outputs)
    inserted: list[ir.Node] = []
    try:
        if head:
            graph.insert_before(next(iter(graph)), head)
            inserted += head
        for value, nodes in chains:
            producer = value.producer()
            if producer is None:  # a graph input: after the constants, before everything else
                graph.insert_before(next(n for n in graph if n not in head), nodes)
            else:
                graph.insert_after(producer, nodes)
            inserted += nodes
        graph.outputs.extend(dict.fromkeys(v for v in outputs if v not in original))
        yield
    finally:
        graph.outputs.clear()
        graph.outputs.extend(original)
        if inserted:
            graph.remove(inserted, safe=True)


def sample_stride(per_sample: int, sample: int | None) -> int:
    """The step k of a systematic sample keeping about ``sample`` of ``per_sample`` values.

    k is the smallest prime >= per_sample / sample that does not divide per_sample: coprime
    with every dimension, so the sampled positions walk through all channels, rows and
    columns (a step sharing a factor with the width would read the same columns again).
    """
    if not sample or per_sample <= sample:
        return 1
    k = max(2, math.ceil(per_sample / sample))
    while not (_is_prime(k) and per_sample % k):
        k += 1
    return k


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % p for p in range(2, math.isqrt(n) + 1))


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A tensor's element type (None: unknown) and values per sample (None: unknown)."""

    dtype: ir.DataType | None
    per_sample: int | None


def tensor_infos(model: ir.Model, names: Sequence[str], sample: dict[str, np.ndarray] | None) -> dict[str, TensorInfo]:
    """Element types and per-sample sizes, by ONNX shape inference on ``sample``'s shapes.

    Only an estimate (it sizes strides and batches): sizes are left unknown where inference
    cannot tell, and inference is skipped for big models held in memory (it would serialise
    every weight).
    """
    values = graph_values(model)
    dtypes = {n: values[n].dtype for n in names}
    sizes: dict[str, int] = {}
    can_infer = has_external_data(model) or weights_nbytes(model) < EXTERNAL_DATA_THRESHOLD
    if sample is not None and names and can_infer:
        samples = len(next(iter(sample.values())))
        for vi in _inferred(model, sample):
            if vi.name in dtypes:
                tensor_type = vi.type.tensor_type
                if dtypes[vi.name] is None and tensor_type.elem_type:
                    dtypes[vi.name] = ir.DataType(tensor_type.elem_type)
                dims = tensor_type.shape.dim
                if dims and all(d.HasField("dim_value") for d in dims):
                    sizes[vi.name] = -(-int(np.prod([d.dim_value for d in dims])) // samples)
    return {n: TensorInfo(dtypes[n], sizes.get(n)) for n in names}


def _inferred(model: ir.Model, sample: dict[str, np.ndarray]) -> list:
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
        inferred = proto  # only an estimate: what the model declares
    return [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
