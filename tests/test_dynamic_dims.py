"""Dynamic dims of every kind (dim_param, -1, missing): one place decides concrete shapes.

The model is built as Paddle exports it: batch ``dim_value: -1``, height and width without a
value, opset 11 (the other exporters' ``dim_param`` and opsets are covered too).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import shapes
from onnxprune.cli import cli
from onnxprune.errors import UsageError
from onnxprune.io import load_model

RNG = np.random.default_rng(0)


def paddle_like(tmp_path, dims=(-1, 3, None, None), opset=11, name="model.onnx"):
    """Conv(3->8, 3x3, pad 1) -> BN -> Relu -> Conv(8->8) -> GlobalAveragePool -> Flatten -> Gemm(8->4)."""
    def w(*s):
        return numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32) * 0.3, f"w{len(s)}_{s[0]}_{s[1]}")

    inits = [w(8, 3, 3, 3), w(8, 8, 3, 3), w(8, 4)]
    bn = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
          (("s", RNG.uniform(0.5, 1.5, 8)), ("b", RNG.standard_normal(8)), ("m", RNG.standard_normal(8) * 0.1),
           ("v", RNG.uniform(0.5, 1.5, 8)))]
    nodes = [
        helper.make_node("Conv", ["x", "w4_8_3"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w4_8_8"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2_8_4"], ["y"], name="fc"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 4])
    graph = helper.make_graph(nodes, "paddle_like", [x], [y], [*inits, *bn])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    path = tmp_path / name
    onnx.save(model, path)
    return path


def run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


@pytest.fixture
def model(tmp_path):
    return paddle_like(tmp_path)


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=RNG.random((8, 3, 12, 12), dtype=np.float32))
    return path


def test_minus_one_dims_become_unknown_on_load(model):
    loaded = load_model(model)
    assert shapes.declared(loaded)["x"] == (None, 3, None, None)
    assert loaded.graph.outputs[0].shape[0] is None or not isinstance(loaded.graph.outputs[0].shape[0], int)


def test_check_prune_with_data_on_minus_one_batch(model, calib, tmp_path):
    checked = run("check", model, model, "--data", calib)
    assert checked.exit_code == 0, checked.output  # was: batch size must be at least 1 (got -1)
    pruned = run("prune", model, "-o", tmp_path / "p.onnx", "--ratio", "0.25", "--round-to", "1", "--calib", calib)
    assert pruned.exit_code == 0, pruned.output  # was: negative dimensions are not allowed (exit 3)


def test_runs_without_data_need_the_shape_and_say_which(model, tmp_path):
    for args in (("prune", model, "-o", tmp_path / "p.onnx", "--ratio", "0.25"),
                 ("check", model, model)):
        refused = run(*args)
        assert refused.exit_code == 2, refused.output
        assert "input 'x'" in refused.output and "--input-shape x:" in refused.output
        assert len(refused.output.strip().splitlines()) == 1
    for args in (("prune", model, "-o", tmp_path / "p.onnx", "--ratio", "0.25", "--round-to", "1"),
                 ("optimize", model, "-o", tmp_path / "o.onnx", "--verify"),
                 ("check", model, model)):
        done = run(*args, "--input-shape", "x:1,3,10,10")
        assert done.exit_code == 0, done.output


def test_verify_probes_open_dims_and_says_at_which_shape(model, tmp_path):
    """An exactness check needs a shape the model runs at, not the user's: open H/W are probed."""
    done = run("optimize", model, "-o", tmp_path / "o.onnx", "--verify")
    assert done.exit_code == 0, done.output
    assert "random inputs at x:1,3,64,64 (open dims probed" in done.output


def test_verify_asks_only_when_no_probed_size_runs(tmp_path):
    # the Reshape needs exactly 21 values on the open axis: no probe size fits
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, T] a) => (float[N, 7, 3] y) {
            shape = Constant <value = int64[3] {-1, 7, 3}> ()
            y = Reshape(a, shape)
        }""")
    path = tmp_path / "fixed.onnx"
    onnx.save(model, path)
    refused = run("optimize", path, "-o", tmp_path / "o.onnx", "--verify")
    assert refused.exit_code == 2, refused.output
    assert "input 'a' axis 1 (T)" in refused.output and "--input-shape a:" in refused.output
    assert run("optimize", path, "-o", tmp_path / "o.onnx", "--verify", "--input-shape", "a:2,21").exit_code == 0


def test_inspect_counts_macs_at_the_given_shape(model):
    at16 = 16 * 16 * 8 * (3 * 9) + 16 * 16 * 8 * (8 * 9) + 8 * 4
    info = onnxprune.inspect(model)
    assert "macs_note" in info and "--input-shape x:" in info["macs_note"]
    with onnxprune.input_shapes({"x": (1, 3, 16, 16)}):
        info = onnxprune.inspect(model)
    assert info["macs"] == at16 and "macs_note" not in info
    shown = run("inspect", model, "--input-shape", "x:1,3,16,16", "--json")
    assert shown.exit_code == 0 and f'"macs": {at16}' in shown.output
    assert "note: MACs" in run("inspect", model).output


def test_batch_only_dynamic_needs_nothing(tmp_path):
    path = paddle_like(tmp_path, dims=("batch", 3, 8, 8), opset=13)
    assert run("check", path, path).exit_code == 0
    assert "macs_note" not in onnxprune.inspect(path)


@pytest.mark.parametrize("text, problem", [
    ("x:1,a", "expected NAME:D0,D1"), ("x", "expected NAME:D0,D1"), ("x:1,0,3,3", "at least 1"),
    ("z:1,3,8,8", "no input 'z'"), ("x:1,3,8", "rank 4"), ("x:1,4,8,8", "fixed to 3"),
])
def test_bad_input_shapes_are_refused(model, text, problem):
    refused = run("inspect", model, "--input-shape", text)
    assert refused.exit_code == 2 and problem in refused.output, refused.output


def test_dim_names_shared_with_the_batch_follow_it(tmp_path):
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, T] a, float[2, N, 4] s) => (float[N, T] y, float[2, N, 4] t) {
            y = Relu(a)
            t = Relu(s)
        }""")
    path = tmp_path / "rnn.onnx"
    onnx.save(model, path)
    with pytest.raises(UsageError, match="input 'a'.*--input-shape a:"):
        shapes.resolve(load_model(path))
    with onnxprune.input_shapes({"a": (3, 7)}):
        assert shapes.resolve(load_model(path), batch=5) == {"a": (3, 7), "s": (2, 3, 4)}


def test_quantize_converts_an_old_opset_and_says_so(model, calib, tmp_path):
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    done = run("quantize", model, "-o", out, "--calib", calib, "--no-latency", "--report", report)
    assert done.exit_code == 0, done.output  # was: opset 11 is too old for per-channel QDQ
    assert "converted from opset 11 to 13" in done.output
    assert "converted from opset 11" in report.read_text()
    assert load_model(out).opset_imports[""] >= 13


def test_quantize_falls_back_to_per_tensor_when_conversion_fails(model, calib, tmp_path, monkeypatch):
    from onnxprune.api import opset_upgrade

    monkeypatch.setattr(opset_upgrade.version_converter, "convert_version",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("no adapter")))
    result = onnxprune.quantize(model, tmp_path / "q.onnx", calib=calib)
    assert not result.config.per_channel and "per-tensor" in result.converted
    assert load_model(tmp_path / "q.onnx").opset_imports[""] == 11
