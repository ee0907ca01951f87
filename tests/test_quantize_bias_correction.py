"""Bias correction (passes/quantize/bias_correction.py): the INT8 layer gets back the float
layer's mean output, which weight rounding shifts (most in depthwise convolutions)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime
from onnxprune.passes.quantize.bias_correction import BiasCorrectionPass, rounding_error, shift
from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.quantize_pass import QuantizePass


def depthwise(bias: bool = True) -> ir.Model:
    """x [N, 4, 6, 6] -> depthwise 3x3 Conv (no padding) -> y; coarse weights round far."""
    rng = np.random.default_rng(0)
    weight = rng.uniform(-1, 1, (4, 1, 3, 3)).astype(np.float32)
    weight[:, 0, 0, 0] = 9.0  # one large tap per channel: a coarse int8 grid for the others
    inits = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(np.arange(4, dtype=np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], name="dw", group=4, kernel_shape=[3, 3])
    graph = helper.make_graph([node], "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def data() -> np.ndarray:
    """Inputs far from zero mean (post-activation values are): the rounding shift shows."""
    return (np.random.default_rng(1).standard_normal((64, 4, 6, 6)) + 3.0).astype(np.float32)


def test_the_shift_is_the_rounding_error_times_the_input_mean():
    model = depthwise()
    node = next(iter(model.graph))
    weight = np.asarray(node.inputs[1].const_value.numpy())
    error = rounding_error(node, weight, QuantConfig())
    mean = np.array([1.0, 2.0, 3.0, 4.0])
    expected = error.reshape(4, 9).sum(1) * mean  # depthwise: channel o reads input channel o
    assert np.allclose(shift(node, error, mean), expected)
    assert np.abs(error).max() > 0  # the weights do not sit on the int8 grid


def mean_error(model: ir.Model, x: np.ndarray, corrected: bool, with_bias: bool = True) -> np.ndarray:
    """Per-channel mean of (INT8 - float) outputs, with or without bias correction."""
    float_model = depthwise(with_bias)
    work = depthwise(with_bias)
    if corrected:
        result = BiasCorrectionPass({"x": x.mean(axis=(0, 2, 3))})(work)
        assert result.modified and "dw: bias corrected" in result.changes[0]
    reference = runtime.run(float_model, {"x": x})["y"]
    ranges = {"x": (float(x.min()), float(x.max())), "y": (float(reference.min()) - 1, float(reference.max()) + 1)}
    QuantizePass(ranges)(work)
    return (runtime.run(work, {"x": x})["y"] - reference).mean(axis=(0, 2, 3))


def test_corrected_int8_keeps_the_float_mean_per_channel():
    x = data()
    before, after = mean_error(depthwise(), x, False), mean_error(depthwise(), x, True)
    assert np.abs(before).max() > 0.05  # the shift is real
    assert np.all(np.abs(after) < np.abs(before)) and np.abs(after).max() < 0.3 * np.abs(before).max()


def test_a_missing_bias_is_created():
    x = data()
    after = mean_error(depthwise(False), x, True, with_bias=False)
    assert np.abs(after).max() < 0.3 * np.abs(mean_error(depthwise(False), x, False, with_bias=False)).max()


def test_excluded_and_unmeasured_nodes_are_left_alone():
    model = depthwise()
    assert not BiasCorrectionPass({"x": np.ones(4)}, QuantConfig(exclude=frozenset({"dw"})))(model).modified
    assert not BiasCorrectionPass({"other": np.ones(4)})(model).modified
    assert not BiasCorrectionPass({"x": np.ones(3)})(model).modified  # not per channel of this input


def test_quantize_keeps_the_correction_only_when_held_out_fidelity_holds(tmp_path):
    """End to end: the API measures channel means, corrects, and compares with and without."""
    import onnx
    from click.testing import CliRunner

    import onnxprune
    from onnxprune.cli import cli

    path = tmp_path / "dw.onnx"
    onnx.save(ir.to_proto(depthwise()), path)
    np.savez(tmp_path / "calib.npz", x=data())
    result = onnxprune.quantize(path, calib=tmp_path / "calib.npz", samples=32, bias_correction=True, clean=False)
    done = result.recovery["bias_correction"]
    assert done["nodes"] == 1 and "fidelity_with" in done and "fidelity_without" in done
    with_it = min(done["fidelity_with"]["cosine"].values())
    without = min(done["fidelity_without"]["cosine"].values())
    assert done["kept"] == (with_it >= without)
    shown = CliRunner().invoke(cli, ["-q", "quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--calib",
                                     str(tmp_path / "calib.npz"), "--bias-correction", "--no-latency"])
    assert shown.exit_code == 0 and "bias correction: 1 layers corrected" in shown.output, shown.output
    refused = CliRunner().invoke(cli, ["-q", "quantize", str(path), "-o", str(tmp_path / "r.onnx"), "--synthetic",
                                       "--bias-correction"])
    assert refused.exit_code == 2 and "calibration data" in refused.output


def test_a_dropped_correction_leaves_exactly_the_uncorrected_quantization(tmp_path, monkeypatch):
    """Dropped, the correction must not linger: the ranges are calibrated again on the
    uncorrected model (they were made on the corrected one; on PP-OCRv4's recognizer keeping
    them cost 13 % of the decoded lines although the correction itself was dropped)."""
    import onnx

    import onnxprune
    from onnxprune.api import recovery

    path = tmp_path / "dw.onnx"
    onnx.save(ir.to_proto(depthwise()), path)
    np.savez(tmp_path / "calib.npz", x=data())
    plain = onnxprune.quantize(path, calib=tmp_path / "calib.npz", samples=32, clean=False)
    monkeypatch.setattr(recovery, "better", lambda corrected, plain: False)
    dropped = onnxprune.quantize(path, calib=tmp_path / "calib.npz", samples=32, bias_correction=True, clean=False)
    assert dropped.recovery["bias_correction"]["kept"] is False
    assert ir.to_proto(dropped.model).graph.SerializeToString() == ir.to_proto(plain.model).graph.SerializeToString()
    assert dict(dropped.table.as_dict()) == dict(plain.table.as_dict())
