"""QDQ emission: QuantizeLinear/DequantizeLinear pairs, int8 weights, int32 biases.

A quantized activation T becomes ``T_prequant → QuantizeLinear → DequantizeLinear → T``: the
DequantizeLinear output keeps the tensor's name, so outputs, parity checks and layer-wise
comparisons still find it. A tensor produced by a float node (or a graph input) keeps its
float value for float readers; only INT8 readers get the dequantized copy. Constant operands
(the other side of an Add, say) are stored quantized, behind a DequantizeLinear only.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxprune.errors import DataError, UnsupportedError, UsageError
from onnxprune.graphutils import add_initializer, attr, const_array, named, release_mapping
from onnxprune.passes._rewrite import present_input
from onnxprune.passes.quantize import qparams as qp
from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.rules import (
    COMPUTE,
    OpRule,
    Plan,
    activation_bounds,
    foldable_activations,
    folds_for_sure,
    weight_axis,
)

IR_TYPES = {np.dtype(np.int8): ir.DataType.INT8, np.dtype(np.uint8): ir.DataType.UINT8,
            np.dtype(np.int32): ir.DataType.INT32}


@dataclasses.dataclass
class Emitted:
    """What the emission did, for the pass result and the report."""

    nodes: int = 0  # nodes that run in INT8 (compute and data movement)
    activations: int = 0  # tensors with a QuantizeLinear/DequantizeLinear pair
    weights: int = 0  # weight tensors stored as int8
    biases: int = 0  # bias tensors stored as int32
    absorbed: int = 0  # Relu/Clip folded into a quantization range
    changes: list[str] = dataclasses.field(default_factory=list)


def range_of(value: ir.Value, ranges: Mapping[str, object]) -> tuple[float, float]:
    """[min, max] of a tensor: from its data if constant, else from the calibration table."""
    array = const_array(value)
    if array is not None:
        return float(array.min(initial=0.0)), float(array.max(initial=0.0))
    entry: Any = ranges.get(named(value))  # a range object (.min/.max) or a (min, max) pair
    skipped = getattr(ranges, "skipped", {}).get(value.name)
    if entry is None and skipped:
        raise DataError(f"no calibration range for tensor '{value.name}': {skipped}")
    if entry is None:
        raise UsageError(
            f"calibration table has no range for tensor '{value.name}' (made for another model, "
            "or before pruning/clean-up? calibrate this model)"
        )
    lo, hi = (entry.min, entry.max) if hasattr(entry, "min") else entry
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise DataError(f"calibration range of tensor '{value.name}' is invalid: [{lo}, {hi}]")
    return lo, hi


def absorbable(params: qp.QParams, bounds: tuple[float, float]) -> bool:
    """Can QuantizeLinear(x) replace QuantizeLinear(clip(x, lo, hi))?

    Q is monotonic and saturates at qmin/qmax. Clipping changes x only below lo or above hi;
    when Q(lo) is already qmin and Q(hi) already qmax, every such x quantizes to the same
    level with or without the clip. With the asymmetric range [0, b] of a Relu output, z = qmin
    and Q(0) = qmin; for ReLU6, b <= 6 and Q(6) = qmax.
    """
    dtype = params.zero_point.dtype
    info = np.iinfo(dtype)
    lo, hi = bounds
    low_ok = lo == -math.inf or int(qp.quantize(np.array([lo], np.float32), params, dtype)[0]) == info.min
    high_ok = hi == math.inf or int(qp.quantize(np.array([hi], np.float32), params, dtype)[0]) == info.max
    return low_ok and high_ok


def sure_fold_params(hi: float, bounds: tuple[float, float], dtype: np.dtype) -> qp.QParams | None:
    """Params that fold a Relu/Clip(0, b) for sure (asymmetric), whatever its calibrated [lo, hi].

    ``folds_for_sure`` let calibration skip the producer's own range, so this fold must happen.
    The output lies in [0, b], so the range is first cut to it: [0, r], r = min(max(hi, 0), b),
    where s = r / (qmax - qmin) puts Q(0) at qmin and Q(b) >= Q(r) = qmax. A range with no width
    (the tensor was 0 on every sample) has no such scale: ``activation_qparams`` then takes s = 1
    (ORT needs s > 0; any scale is exact on 0), which still folds a Relu (only Q(0) = qmin
    matters) but maps a ReLU6's 6 to level 6, not qmax. A finite b is then used instead: [0, b],
    the tensor's true range. None when even that gives no scale (b below ~1e-43).
    """
    params = qp.activation_qparams(0.0, min(max(hi, 0.0), bounds[1]), dtype, symmetric=False)
    if not absorbable(params, bounds) and math.isfinite(bounds[1]):
        params = qp.activation_qparams(0.0, bounds[1], dtype, symmetric=False)
    return params if absorbable(params, bounds) else None


class Emitter:
    """Rewrites the main graph of ``model`` according to a :class:`Plan`."""

    def __init__(self, model: ir.Model, config: QuantConfig, ranges: Mapping[str, object]) -> None:
        self.graph = model.graph
        self.config = config
        self.ranges = ranges
        self.params: dict[int, qp.QParams] = {}  # id(value) -> activation params
        self._param_values: dict[int, tuple[ir.Value, ir.Value]] = {}  # id(params) -> scale, zp
        self._taken = {v.name for v in self.graph.inputs} | set(self.graph.initializers)
        self._taken.update(o.name for node in self.graph for o in node.outputs)
        self.done = Emitted()

    def _name(self, base: str) -> str:
        """``graphutils.unique_name``'s scheme (base, base_1, ...) over a set kept up to date:
        unique_name scans the whole graph on each call, and emission names several values per node."""
        name = base
        for i in itertools.count(1):
            if name not in self._taken:
                break
            name = f"{base}_{i}"
        self._taken.add(name)
        return name

    def _initializer(self, base: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, self._name(base), array, exact=True)

    def _activation_params(self, value: ir.Value) -> qp.QParams:
        if id(value) not in self.params:
            lo, hi = range_of(value, self.ranges)
            self.params[id(value)] = qp.activation_qparams(
                lo, hi, self.config.activation_dtype, self.config.symmetric
            )
        return self.params[id(value)]

    # -- activations -------------------------------------------------------------------------

    def absorb_activations(self, the_plan: Plan) -> None:
        """Fold a Relu/Clip that alone reads a quantized node's output into that output's range."""
        for act in foldable_activations(the_plan.compute, self.config):
            bounds = activation_bounds(act)
            if bounds is None:
                continue
            output, result = present_input(act, 0), act.outputs[0]
            lo, hi = range_of(result, self.ranges)
            params = qp.activation_qparams(lo, hi, self.config.activation_dtype, self.config.symmetric)
            if not absorbable(params, bounds) and folds_for_sure(act, self.config):
                sure = sure_fold_params(hi, bounds, self.config.activation_dtype)
                if sure is None:
                    raise UnsupportedError(f"{act.op_type} '{act.name or result.name}' cannot fold into an int8 "
                                           f"range (bounds {bounds}): exclude it with --exclude")
                params = sure
            if not absorbable(params, bounds):
                continue
            name = result.name
            ir.convenience.replace_all_uses_with(result, output, replace_graph_outputs=True)
            self.graph.remove(act, safe=True)
            output.name = name
            self.params[id(output)] = params
            self.done.absorbed += 1
            producer = output.producer()
            assert producer is not None  # foldable_activations: the output of a quantized node
            self.done.changes.append(f"{act.name or name}: {act.op_type} folded into the int8 range of {producer.name}")

    def assign_params(self, the_plan: Plan) -> None:
        """Scale/zero point of every quantized tensor; data-movement outputs share their input's."""
        for node in self.graph:  # topological order: a shared input is assigned before use
            if node in self._shared:
                source = self._activation_params(present_input(node, 0))
                for output in node.outputs:
                    self.params[id(output)] = source
            elif node in self._compute:
                for index in the_plan.quantized_inputs(node):
                    self._activation_params(present_input(node, index))
                for output in the_plan.quantized_outputs(node):
                    self._activation_params(output)

    def _scale_zero(self, params: qp.QParams, base: str) -> tuple[ir.Value, ir.Value]:
        key = id(params)
        if key not in self._param_values:
            self._param_values[key] = (
                self._initializer(f"{base}_scale", params.scale),
                self._initializer(f"{base}_zero_point", params.zero_point),
            )
        return self._param_values[key]

    def _dequantize(self, quantized: ir.Value, scale: ir.Value, zero: ir.Value, name: str,
                    shape: ir.Shape | None, axis: int | None = None) -> ir.Value:
        out = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=shape)
        attrs = [ir.AttrInt64("axis", axis)] if axis is not None else []
        self.graph.append(ir.Node("", "DequantizeLinear", [quantized, scale, zero], attrs,
                                  outputs=[out], name=self._name(f"{name}_DequantizeLinear")))
        return out

    def emit_activations(self, the_plan: Plan) -> None:
        readers: dict[int, list[tuple[ir.Node, int]]] = {}
        for node in the_plan.nodes:
            for index in the_plan.quantized_inputs(node):
                readers.setdefault(id(node.inputs[index]), []).append((node, index))
        values = {id(v): v for n in the_plan.nodes for v in (*n.inputs, *n.outputs) if v is not None}
        for key, params in list(self.params.items()):
            value = values.get(key)
            if value is None:
                continue
            self.done.activations += 1
            base = named(value)
            scale, zero = self._scale_zero(params, base)
            qtype = IR_TYPES[params.zero_point.dtype]
            array = const_array(value)
            if array is not None:  # a constant operand: store it quantized
                stored = self._initializer(f"{base}_quantized", qp.quantize(array, params, params.zero_point.dtype))
                dq = self._dequantize(stored, scale, zero, self._name(f"{base}_dequantized"), value.shape)
                for node, index in readers.get(key, []):
                    node.replace_input_with(index, dq)
                continue
            quantized = ir.Value(name=self._name(f"{base}_quantized"), type=ir.TensorType(qtype), shape=value.shape)
            producer = value.producer()
            if producer is not None and (producer in self._shared or (
                    producer in self._compute and value in the_plan.quantized_outputs(producer))):
                # Every reader (and the graph output) sees the dequantized tensor, under its name.
                value.name = self._name(f"{base}_prequant")
                dq = self._dequantize(quantized, scale, zero, base, value.shape)
                ir.convenience.replace_all_uses_with(value, dq, replace_graph_outputs=True)
            else:
                dq = self._dequantize(quantized, scale, zero, self._name(f"{base}_dequantized"), value.shape)
                for node, index in readers.get(key, []):
                    node.replace_input_with(index, dq)
            self.graph.append(ir.Node("", "QuantizeLinear", [value, scale, zero], outputs=[quantized],
                                      name=self._name(f"{base}_QuantizeLinear")))

    # -- weights and biases ------------------------------------------------------------------

    def emit_weights(self, node: ir.Node, input_params: qp.QParams) -> str:
        rule = COMPUTE[node.op_type]
        assert rule.weight is not None  # run() calls this for ops with a weight only
        weight_index = rule.weight
        weight_value = present_input(node, weight_index)
        weight = np.asarray(const_array(weight_value), dtype=np.float32)  # the mapped data, no copy
        axis = weight_axis(node, weight.ndim) if self.config.per_channel and weight.ndim > 1 else None
        wparams = qp.weight_qparams(weight, axis, self.config.weight_qmax)
        bias_value, bias = self._bias(node, rule)
        if bias is not None:
            wparams = qp.fit_weight_to_bias(wparams, self._channel_bias(node, bias, wparams), input_params.scale)
        base = weight_value.name or f"{node.name}_weight"
        stored = self._initializer(f"{base}_quantized", qp.quantize(weight, wparams, np.int8))
        del weight  # a view of the float data: it would keep the mapping open
        scale = self._initializer(f"{base}_scale", wparams.scale)
        zero = self._initializer(f"{base}_zero_point", wparams.zero_point)
        node.replace_input_with(weight_index, self._dequantize(
            stored, scale, zero, self._name(f"{base}_dequantized"), weight_value.shape, wparams.axis))
        self._release(weight_value)
        self.done.weights += 1
        kind = f"per-channel ({wparams.scale.size} scales)" if axis is not None else "per-tensor"
        if bias_value is None or bias is None or rule.bias is None:  # (the three are None together)
            return f"{node.name}: {node.op_type} in INT8, {kind} int8 weights"
        bparams = qp.bias_qparams(input_params.scale, wparams)
        if node.op_type == "ConvTranspose" and wparams.axis is not None:  # scales repeat per group
            groups = bias.size // wparams.scale.size
            bparams = qp.QParams(np.tile(bparams.scale, groups), np.zeros(bias.size, np.int32), 0)
        bbase = bias_value.name or f"{node.name}_bias"
        node.replace_input_with(rule.bias, self._dequantize(
            self._initializer(f"{bbase}_quantized", qp.quantize(bias, bparams, np.int32)),
            self._initializer(f"{bbase}_scale", bparams.scale),
            self._initializer(f"{bbase}_zero_point", bparams.zero_point),
            self._name(f"{bbase}_dequantized"), ir.Shape(bias.shape), bparams.axis))
        self.done.biases += 1
        return f"{node.name}: {node.op_type} in INT8, {kind} int8 weights, int32 bias"

    def _release(self, value: ir.Value) -> None:
        """Free a float weight once quantized, so that the int8 copies never sit beside all the
        float weights: its initializer goes when nothing reads it any more (a weight shared by
        several layers stays for the next), and external data is unmapped (it maps again if read).
        """
        if value.const_value is not None:
            release_mapping(value.const_value)
        if (value.is_initializer() and not value.uses() and not value.is_graph_output()
                and not value.is_graph_input()):
            self.graph.initializers.pop(named(value))
            # The Value itself may outlive the graph: onnx-ir's graph inputs keep a counter of
            # every Value ever listed (shape inference lists initializers there for a while).
            value.const_value = None

    def _bias(self, node: ir.Node, rule: OpRule) -> tuple[ir.Value | None, np.ndarray | None]:
        """The bias as a vector over output channels, when it can be stored as int32."""
        value = node.inputs[rule.bias] if rule.bias is not None and len(node.inputs) > rule.bias else None
        if value is None:
            return None, None
        array = const_array(value)
        assert array is not None  # the plan quantizes nodes with a constant bias only
        bias = array.astype(np.float32)
        if node.op_type == "Gemm":
            if attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
                return None, None  # QGemm's int32 bias assumes alpha = beta = 1: keep C float
            weight = const_array(node.inputs[rule.weight]) if rule.weight is not None else None
            assert weight is not None  # the plan quantizes nodes with a constant weight only
            columns = weight.shape[0] if attr(node, "transB", 0) else weight.shape[1]
            if bias.size == 1:
                bias = np.full(columns, bias.reshape(()), np.float32)
            elif bias.size == columns and bias.shape[-1] == columns:
                bias = bias.reshape(columns)
            else:
                return None, None  # a per-row bias [M, N]: keep it float
        return value, bias

    def _channel_bias(self, node: ir.Node, bias: np.ndarray, wparams: qp.QParams) -> np.ndarray:
        """|bias| reduced to the weight-scale layout (per tensor: the largest; grouped ConvTranspose: per column)."""
        largest: np.ndarray
        if wparams.axis is None:
            largest = np.abs(bias).max(initial=0.0).reshape(())
        else:
            largest = np.abs(bias).reshape(-1, wparams.scale.size).max(axis=0)
        return largest

    # -- driver ------------------------------------------------------------------------------

    def run(self, the_plan: Plan) -> Emitted:
        self._compute = set(the_plan.compute)
        self._shared = set(the_plan.shared)
        self.done.nodes = len(the_plan.nodes)
        self.absorb_activations(the_plan)
        self.assign_params(the_plan)
        for node in the_plan.compute:
            rule = COMPUTE[node.op_type]
            if rule.weight is not None:
                self.done.changes.append(self.emit_weights(node, self.params[id(node.inputs[0])]))
            else:
                self.done.changes.append(f"{node.name}: {node.op_type} in INT8")
        for node in the_plan.shared:
            self.done.changes.append(f"{node.name}: {node.op_type} moves int8 data (shared scale)")
        self.emit_activations(the_plan)
        return self.done
