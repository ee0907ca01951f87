"""batchnorm-to-affine on tiny graphs: forward folds where exact, Mul + Add otherwise."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from onnxprune import runtime
from onnxprune.passes.batchnorm_to_affine import BatchNormToAffine
from tiny import Tiny, assert_parity, bn_params, fresh, max_error, ops, rand, snapshot


def run(proto):
    model = fresh(proto)
    return model, BatchNormToAffine()(model)


@pytest.mark.parametrize("shape", [[2, 3, 4, 4], [2, 3], [2, 3, 5], [1, 3, 2, 3, 4]])
def test_batchnorm_on_graph_input_becomes_mul_add(shape):
    g = Tiny({"x": shape})
    out = g.bn("x", 3, name="bn")
    proto = g.proto(out)
    model, result = run(proto)
    assert ops(model) == ["Mul", "Add"] and result.changes == ["bn: BatchNormalization as Mul + Add"]
    assert [o.name for o in model.graph.outputs] == [out]  # the graph output keeps its name
    assert_parity(proto, model)


def test_batchnorm_after_add_then_relu():
    g = Tiny({"x": [1, 4, 6, 6], "y": [1, 4, 6, 6]})
    proto = g.proto(g.op("Relu", [g.bn(g.op("Add", ["x", "y"]), 4)]))
    model, result = run(proto)
    assert ops(model) == ["Add", "Mul", "Add", "Relu"]
    assert_parity(proto, model)


@pytest.mark.parametrize("groups, cin, cout", [(1, 4, 6), (2, 4, 6), (4, 4, 8)])
def test_forward_into_unpadded_conv(groups, cin, cout):
    g = Tiny({"x": [2, cin, 6, 6]})
    y = g.bn("x", cin, name="bn")
    w = g.init("conv.weight", rand(cout, cin // groups, 3, 3))
    proto = g.proto(g.op("Conv", [y, w, g.init("conv.bias", rand(cout))], name="conv", group=groups, strides=[2, 2]))
    model, result = run(proto)
    assert ops(model) == ["Conv"] and result.changes == ["bn: folded forward into Conv 'conv'"]
    assert_parity(proto, model)


def _padded_conv_after_bn(shift_free: bool):
    g = Tiny({"x": [1, 3, 5, 5]})
    scale, bias, mean, var = bn_params(3)
    if shift_free:  # beta = mean * s, so BN(x) = x * s exactly
        bias = (mean.astype(np.float64) * scale / np.sqrt(var.astype(np.float64) + 1e-5)).astype(np.float32)
    params = [g.init(n, a) for n, a in zip("sbmv", (scale, bias, mean, var))]
    y = g.op("BatchNormalization", ["x", *params], name="bn")
    proto = g.proto(g.op("Conv", [y, g.init("w", rand(4, 3, 3, 3))], name="conv", pads=[1, 1, 1, 1]))
    return proto, (scale, bias, mean, var)


def test_padded_conv_is_not_folded_forward_and_why(caplog):
    proto, (scale, bias, mean, var) = _padded_conv_after_bn(shift_free=False)
    with caplog.at_level(logging.DEBUG, logger="onnxprune"):
        model, result = run(proto)
    assert ops(model) == ["Mul", "Add", "Conv"]  # the BN became Mul + Add instead
    assert "pads with zeros" in caplog.text
    assert_parity(proto, model)

    # The naive forward fold (b' = b + sum W * t) is wrong where the window covers padding.
    s = scale / np.sqrt(var + 1e-5)
    t = bias - mean * s
    w = proto.graph.initializer[-1]
    from onnx import numpy_helper

    weight = numpy_helper.to_array(w)
    naive = Tiny({"x": [1, 3, 5, 5]})
    folded_w = naive.init("w", weight * s[None, :, None, None])
    folded_b = naive.init("b", (weight * t[None, :, None, None]).sum(axis=(1, 2, 3)))
    naive_proto = naive.proto(naive.op("Conv", ["x", folded_w, folded_b], pads=[1, 1, 1, 1]))
    feeds = {"x": rand(1, 3, 5, 5)}
    ref = runtime.run(fresh(proto), feeds)
    got = runtime.run(fresh(naive_proto), feeds)
    (ref,), (got,) = ref.values(), got.values()
    assert max_error(ref[..., 1:-1, 1:-1], got[..., 1:-1, 1:-1]) < 1e-5  # interior: exact
    assert max_error(ref, got) > 1e-3  # borders: wrong


def test_padded_conv_folds_forward_when_bn_has_no_shift():
    proto, _ = _padded_conv_after_bn(shift_free=True)
    model, result = run(proto)
    assert ops(model) == ["Conv"]
    assert_parity(proto, model)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("has_c", [True, False])
def test_forward_into_gemm(trans_b, has_c):
    g = Tiny({"x": [3, 4]})
    inputs = [g.bn("x", 4), g.init("w", rand(*((5, 4) if trans_b else (4, 5))))]
    if has_c:
        inputs.append(g.init("c", rand(5)))
    proto = g.proto(g.op("Gemm", inputs, transB=trans_b, alpha=0.5, beta=2.0))
    model, _ = run(proto)
    assert ops(model) == ["Gemm"]
    assert_parity(proto, model)


def test_gemm_with_trans_a_gets_mul_add():
    g = Tiny({"x": [4, 3]})
    proto = g.proto(g.op("Gemm", [g.bn("x", 3), g.init("w", rand(4, 5))], transA=1))  # BN on M
    model, _ = run(proto)
    assert ops(model) == ["Mul", "Add", "Gemm"]
    assert_parity(proto, model)


def test_unknown_rank_is_inferred():
    g = Tiny({"x": [1, 3, 4, 4]})
    proto = g.proto(g.bn(g.op("Relu", ["x"]), 3))  # no value_info for the Relu output
    model = fresh(proto)
    assert model.graph.node(0).outputs[0].shape is None
    assert BatchNormToAffine()(model).modified and "BatchNormalization" not in ops(model)
    assert_parity(proto, model)


def test_nothing_to_do():
    g = Tiny({"x": [1, 3, 4, 4], "gamma": [3]})
    params = ["gamma", *(g.init(n, a) for n, a in zip("bmv", bn_params(3)[1:]))]
    proto = g.proto(g.op("BatchNormalization", ["x", *params]), g.op("Relu", ["x"]))
    model = fresh(proto)
    before = snapshot(model)
    assert not BatchNormToAffine()(model).modified and snapshot(model) == before


def test_idempotent():
    g = Tiny({"x": [1, 3, 4, 4]})
    proto = g.proto(g.op("Conv", [g.bn("x", 3), g.init("w", rand(2, 3, 3, 3))], pads=[1, 1, 1, 1]))
    model, first = run(proto)
    once = snapshot(model)
    assert first.modified and not BatchNormToAffine()(model).modified and snapshot(model) == once
