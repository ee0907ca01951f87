"""MACs against hand-computed values, and what `summarize` reports."""

from __future__ import annotations

import pytest

from onnxprune import stats
from tiny import Tiny, fresh, rand


def macs_of(g: Tiny, out: str) -> int:
    model = fresh(g.proto(out))
    info = stats.summarize(model)  # runs shape inference
    (layer,) = info["layers"]
    assert info["macs"] == layer["macs"] == stats.total_macs(model)
    return layer["macs"]


@pytest.mark.parametrize(
    "cin, cout, groups, stride, expected",
    [
        (4, 6, 1, 1, 6 * 8 * 8 * (4 * 3 * 3)),  # out C*H*W x (Cin/g * kh * kw)
        (4, 6, 2, 1, 6 * 8 * 8 * (2 * 3 * 3)),  # grouped: each output sees Cin/g channels
        (4, 4, 4, 1, 4 * 8 * 8 * (1 * 3 * 3)),  # depthwise
        (4, 8, 4, 1, 8 * 8 * 8 * (1 * 3 * 3)),  # depthwise, multiplier 2
        (4, 6, 1, 2, 6 * 4 * 4 * (4 * 3 * 3)),  # stride 2: 4x4 outputs
    ],
)
def test_conv(cin, cout, groups, stride, expected):
    g = Tiny({"x": [1, cin, 8, 8]})
    w = g.init("w", rand(cout, cin // groups, 3, 3))
    y = g.op("Conv", ["x", w], pads=[1] * 4, group=groups, strides=[stride] * 2)
    assert macs_of(g, y) == expected


def test_conv_counts_one_sample_of_a_batch():
    g = Tiny({"x": [8, 4, 8, 8]})
    y = g.op("Conv", ["x", g.init("w", rand(6, 4, 3, 3))], pads=[1] * 4)
    assert macs_of(g, y) == 6 * 8 * 8 * 4 * 9


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose(groups):
    # Each of the Cin*H*W inputs is scattered to Cout/g * kh * kw outputs: 4*5*5 * (6/g)*2*2.
    g = Tiny({"x": [1, 4, 5, 5]})
    y = g.op("ConvTranspose", ["x", g.init("w", rand(4, 6 // groups, 2, 2))], strides=[2, 2], group=groups)
    assert macs_of(g, y) == 4 * 5 * 5 * (6 // groups) * 2 * 2


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm(trans_a, trans_b):
    # Batch 3, K = 4, N = 5: one sample is N dot products of length K.
    g = Tiny({"x": [4, 3] if trans_a else [3, 4]})
    w = g.init("w", rand(*((5, 4) if trans_b else (4, 5))))
    y = g.op("Gemm", ["x", w, g.init("c", rand(5))], transA=trans_a, transB=trans_b)
    assert macs_of(g, y) == 5 * 4


@pytest.mark.parametrize(
    "x_shape, expected",
    [([1, 32], 128 * 32), ([2, 16, 32], 16 * 128 * 32), ([32], 128 * 32)],
)
def test_matmul(x_shape, expected):
    g = Tiny({"x": x_shape})
    assert macs_of(g, g.op("MatMul", ["x", g.init("w", rand(32, 128))])) == expected


def test_matmul_of_two_activations():
    # Attention scores: [1, 4, 16, 8] @ [1, 4, 8, 16] -> per sample 4 * 16 * 16 outputs of length 8.
    g = Tiny({"q": [1, 4, 16, 8], "k": [1, 4, 8, 16]})
    assert macs_of(g, g.op("MatMul", ["q", "k"])) == 4 * 16 * 16 * 8


def test_summary_of_a_small_network():
    g = Tiny({"x": ["batch", 3, 8, 8]})
    y = g.op("Relu", [g.op("Conv", ["x", g.init("w", rand(4, 3, 1, 1)), g.init("b", rand(4))], name="conv")])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])])
    out = g.op("Gemm", [y, g.init("fc", rand(2, 4))], name="fc", transB=1)
    info = stats.summarize(fresh(g.proto(out)))
    assert info["inputs"] == [{"name": "x", "dtype": "FLOAT", "shape": ["batch", 3, 8, 8]}]
    assert info["outputs"][0]["shape"] == ["batch", 2]
    assert info["ops"] == {"Conv": 1, "Relu": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    assert info["nodes"] == 5 and info["parameters"] == 12 + 4 + 8
    assert info["weights_bytes"] == 4 * (12 + 4 + 8)
    assert [(layer["node"], layer["macs"]) for layer in info["layers"]] == [("conv", 4 * 64 * 3), ("fc", 2 * 4)]
    assert info["macs"] == 4 * 64 * 3 + 2 * 4
