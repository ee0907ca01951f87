"""fold-affine on tiny graphs: per-channel Mul/Add/Sub/Div after Conv/ConvTranspose/Gemm/MatMul."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from onnxprune.passes.fold_affine import FoldAffine
from tiny import Tiny, assert_parity, fresh, ops, rand, snapshot


def conv(g: Tiny, cout: int = 6, bias: bool = True, x: str = "x") -> str:
    inputs = [x, g.init("conv.weight", rand(cout, 4, 3, 3))]
    if bias:
        inputs.append(g.init("conv.bias", rand(cout)))
    return g.op("Conv", inputs, name="conv", pads=[1, 1, 1, 1])


@pytest.mark.parametrize(
    "op, shape, constant_first",
    [
        ("Mul", (6, 1, 1), False),
        ("Mul", (1, 6, 1, 1), True),
        ("Mul", (), False),
        ("Add", (6, 1, 1), False),
        ("Add", (1,), True),
        ("Sub", (6, 1, 1), False),
        ("Sub", (1, 6, 1, 1), True),  # c - y: scale -1
        ("Div", (6, 1, 1), False),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(op, shape, constant_first, bias):
    g = Tiny({"x": [2, 4, 5, 5]})
    y = conv(g, bias=bias)
    c = g.init("c", rand(*shape, low=0.5, high=2.0))  # away from 0: Div stays well-conditioned
    proto = g.proto(g.op(op, [c, y] if constant_first else [y, c], name="affine"))
    model = fresh(proto)
    result = FoldAffine()(model)
    assert result.modified and ops(model) == ["Conv"]
    assert result.changes == [f"affine: {op} by a constant folded into Conv 'conv'"]
    assert_parity(proto, model)


def test_chain_of_mul_add_sub_folds_entirely():
    g = Tiny({"x": [1, 4, 5, 5]})
    y = g.op("Mul", [conv(g, bias=False), g.init("s", rand(6, 1, 1))])
    y = g.op("Add", [y, g.init("t", rand(1, 6, 1, 1))])
    y = g.op("Sub", [y, g.init("u", rand(1))])
    proto = g.proto(g.op("Relu", [y]))
    model = fresh(proto)
    assert len(FoldAffine()(model).changes) == 3 and ops(model) == ["Conv", "Relu"]
    assert_parity(proto, model)


def test_conv_transpose_grouped():
    g = Tiny({"x": [1, 4, 3, 3]})
    y = g.op("ConvTranspose", ["x", g.init("w", rand(4, 3, 3, 3))], group=2, strides=[2, 2])
    proto = g.proto(g.op("Add", [g.op("Mul", [y, g.init("s", rand(6, 1, 1))]), g.init("t", rand(6, 1, 1))]))
    model = fresh(proto)
    assert FoldAffine()(model).modified and ops(model) == ["ConvTranspose"]
    assert_parity(proto, model)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm(trans_b):
    g = Tiny({"x": [3, 4]})
    w = g.init("w", rand(*((5, 4) if trans_b else (4, 5))))
    y = g.op("Gemm", ["x", w, g.init("b", rand(1, 5))], transB=trans_b, beta=0.5)
    proto = g.proto(g.op("Div", [g.op("Mul", [y, g.init("s", rand(5))]), g.init("d", rand(1, 5, low=1, high=2))]))
    model = fresh(proto)
    assert FoldAffine()(model).modified and ops(model) == ["Gemm"]
    assert_parity(proto, model)


def test_matmul_rank3_with_bias_then_mul():
    g = Tiny({"x": [2, 7, 4]})
    y = g.op("Add", [g.op("MatMul", ["x", g.init("w", rand(4, 5))]), g.init("b", rand(5))])
    proto = g.proto(g.op("Mul", [y, g.init("s", rand(5))]))
    model = fresh(proto)
    assert FoldAffine()(model).modified and ops(model) == ["MatMul", "Add"]
    assert_parity(proto, model)


def test_add_after_bare_matmul_is_its_bias_and_stays():
    g = Tiny({"x": [2, 4]})
    proto = g.proto(g.op("Add", [g.op("MatMul", ["x", g.init("w", rand(4, 5))]), g.init("b", rand(5))]))
    model = fresh(proto)
    assert not FoldAffine()(model).modified


def _declined():
    # (case, builder of the constant's op on a Conv output, reason in the log)
    yield "spatial constant", ("Mul", rand(1, 1, 5, 5)), "not per-channel"
    yield "constant on the last axis", ("Mul", rand(5)), "not per-channel"  # broadcasts on W, not C
    yield "raises the rank", ("Add", rand(1, 1, 6, 1, 1)), "rank"
    yield "division by zero", ("Div", np.array([[[1.0]], [[0.0]], *[[[2.0]]] * 4], np.float32)), "zeros"


@pytest.mark.parametrize("case, op_const, reason", list(_declined()))
def test_declined_constants_leave_the_model_untouched(case, op_const, reason, caplog):
    g = Tiny({"x": [1, 4, 5, 5]})
    op, c = op_const
    proto = g.proto(g.op(op, [conv(g), g.init("c", c)]))
    model = fresh(proto)
    before = snapshot(model)
    with caplog.at_level(logging.DEBUG, logger="onnxprune"):
        result = FoldAffine()(model)
    assert not result.modified and snapshot(model) == before
    assert reason in caplog.text


def test_nothing_to_fold():
    g = Tiny({"x": [1, 4, 5, 5], "s": [1, 6, 1, 1]})
    y = conv(g)
    proto = g.proto(g.op("Mul", [y, "s"]), g.op("Add", [g.op("Relu", [y]), g.init("t", rand(6, 1, 1))]))
    model = fresh(proto)
    before = snapshot(model)
    assert not FoldAffine()(model).modified and snapshot(model) == before


def test_idempotent():
    g = Tiny({"x": [1, 4, 5, 5]})
    proto = g.proto(g.op("Mul", [conv(g), g.init("s", rand(6, 1, 1))]))
    model = fresh(proto)
    assert FoldAffine()(model).modified
    once = snapshot(model)
    assert not FoldAffine()(model).modified and snapshot(model) == once
