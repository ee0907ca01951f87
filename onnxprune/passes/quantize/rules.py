"""Node placement: which nodes run in INT8, which tensors get QuantizeLinear/DequantizeLinear.

The rules follow what ONNX Runtime's CPU execution provider fuses into integer kernels
(its QDQ selectors): a node runs in INT8 when every float input comes out of a
DequantizeLinear and its output goes into a QuantizeLinear.

* **Compute ops** get QDQ on their activation inputs and on their output, each with its own
  calibrated range: Conv (→ QLinearConv), Gemm (→ QGemm), MatMul with a constant operand
  (→ QLinearMatMul), Add/Mul (→ QLinearAdd/Mul), Concat, AveragePool, GlobalAveragePool,
  Sigmoid, LeakyRelu. ConvTranspose is quantized too (int8 weights, accelerated by GPU EPs)
  although the CPU EP runs it in float.
* **Data-movement ops** (MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Resize,
  Split) reuse their input's scale and zero point on their outputs, so runtimes drop the
  surrounding Q/DQ and move int8 data; they are quantized only where their input already is.
* **Relu/Clip** right after a quantized node are folded into its output's quantization range
  when that is exact (see ``emit.absorbable``).
* Everything else (LayerNormalization, Softmax, Gelu, Div, Sqrt, reductions...) stays float:
  8-bit there costs accuracy and CPU kernels do not exist. So do excluded nodes and op types.
"""

from __future__ import annotations

import dataclasses
import math

import onnx_ir as ir

from onnxprune.graphutils import attr, const_array, named
from onnxprune.passes.quantize.config import QuantConfig

FLOAT = ir.DataType.FLOAT


@dataclasses.dataclass(frozen=True)
class OpRule:
    """How one op type is quantized: which inputs are activations, weight and bias."""

    activations: tuple[int, ...] | None = (0,)  # None: every input
    weight: int | None = None
    bias: int | None = None


COMPUTE: dict[str, OpRule] = {
    "Conv": OpRule((0,), weight=1, bias=2),
    "ConvTranspose": OpRule((0,), weight=1, bias=2),
    "Gemm": OpRule((0,), weight=1, bias=2),
    "MatMul": OpRule((0,), weight=1),
    "Add": OpRule(None),
    "Mul": OpRule(None),
    "Concat": OpRule(None),
    "AveragePool": OpRule(),
    "GlobalAveragePool": OpRule(),
    "Sigmoid": OpRule(),
    "LeakyRelu": OpRule(),
}
SHARED_PARAMS = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Resize", "Split"}
ABSORBABLE = {"Relu", "Clip"}
FLOAT_RESULT = {"Gemm", "MatMul"}  # ops whose fused INT8 kernel can return float
QUANTIZABLE = set(COMPUTE) | SHARED_PARAMS


def weight_axis(node: ir.Node, rank: int) -> int:
    """The output-channel axis of a node's weight: one scale per output channel.

    Conv W [M, C/g, k...] → 0; ConvTranspose W [C, M/g, k...] → 1; Gemm B [K, N] → 1 or with
    transB B [N, K] → 0; MatMul B [..., K, N] → last.
    """
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    return rank - 1


def _is_float(value: ir.Value | None) -> bool:
    if value is None:
        return False
    if value.dtype is not None:
        return value.dtype == FLOAT
    array = const_array(value)
    return array is not None and array.dtype.kind == "f" and array.dtype.itemsize == 4


@dataclasses.dataclass
class Plan:
    """The nodes that run in INT8 and, for each, the input slots that get a DequantizeLinear."""

    compute: list[ir.Node] = dataclasses.field(default_factory=list)
    shared: list[ir.Node] = dataclasses.field(default_factory=list)
    declined: dict[str, str] = dataclasses.field(default_factory=dict)  # node → why it stays float

    def quantized_outputs(self, node: ir.Node) -> list[ir.Value]:
        """Outputs of ``node`` that get a QuantizeLinear.

        A Gemm/MatMul result that is a model output stays float: ONNX Runtime still fuses the
        node (QGemm, MatMulIntegerToFloat) and the logits keep full precision, where a
        clipping calibration (entropy, percentile) would saturate the largest ones and so
        tie the top classes.
        """
        if node.op_type in FLOAT_RESULT:
            return [o for o in node.outputs if not o.is_graph_output()]
        return list(node.outputs)

    def quantized_inputs(self, node: ir.Node) -> list[int]:
        """Input slots of ``node`` that read dequantized activations (weights/bias excluded)."""
        if node.op_type in SHARED_PARAMS:
            return [0]
        rule = COMPUTE[node.op_type]
        slots = range(len(node.inputs)) if rule.activations is None else rule.activations
        return [i for i in slots if i < len(node.inputs) and _is_float(node.inputs[i])]

    @property
    def nodes(self) -> list[ir.Node]:
        return [*self.compute, *self.shared]


def _decline_reason(node: ir.Node) -> str | None:
    """Why a compute node cannot be quantized, or None if it can."""
    rule = COMPUTE[node.op_type]
    floats = [v for v in node.inputs if v is not None]
    if node.op_type != "Concat" and not all(_is_float(v) for v in floats[:2]):
        return "inputs are not float32"
    if not all(_is_float(o) for o in node.outputs):
        return "outputs are not float32"
    if rule.weight is not None:
        weight = node.inputs[rule.weight] if len(node.inputs) > rule.weight else None
        if const_array(weight) is None:
            return "weight is not a constant (activation x activation products stay float)"
        bias = node.inputs[rule.bias] if rule.bias is not None and len(node.inputs) > rule.bias else None
        if bias is not None and const_array(bias) is None:
            return "bias is not a constant"
        if node.op_type == "MatMul" and const_array(node.inputs[0]) is not None:
            return "both operands are constants (fold constants first)"
    if node.op_type == "Concat" and not all(_is_float(v) for v in floats):
        return "inputs are not float32"
    if node.op_type in ("Add", "Mul") and all(const_array(v) is not None for v in floats):
        return "all inputs are constants (fold constants first)"
    return None


def plan(model: ir.Model, config: QuantConfig) -> Plan:
    """Choose the nodes of the main graph that run in INT8 (subgraphs stay float)."""
    result = Plan()
    for node in model.graph:
        if node.domain != "" or node.op_type not in COMPUTE:
            continue
        if config.excludes(node.name or "", node.op_type):
            result.declined[node.name or named(node.outputs[0])] = "excluded"
            continue
        reason = _decline_reason(node)
        if reason:
            result.declined[node.name or named(node.outputs[0])] = reason
        else:
            result.compute.append(node)
    quantized = {id(v) for n in result.compute for v in (*n.outputs, *n.inputs) if v is not None}
    quantized.update(id(a.outputs[0]) for a in foldable_activations(result.compute, config))
    for node in model.graph:  # topological: data-movement chains follow their input
        if node.domain != "" or node.op_type not in SHARED_PARAMS:
            continue
        if config.excludes(node.name or "", node.op_type) or not node.inputs or id(node.inputs[0]) not in quantized:
            continue
        used_outputs = [o for o in node.outputs if o.uses() or o.is_graph_output()]
        if node.op_type == "MaxPool" and len(used_outputs) > 1 or not all(_is_float(o) for o in used_outputs):
            continue  # MaxPool indices, or not float
        result.shared.append(node)
        quantized.update(id(o) for o in node.outputs)
    return result


def activation_values(model: ir.Model, config: QuantConfig, the_plan: Plan | None = None, *,
                      any_subset: bool = False) -> list[ir.Value]:
    """Every non-constant float tensor quantization needs a calibrated range for.

    Inputs and quantized outputs of compute nodes, and the outputs of the Relu/Clip that follow
    them. Not needed: a compute output whose Relu/Clip is sure to fold into its range (see
    ``folds_for_sure``; it uses the activation's range) and data-movement outputs (they share
    their input's). Fewer tensors make calibration faster. ``any_subset``: those that any
    quantization of a subset of the plan's compute nodes may need (with the folded and shared
    ones: keeping nodes float can unfold a Relu or leave a Reshape float), so that a search over
    the nodes kept float calibrates once.
    """
    the_plan = the_plan or plan(model, config)
    seen: dict[int, ir.Value] = {}
    foldable = foldable_activations(the_plan.compute, config)
    folded = {id(act.inputs[0]) for act in foldable if folds_for_sure(act, config)}
    folded.update(id(o) for node in the_plan.shared for o in node.outputs)  # they share their input's
    if any_subset:  # a data-movement node whose input stays float stays float too
        folded.clear()
    for node in the_plan.compute:
        values = [node.inputs[i] for i in the_plan.quantized_inputs(node)] + the_plan.quantized_outputs(node)
        for value in values:
            if value is not None and const_array(value) is None and id(value) not in folded:
                seen.setdefault(id(value), value)
    for act in foldable:
        seen.setdefault(id(act.outputs[0]), act.outputs[0])
    return list(seen.values())


def foldable_activations(compute: list[ir.Node], config: QuantConfig) -> list[ir.Node]:
    """Relu/Clip nodes that alone read a compute node's (quantized) output: candidates for folding."""
    found = []
    for node in compute:
        output = node.outputs[0]
        users = output.consumers()
        if len(users) != 1 or len(output.uses()) != 1 or output.is_graph_output():
            continue
        act = users[0]
        if act.op_type not in ABSORBABLE or act.domain != "" or config.excludes(act.name or "", act.op_type):
            continue
        if not act.outputs[0].is_graph_output():  # model outputs keep their Relu (and may stay float)
            found.append(act)
    return found


def activation_bounds(node: ir.Node) -> tuple[float, float] | None:
    """The interval a Relu/Clip keeps, or None when the bounds are not constants."""
    if node.op_type == "Relu":
        return 0.0, math.inf
    lo, hi = attr(node, "min", -math.inf), attr(node, "max", math.inf)  # opset < 11
    for index in (1, 2):
        if len(node.inputs) > index and node.inputs[index] is not None:
            bound = const_array(node.inputs[index])
            if bound is None:
                return None
            lo, hi = (float(bound), hi) if index == 1 else (lo, float(bound))
    return lo, hi


def folds_for_sure(act: ir.Node, config: QuantConfig) -> bool:
    """Whether folding is exact whatever the calibrated range: Relu, or Clip(0, b > 0), asymmetric.

    The activation's output lies in [0, b]; its asymmetric range [0, r] (r <= b) puts the zero
    point at qmin, so Q(0) = qmin, and Q(b) >= Q(r) = qmax saturates: see ``emit.absorbable``.
    A zero-width range (r = 0) is widened to [0, b] by ``emit.sure_fold_params``. Clip(0, 0)
    (a constant 0) never folds: Q(0) cannot be both qmin and qmax.
    """
    bounds = activation_bounds(act)
    return not config.symmetric and bounds is not None and bounds[0] == 0.0 and bounds[1] > 0.0
