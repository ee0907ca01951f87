"""Map-typed values (skl2onnx's ZipMap): loaded, processed, written back with their type; a
map-typed input refused in one line. The committed skl2onnx ZipMap export runs through every
command in tests/test_realmodels.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune._maptypes import densify
from onnxprune.cli import cli
from onnxprune.io import load_model, save_model

RNG = np.random.default_rng(0)


def zipmap_model(path, labels=("cat", "dog", "emu")):
    """MatMul + Add + Softmax -> ZipMap with string class labels (keys sort differently)."""
    w = numpy_helper.from_array(RNG.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.standard_normal(3).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["a"], name="add"),
             helper.make_node("Softmax", ["a"], ["p"], name="softmax", axis=1),
             helper.make_node("ZipMap", ["p"], ["probs"], name="zipmap", domain="ai.onnx.ml",
                              classlabels_strings=list(labels))]
    seq_map = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, None)))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_value_info("probs", seq_map)], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 1)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_zipmap_loads_and_saves_with_its_type(tmp_path):
    path = zipmap_model(tmp_path / "z.onnx")
    model = load_model(path)
    assert model.graph.outputs[0].type is None  # onnx-ir cannot hold the map type
    out = save_model(model, tmp_path / "copy.onnx", input_path=path)
    saved = onnx.load(out)
    assert saved.graph.output[0].type == onnx.load(path).graph.output[0].type
    onnx.checker.check_model(saved, full_check=True)
    info = onnxprune.inspect(path)
    assert info["outputs"][0]["dtype"] == "seq(map(string,tensor(float32)))"


def test_densify_orders_by_key():
    dense = densify([{"dog": 0.2, "cat": 0.7, "emu": 0.1}, {"emu": 1.0, "cat": 0.0, "dog": 0.0}])
    np.testing.assert_array_equal(dense, np.array([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]], np.float32))
    assert densify([1, 2]) == [1, 2]


def test_optimize_quantize_check_on_a_zipmap_model(tmp_path):
    path = zipmap_model(tmp_path / "z.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=RNG.standard_normal((16, 4)).astype(np.float32))
    runner = CliRunner()
    for args in (["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--verify"],
                 ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--calib", str(data), "--no-latency"]):
        done = runner.invoke(cli, args)
        assert done.exit_code == 0, done.output
    x = np.load(data)["x"]
    ref = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    out = ort.InferenceSession(str(tmp_path / "o.onnx")).run(None, {"x": x})[0]
    assert isinstance(out, list) and out == ref  # still a sequence of maps, equal
    checked = runner.invoke(cli, ["check", str(path), str(tmp_path / "q.onnx"), "--data", str(data),
                                  "--providers", "cpu"])
    assert checked.exit_code in (0, 1), checked.output
    assert "probs" in checked.output and "cosine" in checked.output


def test_a_map_input_is_refused_in_one_line(tmp_path):
    map_input = helper.make_value_info("d", helper.make_map_type_proto(
        TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, None)))
    nodes = [helper.make_node("DictVectorizer", ["d"], ["x"], domain="ai.onnx.ml", string_vocabulary=["a", "b"]),
             helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [map_input], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "dv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15),
                                                      helper.make_opsetid("ai.onnx.ml", 1)]), path)
    refused = CliRunner().invoke(cli, ["inspect", str(path)])
    assert refused.exit_code == 2, refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "input 'd' is a map (DictVectorizer)" in lines[0] and "malformed" not in lines[0]
