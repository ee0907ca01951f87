"""The quantization pass: place, calibrate if needed, emit QDQ."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx_ir as ir
from onnx_ir.passes import common

from onnxprune import profiling
from onnxprune.errors import UnsupportedError, UsageError
from onnxprune.graphutils import named
from onnxprune.passes.base import Pass, PassResult
from onnxprune.passes.cleanup import MapSafeShapeInferencePass
from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.detect import check_not_quantized
from onnxprune.passes.quantize.emit import Emitted, Emitter
from onnxprune.passes.quantize.rules import COMPUTE, Plan, activation_values, plan

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the axis attribute)
MIN_OPSET_PER_TENSOR = 10  # QuantizeLinear/DequantizeLinear themselves

# Given the model as the pass sees it and the tensors it needs, return {name: (min, max)}.
Calibrator = Callable[[ir.Model, list[str]], Mapping[str, object]]


class QuantizePass(Pass):
    """Static INT8 QDQ quantization: int8 weights per channel, calibrated 8-bit activations.

    Ranges come from ``ranges`` ({tensor: (min, max)} or a CalibrationTable) or, when the pass
    runs, from ``calibrator(model, tensor_names)`` — so a model pruned earlier in the same
    pipeline is calibrated as it is by then. ``plan`` and ``emitted`` describe the last run;
    a model with nothing to quantize is left as it is (modified False, ``emitted`` None).
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
        min_opset = MIN_OPSET if self.config.per_channel else MIN_OPSET_PER_TENSOR
        if opset < min_opset:
            kind = "per-channel QDQ" if self.config.per_channel else "QDQ"
            raise UnsupportedError(
                f"opset {opset} is too old for {kind} (needs {min_opset}); convert the model first, "
                "e.g. onnx.version_converter.convert_version(model, 17) (onnxprune.quantize does)"
            )
        common.TopologicalSortPass()(model)
        _ensure_types(model)
        the_plan = self.plan = plan(model, self.config)
        self.emitted = None
        if not the_plan.compute:
            return PassResult(model, False, [])  # quantize() turns this into an error
        needed = [named(v) for v in activation_values(model, self.config, the_plan)]
        if self.ranges is not None:
            ranges = self.ranges
        else:
            assert self.calibrator is not None  # __init__ takes exactly one of them
            ranges = self.calibrator(model, needed)
        _check_ranges(ranges, needed)
        with profiling.phase("emit"):
            self.emitted = Emitter(model, self.config, ranges).run(the_plan)
        common.RemoveUnusedNodesPass()(model)
        common.TopologicalSortPass()(model)
        return PassResult(model, True, self.emitted.changes)


def _check_ranges(ranges: Mapping[str, object], needed: list[str]) -> None:
    missing = [name for name in needed if name not in ranges and name not in getattr(ranges, "skipped", {})]
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UsageError(
            f"calibration table has no range for {len(missing)} of the {len(needed)} tensors to quantize "
            f"({shown}): made for another model, or before clean-up/pruning? calibrate this model"
        )


def _ensure_types(model: ir.Model) -> None:
    """Placement needs element types (only float32 is quantized); infer them if any are missing."""
    if any(o.dtype is None for node in model.graph for o in node.outputs if o.name):
        MapSafeShapeInferencePass(strict_mode=False)(model)


def nothing_to_quantize(model: ir.Model, declined: Mapping[str, str]) -> str:
    """Why a model has nothing to quantize, in one line."""
    if declined:
        node, reason = next(iter(declined.items()))
        return (
            f"nothing to quantize: none of the {len(declined)} quantizable nodes can run in INT8 "
            f"(e.g. '{node}': {reason})"
        )
    ops = sorted({n.op_type for n in model.graph})
    inside = _compute_in_subgraphs(model)
    if inside:
        owner, count = max(inside.items(), key=lambda kv: kv[1])
        return (
            f"nothing to quantize in the main graph: its compute ({count} {'/'.join(list(COMPUTE)[:4])}/... nodes) is "
            f"inside the branches/body of {owner}, and quantize works on the main graph only (control-flow "
            f"bodies stay float; ops of the main graph: {', '.join(ops[:12])}{'...' if len(ops) > 12 else ''})"
        )
    return (
        f"nothing to quantize: no {'/'.join(COMPUTE)} node in the main graph "
        f"(ops: {', '.join(ops[:12])}{'...' if len(ops) > 12 else ''})"
    )


def _compute_in_subgraphs(model: ir.Model) -> dict[str, int]:
    """Per control-flow node of the main graph ("If 'name'"), the compute nodes in its subgraphs."""
    found: dict[str, int] = {}
    for node in model.graph:
        graphs = [g for a in node.attributes.values() if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                  for g in (a.value if a.type == ir.AttributeType.GRAPHS else [a.value])]
        count = sum(1 for g in graphs for n in ir.traversal.RecursiveGraphIterator(g) if n.op_type in COMPUTE)
        if count:
            found[f"{node.op_type} '{node.name}'"] = count
    return found
