"""The quantization pass: place, calibrate if needed, emit QDQ."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxprune.errors import UnsupportedError
from onnxprune.passes.base import Pass, PassResult
from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.detect import check_not_quantized
from onnxprune.passes.quantize.emit import Emitted, Emitter
from onnxprune.passes.quantize.rules import COMPUTE, Plan, activation_values, plan

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the axis attribute)

# Given the model as the pass sees it and the tensors it needs, return {name: (min, max)}.
Calibrator = Callable[[ir.Model, list[str]], Mapping[str, object]]


class QuantizePass(Pass):
    """Static INT8 QDQ quantization: int8 weights per channel, calibrated int8 activations.

    Ranges come from ``ranges`` ({tensor: (min, max)} or a CalibrationTable) or, when the pass
    runs, from ``calibrator(model, tensor_names)`` — so a model pruned earlier in the same
    pipeline is calibrated as it is by then. ``emitted`` holds the counts of the last run.
    """

    name = "quantize"
    exact = False

    def __init__(
        self,
        ranges: Mapping[str, object] | None = None,
        config: QuantConfig | None = None,
        *,
        calibrator: Calibrator | None = None,
    ) -> None:
        super().__init__()
        if (ranges is None) == (calibrator is None):
            raise ValueError("QuantizePass needs exactly one of ranges or calibrator")
        self.ranges = ranges
        self.config = config or QuantConfig()
        self.calibrator = calibrator
        self.emitted: Emitted | None = None
        self.plan: Plan | None = None

    def call(self, model: ir.Model) -> PassResult:
        # Checked here, not in requires(): onnx-ir would wrap our one-line error in its own.
        check_not_quantized(model)
        opset = model.opset_imports.get("", 0)
        if opset < MIN_OPSET:
            raise UnsupportedError(
                f"opset {opset} is too old for per-channel QDQ (needs {MIN_OPSET}); convert the model "
                "first, e.g. onnx.version_converter.convert_version(model, 17)"
            )
        common.TopologicalSortPass()(model)
        the_plan = self.plan = plan(model, self.config)
        if not the_plan.compute:
            raise UnsupportedError(_nothing_to_quantize(model, the_plan.declined))
        ranges = self.ranges
        if ranges is None:
            ranges = self.calibrator(model, [v.name for v in activation_values(model, self.config, the_plan)])
        self.emitted = Emitter(model, self.config, ranges).run(the_plan)
        common.RemoveUnusedNodesPass()(model)
        common.TopologicalSortPass()(model)
        return PassResult(model, True, self.emitted.changes)


def _nothing_to_quantize(model: ir.Model, declined: Mapping[str, str]) -> str:
    if declined:
        node, reason = next(iter(declined.items()))
        return (
            f"nothing to quantize: none of the {len(declined)} quantizable nodes can run in INT8 "
            f"(e.g. '{node}': {reason})"
        )
    ops = sorted({n.op_type for n in model.graph})
    return (
        f"nothing to quantize: no {'/'.join(COMPUTE)} node in the main graph "
        f"(ops: {', '.join(ops[:12])}{'...' if len(ops) > 12 else ''})"
    )
