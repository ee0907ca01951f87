"""Quantization recovery measured on calibration data: bias correction, kept only when it helps.

:func:`input_means` runs the float model once over the calibration data with a ReduceMean per
input of every Conv/Gemm (channel means are computed inside ONNX Runtime, so no activation
leaves it whole); :func:`correct` feeds them to
:class:`onnxprune.passes.quantize.bias_correction.BiasCorrectionPass`. Whether the correction
stays is decided by the quantize API on held-out samples (:func:`better`): a recovery step
never silently makes the result worse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from onnxprune import runtime
from onnxprune.api.fidelity_metric import Fidelity
from onnxprune.calibration.plan import activation_batch
from onnxprune.graphutils import add_initializer
from onnxprune.passes.base import PassResult
from onnxprune.passes.quantize.bias_correction import BiasCorrectionPass, correctable
from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.equalize import ChannelEqualizePass, regions


def _probe(model: ir.Model, names: list[str], reduce: str = "ReduceMean") -> tuple[ir.Model, dict[str, str]]:
    """A copy of ``model`` whose outputs are the per-channel means (axis 1, or the last axis of
    a 2-D Gemm input) of the tensors ``names`` (``reduce="ReduceMax"``: the maxima of |x|)."""
    probe = ir.from_proto(ir.to_proto(model))
    values = {v.name: v for v in probe.graph.inputs}
    values.update({v.name: v for node in probe.graph for v in node.outputs})
    opset = probe.opset_imports.get("", 13)
    outputs = {}
    for name in names:
        value = values.get(name)
        rank = len(value.shape) if value is not None and value.shape is not None else None
        if value is None or rank is None or rank < 2:
            continue
        axes = [0] if rank == 2 else [0, *range(2, rank)]
        if reduce == "ReduceMax":
            magnitude = ir.node("Abs", [value], name=f"{name}_abs")
            probe.graph.append(magnitude)
            value = magnitude.outputs[0]
        node_inputs = [value]
        attributes: dict[str, int | list[int]] = {"keepdims": 0}
        if opset >= 18:
            node_inputs.append(add_initializer(probe.graph, f"{name}_mean_axes", np.array(axes, np.int64)))
        else:
            attributes["axes"] = axes
        node = ir.node(reduce, node_inputs, attributes=attributes, name=f"{name}_channel_mean")
        probe.graph.append(node)
        node.outputs[0].name = f"{name}__channel_mean"
        node.outputs[0].dtype = ir.DataType.FLOAT
        probe.graph.outputs.append(node.outputs[0])
        outputs[name] = node.outputs[0].name
    return probe, outputs


def input_means(model: ir.Model, batches: Iterable[Mapping[str, np.ndarray]],
                config: QuantConfig | None = None) -> dict[str, np.ndarray]:
    """Per-channel means, over the batches, of the data input of every correctable node."""
    config = config or QuantConfig()
    names = sorted({n.inputs[0].name or "" for n in model.graph if correctable(n) and n.inputs[0] is not None
                    and not config.excludes(n.name or "", n.op_type)} - {""})  # fmt: skip
    if not names:
        return {}
    probe, outputs = _probe(model, names)
    sums: dict[str, np.ndarray] = {}
    count = 0
    with runtime.session(probe) as sess:
        for feeds in batches:
            n = len(next(iter(feeds.values())))
            got = runtime.run_session(sess, list(outputs.values()), dict(feeds))
            for (name, _), mean in zip(outputs.items(), got):
                sums[name] = sums.get(name, 0.0) + np.asarray(mean, np.float64) * n
            count += n
    return {name: total / max(count, 1) for name, total in sums.items()}


def channel_absmax(model: ir.Model, batches: Iterable[Mapping[str, np.ndarray]],
                   names: list[str]) -> dict[str, np.ndarray]:
    """Per-channel max |x|, over the batches, of the tensors ``names`` (for equalization)."""
    if not names:
        return {}
    probe, outputs = _probe(model, names, "ReduceMax")
    found: dict[str, np.ndarray] = {}
    with runtime.session(probe) as sess:
        for feeds in batches:
            got = runtime.run_session(sess, list(outputs.values()), dict(feeds))
            for name, peak in zip(outputs, got):
                found[name] = np.maximum(found.get(name, 0.0), np.asarray(peak, np.float64))
    return found


def equalize(model: ir.Model, batches: Iterable[Mapping[str, np.ndarray]]) -> PassResult:
    """Channel-equalize ``model`` in place (exact in float), ranges measured on ``batches``."""
    return EqualizeStep(batches).call(model)


class EqualizeStep(ChannelEqualizePass):
    """The equalization pass with its ranges measured first, on the model it gets."""

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]]) -> None:
        super().__init__({})
        self.batches = batches

    def call(self, model: ir.Model) -> PassResult:
        names = sorted({n for region in regions(model) for n in region.members})
        self.absmax = channel_absmax(model, self.batches, names)
        return super().call(model)


def correct(model: ir.Model, batches: Iterable[Mapping[str, np.ndarray]], config: QuantConfig) -> PassResult:
    """Bias-correct ``model`` (the float model about to be quantized) in place."""
    return BiasCorrectionPass(input_means(model, batches, config), config).call(model)


def batch_for(model: ir.Model, wanted: int) -> int:
    """A batch the model's activations allow (the calibration's own memory budget)."""
    return max(1, min(wanted, activation_batch(model)))


def better(corrected: Fidelity, plain: Fidelity) -> bool:
    """Keep the corrected model unless the plain one is closer to float on held-out samples."""
    return corrected.score() >= plain.score()
