"""Scales and zero points, and the integer tensors they produce.

Affine quantization maps a real value r to q = saturate(round(r / s) + z) and back to
r' = (q - z) * s. For activations with a calibrated range [a, b]:

* asymmetric: the range is widened to contain 0 (a' = min(a, 0), b' = max(b, 0)),
  s = (b' - a') / (qmax - qmin) and z = round(qmin - a' / s), so 0 is exact (zero padding);
* symmetric: m = max(|a|, |b|), s = 2m / (qmax - qmin) = m / 127.5, z = 0 for int8 or 128 for
  uint8 (+m falls half a step past qmax and saturates to it).

Weights are symmetric int8 with z = 0 and s_c = max|w_c| / qmax per output channel c.
Biases are int32 with s_c = s_x * s_w_c and z = 0, so that the integer accumulator of
sum(q_x * q_w) + q_b is exact before requantization.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

INT32_MAX = 2**31 - 1
QUANTIZE_BLOCK = 1 << 20  # elements quantized at a time (float64 temporaries of 8 MiB each)


@dataclasses.dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor: scalars (per tensor) or vectors along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    def representable(self) -> tuple[float, float]:
        """The real interval [(qmin - z) s, (qmax - z) s] the quantized tensor can hold (per tensor)."""
        info = np.iinfo(self.zero_point.dtype)
        s, z = float(self.scale), int(self.zero_point)
        return (info.min - z) * s, (info.max - z) * s

    def same_as(self, other: QParams) -> bool:
        return (
            self.axis == other.axis
            and self.zero_point.dtype == other.zero_point.dtype
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )


def _safe_scale(scale: np.ndarray) -> np.ndarray:
    """A zero scale (constant-zero tensor) would divide by zero; any positive scale is exact there."""
    scale = np.asarray(scale, dtype=np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def activation_qparams(rmin: float, rmax: float, dtype: np.dtype, symmetric: bool) -> QParams:
    """Per-tensor scale and zero point for an activation whose values lie in [rmin, rmax]."""
    info = np.iinfo(dtype)
    qmin, qmax = int(info.min), int(info.max)
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    if symmetric:
        bound = max(abs(rmin), abs(rmax))
        zero = round((qmin + qmax) / 2)  # 0 for int8, 128 for uint8
        scale = _safe_scale(np.float32(2 * bound / (qmax - qmin)))
    else:
        scale = _safe_scale(np.float32((rmax - rmin) / (qmax - qmin)))
        zero = int(np.clip(round(qmin - rmin / float(scale)), qmin, qmax))
    return QParams(scale.reshape(()), np.array(zero, dtype=dtype))


def quantize(values: np.ndarray, params: QParams, dtype: np.dtype | type[np.integer]) -> np.ndarray:
    """round-half-to-even(values / scale) + zero point, saturated to ``dtype`` (as QuantizeLinear).

    The quotient is taken in float64, in blocks of rows of ``values``: a 256 MiB float32
    weight then needs ~30 MiB of temporaries, not the 1.5 GiB a whole-tensor float64
    quotient, rint and clip would hold (they dominated quantize's peak memory on big models).
    """
    scale, zero = params.scale, params.zero_point.astype(np.int64)
    if params.axis is not None and scale.ndim == 1:
        shape = [1] * values.ndim
        shape[params.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    info = np.iinfo(dtype)
    out = np.empty(values.shape, dtype)
    if values.ndim == 0:
        out[...] = _quantize_block(values, scale, zero, info)
        return out
    rows = max(1, QUANTIZE_BLOCK // max(1, math.prod(values.shape[1:])))
    per_row = scale.ndim == values.ndim and scale.shape[0] != 1  # scales along axis 0: sliced too
    for start in range(0, values.shape[0], rows):
        block = slice(start, start + rows)
        out[block] = _quantize_block(values[block], scale[block] if per_row else scale,
                                     zero[block] if per_row else zero, info)
    return out


def _quantize_block(values: np.ndarray, scale: np.ndarray, zero: np.ndarray, info: np.iinfo) -> np.ndarray:
    q = np.rint(values.astype(np.float64) / scale.astype(np.float64)) + zero
    clipped: np.ndarray = np.clip(q, info.min, info.max).astype(info.dtype)
    return clipped


def weight_qparams(weight: np.ndarray, axis: int | None, qmax: int) -> QParams:
    """Symmetric int8 scale per slice along ``axis`` (``None``: one scale for the tensor)."""
    # max|w| as max(max w, -min w): equal, without an |w| copy of the tensor
    weight = np.asarray(weight, dtype=np.float32)
    reduce_axes = None if axis is None else tuple(i for i in range(weight.ndim) if i != axis)
    largest = np.maximum(weight.max(axis=reduce_axes, initial=0.0), -weight.min(axis=reduce_axes, initial=0.0))
    if axis is None:
        scale = np.float32(largest / qmax).reshape(())
        return QParams(_safe_scale(scale), np.zeros((), np.int8))
    scale = _safe_scale(largest / qmax)
    return QParams(scale, np.zeros(scale.shape, np.int8), axis)


def fit_weight_to_bias(weight_params: QParams, bias: np.ndarray, input_scale: np.ndarray) -> QParams:
    """Grow weight scales whose bias would overflow int32 at scale s_x * s_w.

    A tiny s_x * s_w (near-zero weights, large bias) would need |b / (s_x s_w)| > 2^31 - 1; the
    smallest weight scale that fits is |b| / (s_x (2^31 - 1)). Other channels are unchanged.
    """
    needed = np.abs(bias.astype(np.float64)) / (float(input_scale) * INT32_MAX)
    scale = weight_params.scale.astype(np.float64)
    if np.all(scale >= needed):
        return weight_params
    grown = np.maximum(scale, needed * 1.0001).astype(np.float32)
    return QParams(grown.reshape(weight_params.scale.shape), weight_params.zero_point, weight_params.axis)


def bias_qparams(input_scale: np.ndarray, weight_params: QParams) -> QParams:
    scale = (weight_params.scale.astype(np.float64) * float(input_scale)).astype(np.float32)
    axis = 0 if weight_params.axis is not None else None
    return QParams(_safe_scale(scale).reshape(weight_params.scale.shape), np.zeros(scale.shape, np.int32), axis)
