"""Hypothesis strategies for random *valid* ONNX graphs of the op set onnxprune supports.

Two families, both opset 17 like PyTorch's legacy exporter:

* :func:`conv_graphs` — an image network: a stack of blocks (plain Conv[+BN][+act],
  depthwise / grouped convs, residual blocks with a projection when the channel count
  changes, Concat branches, dense-style Concat, squeeze-and-excitation, pooling,
  per-channel affine Mul/Add) and a head (GlobalAveragePool→Flatten→Gemm,
  Flatten→Gemm/MatMul MLP, or the feature map itself).
* :func:`mlp_graphs` — MatMul/Gemm MLPs on (N, F) or transformer-style (N, T, F) inputs,
  with residual MLP blocks.

With ``noise=True`` the graphs also carry what the clean-up passes remove: Identity,
inference Dropout, constant sub-graphs (a weight computed as ``W * 1`` from a Constant,
the ``Shape→Gather→Concat→Reshape`` flatten torch exports) and unused initializers.

Every strategy yields a :class:`GeneratedGraph` (a ``ModelProto``, sample inputs, the
expected output shapes and the list of blocks, for readable failures). Structure and
sizes are drawn from hypothesis (so failures shrink); weights come from a drawn seed.

    @given(graphgen.graphs())
    def test_something(g):
        model = g.model()          # a fresh onnx_ir.Model each call
        ...run(model, g.feeds)...
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import onnx
import onnx_ir as ir
from hypothesis import strategies as st
from onnx import helper, numpy_helper

OPSET = 17
CONV_BLOCKS = ("conv", "depthwise", "grouped", "residual", "bottleneck", "concat", "dense",
               "se", "pool", "affine")
HEADS = ("gap_gemm", "flatten_gemm", "flatten_mlp", "none")
ACTIVATIONS = ("Relu", "Relu", "Clip6", "Sigmoid", "HardSwish", "LeakyRelu", "Swish", "none")


@dataclasses.dataclass
class GeneratedGraph:
    proto: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    output_shapes: dict[str, tuple[int, ...]]  # for the batch in ``feeds``
    blocks: list[str]

    def model(self) -> ir.Model:
        """A fresh onnx-ir model (passes work in place, so each use gets its own)."""
        return ir.serde.deserialize_model(self.proto)

    def save(self, path) -> None:
        onnx.save(self.proto, str(path))

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        shapes = {k: v.shape for k, v in self.feeds.items()}
        return f"GeneratedGraph(inputs={shapes}, blocks={self.blocks})"


@dataclasses.dataclass(frozen=True)
class _Feature:
    name: str
    shape: tuple[int, ...]  # without the batch dimension


class _Builder:
    """Accumulates nodes and initializers; every method returns the new feature."""

    def __init__(self, seed: int, draw) -> None:
        self.rng = np.random.default_rng(seed)
        self.draw = draw
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.blocks: list[str] = []
        self.noise = False
        self._ids = itertools.count()

    # -- primitives -------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        return f"{base}_{next(self._ids)}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array, order="C"), name))  # keeps 0-d
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs) -> list[str]:
        names = [self.fresh(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=self.fresh(op), **attrs))
        return names

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        return self.node(op, inputs, **attrs)[0]

    def weight(self, base: str, shape: tuple[int, ...], fan_in: int) -> str:
        array = (self.rng.standard_normal(shape) * math.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
        name = self.const(base, array)
        if self.noise and self.draw(st.integers(0, 5)) == 0:
            one = self.op("Constant", [], value=numpy_helper.from_array(np.ones(1, np.float32)))
            name = self.op("Mul", [name, one])  # foldable: W * 1
        return name

    def vector(self, base: str, n: int, lo: float = -0.2, hi: float = 0.2) -> str:
        return self.const(base, self.rng.uniform(lo, hi, n).astype(np.float32))

    # -- layers -----------------------------------------------------------------------
    def conv(self, x: _Feature, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
             bias: bool | None = None) -> _Feature:
        cin, h, w = x.shape
        pad = k // 2
        weight = self.weight("conv_w", (cout, cin // groups, k, k), cin // groups * k * k)
        inputs = [x.name, weight]
        if bias is None:
            bias = self.draw(st.booleans())
        if bias:
            inputs.append(self.vector("conv_b", cout))
        out = self.op("Conv", inputs, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2,
                      group=groups)
        return _Feature(out, (cout, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1))

    def bn(self, x: _Feature) -> _Feature:
        c = x.shape[0]
        params = [self.vector("bn_scale", c, 0.5, 1.5), self.vector("bn_bias", c),
                  self.vector("bn_mean", c), self.vector("bn_var", c, 0.5, 1.5)]
        return _Feature(self.op("BatchNormalization", [x.name, *params], epsilon=1e-5), x.shape)

    def act(self, x: _Feature, kind: str | None = None) -> _Feature:
        kind = kind or self.draw(st.sampled_from(ACTIVATIONS))
        if kind == "none":
            return x
        if kind == "Clip6":
            lo = self.const("clip_min", np.array(0, np.float32))
            hi = self.const("clip_max", np.array(6, np.float32))
            return _Feature(self.op("Clip", [x.name, lo, hi]), x.shape)
        if kind == "Swish":
            return _Feature(self.op("Mul", [x.name, self.op("Sigmoid", [x.name])]), x.shape)
        if kind == "LeakyRelu":
            return _Feature(self.op("LeakyRelu", [x.name], alpha=0.1), x.shape)
        return _Feature(self.op(kind, [x.name]), x.shape)

    def conv_bn_act(self, x: _Feature, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                    act: str | None = None) -> _Feature:
        y = self.conv(x, cout, k, stride, groups)
        if self.draw(st.integers(0, 3)):  # BN most of the time
            y = self.bn(y)
        return self.act(y, act)

    def maybe_noise(self, x: _Feature) -> _Feature:
        if not self.noise or self.draw(st.integers(0, 3)):
            return x
        kind = self.draw(st.sampled_from(("Identity", "Dropout", "unused")))
        if kind == "unused":
            self.const("unused", self.rng.standard_normal(3).astype(np.float32))
            return x
        return _Feature(self.op(kind, [x.name]), x.shape)

    # -- conv blocks (x has shape (C, H, W)) ------------------------------------------
    def channels(self) -> int:
        return self.draw(st.integers(1, self.max_channels))

    def block_conv(self, x: _Feature) -> _Feature:
        k = self.draw(st.sampled_from((1, 3)))
        stride = self.draw(st.sampled_from((1, 1, 2)))
        return self.conv_bn_act(x, self.channels(), k, stride)

    def block_depthwise(self, x: _Feature) -> _Feature:
        c = x.shape[0]
        mult = self.draw(st.sampled_from((1, 1, 2)))
        y = self.conv_bn_act(x, c * mult, 3, self.draw(st.sampled_from((1, 2))), groups=c)
        return self.conv_bn_act(y, self.channels(), 1)  # MobileNet's pointwise conv

    def block_grouped(self, x: _Feature) -> _Feature:
        c = x.shape[0]
        groups = self.draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
        per_group = self.draw(st.integers(1, max(1, self.max_channels // groups)))
        return self.conv_bn_act(x, groups * per_group, 3, 1, groups=groups)

    def _residual(self, x: _Feature, body: _Feature, stride: int = 1) -> _Feature:
        skip = x
        if body.shape != x.shape:  # projection shortcut, as in ResNet
            skip = self.bn(self.conv(x, body.shape[0], 1, stride))
            assert skip.shape == body.shape, (skip.shape, body.shape)
        return self.act(_Feature(self.op("Add", [body.name, skip.name]), body.shape), "Relu")

    def block_residual(self, x: _Feature) -> _Feature:
        cout = self.draw(st.sampled_from((x.shape[0], self.channels())))
        stride = self.draw(st.sampled_from((1, 1, 2)))
        y = self.conv_bn_act(x, self.channels(), 3, stride, act="Relu")
        y = self.bn(self.conv(y, cout, 3))
        return self._residual(x, y, stride)

    def block_bottleneck(self, x: _Feature) -> _Feature:
        mid = self.channels()
        y = self.conv_bn_act(x, mid, 1, act="Relu")
        y = self.conv_bn_act(y, mid, 3, groups=self.draw(st.sampled_from((1, mid))), act="Relu")
        y = self.bn(self.conv(y, x.shape[0], 1))
        return self._residual(x, y)

    def block_concat(self, x: _Feature) -> _Feature:
        branches = [self.conv_bn_act(x, self.channels(), self.draw(st.sampled_from((1, 3))))
                    for _ in range(self.draw(st.integers(2, 3)))]
        c = sum(b.shape[0] for b in branches)
        return _Feature(self.op("Concat", [b.name for b in branches], axis=1), (c, *x.shape[1:]))

    def block_dense(self, x: _Feature) -> _Feature:
        y = self.conv_bn_act(x, self.channels(), 3)
        return _Feature(self.op("Concat", [x.name, y.name], axis=1), (x.shape[0] + y.shape[0], *x.shape[1:]))

    def block_se(self, x: _Feature) -> _Feature:
        c = x.shape[0]
        s = _Feature(self.op("GlobalAveragePool", [x.name]), (c, 1, 1))
        s = self.act(self.conv(s, self.draw(st.integers(1, max(1, c))), 1, bias=True), "Relu")
        s = self.conv(s, c, 1, bias=True)
        gate = self.draw(st.sampled_from(("Sigmoid", "HardSigmoid")))
        return _Feature(self.op("Mul", [x.name, self.op(gate, [s.name])]), x.shape)

    def block_pool(self, x: _Feature) -> _Feature:
        c, h, w = x.shape
        if h >= 2 and w >= 2 and self.draw(st.booleans()):
            op = self.draw(st.sampled_from(("MaxPool", "AveragePool")))
            return _Feature(self.op(op, [x.name], kernel_shape=[2, 2], strides=[2, 2]), (c, h // 2, w // 2))
        return _Feature(self.op("MaxPool", [x.name], kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4), x.shape)

    def block_affine(self, x: _Feature) -> _Feature:
        c = x.shape[0]
        scale = self.const("scale", self.rng.uniform(0.5, 1.5, (c, 1, 1)).astype(np.float32))
        shift = self.const("shift", self.rng.uniform(-0.2, 0.2, (c, 1, 1)).astype(np.float32))
        y = self.op("Add", [self.op("Mul", [x.name, scale]), shift])
        return _Feature(y, x.shape)

    # -- heads / dense layers ---------------------------------------------------------
    def flatten(self, x: _Feature) -> _Feature:
        size = math.prod(x.shape)
        if self.noise and self.draw(st.booleans()):  # torch's x.view(x.size(0), -1)
            shape = self.op("Shape", [x.name])
            batch = self.op("Gather", [shape, self.const("zero", np.array(0, np.int64))], axis=0)
            batch = self.op("Unsqueeze", [batch, self.const("axes", np.array([0], np.int64))])
            target = self.op("Concat", [batch, self.const("minus_one", np.array([-1], np.int64))], axis=0)
            return _Feature(self.op("Reshape", [x.name, target]), (size,))
        return _Feature(self.op("Flatten", [x.name], axis=1), (size,))

    def dense(self, x: _Feature, out: int, kind: str | None = None) -> _Feature:
        """A linear layer on the last axis: Gemm (2-D only) or MatMul(+Add)."""
        fin = x.shape[-1]
        kind = kind or (self.draw(st.sampled_from(("gemm", "gemm_t", "matmul"))) if len(x.shape) == 1 else "matmul")
        if kind == "matmul":
            y = self.op("MatMul", [x.name, self.weight("fc_w", (fin, out), fin)])
            if self.draw(st.integers(0, 3)):
                y = self.op("Add", [y, self.vector("fc_b", out)])
            return _Feature(y, (*x.shape[:-1], out))
        trans = kind == "gemm_t"  # torch.nn.Linear exports W as (out, in) with transB=1
        w = self.weight("fc_w", (out, fin) if trans else (fin, out), fin)
        inputs = [x.name, w] + ([self.vector("fc_b", out)] if self.draw(st.integers(0, 3)) else [])
        return _Feature(self.op("Gemm", inputs, transB=int(trans)), (out,))

    def layernorm(self, x: _Feature) -> _Feature:
        f = x.shape[-1]
        params = [self.vector("ln_scale", f, 0.5, 1.5), self.vector("ln_bias", f)]
        return _Feature(self.op("LayerNormalization", [x.name, *params], axis=-1), x.shape)


def _finish(b: _Builder, x0: _Feature, outputs: list[_Feature], batch: int, dynamic: bool,
            name: str) -> GeneratedGraph:
    dims = ["N" if dynamic else batch]
    inputs = [helper.make_tensor_value_info(x0.name, onnx.TensorProto.FLOAT, dims + list(x0.shape))]
    outs, shapes = [], {}
    for i, feature in enumerate(outputs):
        out_name = "output" if i == 0 else f"output{i}"
        b.nodes.append(helper.make_node("Identity", [feature.name], [out_name], name=f"out_{i}"))
        outs.append(helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, dims + list(feature.shape)))
        shapes[out_name] = (batch, *feature.shape)
    graph = helper.make_graph(b.nodes, name, inputs, outs, b.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="graphgen")
    proto.ir_version = 8
    feeds = {x0.name: b.rng.standard_normal((batch, *x0.shape)).astype(np.float32)}
    return GeneratedGraph(proto, feeds, shapes, b.blocks)


@st.composite
def conv_graphs(draw, *, max_blocks: int = 5, max_channels: int = 12, max_size: int = 9,
                blocks: tuple[str, ...] = CONV_BLOCKS, heads: tuple[str, ...] = HEADS,
                noise: bool = False, dynamic_batch: bool | None = None) -> GeneratedGraph:
    """A random image network of ``blocks`` with one of ``heads`` (see the module doc)."""
    b = _Builder(draw(st.integers(0, 2**32 - 1)), draw)
    b.noise, b.max_channels = noise, max_channels
    dynamic = draw(st.booleans()) if dynamic_batch is None else dynamic_batch
    batch = 2 if dynamic else draw(st.integers(1, 2))
    x0 = _Feature("input", (draw(st.integers(1, max_channels)), draw(st.integers(1, max_size)),
                            draw(st.integers(1, max_size))))
    x, extra = x0, []
    for _ in range(draw(st.integers(1, max_blocks))):
        kind = draw(st.sampled_from(blocks))
        b.blocks.append(kind)
        x = b.maybe_noise(getattr(b, "block_" + kind)(x))
        if draw(st.integers(0, 9)) == 0:
            extra.append(x)  # an intermediate feature that is also a graph output
    head = draw(st.sampled_from(heads))
    b.blocks.append(head)
    if head == "gap_gemm":
        x = b.flatten(_Feature(b.op("GlobalAveragePool", [x.name]), (x.shape[0], 1, 1)))
        x = b.dense(x, draw(st.integers(1, 10)))
    elif head in ("flatten_gemm", "flatten_mlp"):
        x = b.flatten(x)
        if head == "flatten_mlp":
            x = b.act(b.dense(x, draw(st.integers(1, 2 * max_channels))), "Relu")
        x = b.dense(x, draw(st.integers(1, 10)))
    return _finish(b, x0, [x, *extra], batch, dynamic, "conv_graph")


@st.composite
def mlp_graphs(draw, *, max_layers: int = 4, max_features: int = 24, noise: bool = False,
               dynamic_batch: bool | None = None) -> GeneratedGraph:
    """A random MatMul/Gemm MLP on (N, F), or transformer-style MLP blocks on (N, T, F)."""
    b = _Builder(draw(st.integers(0, 2**32 - 1)), draw)
    b.noise, b.max_channels = noise, max_features
    dynamic = draw(st.booleans()) if dynamic_batch is None else dynamic_batch
    batch = 2 if dynamic else draw(st.integers(1, 2))
    sequence = draw(st.booleans())
    features = draw(st.integers(1, max_features))
    x0 = _Feature("input", (draw(st.integers(1, 6)), features) if sequence else (features,))
    x = x0
    for _ in range(draw(st.integers(1, max_layers))):
        kind = draw(st.sampled_from(("linear", "residual_mlp")))
        b.blocks.append(kind)
        if kind == "linear":
            x = b.dense(x, draw(st.integers(1, max_features)))
            if len(x.shape) == 1 and draw(st.integers(0, 2)) == 0:
                x = b.bn(x)  # BatchNorm1d after a Linear layer
            x = b.act(x)
        else:  # transformer MLP: x + W2 act(W1 LN(x))
            h = b.layernorm(x) if draw(st.booleans()) else x
            h = b.act(b.dense(h, draw(st.integers(1, 2 * max_features))), "Relu")
            h = b.dense(h, x.shape[-1], "matmul")
            x = _Feature(b.op("Add", [x.name, h.name]), x.shape)
        x = b.maybe_noise(x)
    return _finish(b, x0, [x], batch, dynamic, "mlp_graph")


def graphs(*, noise: bool = False, **kwargs) -> st.SearchStrategy[GeneratedGraph]:
    """Conv networks (most of the time) or MLPs."""
    return st.one_of(conv_graphs(noise=noise, **kwargs), mlp_graphs(noise=noise))
