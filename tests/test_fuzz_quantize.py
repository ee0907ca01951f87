"""Fuzzing the public ``quantize`` API on random graphs (synthetic calibration).

Random options: the result passes the ONNX checker and runs in ONNX Runtime with the
original output shapes, or the call fails with a project error - never another exception.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphgen
from onnxprune import quantize, runtime
from onnxprune.errors import OnnxPruneError
from onnxprune.validate import check_model


@settings(max_examples=40)
@given(
    g=graphgen.graphs(noise=True),
    per_channel=st.booleans(),
    symmetric=st.booleans(),
    activation_type=st.sampled_from(["uint8", "int8"]),
    method=st.sampled_from(["minmax", "percentile", "entropy", "mse"]),
)
def test_quantize_gives_a_valid_model_or_a_clear_error(g, per_channel, symmetric, activation_type, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "calibrating on synthetic inputs"
        try:
            result = quantize(g.model(), synthetic=True, samples=8, per_channel=per_channel,
                              symmetric=symmetric, activation_type=activation_type, method=method)
        except OnnxPruneError:
            return
    check_model(result.model, full=True)
    assert {k: v.shape for k, v in runtime.run(result.model, g.feeds).items()} == g.output_shapes


@pytest.mark.parametrize("activation_type,symmetric", [("uint8", False), ("int8", False), ("uint8", True)])
def test_always_zero_activation_quantizes(tmp_path, activation_type, symmetric):
    """An activation that is 0 on every sample has the range [0, 0] (found by fuzzing).

    It still gets a valid scale (s = 1 > 0, 0 exact); a ReLU6 after it folds with its true
    range [0, 6] (asymmetric), so the MatMul before it needs no calibrated range of its own.
    """
    # r >= 0 and w1 < 0, so s = Relu(r * w1) is always 0: c = MatMul(s, w2) has the range [0, 0].
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,1,1] x) => (float[N,1,1] y)
        <float[1,1] w0 = {0.18}, float[1,1] w1 = {-0.19}, float[1,1] w2 = {0.91}, float[1,1] w3 = {0.15},
         float lo = {0}, float hi = {6}>
        {
          a = MatMul(x, w0)
          r = Relu(a)
          b = MatMul(r, w1)
          s = Relu(b)
          c = MatMul(s, w2)
          d = Clip(c, lo, hi)
          e = MatMul(d, w3)
          y = Relu(e)
        }""")
    onnx.save(model, str(tmp_path / "m.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = quantize(tmp_path / "m.onnx", synthetic=True, samples=8, per_channel=False,
                          activation_type=activation_type, symmetric=symmetric)
    check_model(result.model, full=True)
    assert result.table["s"].min == result.table["s"].max == 0.0  # the degenerate range, calibrated
    assert result.activations >= 4 and not result.declined
    scales = {v.name: float(v.const_value.numpy()) for v in result.model.graph.initializers.values()
              if v.name.endswith("_scale") and v.const_value.numpy().ndim == 0}
    assert all(s > 0 for s in scales.values())
    if not symmetric:  # the two Relus and the ReLU6 folded; the ReLU6 output keeps its true range [0, 6]
        assert result.absorbed == 3 and "c" not in result.table
        assert scales["d_scale"] == pytest.approx(6 / 255)
    feeds = {"x": np.array([-3.0, 0.0, 0.5, 7.0], np.float32).reshape(4, 1, 1)}
    np.testing.assert_array_equal(runtime.run(result.model, feeds)["y"], np.zeros((4, 1, 1), np.float32))
