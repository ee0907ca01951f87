"""Latency-aware placement: keep float what INT8 would not make faster on the target provider.

The QDQ rules (``rules``) say what *can* run in INT8; whether it is *faster* depends on the
provider's kernels. ONNX Runtime's CPU provider, for instance, runs depthwise QLinearConv,
uint8 MaxPool and elementwise QLinearMul/QLinearAdd on small tensors slower than its float
kernels, and a Q/DQ pair that splits a float fusion (Conv+activation, NCHWc chains) costs
more than the INT8 node saves. So both models are measured, not guessed (see
:mod:`.kernel_profile`: every kernel of ONNX Runtime's optimized graph, and the Q/DQ and
reorders it needs, is charged to an original node).

A quantized node whose INT8 time (its kernel and the Q/DQ serving it) is not below its float
time stays float; so does one that ONNX Runtime left as a float kernel between Q/DQ (no
integer kernel). A node the profile cannot attribute is judged by its class (all its op's
kernels). The model is re-emitted with those nodes float and measured again, kept only when
a run takes less CPU time; the verdicts are re-drawn on the kept model (a node
float moves its neighbours' Q/DQ); then whole classes slower in INT8 than in float (and,
while the whole model is, any) are tried, worst first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxprune import profiling
from onnxprune.api.kernel_profile import Profile, profiles
from onnxprune.errors import UsageError
from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.quantize_pass import QuantizePass

__all__ = ["Decision", "Placement", "decide", "node_class", "place"]


@dataclasses.dataclass
class Decision:
    exclude: dict[str, str]  # original node name -> why it stays float
    int8: dict[str, float]  # class -> microseconds, INT8 model
    fp32: dict[str, float]  # class -> microseconds, float model


def node_class(node: ir.Node) -> str:
    """The class an original node is measured in (see :mod:`.kernel_profile`)."""
    if node.op_type == "Conv" and (node.attributes.get_int("group", 1) or 1) > 1:
        return "Conv/grouped"
    return node.op_type


def named_node(node: ir.Node) -> str:
    """A node's name: every node has one once loaded (io.as_model names the unnamed)."""
    assert node.name is not None, f"an unnamed {node.op_type} node"
    return node.name


def decide(quantized: Sequence[ir.Node], fp32: Profile, int8: Profile) -> Decision:
    """Which quantized nodes stay float: not faster in INT8 (per node where the profile
    attributes its kernels in both models, else per class), or without an INT8 kernel."""
    exclude: dict[str, str] = {}
    for node in quantized:
        name, key = named_node(node), node_class(node)
        before, after = fp32.nodes.get(name), int8.nodes.get(name)
        if name in int8.float_kernels:
            exclude[name] = "no INT8 kernel on the target provider (runs float between Q/DQ)"
        elif before and after is not None:
            if after >= before:
                exclude[name] = (f"{node.op_type} is not faster in INT8 on the target provider "
                                 f"({after / 1000:.3f} ms with its Q/DQ vs {before / 1000:.3f} ms float)")
        elif key in int8.classes and int8.classes[key] >= fp32.classes.get(key, 0.0):
            ms = f"{int8.classes[key] / 1000:.2f} vs {fp32.classes.get(key, 0.0) / 1000:.2f} ms"
            exclude[name] = f"{key} is not faster in INT8 on the target provider ({ms})"
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
    first_int8_ms: float = 0.0  # kernel time of the model placement started from
    cpu_ms: list[float] = dataclasses.field(default_factory=list)  # CPU time of one run: float, INT8 (kept)

    def to_dict(self) -> dict:
        return {"fp32_ms": round(self.fp32_ms, 3), "int8_ms": round(self.int8_ms, 3), "trials": self.trials,
                "first_int8_ms": round(self.first_int8_ms, 3), "kept_float": len(self.excluded),
                "cpu_ms": [round(v, 3) for v in self.cpu_ms],
                "kernels_ms": {k: [round(a, 3), round(b, 3)] for k, (a, b) in sorted(self.kernels.items())}}


Ranges = Mapping[str, object] | Callable[[ir.Model, list[str]], Mapping[str, object]]


def place(float_model: ir.Model, int8_model: ir.Model, first: QuantizePass, ranges: Ranges, config: QuantConfig,
          feeds: Mapping[str, np.ndarray], provider: str, trials: int = 6) -> Placement:
    """Measure ``int8_model`` against ``float_model`` (the same model before quantization,
    sharing its weights); re-emit from clones of ``float_model`` with nodes kept float, and
    keep a re-emitted model only when a run takes less CPU time (``Profile.cost``). First the
    nodes ``decide`` names, again on each model kept; then one class at a time, worst first:
    those slower in INT8 than in float, and while the whole model is, any (a Q/DQ pair also
    slows the float kernels around it, which per-node times cannot see). At most ``trials``
    re-emissions. ``ranges``: the calibration table, or a calibrator that also ranges tensors
    a float node newly needs."""
    with profiling.phase("placement"):
        fp32, measured = profiles([float_model, int8_model], feeds, provider)
        best = _Candidate(int8_model, first, measured, {})
        start = measured.total
        tried: set[str] = set()
        count, per_node = 0, True
        while count < trials:
            assert best.quantize_pass.plan is not None  # set by the pass's run
            nodes = best.quantize_pass.plan.nodes
            more = decide(nodes, fp32, best.measured).exclude if per_node else {}
            if not more:
                per_node = False
                loss = {k: best.measured.classes.get(k, 0.0) - fp32.classes.get(k, 0.0)
                        for k in {node_class(n) for n in nodes} - tried}  # fmt: skip
                if not loss or (max(loss.values()) < 0 and best.measured.cost < fp32.cost):
                    break
                # the class that loses most in INT8 (or, while INT8 is slower, gains least), not tried yet
                worst = max(loss, key=loss.__getitem__)
                tried.add(worst)
                more = {named_node(n): f"{worst} nodes in INT8 made the model slower on the target provider"
                        for n in nodes if node_class(n) == worst}  # fmt: skip
            count += 1
            candidate = _emit(float_model, ranges, config, {**best.excluded, **more})
            if candidate is None:
                per_node = False
                continue
            # all three again, interleaved: the verdicts and the comparison see the same load
            fp32, best.measured, candidate.measured = profiles([float_model, best.model, candidate.model], feeds,
                                                               provider)
            if candidate.total < best.total:
                best = candidate
            else:
                per_node = False  # the verdicts did not pay together: classes, if still slower
        kernels = {k: [fp32.classes.get(k, 0.0) / 1000, best.measured.classes.get(k, 0.0) / 1000]
                   for k in {*fp32.classes, *best.measured.classes}}  # fmt: skip
        return Placement(best.model, best.quantize_pass, best.excluded, fp32.total / 1000, best.measured.total / 1000,
                         kernels, count, start / 1000, [fp32.cpu_us / 1000, best.measured.cpu_us / 1000])  # fmt: skip


def _emit(float_model: ir.Model, ranges: Ranges, config: QuantConfig, excluded: dict[str, str]) -> _Candidate | None:
    """``float_model`` quantized again with ``excluded`` float (None: nothing left in INT8, or
    a tensor without a range in a given table); measured by the caller."""
    candidate = float_model.clone()
    config = dataclasses.replace(config, exclude=config.exclude | set(excluded))
    trial = QuantizePass(config=config, calibrator=ranges) if callable(ranges) else QuantizePass(ranges, config)
    try:
        trial(candidate)
    except UsageError:  # a tensor the given table does not range (a Relu no longer folded)
        return None
    if trial.emitted is None:
        return None
    return _Candidate(candidate, trial, Profile({}, 0.0, set()), excluded)


@dataclasses.dataclass
class _Candidate:
    model: ir.Model
    quantize_pass: QuantizePass
    measured: Profile
    excluded: dict[str, str]

    @property
    def total(self) -> float:
        return self.measured.cost
