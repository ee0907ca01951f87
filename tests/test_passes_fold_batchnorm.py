"""fold-batchnorm on tiny graphs: every producer kind, the cases it must leave alone, idempotence."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from onnxprune.passes.fold_batchnorm import FoldBatchNorm
from tiny import Tiny, assert_parity, fresh, ops, rand, snapshot


def fold(proto):
    model = fresh(proto)
    result = FoldBatchNorm()(model)
    return model, result


def conv_bn(groups=1, bias=True, cin=4, cout=6, **conv_attrs):
    g = Tiny({"x": [2, cin, 7, 7]})
    inputs = ["x", g.init("conv.weight", rand(cout, cin // groups, 3, 3))]
    if bias:
        inputs.append(g.init("conv.bias", rand(cout)))
    y = g.op("Conv", inputs, name="conv", pads=[1, 1, 1, 1], group=groups, **conv_attrs)
    return g, g.bn(y, cout, name="bn")


@pytest.mark.parametrize("groups, cin, cout", [(1, 4, 6), (2, 4, 6), (4, 4, 4), (4, 4, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv(groups, cin, cout, bias):
    g, y = conv_bn(groups, bias, cin, cout)
    proto = g.proto(g.op("Relu", [y]))
    model, result = fold(proto)
    assert result.modified and ops(model) == ["Conv", "Relu"]
    assert result.changes == ["bn: folded into Conv 'conv'"]
    conv = next(iter(model.graph))
    assert conv.name == "conv" and conv.inputs[1].name == "conv.weight"  # names kept
    assert conv.inputs[2].name == "conv.bias"  # created (or updated) under the torch-style name
    assert_parity(proto, model)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose(groups):
    # ConvTranspose weights are [Cin, Cout/group, k, k]: output channel c = g * Cout/group + j.
    g = Tiny({"x": [1, 4, 5, 5]})
    w = g.init("up.weight", rand(4, 6 // groups, 2, 2))
    y = g.op("ConvTranspose", ["x", w], name="up", strides=[2, 2], group=groups)
    proto = g.proto(g.bn(y, 6))
    model, result = fold(proto)
    assert result.modified and ops(model) == ["ConvTranspose"]
    assert_parity(proto, model)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (), (3, 5), (3, 1)])
def test_gemm(trans_b, c_shape):
    g = Tiny({"x": [3, 4]})
    inputs = ["x", g.init("fc.weight", rand(*((5, 4) if trans_b else (4, 5))))]
    if c_shape is not None:
        inputs.append(g.init("fc.bias", rand(*c_shape)))
    y = g.op("Gemm", inputs, name="fc", transB=trans_b, alpha=0.7, beta=1.3)
    proto = g.proto(g.bn(y, 5))
    model, result = fold(proto)
    assert result.modified and ops(model) == ["Gemm"]
    assert_parity(proto, model)


def test_matmul_with_bias_add():
    g = Tiny({"x": [3, 4]})
    y = g.op("MatMul", ["x", g.init("w", rand(4, 5))], name="mm")
    y = g.op("Add", [g.init("b", rand(5)), y], name="mm_add")  # bias on the left
    proto = g.proto(g.bn(y, 5))
    model, result = fold(proto)
    assert ops(model) == ["MatMul", "Add"]
    assert_parity(proto, model)


def test_matmul_without_bias_becomes_matmul_add():
    g = Tiny({"x": [3, 4]})
    proto = g.proto(g.bn(g.op("MatMul", ["x", g.init("w", rand(4, 5))], name="mm"), 5))
    model, result = fold(proto)
    assert result.modified and ops(model) == ["MatMul", "Add"]
    assert_parity(proto, model)


def test_params_from_constant_nodes_and_graph_output_name_kept():
    g = Tiny({"x": [1, 3, 4, 4]})
    y = g.op("Conv", ["x", g.const("w", rand(2, 3, 1, 1))], name="conv")
    params = [g.const(f"p{i}", p) for i, p in enumerate([rand(2), rand(2), rand(2), rand(2, low=0.5, high=1)])]
    out = g.op("BatchNormalization", [y, *params], name="bn")
    proto = g.proto(out)
    model, result = fold(proto)
    assert result.modified and "BatchNormalization" not in ops(model)
    assert [o.name for o in model.graph.outputs] == [out]
    assert_parity(proto, model)


def test_shared_weight_folds_into_each_conv_separately():
    g = Tiny({"x": [1, 3, 6, 6]})
    w = g.init("shared.weight", rand(4, 3, 3, 3))
    a = g.bn(g.op("Conv", ["x", w], name="conv_a"), 4)
    b = g.bn(g.op("Conv", ["x", w], name="conv_b"), 4)
    proto = g.proto(a, b)
    model, result = fold(proto)
    assert len(result.changes) == 2 and "BatchNormalization" not in ops(model)
    weights = [n.inputs[1] for n in model.graph]
    assert weights[0] is not weights[1]
    assert_parity(proto, model)


def _unfoldable_graphs():
    # BN parameters that are graph inputs (not constants).
    g = Tiny({"x": [1, 3, 4, 4], "gamma": [2]})
    y = g.op("Conv", ["x", g.init("w", rand(2, 3, 1, 1))])
    params = ["gamma", g.init("b", rand(2)), g.init("m", rand(2)), g.init("v", rand(2, low=0.5, high=1))]
    yield "params not constant", g.proto(g.op("BatchNormalization", [y, *params]))
    # The Conv output is read by the BN and by another node.
    g = Tiny({"x": [1, 3, 4, 4]})
    y = g.op("Conv", ["x", g.init("w", rand(2, 3, 1, 1))])
    yield "conv output shared", g.proto(g.bn(y, 2), g.op("Relu", [y]))
    # The Conv weight is a graph input.
    g = Tiny({"x": [1, 3, 4, 4], "w": [2, 3, 1, 1]})
    yield "weight not constant", g.proto(g.bn(g.op("Conv", ["x", "w"]), 2))
    # BN on a rank-3 MatMul output normalizes axis 1 (tokens), not the MatMul's features.
    g = Tiny({"x": [1, 5, 4]})
    yield "matmul rank 3", g.proto(g.bn(g.op("MatMul", ["x", g.init("w", rand(4, 5))]), 5))
    # No linear producer at all.
    g = Tiny({"x": [1, 3, 4, 4]})
    yield "after relu", g.proto(g.bn(g.op("Relu", ["x"]), 3))


@pytest.mark.parametrize("case, proto", list(_unfoldable_graphs()))
def test_nothing_to_fold_leaves_model_untouched(case, proto):
    model = fresh(proto)
    before = snapshot(model)
    result = FoldBatchNorm()(model)
    assert not result.modified and result.changes == []
    assert snapshot(model) == before


def test_training_mode_batchnorm_is_left_alone():
    g = Tiny({"x": [2, 3, 4, 4]})
    y = g.op("Conv", ["x", g.init("w", rand(3, 3, 1, 1))])
    params = [g.init(f"p{i}", p) for i, p in enumerate([rand(3), rand(3), rand(3), rand(3, low=0.5, high=1)])]
    out = g.op("BatchNormalization", [y, *params], outputs=3, training_mode=1)
    proto = g.proto(out, f"{out[:-4]}_out1", f"{out[:-4]}_out2")
    model = fresh(proto)
    assert not FoldBatchNorm()(model).modified


def test_declined_fold_logs_the_reason(caplog):
    g = Tiny({"x": [1, 3, 4, 4]})
    y = g.op("Conv", ["x", g.init("w", rand(2, 3, 1, 1))])
    proto = g.proto(g.bn(y, 2, name="the_bn"), y)  # Conv output is also a graph output
    with caplog.at_level(logging.DEBUG, logger="onnxprune"):
        FoldBatchNorm()(fresh(proto))
    assert "the_bn" in caplog.text and "graph output" in caplog.text


def test_idempotent():
    g, y = conv_bn()
    proto = g.proto(y)
    model, first = fold(proto)
    once = snapshot(model)
    second = FoldBatchNorm()(model)
    assert first.modified and not second.modified and snapshot(model) == once


def test_weights_are_computed_in_float64():
    # A 1e-8 variance with eps 0: float32 sqrt/divide of the onnxscript rule loses ~1 ulp; we
    # compute in float64 and round once, so each folded weight is the correctly rounded value.
    g = Tiny({"x": [1, 1, 3, 3]})
    w = rand(1, 1, 3, 3)
    y = g.op("Conv", ["x", g.init("w", w)])
    gamma, var = np.float32(0.3), np.float32(1e-8)
    params = [g.init("s", np.array([gamma])), g.init("b", np.zeros(1, np.float32)),
              g.init("m", np.zeros(1, np.float32)), g.init("v", np.array([var]))]
    proto = g.proto(g.op("BatchNormalization", [y, *params], epsilon=0.0))
    model, _ = fold(proto)
    folded = next(iter(model.graph)).inputs[1].const_value.numpy()
    exact = (w.astype(np.float64) * (np.float64(gamma) / np.sqrt(np.float64(var)))).astype(np.float32)
    np.testing.assert_array_equal(folded, exact)
