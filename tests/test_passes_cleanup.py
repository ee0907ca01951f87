"""The clean-up passes we wrap from onnx-ir/onnxscript: positive case, no-op, idempotence."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.passes import get_pass
from tiny import Tiny, assert_parity, fresh, ops, rand, snapshot


def identities():
    g = Tiny({"x": [2, 3]})
    y = g.op("Identity", [g.op("Relu", ["x"])])
    y = g.op("Dropout", [y, g.init("ratio", np.array(0.3, np.float32))])  # inference: an identity
    mask_kept = g.op("Dropout", [g.op("Sigmoid", [y])], outputs=2)  # its mask is an output below
    return g.proto(g.op("Identity", [g.op("Exp", [y])]), mask_kept, mask_kept.replace("_out", "_out1"))


def foldable_constants():
    g = Tiny({"x": [2, 3]})
    w = g.op("Mul", [g.const("w0", rand(3, 4)), g.const("two", np.array(2.0, np.float32))])
    return g.proto(g.op("MatMul", ["x", w]))


def unused_nodes():
    g = Tiny({"x": [2, 3]})
    g.init("orphan", rand(10))
    g.op("Exp", [g.op("Relu", ["x"])])  # nothing reads it
    return g.proto(g.op("Sigmoid", ["x"]))


def constant_nodes():
    g = Tiny({"x": [2, 3]})
    bounds = [g.const("low", np.array(0, np.float32)), g.const("high", np.array(6, np.float32))]
    return g.proto(g.op("Clip", ["x", *bounds]))


CASES = {
    # pass: (model, op list after the pass)
    "eliminate-identity": (identities, ["Relu", "Sigmoid", "Dropout", "Exp"]),
    "fold-constants": (foldable_constants, ["Constant", "Constant", "MatMul"]),  # remove-unused drops them
    "remove-unused": (unused_nodes, ["Sigmoid"]),
    "lift-constants": (constant_nodes, ["Clip"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_positive_then_idempotent(name):
    build, expected_ops = CASES[name]
    proto = build()
    model = fresh(proto)
    result = get_pass(name)(model)
    assert result.modified and ops(model) == expected_ops
    assert_parity(proto, model)
    once = snapshot(model)
    assert not get_pass(name)(model).modified and snapshot(model) == once


def test_eliminate_identity_reports_what_it_did():
    result = get_pass("eliminate-identity")(fresh(identities()))
    assert result.changes == ["dropout2: Dropout is an identity at inference", "3 Identity nodes removed"]


def test_remove_unused_drops_orphan_initializers():
    model = fresh(unused_nodes())
    get_pass("remove-unused")(model)
    assert "orphan" not in model.graph.initializers


def test_training_dropout_is_kept():
    g = Tiny({"x": [2, 3]})
    y = g.op("Dropout", ["x", g.init("ratio", np.array(0.5, np.float32)), g.init("train", np.array(True))])
    model = fresh(g.proto(g.op("Relu", [y])))
    assert not get_pass("eliminate-identity")(model).modified and ops(model) == ["Dropout", "Relu"]


@pytest.mark.parametrize("name", list(CASES) + ["shape-inference", "topological-sort"])
def test_nothing_to_do(name):
    g = Tiny({"x": [2, 3]})
    model = fresh(g.proto(g.op("Relu", [g.op("MatMul", ["x", g.init("w", rand(3, 4))])])))
    get_pass("shape-inference")(model)  # shapes already known: nothing for it to add
    before = snapshot(model)
    assert not get_pass(name)(model).modified and snapshot(model) == before


def test_shape_inference_fills_intermediate_shapes():
    g = Tiny({"x": ["n", 3]})
    proto = g.proto(g.op("Relu", [g.op("MatMul", ["x", g.init("w", rand(3, 4))], name="mm")]))
    model = fresh(proto)
    assert model.graph.node("mm").outputs[0].shape is None
    assert get_pass("shape-inference")(model).modified
    assert str(model.graph.node("mm").outputs[0].shape) == "[n,4]"
