"""Untrusted input: every bad file of ``tests/corrupt`` through every command, and the cases
that are handled rather than refused (unsorted nodes, control flow, symbolic shapes,
zero-size tensors, fp16/bf16).

A refused file: exit code 2, one line ``error: <file>: <problem>``, no traceback, nothing
written (no output, no report, no temporary file), the bad file itself untouched.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import corrupt
from onnxprune import api, runtime
from onnxprune.cli import cli
from onnxprune.errors import OnnxPruneError, UnsupportedError
from onnxprune.io import load_model
from onnxprune.validate import check_model

COMMANDS = {
    "inspect": lambda m, out, good: ["inspect", m],
    "optimize": lambda m, out, good: ["optimize", m, "-o", out / "o.onnx", "--report", out / "r.json"],
    "prune": lambda m, out, good: ["prune", m, "-o", out / "p.onnx", "--ratio", "0.5", "--latency-runs", "0",
                                   "--report", out / "r.json"],
    "quantize": lambda m, out, good: ["quantize", m, "-o", out / "q.onnx", "--synthetic", "--no-latency",
                                      "--report", out / "r.json"],
    "check": lambda m, out, good: ["check", m, good, "--json", out / "r.json"],
    "check-candidate": lambda m, out, good: ["check", good, m, "--json", out / "r.json"],
    "compress": lambda m, out, good: ["compress", m, "-o", out / "c.onnx", "--no-quantize", "--latency-batch", "0",
                                      "--report", out / "r.json"],
}


def cli_run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return corrupt.good_model(tmp_path_factory.mktemp("good"))


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", corrupt.CASES, ids=lambda c: c.name)
def test_bad_file_is_refused_and_nothing_is_written(tmp_path, good, case, command):
    model = case.make(tmp_path / "bad")
    out = tmp_path / "out"
    out.mkdir()
    before = tree_digest(tmp_path / "bad")
    result = cli_run(*COMMANDS[command](model, out, good))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(model) in lines[0] and case.message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert list(out.iterdir()) == [], "a refused operation wrote something"
    assert tree_digest(tmp_path / "bad") == before


@pytest.mark.parametrize("case", corrupt.CASES, ids=lambda c: c.name)
def test_bad_file_raises_the_documented_error(tmp_path, case):
    with pytest.raises(case.error, match=None) as info:
        api.inspect(case.make(tmp_path))
    assert case.message in str(info.value)


# -- handled cases ------------------------------------------------------------------------


def make(tmp_path: Path, nodes, inputs, outputs, inits=(), opset=17, name="model.onnx") -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / name))
    return tmp_path / name


def conv_bn(prefix: str, x: str, out: str, rng) -> tuple[list, list]:
    """Conv(3->3) + BatchNorm nodes and their initializers."""
    inits = [numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), f"{prefix}w")]
    inits += [numpy_helper.from_array(rng.uniform(0.5, 1.5, 3).astype(np.float32), f"{prefix}{n}") for n in ("s", "v")]
    inits += [numpy_helper.from_array(rng.uniform(-0.5, 0.5, 3).astype(np.float32), f"{prefix}{n}") for n in ("b", "m")]
    nodes = [helper.make_node("Conv", [x, f"{prefix}w"], [f"{prefix}c"], pads=[1, 1, 1, 1], name=f"{prefix}conv"),
             helper.make_node("BatchNormalization", [f"{prefix}{n}" for n in "csbmv"], [out], name=f"{prefix}bn")]
    return nodes, inits


def image(name="x", dims=("N", 3, 6, 6), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(dims))


def assert_optimize_exact(path: Path, tmp_path: Path, *options) -> None:
    out = tmp_path / "opt.onnx"
    result = cli_run("optimize", path, "-o", out, "--verify", *options)
    assert result.exit_code == 0, result.output
    check_model(load_model(out), full=True)


def test_unsorted_nodes_are_sorted_on_load(tmp_path):
    rng = np.random.default_rng(0)
    nodes, inits = conv_bn("a", "x", "y0", rng)
    path = make(tmp_path, [helper.make_node("Relu", ["y0"], ["y"], name="relu"), *reversed(nodes)],
                [image()], [image("y")], inits)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(str(path))  # the file itself is invalid ONNX
    check_model(load_model(path))
    assert_optimize_exact(path, tmp_path)


def test_control_flow_subgraphs_are_handled(tmp_path):
    """If branches with Conv+BN: the clean-up passes work inside subgraphs, outputs equal."""
    rng = np.random.default_rng(0)
    branches = []
    for prefix in ("t", "e"):
        nodes, inits = conv_bn(prefix, "x", f"{prefix}y", rng)
        branches.append(helper.make_graph(nodes, prefix, [], [image(f"{prefix}y")], inits))
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branches[0], else_branch=branches[1], name="if")]
    path = make(tmp_path, nodes, [image(), cond], [image("y")])
    for flag in (True, False):
        feeds = {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32), "cond": np.array(flag)}
        result = api.optimize(path, verify=True, feeds=[feeds])
        np.testing.assert_allclose(runtime.run(result.model, feeds)["y"], runtime.run(path, feeds)["y"],
                                   rtol=1e-5, atol=1e-5)
    # prune finds no channel groups inside subgraphs: it leaves the branches whole
    pruned = cli_run("prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--latency-runs", "0")
    assert pruned.exit_code == 0, pruned.output
    model = load_model(tmp_path / "p.onnx")
    check_model(model, full=True)
    branch = model.graph.node(0).attributes["then_branch"].value
    assert branch.initializers["tw"].const_value.shape[0] == 3


def test_loop_is_handled_and_quantize_says_it_works_on_the_main_graph(tmp_path):
    vec = [1, 4]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "k"], ["v_out"]),
         helper.make_node("Identity", ["v_out"], ["scan"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, vec)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, vec),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, vec)],
        [numpy_helper.from_array(np.ones(vec, np.float32), "k")])
    inits = [numpy_helper.from_array(np.array(3, np.int64), "M"), numpy_helper.from_array(np.array(True), "C")]
    path = make(tmp_path, [helper.make_node("Loop", ["M", "C", "x"], ["y", "ys"], body=body, name="loop")],
                [image("x", vec)], [image("y", vec), image("ys", [3, *vec])], inits)
    assert_optimize_exact(path, tmp_path)
    assert cli_run("prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--latency-runs", "0").exit_code == 0
    quantized = cli_run("quantize", path, "-o", tmp_path / "q.onnx", "--synthetic", "--no-latency")
    assert quantized.exit_code == 2 and "main graph" in quantized.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_symbolic_shapes(tmp_path):
    rng = np.random.default_rng(0)
    nodes, inits = conv_bn("a", "x", "y", rng)
    dims = ("batch", 3, "height", "width")
    path = make(tmp_path, nodes, [image(dims=dims)], [image("y", dims)], inits)
    probed = cli_run("optimize", path, "-o", tmp_path / "opt.onnx", "--verify")  # no silent 1x1 inputs: probed, said
    assert probed.exit_code == 0 and "x:1,3,64,64 (open dims probed" in probed.output, probed.output
    assert_optimize_exact(path, tmp_path, "--input-shape", "x:2,3,8,8")
    pruned = cli_run("prune", path, "-o", tmp_path / "p.onnx", "--ratio", "0.3", "--input-shape", "x:1,3,8,8")
    assert pruned.exit_code == 0, pruned.output


def test_zero_size_initializer(tmp_path):
    """Resize's empty 'roi' is a zero-size tensor: kept as it is, outputs equal."""
    empty = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["r"], mode="nearest", name="resize"),
             helper.make_node("Identity", ["r"], ["y"], name="id")]
    path = make(tmp_path, nodes, [image()], [image("y", ("N", 3, 12, 12))], [empty, scales])
    assert_optimize_exact(path, tmp_path)
    assert load_model(tmp_path / "opt.onnx").graph.initializers["roi"].const_value.size == 0


def test_zero_size_input_dimension_is_a_data_error(tmp_path):
    path = corrupt.good_model(tmp_path)
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 0
    onnx.save(proto, str(path))
    assert cli_run("optimize", path, "-o", tmp_path / "o.onnx").exit_code == 0  # no data needed
    result = cli_run("optimize", path, "-o", tmp_path / "v.onnx", "--verify")
    assert result.exit_code == 2 and "zero dimension" in result.stderr
    assert not (tmp_path / "v.onnx").exists()


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_half_precision_models(tmp_path, dtype):
    proto = corrupt.good_proto()
    for tensor in proto.graph.initializer:
        values = numpy_helper.to_array(tensor)
        tensor.CopyFrom(helper.make_tensor(tensor.name, dtype, values.shape,
                                           values.astype(np.float32).ravel().tolist()))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.elem_type = dtype
    path = tmp_path / "half.onnx"
    onnx.save(proto, str(path))
    assert cli_run("optimize", path, "-o", tmp_path / "o.onnx").exit_code == 0  # exact passes: handled
    quantized = cli_run("quantize", path, "-o", tmp_path / "q.onnx", "--synthetic", "--no-latency")
    assert quantized.exit_code == 2 and "float32" in quantized.stderr  # INT8 from float32 only
    verified = cli_run("optimize", path, "-o", tmp_path / "v.onnx", "--verify")
    if dtype == TensorProto.FLOAT16:
        assert verified.exit_code == 0, verified.output
    else:  # ONNX Runtime's Python API cannot take bfloat16 feeds, its CPU has few bf16 kernels
        assert verified.exit_code == 2 and "bfloat16" in verified.stderr
        with pytest.raises(UnsupportedError):
            runtime.random_inputs(load_model(path))


def test_external_data_outputs_never_clobber_the_input(tmp_path):
    """An output whose data file would be the file the input reads its weights from."""
    path = corrupt.good_model(tmp_path, external=True, name="a.onnx")
    (tmp_path / "a.onnx.data").rename(tmp_path / "b.onnx.data")
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "b.onnx.data"
    path.write_bytes(proto.SerializeToString())
    before = tree_digest(tmp_path)
    for output in ("b.onnx", "b.onnx.data", "a.onnx"):
        result = cli_run("optimize", path, "-o", tmp_path / output)
        assert result.exit_code == 2, result.output
        assert "refusing" in result.stderr
    assert tree_digest(tmp_path) == before


def test_shared_checkout_copy_is_independent(tmp_path, good):
    """The module's good model is never written by the refusal tests (a copy works the same)."""
    copy = tmp_path / "copy.onnx"
    shutil.copy(good, copy)
    assert api.inspect(copy)["nodes"] == api.inspect(good)["nodes"]


def test_errors_are_project_errors():
    for case in corrupt.CASES:
        assert issubclass(case.error, OnnxPruneError)
