"""Latency-aware placement: keep float what INT8 would not make faster on the target provider.

The QDQ rules (``rules``) say what *can* run in INT8; whether it is *faster* depends on the
provider's kernels. ONNX Runtime's CPU provider, for instance, runs depthwise QLinearConv and
uint8 MaxPool slower than its NCHWc float kernels, and a Q/DQ pair that splits a float
fusion (Conv+activation, NCHWc chains) costs more than the INT8 node saves. So both models
are measured, not guessed: each runs on the provider with ``enable_profiling``, and every
kernel of ONNX Runtime's *optimized* graph is charged to a class of original nodes:

* a kernel to the op it computes (QLinearConv and FusedConv both to "Conv"; grouped and
  depthwise convolutions are their own class "Conv/grouped");
* a standalone QuantizeLinear/DequantizeLinear or NCHWc Reorder (what a broken fusion leaves)
  to the class of the kernel it feeds or is fed by.

A class whose INT8 time (its kernels and the Q/DQ they need) is not below its float time
stays float; so does a quantized node that ONNX Runtime left as a float kernel between Q/DQ
(no integer kernel). The caller re-emits with those exclusions and measures again, until no
class is slower or nothing changes.
"""

from __future__ import annotations

import collections
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

from onnxprune import profiling, runtime
from onnxprune.errors import UsageError
from onnxprune.io import trim_heap
from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.quantize_pass import QuantizePass

OVERHEAD = {"QuantizeLinear", "DequantizeLinear", "ReorderInput", "ReorderOutput"}
_CLASS = {  # ONNX Runtime's integer and fused kernels -> the op they compute
    "QLinearConv": "Conv", "FusedConv": "Conv", "ConvInteger": "Conv", "NhwcFusedConv": "Conv",
    "QGemm": "Gemm", "FusedGemm": "Gemm", "QLinearMatMul": "MatMul", "MatMulInteger": "MatMul",
    "MatMulIntegerToFloat": "MatMul", "FusedMatMul": "MatMul", "DynamicQuantizeMatMul": "MatMul",
    "QLinearAdd": "Add", "QLinearMul": "Mul", "QLinearConcat": "Concat", "QLinearAveragePool": "AveragePool",
    "QLinearGlobalAveragePool": "GlobalAveragePool", "QLinearSigmoid": "Sigmoid", "QLinearLeakyRelu": "LeakyRelu",
}  # fmt: skip
_INTEGER = {k for k in _CLASS if k.startswith(("QLinear", "QGemm")) or "Integer" in k}
_GENERATED = re.compile(r"(_token_\d+|_nchwc)+$")


@dataclasses.dataclass
class Profile:
    """Kernel microseconds per class of one model (fastest run), and its fastest wall time."""

    classes: dict[str, float]
    wall_ms: float
    float_kernels: set[str]  # names of original nodes that still run a float kernel


@dataclasses.dataclass
class Decision:
    exclude: dict[str, str]  # original node name -> why it stays float
    int8: dict[str, float]  # class -> microseconds, INT8 model
    fp32: dict[str, float]  # class -> microseconds, float model


def node_class(node: ir.Node) -> str:
    """The class an original node is measured in (see the module docstring)."""
    if node.op_type == "Conv" and (node.attributes.get_int("group", 1) or 1) > 1:
        return "Conv/grouped"
    return node.op_type


def profile(model: ir.Model, feeds: Mapping[str, np.ndarray], provider: str, runs: int = 8) -> Profile:
    """Run ``model`` ``runs`` times with ONNX Runtime's profiler on; charge kernels to classes."""
    trim_heap()  # the previous session's memory goes back before this one grows
    folder = Path(tempfile.mkdtemp(prefix="onnxprune-placement-"))
    try:

        def configure(options) -> None:
            options.enable_profiling = True
            options.profile_file_prefix = str(folder / "profile")
            options.optimized_model_filepath = str(folder / "optimized.onnx")
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "w.bin")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")

        with runtime.session(model, [provider], intra_op_threads=1, configure=configure) as sess:
            runtime.run_session(sess, None, feeds)  # warm-up: first-run allocations are not kernels
            walls = []
            for _ in range(runs):
                start = time.perf_counter()
                runtime.run_session(sess, None, feeds)
                walls.append(time.perf_counter() - start)
            trace = sess.end_profiling()
        events = json.loads(Path(trace).read_text())
        graph = onnx.load(str(folder / "optimized.onnx"), load_external_data=False).graph
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    durations = collections.defaultdict(list)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            durations[name[: -len("_kernel_time")]].append(event.get("dur", 0))
    # the fastest of the runs after the warm-up: on a shared machine, load only ever adds time
    micros = {name: float(min(d[1:] or d)) for name, d in durations.items()}
    classes, float_kernels = _charge(graph, micros, {n.name for n in model.graph if n.name is not None})
    return Profile(classes, float(min(walls) * 1000), float_kernels)


def _charge(
    graph: onnx.GraphProto, micros: Mapping[str, float], originals: set[str]
) -> tuple[dict[str, float], set[str]]:
    producer = {o: n for n in graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)

    def kernel_class(n) -> str | None:
        if n.op_type in OVERHEAD or added(n):
            return None
        op = _CLASS.get(n.op_type, n.op_type)
        if op == "Conv":
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            return "Conv/grouped" if group > 1 else "Conv"
        return op

    def overhead_class(n, depth: int = 0) -> str:
        """Q and ReorderInput serve the kernel they feed; DQ and ReorderOutput the one they read;
        a layout Transpose ONNX Runtime added, the integer kernel next to it. Chains of such
        nodes (Q -> Transpose -> QLinearConv) are followed."""
        before = [producer[v] for v in n.input[:1] if v in producer]
        after = [c for v in n.output for c in consumers.get(v, [])]
        order = after + before if n.op_type in ("QuantizeLinear", "ReorderInput") else before + after
        order = [m for m in order if m.op_type in _INTEGER] + order
        for m in order:
            if k := kernel_class(m):
                return k
        onward = after if n.op_type in ("QuantizeLinear", "ReorderInput") else before
        walk = [m for m in onward if not kernel_class(m)]
        return overhead_class(walk[0], depth + 1) if walk and depth < 4 else "other"

    def added(n) -> bool:  # by ONNX Runtime's layout transformer, around NHWC integer kernels
        return n.op_type == "Transpose" and n.name not in originals

    classes: collections.defaultdict[str, float] = collections.defaultdict(float)
    float_kernels = set()
    for n in graph.node:
        classes[kernel_class(n) or overhead_class(n)] += micros.get(n.name, 0.0)
        fed_by_dq = any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)
        kernel = n.op_type not in OVERHEAD and not added(n) and n.op_type not in _INTEGER
        if kernel and fed_by_dq and n.op_type in _CLASS.values():
            float_kernels.add(_GENERATED.sub("", n.name))
    return dict(classes), float_kernels


def named_node(node: ir.Node) -> str:
    """A node's name: every node has one once loaded (io.as_model names the unnamed)."""
    assert node.name is not None, f"an unnamed {node.op_type} node"
    return node.name


def decide(quantized: Sequence[ir.Node], fp32: Profile, int8: Profile) -> Decision:
    """Which quantized nodes stay float: classes not faster in INT8, nodes without an INT8 kernel."""
    exclude: dict[str, str] = {}
    for node in quantized:
        key = node_class(node)
        if node.name in int8.float_kernels:
            exclude[node.name] = "no INT8 kernel on the target provider (runs float between Q/DQ)"
        elif key in int8.classes and int8.classes[key] >= fp32.classes.get(key, 0.0):
            ms = f"{int8.classes[key] / 1000:.2f} vs {fp32.classes.get(key, 0.0) / 1000:.2f} ms"
            exclude[named_node(node)] = f"{key} is not faster in INT8 on the target provider ({ms})"
    return Decision(exclude, int8.classes, fp32.classes)



@dataclasses.dataclass
class Placement:
    """The model to keep, the pass that made it, and what was measured (for the report)."""

    model: ir.Model
    quantize_pass: QuantizePass
    excluded: dict[str, str]
    fp32_ms: float  # kernel time (fastest run), one thread, on the placement batch
    int8_ms: float
    kernels: dict[str, list[float]]  # class -> [fp32 ms, int8 ms] of kernel time, final model
    trials: int  # re-emissions tried

    def to_dict(self) -> dict:
        return {"fp32_ms": round(self.fp32_ms, 3), "int8_ms": round(self.int8_ms, 3), "trials": self.trials,
                "kept_float": len(self.excluded),
                "kernels_ms": {k: [round(a, 3), round(b, 3)] for k, (a, b) in sorted(self.kernels.items())}}


def place(float_model: ir.Model, int8_model: ir.Model, first: QuantizePass, ranges, config: QuantConfig,
          feeds: Mapping[str, np.ndarray], provider: str, trials: int = 6) -> Placement:
    """Measure ``int8_model`` against ``float_model`` (the same model before quantization,
    sharing its weights); re-emit from clones of ``float_model`` with nodes kept float, and
    keep a re-emitted model only when its kernels take less time in total. First the nodes
    ``decide`` names; then, while INT8 is still not faster than float, one class at a time,
    worst first (a Q/DQ pair also slows the float kernels around it, which per-class times
    cannot see). At most ``trials`` re-emissions."""
    with profiling.phase("placement"):
        fp32 = profile(float_model, feeds, provider)
        best = _Candidate(int8_model, first, profile(int8_model, feeds, provider), {})
        tried: set[str] = set()
        count = 0
        while count < trials:
            assert best.quantize_pass.plan is not None  # set by the pass's run
            nodes = best.quantize_pass.plan.nodes
            if count == 0:
                more = decide(nodes, fp32, best.measured).exclude
            elif best.total < sum(fp32.classes.values()):
                break
            else:  # the class that loses most (or gains least) in INT8, not tried yet
                left = {node_class(n) for n in nodes} - tried
                if not left:
                    break
                worst = max(left, key=lambda k: best.measured.classes.get(k, 0.0) - fp32.classes.get(k, 0.0))
                tried.add(worst)
                more = {named_node(n): f"{worst} nodes in INT8 made the model slower on the target provider"
                        for n in nodes if node_class(n) == worst}  # fmt: skip
            count += 1
            if not more:
                continue
            excluded = {**best.excluded, **more}
            candidate = float_model.clone()
            trial = QuantizePass(ranges, dataclasses.replace(config, exclude=config.exclude | set(excluded)))
            try:
                trial(candidate)
            except UsageError:  # a tensor the calibration did not range (a Relu no longer folded)
                continue
            if trial.emitted is None:  # nothing left in INT8
                continue
            measured = _Candidate(candidate, trial, profile(candidate, feeds, provider), excluded)
            if measured.total < best.total:
                best = measured
        kernels = {k: [fp32.classes.get(k, 0.0) / 1000, best.measured.classes.get(k, 0.0) / 1000]
                   for k in {*fp32.classes, *best.measured.classes}}  # fmt: skip
        return Placement(best.model, best.quantize_pass, best.excluded, sum(fp32.classes.values()) / 1000,
                         best.total / 1000, kernels, count)  # fmt: skip


@dataclasses.dataclass
class _Candidate:
    model: ir.Model
    quantize_pass: QuantizePass
    measured: Profile
    excluded: dict[str, str]

    @property
    def total(self) -> float:
        return sum(self.measured.classes.values())
