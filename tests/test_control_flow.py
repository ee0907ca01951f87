"""Clean-up around If subgraphs and exporter quirks keeps models ONNX Runtime accepts, weights
never grow, and no command writes a model ONNX Runtime refuses (the silero VAD quirks)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune import api, runtime
from onnxprune.cli import cli
from onnxprune.errors import BrokenOutputError
from onnxprune.io import load_model, save_model, weights_nbytes
from onnxprune.passes.cleanup import FoldConstants, RemoveUnused

RNG = np.random.default_rng(0)


def branchy(tmp_path) -> Path:  # noqa: F821
    """a, b = If(c, then: (Identity(Relu(x)), w[:384] + x), else: (Identity(Relu(x)), w[:384] * x)).

    Both branches return an outer-scope value through an Identity (ORT refuses it returned
    directly) and slice the same outer 512-element weight (folding both copies it twice).
    """
    w = numpy_helper.from_array(RNG.standard_normal(512).astype(np.float32), "w")
    def branch(tag, op):
        starts = helper.make_node("Constant", [], [f"s_{tag}"], value=numpy_helper.from_array(np.array([0], np.int64)))
        ends = helper.make_node("Constant", [], [f"e_{tag}"], value=numpy_helper.from_array(np.array([384], np.int64)))
        nodes = [starts, ends,
                 helper.make_node("Identity", ["xr"], [f"id_{tag}"]),
                 helper.make_node("Slice", ["w", f"s_{tag}", f"e_{tag}"], [f"sl_{tag}"]),
                 helper.make_node(op, [f"sl_{tag}", "x"], [f"r_{tag}"])]
        outs = [helper.make_tensor_value_info(f"id_{tag}", TensorProto.FLOAT, [384]),
                helper.make_tensor_value_info(f"r_{tag}", TensorProto.FLOAT, [384])]
        return helper.make_graph(nodes, tag, [], outs)
    nodes = [helper.make_node("Relu", ["x"], ["xr"]),
             helper.make_node("If", ["c"], ["a", "b"], then_branch=branch("then", "Add"),
                              else_branch=branch("else", "Mul"))]
    graph = helper.make_graph(
        nodes, "branchy",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [384])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [384]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [384])],
        [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / "branchy.onnx"
    onnx.save(model, path)
    return path


def test_if_subgraphs_stay_valid_and_weights_do_not_grow(tmp_path):
    path = branchy(tmp_path)
    result = api.optimize(path, tmp_path / "o.onnx")  # the save itself loads it in ORT
    assert result.after["weights_bytes"] <= result.before["weights_bytes"]
    x = RNG.standard_normal(384).astype(np.float32)
    for c in (True, False):
        feeds = {"c": np.array(c), "x": x}
        expected, got = runtime.run(load_model(path), feeds), runtime.run(load_model(tmp_path / "o.onnx"), feeds)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)


def test_folding_does_not_copy_a_shared_weight_into_each_branch(tmp_path):
    model = load_model(branchy(tmp_path))
    before = weights_nbytes(model)
    FoldConstants()(model)
    RemoveUnused()(model)
    assert weights_nbytes(model) <= before


def test_constant_whose_tensor_has_another_name_lifts_cleanly(tmp_path):
    """spox exports: Constant 'F0::w' holds a tensor named 'w'; lifting must keep readers resolvable."""
    consts = [helper.make_node("Constant", [], [f"F0::{i}_w"], name="F0::anon",
                               value=numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "w"))
              for i in range(2)]
    graph = helper.make_graph([*consts, helper.make_node("Add", ["F0::0_w", "F0::1_w"], ["s"]),
                               helper.make_node("Add", ["x", "s"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "c.onnx"
    onnx.save(model, path)
    result = CliRunner().invoke(cli, ["-q", "optimize", str(path), "-o", str(tmp_path / "o.onnx"),
                                      "--passes", "lift-constants"])
    assert result.exit_code == 0, result.output


def test_a_model_ort_refuses_is_never_written(tmp_path):
    model = load_model(branchy(tmp_path))
    then = model.graph.node(1).attributes["then_branch"].value
    next(n for n in then if n.op_type == "Slice").op_type = "Slise"  # a pass gone wrong
    with pytest.raises(BrokenOutputError, match="Slise"):
        save_model(model, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob(".onnxprune-*"))
    assert BrokenOutputError.exit_code == 3


def test_custom_ops_the_input_also_needs_are_not_ours_to_judge(tmp_path):
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    save_model(load_model(path), tmp_path / "out.onnx", input_path=path)
    assert (tmp_path / "out.onnx").exists()
    assert weights_nbytes(ir.load(tmp_path / "out.onnx")) == 0
