"""QuantizePass: QDQ placement and emission on hand-built graphs, checked in ONNX Runtime."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxprune import runtime
from onnxprune.errors import UnsupportedError, UsageError
from onnxprune.graphutils import const_array
from onnxprune.io import load_model
from onnxprune.passes.quantize import QuantConfig, QuantizePass
from onnxprune.passes.quantize import qparams as qp
from onnxprune.pipeline import DEFAULT_PIPELINE, run_pipeline
from tiny import Tiny, feeds_for, fresh, rand


def observed_ranges(model: ir.Model, names: list[str], feeds: list[dict]) -> dict[str, tuple[float, float]]:
    """Min/max of ``names`` over ``feeds``, read straight from ONNX Runtime (a minimal calibrator)."""
    proto = ir.to_proto(model)
    known = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in known)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ranges: dict[str, tuple[float, float]] = {}
    for feed in feeds:
        for name, array in zip(names, sess.run(names, feed)):
            lo, hi = ranges.get(name, (np.inf, -np.inf))
            ranges[name] = (min(lo, float(array.min())), max(hi, float(array.max())))
    return ranges


def quantized(model: ir.Model, feeds: list[dict], config: QuantConfig | None = None) -> QuantizePass:
    """Calibrate ``model`` on ``feeds`` and quantize it in place; return the pass (for its counts)."""
    quantize_pass = QuantizePass(config=config, calibrator=lambda m, names: observed_ranges(m, names, feeds))
    quantize_pass(model)
    return quantize_pass


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def residual_net() -> onnx.ModelProto:
    """Conv-Relu-Conv + skip Add - Relu, MaxPool, GlobalAveragePool, Flatten, Gemm (a ResNet in small)."""
    g = Tiny({"x": ["batch", 3, 8, 8]})
    stem = g.op("Relu", [g.op("Conv", ["x", g.init("w0", rand(8, 3, 3, 3)), g.init("b0", rand(8))], pads=[1] * 4)])
    pooled = g.op("MaxPool", [stem], kernel_shape=[2, 2], strides=[2, 2])
    branch = g.op(
        "Relu", [g.op("Conv", [pooled, g.init("w1", rand(8, 8, 3, 3) * 0.2), g.init("b1", rand(8))], pads=[1] * 4)]
    )
    branch = g.op("Conv", [branch, g.init("w2", rand(8, 8, 3, 3) * 0.2), g.init("b2", rand(8))], pads=[1] * 4)
    merged = g.op("Relu", [g.op("Add", [branch, pooled])])
    flat = g.op("Flatten", [g.op("GlobalAveragePool", [merged])])
    logits = g.op("Gemm", [flat, g.init("fc", rand(10, 8)), g.init("fc_b", rand(10))], name="head", transB=1)
    return g.proto(logits)


def feeds(n: int = 4, batch: int = 8, seed: int = 0, shape=(3, 8, 8)) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, *shape)).astype(np.float32)} for _ in range(n)]


def test_residual_net_runs_in_int8_fused_by_the_cpu_ep():
    proto = residual_net()
    model = fresh(proto)
    result = quantized(model, feeds())
    counts = collections.Counter(n.op_type for n in model.graph)
    assert counts["Relu"] == 0 and result.emitted.absorbed == 3  # all folded into Q ranges
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > counts["QuantizeLinear"]
    assert [o.name for o in model.graph.outputs] == [proto.graph.output[0].name]
    assert model.graph.outputs[0].producer().op_type == "Gemm"  # float logits out of QGemm: no clipping
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    fused = runtime.optimized_op_counts(model)
    assert fused["QLinearConv"] == 3 and fused["QLinearAdd"] == 1 and fused["QGemm"] == 1
    assert fused["Conv"] == 0 and fused["Add"] == 0 and fused["Gemm"] == 0  # nothing fell back to float
    x = feeds(1, seed=9)[0]
    assert cosine(runtime.run(fresh(proto), x)["head_out"], runtime.run(model, x)["head_out"]) > 0.999


def test_a_relu_producing_a_model_output_is_kept():
    g = Tiny({"x": [4, 16]})
    y = g.op("Relu", [g.op("Gemm", ["x", g.init("w", rand(8, 16)), g.init("b", rand(8))], name="fc", transB=1)])
    proto = g.proto(y)
    model = fresh(proto)
    batches = [{"x": rand(4, 16)} for _ in range(3)]
    quantized(model, batches)
    assert model.graph.outputs[0].producer().op_type == "Relu"
    got = runtime.run(model, batches[0])[y]
    assert got.min() >= 0 and cosine(runtime.run(fresh(proto), batches[0])[y], got) > 0.999


def test_int8_activations_give_the_same_numbers_as_uint8():
    x, proto = feeds(1, seed=5)[0], residual_net()
    outputs = []
    for activation in ("uint8", "int8"):
        model = fresh(proto)
        quantized(model, feeds(), QuantConfig(activation_type=activation))
        options = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the QDQ arithmetic itself
        with runtime.session(model, optimization_level=options) as sess:
            outputs.append(sess.run(None, x)[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_symmetric_activations_keep_relu_and_still_match():
    proto = residual_net()
    model = fresh(proto)
    result = quantized(model, feeds(), QuantConfig(activation_type="int8", symmetric=True))
    assert result.emitted.absorbed == 0 and sum(n.op_type == "Relu" for n in model.graph) == 3
    zero_points = [const_array(n.inputs[2]) for n in model.graph if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    x = feeds(1, seed=9)[0]
    assert cosine(runtime.run(fresh(proto), x)["head_out"], runtime.run(model, x)["head_out"]) > 0.999


def weight_dequantizer(node: ir.Node, slot: int = 1) -> ir.Node:
    producer = node.inputs[slot].producer()
    assert producer is not None and producer.op_type == "DequantizeLinear", node.name
    return producer


@pytest.mark.parametrize(
    ("op", "weight", "attrs", "axis", "channels"),
    [
        ("Conv", rand(6, 4, 3, 3), {"pads": [1] * 4}, 0, 6),
        ("ConvTranspose", rand(4, 6, 2, 2), {"strides": [2, 2]}, 1, 6),
        ("Gemm", rand(6, 4 * 5 * 5), {"transB": 1}, 0, 6),
        ("Gemm", rand(4 * 5 * 5, 6), {}, 1, 6),
        ("MatMul", rand(4 * 5 * 5, 6), {}, 1, 6),
    ],
)
def test_weights_are_int8_per_output_channel(op, weight, attrs, axis, channels):
    g = Tiny({"x": [2, 4, 5, 5]})
    source = "x" if op.startswith("Conv") else g.op("Flatten", ["x"])
    inputs = [source, g.init("w", weight)] + ([g.init("b", rand(channels))] if op != "MatMul" else [])
    y = g.op(op, inputs, name="layer", **attrs)
    proto = g.proto(y)
    model = fresh(proto)
    batches = [{"x": rand(2, 4, 5, 5)} for _ in range(4)]
    quantized(model, batches)
    layer = next(n for n in model.graph if n.name == "layer")
    dq = weight_dequantizer(layer)
    assert const_array(dq.inputs[0]).dtype == np.int8
    assert dq.attributes["axis"].value == axis and const_array(dq.inputs[1]).shape == (channels,)
    if op != "MatMul":
        bias_dq = weight_dequantizer(layer, 2)
        assert const_array(bias_dq.inputs[0]).dtype == np.int32
        input_scale = const_array(layer.inputs[0].producer().inputs[1])
        np.testing.assert_allclose(const_array(bias_dq.inputs[1]), const_array(dq.inputs[1]) * input_scale, rtol=1e-6)
    x = batches[0]
    assert cosine(runtime.run(fresh(proto), x)[y], runtime.run(model, x)[y]) > 0.999


def uneven_channels() -> onnx.ModelProto:
    """A depthwise conv as after folding a BatchNorm over a near-dead channel.

    Channel 7's input barely varies (0.5 ± 0.001), so BN divides it by a tiny sigma: its folded
    weight is ~1000x the others, its output as large as theirs. One weight scale for the whole
    tensor then rounds every other channel's weights to zero; one per channel does not.
    """
    g = Tiny({"x": ["batch", 8, 4, 4]})
    weight = np.full((8, 1, 1, 1), 0.3, np.float32)
    weight[7] = 1000.0
    bias = np.zeros(8, np.float32)
    bias[7] = -500.0
    y = g.op("Conv", ["x", g.init("w", weight), g.init("b", bias)], group=8)
    return g.proto(y)


def skewed_inputs(rng: np.random.Generator, batch: int = 16) -> dict[str, np.ndarray]:
    x = rng.standard_normal((batch, 8, 4, 4)).astype(np.float32)
    x[:, 7] = 0.5 + 0.001 * x[:, 7]
    return {"x": x}


def channel_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over channels of the RMS error relative to the channel's RMS: every channel counts."""
    axes = (0, 2, 3)
    error = np.sqrt(np.mean((candidate - reference) ** 2, axis=axes) / np.mean(reference**2, axis=axes))
    return float(error.mean())


def test_per_channel_beats_per_tensor_on_uneven_channel_scales():
    proto = uneven_channels()
    rng = np.random.default_rng(0)
    batches = [skewed_inputs(rng) for _ in range(3)]
    name = proto.graph.output[0].name
    reference = runtime.run(fresh(proto), batches[0])[name]
    errors = {}
    for per_channel in (True, False):
        model = fresh(proto)
        quantized(model, batches, QuantConfig(per_channel=per_channel))
        got = runtime.run(model, batches[0])[name]
        errors[per_channel] = channel_error(reference[:, :7], got[:, :7])
    # Channel 7 is lost either way: its input's variation is below the input's int8 step.
    assert errors[True] < 0.05 and errors[False] > 0.9, errors


def test_nothing_to_quantize_leaves_the_model_unchanged():
    g = Tiny({"x": [2, 4]})
    proto = g.proto(g.op("Softmax", [g.op("Exp", ["x"])]))
    model = fresh(proto)
    quantize_pass = QuantizePass({}, QuantConfig())
    result = quantize_pass(model)
    assert not result.modified and quantize_pass.emitted is None
    assert [n.op_type for n in model.graph] == ["Exp", "Softmax"]


def test_an_already_quantized_model_is_refused():
    model = fresh(residual_net())
    quantized(model, feeds())
    with pytest.raises(UnsupportedError, match="already quantized: node '.*' is (Quantize|Dequantize)Linear"):
        quantized(model, feeds())


def test_excluded_nodes_and_op_types_stay_float():
    model = fresh(residual_net())
    result = quantized(model, feeds(), QuantConfig(exclude=frozenset({"head", "Add"})))
    assert result.plan.declined["head"] == "excluded"
    by_name = {n.name: n for n in model.graph}
    assert const_array(by_name["head"].inputs[1]) is not None  # the Gemm keeps its float weight
    add = next(n for n in model.graph if n.op_type == "Add")
    assert add.outputs[0].consumers()[0].op_type != "QuantizeLinear"
    assert runtime.optimized_op_counts(model)["QLinearConv"] == 3


def test_a_tensor_missing_from_the_table_is_named():
    model = fresh(residual_net())
    with pytest.raises(UsageError, match=r"no range for 6 of the 6 tensors to quantize \('x', 'relu4_out', "):
        QuantizePass({}, QuantConfig())(model)


def test_old_opsets_are_refused_with_the_fix():
    g = Tiny({"x": [1, 2, 4, 4]}, opset=11)
    model = fresh(g.proto(g.op("Conv", ["x", g.init("w", rand(2, 2, 1, 1))])))
    with pytest.raises(UnsupportedError, match="opset 11 is too old.*convert_version"):
        QuantizePass({}, QuantConfig())(model)


def test_dynamic_batch_runs_at_any_batch_size():
    model = fresh(residual_net())
    quantized(model, feeds(batch=3))
    for batch in (1, 5):
        out = runtime.run(model, {"x": rand(batch, 3, 8, 8)})
        assert next(iter(out.values())).shape == (batch, 10)


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "unet", "transformer"])
def test_zoo_models_quantize_fuse_and_stay_close(zoo, name):
    """Real exported graphs: BatchNorm folded by the clean-up pipeline, then quantized in the same run."""
    model = load_model(zoo.export(name, dynamic_batch=True))
    reference = fresh(ir.to_proto(model))
    batches = [{"input": zoo.sample_input(name, batch=4, seed=s)} for s in range(3)]
    seen: list[ir.Model] = []

    def calibrator(graph: ir.Model, names: list[str]):
        seen.append(graph)
        return observed_ranges(graph, names, batches)

    result = run_pipeline(model, [*DEFAULT_PIPELINE, QuantizePass(config=QuantConfig(), calibrator=calibrator)])
    assert result.records[-1].name == "quantize" and result.records[-1].modified
    assert not any(n.op_type == "BatchNormalization" for n in seen[0].graph)  # calibrated after folding
    fused = runtime.optimized_op_counts(model)
    if name == "transformer":
        assert fused["QLinearMatMul"] >= 4
    else:
        assert fused["QLinearConv"] >= 5 and fused["Conv"] == 0
    x = {"input": zoo.sample_input(name, batch=2, seed=11)}
    assert cosine(runtime.run(reference, x)["output"], runtime.run(model, x)["output"]) > 0.99


def test_float_weights_are_released_as_they_are_quantized(tmp_path, monkeypatch):
    """Big models: each float weight is unmapped (and its initializer dropped) once quantized, so
    that the int8 copies never sit beside all the float weights; a shared weight waits for its
    last reader. The result is the same as quantizing the model held in memory."""
    g = Tiny({"x": [4, 16]})
    shared = g.init("w_shared", rand(16, 16))
    h = g.op("Relu", [g.op("MatMul", ["x", shared])])
    h = g.op("Relu", [g.op("MatMul", [h, g.init("w1", rand(16, 16))])])
    h = g.op("Relu", [g.op("MatMul", [h, shared])])
    proto = g.proto(g.op("MatMul", [h, g.init("w2", rand(16, 8))]))
    ir.save(fresh(proto), tmp_path / "m.onnx", external_data="m.onnx.data", size_threshold_bytes=0)
    model = load_model(tmp_path / "m.onnx")
    floats = {name: v.const_value for name, v in model.graph.initializers.items()}
    assert all(isinstance(t, ir.ExternalTensor) for t in floats.values())
    still_float = []  # at each weight quantized: float weights left in the graph, all unmapped once gone

    def spy(values, params, dtype):
        if dtype == np.int8 and values.size > 1:
            left = [name for name in floats if name in model.graph.initializers]
            assert all(t.raw is None for name, t in floats.items() if name not in left)
            still_float.append(len(left))
        return original(values, params, dtype)

    original = qp.quantize
    batches = [feeds_for(proto)]  # calibrated in memory: ORT reads no external data from bytes

    def calibrator(m, names):
        return observed_ranges(fresh(proto), names, batches)

    monkeypatch.setattr(qp, "quantize", spy)
    QuantizePass(calibrator=calibrator)(model)
    monkeypatch.undo()
    assert still_float == [3, 3, 2, 1]  # w_shared stays for its second reader; w1 goes, then w_shared
    assert all(t.raw is None for t in floats.values()) and not set(floats) & set(model.graph.initializers)
    in_memory = fresh(proto)
    QuantizePass(calibrator=calibrator)(in_memory)
    assert {k: v.const_value.numpy().tobytes() for k, v in model.graph.initializers.items()} == {
        k: v.const_value.numpy().tobytes() for k, v in in_memory.graph.initializers.items()
    }
