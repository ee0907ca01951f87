"""Where ONNX Runtime spends a model's time, charged back to the model's own nodes.

Each model runs on the target provider with ``enable_profiling``; every kernel of ONNX
Runtime's *optimized* graph (fused, NCHWc, QLinear...) is charged to an original node and
to a class of them (placement decides from both):

* a kernel to the node it computes: its name with ONNX Runtime's suffixes taken off
  (``_token_7``, ``_nchwc``), or the node whose output it writes (a fused Conv+Add); its
  class is the op it computes (QLinearConv and FusedConv both "Conv"; grouped and depthwise
  convolutions are their own class "Conv/grouped");
* a standalone QuantizeLinear/DequantizeLinear, NCHWc Reorder or added layout Transpose (what
  a broken fusion leaves) to the kernel it serves: a Q the kernel it feeds, a DQ the one it
  reads (an integer kernel first).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnxprune import runtime
from onnxprune.io import trim_heap
from onnxprune.passes.quantize.rules import QUANTIZABLE

OVERHEAD = {"QuantizeLinear", "DequantizeLinear", "ReorderInput", "ReorderOutput"}
_CLASS = {  # ONNX Runtime's integer and fused kernels -> the op they compute
    "QLinearConv": "Conv", "FusedConv": "Conv", "ConvInteger": "Conv", "NhwcFusedConv": "Conv",
    "QGemm": "Gemm", "FusedGemm": "Gemm", "QLinearMatMul": "MatMul", "MatMulInteger": "MatMul",
    "MatMulIntegerToFloat": "MatMul", "FusedMatMul": "MatMul", "DynamicQuantizeMatMul": "MatMul",
    "QLinearAdd": "Add", "QLinearMul": "Mul", "QLinearConcat": "Concat", "QLinearAveragePool": "AveragePool",
    "QLinearGlobalAveragePool": "GlobalAveragePool", "QLinearSigmoid": "Sigmoid", "QLinearLeakyRelu": "LeakyRelu",
}  # fmt: skip
INTEGER = {k for k in _CLASS if k.startswith(("QLinear", "QGemm")) or "Integer" in k}
_GENERATED = re.compile(r"(_token_\d+|_nchwc)+$")


@dataclasses.dataclass
class Profile:
    """Kernel microseconds per class and per original node of one model (fastest run)."""

    classes: dict[str, float]
    wall_ms: float
    float_kernels: set[str]  # names of original nodes that still run a float kernel between Q/DQ
    nodes: dict[str, float] = dataclasses.field(default_factory=dict)  # original node -> its kernels + overheads
    cpu_us: float = 0.0  # the process's CPU time for one run (fastest): waiting for a core not counted

    @property
    def cost(self) -> float:
        """What comparisons of whole models use: CPU time per run, where measured (on a shared
        machine a run's wall and kernel times grow with the others' load, its CPU time far less)."""
        return self.cpu_us or self.total

    @property
    def total(self) -> float:
        return sum(self.classes.values())


def profile(model: ir.Model, feeds: Mapping[str, np.ndarray], provider: str, runs: int = 8) -> Profile:
    """Run ``model`` ``runs`` times with ONNX Runtime's profiler on; charge kernels to nodes."""
    return profiles([model], feeds, provider, runs)[0]


def profiles(models: Sequence[ir.Model], feeds: Mapping[str, np.ndarray], provider: str,
             runs: int = 8) -> list[Profile]:
    """Profile several models with their runs interleaved (A B A B...): on a shared machine
    a change of load then hits each alike, and the fastest run of each kernel is kept (load
    only ever adds time)."""
    trim_heap()  # the previous session's memory goes back before these grow
    folder = Path(tempfile.mkdtemp(prefix="onnxprune-placement-"))
    try:
        with contextlib.ExitStack() as stack:
            sessions = []
            for index, model in enumerate(models):

                def configure(options, index=index) -> None:
                    options.enable_profiling = True
                    options.profile_file_prefix = str(folder / f"profile{index}")
                    options.optimized_model_filepath = str(folder / f"optimized{index}.onnx")
                    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                                     f"w{index}.bin")
                    options.add_session_config_entry(
                        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")

                sessions.append(stack.enter_context(runtime.session(model, [provider], intra_op_threads=1,
                                                                    configure=configure)))
            for sess in sessions:
                runtime.run_session(sess, None, feeds)  # warm-up: first-run allocations are not kernels
            walls: list[list[float]] = [[] for _ in sessions]
            cpus: list[list[float]] = [[] for _ in sessions]
            for _ in range(runs):
                for sess, times, cpu in zip(sessions, walls, cpus, strict=True):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    runtime.run_session(sess, None, feeds)
                    times.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - start_cpu)
            traces = [sess.end_profiling() for sess in sessions]
        found = []
        for index, (model, trace, times, cpu) in enumerate(zip(models, traces, walls, cpus, strict=True)):
            graph = onnx.load(str(folder / f"optimized{index}.onnx"), load_external_data=False).graph
            found.append(_profile_of(model, graph, json.loads(Path(trace).read_text()), times))
            found[-1].cpu_us = min(cpu) * 1e6
        return found
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _profile_of(model: ir.Model, graph: onnx.GraphProto, events: list[dict], walls: list[float]) -> Profile:
    durations = collections.defaultdict(list)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            durations[name[: -len("_kernel_time")]].append(event.get("dur", 0))
    micros = {name: float(min(d[1:] or d)) for name, d in durations.items()}  # after the warm-up
    outputs = {o.name: n.name for n in model.graph if n.name is not None for o in n.outputs if o.name}
    classes, float_kernels, nodes = _charge(graph, micros, {n.name for n in model.graph if n.name}, outputs)
    return Profile(classes, float(min(walls) * 1000), float_kernels, nodes)


def _charge(
    graph: onnx.GraphProto, micros: Mapping[str, float], originals: set[str], outputs: Mapping[str, str] | None = None
) -> tuple[dict[str, float], set[str], dict[str, float]]:
    """Kernel time per class, the originals left float between Q/DQ, and time per original
    (``outputs``: original output name -> its node, for kernels named after a tensor)."""
    outputs = outputs or {}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)

    def added(n) -> bool:  # by ONNX Runtime's layout transformer, around NHWC integer kernels
        return n.op_type == "Transpose" and n.name not in originals

    def kernel_class(n) -> str | None:
        if n.op_type in OVERHEAD or added(n):
            return None
        op = _CLASS.get(n.op_type, n.op_type)
        if op == "Conv":
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            return "Conv/grouped" if group > 1 else "Conv"
        return op

    def served(n, depth: int = 0):
        """The kernel an overhead node serves. Q and ReorderInput serve the kernel they feed;
        DQ and ReorderOutput the one they read; an added Transpose, the integer kernel next to
        it. Chains of such nodes (Q -> Transpose -> QLinearConv) are followed."""
        before = [producer[v] for v in n.input[:1] if v in producer]
        after = [c for v in n.output for c in consumers.get(v, [])]
        order = after + before if n.op_type in ("QuantizeLinear", "ReorderInput") else before + after
        order = [m for m in order if m.op_type in INTEGER] + order
        for m in order:
            if kernel_class(m):
                return m
        onward = after if n.op_type in ("QuantizeLinear", "ReorderInput") else before
        walk = [m for m in onward if not kernel_class(m)]
        return served(walk[0], depth + 1) if walk and depth < 4 else None

    def original(n) -> str | None:
        name = _GENERATED.sub("", n.name)
        if name in originals:
            return name
        return outputs.get(name) or next((outputs[o] for o in n.output if o in outputs), None)

    classes: collections.defaultdict[str, float] = collections.defaultdict(float)
    nodes: collections.defaultdict[str, float] = collections.defaultdict(float)
    float_kernels = set()
    for n in graph.node:
        kernel = n if kernel_class(n) else served(n)
        classes[(kernel_class(kernel) if kernel is not None else None) or "other"] += micros.get(n.name, 0.0)
        if kernel is not None and (owner := original(kernel)) is not None:
            nodes[owner] += micros.get(n.name, 0.0)
        fed_by_dq = any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)
        is_kernel = n.op_type not in OVERHEAD and not added(n) and n.op_type not in INTEGER
        if is_kernel and fed_by_dq and n.op_type in QUANTIZABLE:  # a quantized op without an integer kernel
            float_kernels.add(_GENERATED.sub("", n.name))
    return dict(classes), float_kernels, dict(nodes)
