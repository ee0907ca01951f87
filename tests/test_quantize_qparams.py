"""Scales, zero points and the exactness of folding Relu/Clip into a quantization range."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxprune.passes.quantize import qparams as qp
from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.emit import absorbable, sure_fold_params
from onnxprune.passes.quantize.rules import activation_values, folds_for_sure

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def dequantize(q: np.ndarray, params: qp.QParams) -> np.ndarray:
    """DequantizeLinear: (q - z) * s, with z and s broadcast along ``axis``."""
    shape = [1] * q.ndim
    if params.axis is not None:
        shape[params.axis] = -1
    zero = params.zero_point.astype(np.float64).reshape(shape if params.axis is not None else ())
    scale = params.scale.astype(np.float64).reshape(shape if params.axis is not None else ())
    return (q.astype(np.float64) - zero) * scale


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@given(lo=finite, hi=finite)
def test_asymmetric_params_cover_the_range_and_hold_zero_exactly(dtype, lo, hi):
    lo, hi = min(lo, hi), max(lo, hi)
    params = qp.activation_qparams(lo, hi, np.dtype(dtype), symmetric=False)
    assert params.scale.shape == () and params.zero_point.shape == ()  # ORT fuses scalar params only
    low, high = params.representable()
    step = float(params.scale)
    assert low <= min(lo, 0.0) + step and high >= max(hi, 0.0) - step
    zero = qp.quantize(np.zeros(1, np.float32), params, np.dtype(dtype))
    assert dequantize(zero, params)[0] == 0.0  # zero padding stays exact


@pytest.mark.parametrize(("dtype", "zero"), [(np.int8, 0), (np.uint8, 128)])
def test_symmetric_params(dtype, zero):
    params = qp.activation_qparams(-2.0, 3.0, np.dtype(dtype), symmetric=True)
    assert int(params.zero_point) == zero
    assert float(params.scale) == pytest.approx(3.0 / 127.5)


def test_constant_zero_tensor_gets_a_usable_scale():
    params = qp.activation_qparams(0.0, 0.0, np.dtype(np.uint8), symmetric=False)
    assert float(params.scale) > 0


def test_per_channel_weights_are_symmetric_int8_within_half_a_step():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * np.array([1e-3, 1, 10, 100])[:, None, None, None]
    params = qp.weight_qparams(weight, axis=0, qmax=127)
    q = qp.quantize(weight, params, np.int8)
    assert params.scale.shape == (4,) and not params.zero_point.any()
    assert q.min() >= -127 and q.max() <= 127
    assert np.abs(q).reshape(4, -1).max(axis=1).tolist() == [127] * 4  # every channel uses its full range
    error = np.abs(dequantize(q, params) - weight)
    assert np.all(error <= params.scale[:, None, None, None] / 2 + 1e-9)


def test_reduced_range_weights_use_seven_bits():
    weight = np.linspace(-1, 1, 50, dtype=np.float32).reshape(5, 10)
    q = qp.quantize(weight, qp.weight_qparams(weight, 0, qmax=63), np.int8)
    assert np.abs(q).max() == 63


def test_bias_scale_is_input_scale_times_weight_scale_and_fits_int32():
    weight_params = qp.QParams(np.array([1e-12, 0.5], np.float32), np.zeros(2, np.int8), 0)
    bias = np.array([10.0, 1.0], np.float32)
    fitted = qp.fit_weight_to_bias(weight_params, np.abs(bias), np.float32(0.01))
    assert fitted.scale[1] == weight_params.scale[1]  # only the overflowing channel grows
    bias_params = qp.bias_qparams(np.float32(0.01), fitted)
    q = qp.quantize(bias, bias_params, np.int32)
    assert np.all(np.abs(q.astype(np.int64)) < 2**31 - 1)
    np.testing.assert_allclose(bias_params.scale, fitted.scale * np.float32(0.01), rtol=1e-6)
    np.testing.assert_allclose(dequantize(q, bias_params), bias, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@given(hi=st.floats(1e-3, 1e3), values=st.lists(finite, min_size=1, max_size=64))
def test_folding_relu_into_the_range_is_exact(dtype, hi, values):
    """Q(relu(x)) == Q(x) for the asymmetric range [0, hi] a Relu output calibrates to."""
    params = qp.activation_qparams(0.0, hi, np.dtype(dtype), symmetric=False)
    assert absorbable(params, (0.0, math.inf))
    x = np.array(values, np.float32)
    np.testing.assert_array_equal(
        qp.quantize(np.maximum(x, 0), params, np.dtype(dtype)), qp.quantize(x, params, np.dtype(dtype))
    )


@given(hi=st.floats(1e-3, 6.0), values=st.lists(finite, min_size=1, max_size=64))
def test_folding_relu6_is_exact_when_the_range_stays_inside_the_clip(hi, values):
    params = qp.activation_qparams(0.0, hi, np.dtype(np.uint8), symmetric=False)
    assert absorbable(params, (0.0, 6.0))
    x = np.array(values, np.float32)
    np.testing.assert_array_equal(
        qp.quantize(np.clip(x, 0, 6), params, np.dtype(np.uint8)), qp.quantize(x, params, np.dtype(np.uint8))
    )


def test_symmetric_or_wider_ranges_are_not_folded():
    assert not absorbable(qp.activation_qparams(0.0, 4.0, np.dtype(np.int8), symmetric=True), (0.0, math.inf))
    assert not absorbable(qp.activation_qparams(-1.0, 4.0, np.dtype(np.uint8), symmetric=False), (0.0, math.inf))
    assert not absorbable(qp.activation_qparams(0.0, 8.0, np.dtype(np.uint8), symmetric=False), (0.0, 6.0))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_a_zero_width_range_still_folds_for_sure(dtype):
    """Always-0 activations: [0, 0] gives s = 1 (ORT needs s > 0), which folds a Relu but not a
    ReLU6; the sure fold then takes the ReLU6's true range [0, 6] (Q(6) = qmax)."""
    dtype = np.dtype(dtype)
    zero = qp.activation_qparams(0.0, 0.0, dtype, symmetric=False)
    assert float(zero.scale) == 1.0 and int(zero.zero_point) == np.iinfo(dtype).min
    assert absorbable(zero, (0.0, math.inf)) and not absorbable(zero, (0.0, 6.0))
    assert sure_fold_params(0.0, (0.0, math.inf), dtype).same_as(zero)
    relu6 = sure_fold_params(0.0, (0.0, 6.0), dtype)
    assert float(relu6.scale) == pytest.approx(6 / 255) and absorbable(relu6, (0.0, 6.0))
    x = np.array([-1.0, 0.0, 3.0, 6.0, 9.0], np.float32)
    np.testing.assert_array_equal(qp.quantize(np.clip(x, 0, 6), relu6, dtype), qp.quantize(x, relu6, dtype))


def test_a_sure_fold_cuts_the_calibrated_range_to_the_activation_bounds():
    """A table range outside what the Relu/Clip can output is cut to it ([0, 8] for a ReLU6: [0, 6])."""
    u8 = np.dtype(np.uint8)
    assert sure_fold_params(8.0, (0.0, 6.0), u8).same_as(qp.activation_qparams(0.0, 6.0, u8, False))
    assert sure_fold_params(4.0, (0.0, math.inf), u8).same_as(qp.activation_qparams(0.0, 4.0, u8, False))
    assert sure_fold_params(0.0, (0.0, 1e-45), u8) is None  # no float32 scale reaches qmax


def test_clip_to_zero_is_not_a_sure_fold():
    """Clip(0, 0) is a constant 0: Q(0) cannot be both qmin and qmax, so its input needs a range."""
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,2] x) => (float[N,2] y)
        <float[2,2] w = {1, 2, 3, 4}, float lo = {0}, float hi = {0}, float[2,2] w2 = {1, 0, 0, 1}>
        { c = MatMul(x, w)
          d = Clip(c, lo, hi)
          y = MatMul(d, w2) }""")
    ir_model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(model))
    clip = next(n for n in ir_model.graph if n.op_type == "Clip")
    assert not folds_for_sure(clip, QuantConfig())
    needed = {v.name for v in activation_values(ir_model, QuantConfig())}
    assert {"c", "d"} <= needed


@pytest.mark.parametrize("axis", [None, 0, 1, 2])
def test_quantizing_in_blocks_of_rows_gives_the_same_integers(monkeypatch, axis):
    """Big tensors are quantized a few rows at a time (bounded float64 temporaries): the same
    integers as one whole-tensor round((w / s) + z), per tensor and per channel on any axis."""
    weight = np.random.default_rng(3).standard_normal((37, 5, 3)).astype(np.float32)
    params = qp.weight_qparams(weight, axis, 127)
    scale = params.scale if axis is None else params.scale.reshape([-1 if i == axis else 1 for i in range(3)])
    whole = np.clip(np.rint(weight.astype(np.float64) / scale.astype(np.float64)), -128, 127).astype(np.int8)
    monkeypatch.setattr(qp, "QUANTIZE_BLOCK", 16)  # 1 row of 15 values per block
    np.testing.assert_array_equal(qp.quantize(weight, params, np.dtype(np.int8)), whole)
    monkeypatch.setattr(qp, "QUANTIZE_BLOCK", 100)  # 6 rows per block, the last one short
    np.testing.assert_array_equal(qp.quantize(weight, params, np.dtype(np.int8)), whole)
