"""Dependency analysis: groups, their slots and the reasons groups are declined.

Hand-built graphs pin each rule down (the ``Net`` builder is shared with the rewrite tests);
the zoo architectures are covered in ``test_prune_architectures.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.passes.prune.analysis import analyze
from onnxprune.passes.prune.group import Group, Role


class Net:
    """A tiny ONNX graph builder (opset 17, NCHW float32, seeded random weights)."""

    def __init__(self, shape=(1, 8, 6, 6), seed: int = 0, opset: int = 17) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.opset = [], [], opset
        self.shape = shape
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, array, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs, outputs: int = 1, name: str | None = None, **attrs):
        name = name or self.name(op_type)
        outs = [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x, cin, cout, k=1, group=1, bias=True, pad=None, name=None):
        w = self.const(self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) * 0.5, "w")
        inputs = [x, w] + ([self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1, "b")] if bias else [])
        p = k // 2 if pad is None else pad
        return self.op("Conv", inputs, name=name, kernel_shape=[k, k], pads=[p] * 4, group=group)

    def bn(self, x, c, name=None):
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), 0.2 * r.standard_normal(c), 0.2 * r.standard_normal(c), r.uniform(0.5, 2, c)]
        return self.op("BatchNormalization", [x, *(self.const(p.astype(np.float32), "bn") for p in params)], name=name)

    def gemm(self, x, cin, cout, name=None):
        w = self.const(self.rng.standard_normal((cout, cin)).astype(np.float32) * 0.3, "fc")
        b = self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1, "fcb")
        return self.op("Gemm", [x, w, b], name=name, transB=1)

    def model(self, outputs, input_shape=None) -> ir.Model:
        shape = input_shape or self.shape
        graph = helper.make_graph(
            self.nodes, "net",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits,
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        onnx.checker.check_model(proto, full_check=True)
        return ir.serde.deserialize_model(proto)


def by_origin(groups: list[Group], name: str) -> Group:
    return next(g for g in groups if g.origin is not None and g.origin.name == name)


def slots(group: Group, role: Role) -> set[tuple[str, str, int]]:
    return {(s.node.op_type, s.value.name, s.axis) for s in group.by_role(role)}


def conv_bn_relu_conv() -> ir.Model:
    n = Net()
    y = n.op("Relu", [n.bn(n.conv("input", 8, 12, k=3, name="c1"), 12)])
    return n.model([n.conv(y, 12, 4, name="c2")])


def test_conv_bn_relu_conv_group_has_every_slot():
    model = conv_bn_relu_conv()
    groups = analyze(model)
    g = by_origin(groups, "c1")
    assert g.prunable and g.size == 12 and g.name == "c1"
    assert {s.axis for s in g.by_role(Role.PRODUCER)} == {0} and len(g.by_role(Role.PRODUCER)) == 2
    assert [s.bias for s in g.by_role(Role.PRODUCER)].count(True) == 1
    assert len(g.by_role(Role.PARAM)) == 4  # BN scale, bias, mean, var
    assert slots(g, Role.CONSUMER) == {("Conv", model.graph.node("c2").inputs[1].name, 1)}
    assert len(g.by_role(Role.ACTIVATION)) == 3 and all(s.axis == 1 for s in g.by_role(Role.ACTIVATION))
    out = by_origin(groups, "c2")
    assert not out.prunable and "graph output" in out.declined


def test_residual_add_ties_both_producers():
    n = Net()
    a = n.bn(n.conv("input", 8, 8, name="a"), 8)
    b = n.conv(n.op("Relu", [n.conv("input", 8, 8, name="b0")]), 8, 8, name="b")
    s = n.op("Relu", [n.op("Add", [a, b])])
    groups = analyze(n.model([n.conv(s, 8, 2, name="head")]))
    g = by_origin(groups, "a")
    assert g.prunable
    assert {s.node.name for s in g.by_role(Role.PRODUCER)} == {"a", "b"}
    assert not any(x.origin.name == "b" for x in groups)  # b is covered, no second group


def test_graph_input_channels_decline():
    n = Net()
    s = n.op("Add", ["input", n.conv("input", 8, 8, name="a")])
    g = by_origin(analyze(n.model([n.conv(s, 8, 2)])), "a")
    assert "graph input 'input'" in g.declined


def test_concat_offsets_and_consumer_slots():
    n = Net()
    a, b = n.conv("input", 8, 5, name="a"), n.conv("input", 8, 3, name="b")
    cat = n.op("Concat", [a, b], axis=1)
    groups = analyze(n.model([n.conv(n.bn(cat, 8), 8, 2, name="fuse")]))
    ga, gb = by_origin(groups, "a"), by_origin(groups, "b")
    assert ga.prunable and gb.prunable
    assert {s.offset for s in gb.by_role(Role.PARAM)} == {5}
    assert [s.offset for s in gb.by_role(Role.CONSUMER)] == [5]
    assert [s.offset for s in ga.by_role(Role.CONSUMER)] == [0]


def test_split_of_a_group_covers_parts():
    n = Net()
    x = n.conv("input", 8, 6, name="a")
    p, q = n.op("Split", [x, n.const(np.array([2, 4]))], outputs=2, axis=1)
    out = n.op("Add", [n.conv(p, 2, 2, name="cp"), n.conv(q, 4, 2, name="cq")])
    g = by_origin(analyze(n.model([out])), "a")
    assert g.prunable
    ranges = sorted((s.lo, s.hi) for s in g.by_role(Role.CONSUMER))
    assert ranges == [(0, 2), (2, 6)]


def test_flatten_into_gemm_gives_blocks():
    n = Net(shape=(1, 3, 4, 4))
    x = n.op("MaxPool", [n.op("Relu", [n.conv("input", 3, 6, k=3, name="a")])], kernel_shape=[2, 2], strides=[2, 2])
    g = by_origin(analyze(n.model([n.gemm(n.op("Flatten", [x], axis=1), 24, 5, name="fc")])), "a")
    assert g.prunable
    (consumer,) = g.by_role(Role.CONSUMER)
    assert (consumer.node.name, consumer.axis, consumer.block) == ("fc", 1, 4)


def test_depthwise_is_carried_and_grouped_records_divisions():
    n = Net()
    x = n.op("Relu", [n.conv("input", 8, 8, name="expand")])
    dw = n.conv(x, 8, 8, k=3, group=8, name="dw")
    gc = n.conv(dw, 8, 8, k=3, group=4, name="grouped")
    groups = analyze(n.model([n.conv(gc, 8, 2, name="head")]))
    g = by_origin(groups, "expand")
    assert g.prunable and g.divisions == 4
    assert {(s.node.name, s.role) for s in g.slots if s.node.name == "dw" and s.role is not Role.ACTIVATION} == {
        ("dw", Role.PARAM)}
    (grouped,) = g.by_role(Role.CONSUMER)
    assert grouped.groups == 4 and grouped.removed_count(np.array([0, 2, 4, 6]), 8) == 1
    out = by_origin(groups, "grouped")
    assert out.prunable and out.divisions == 4


def test_squeeze_excitation_groups():
    n = Net()
    x = n.op("Relu", [n.conv("input", 8, 8, name="main")])
    s = n.op("Relu", [n.conv(n.op("GlobalAveragePool", [x]), 8, 2, name="squeeze")])
    gate = n.op("HardSigmoid", [n.conv(s, 2, 8, name="excite")])
    groups = analyze(n.model([n.conv(n.op("Mul", [x, gate]), 8, 2, name="head")]))
    main = by_origin(groups, "main")
    assert main.prunable
    assert {s.node.name for s in main.by_role(Role.PRODUCER)} == {"main", "excite"}
    assert {s.node.name for s in main.by_role(Role.CONSUMER)} == {"squeeze", "head"}
    hidden = by_origin(groups, "squeeze")
    assert hidden.prunable and hidden.size == 2
    assert {s.node.name for s in hidden.by_role(Role.CONSUMER)} == {"excite"}


def test_swish_and_gelu_decomposition_are_carried():
    n = Net(shape=(1, 5, 8))
    w1 = n.const(n.rng.standard_normal((8, 16)).astype(np.float32), "w1")
    h = n.op("MatMul", ["input", w1], name="fc1")
    h = n.op("Mul", [h, n.op("Sigmoid", [h])])  # swish
    erf = n.op("Erf", [n.op("Div", [h, n.const(np.float32(1.4142135))])])
    h = n.op("Mul", [n.op("Mul", [h, n.op("Add", [erf, n.const(np.float32(1.0))])]), n.const(np.float32(0.5))])
    w2 = n.const(n.rng.standard_normal((16, 4)).astype(np.float32), "w2")
    g = by_origin(analyze(n.model([n.op("MatMul", [h, w2], name="fc2")], input_shape=(1, 5, 8))), "fc1")
    assert g.prunable and g.size == 16
    assert slots(g, Role.CONSUMER) == {("MatMul", w2, 0)}
    assert {s.axis for s in g.by_role(Role.ACTIVATION)} == {2}


def test_transposed_linear_weight_is_resolved():
    n = Net(shape=(1, 5, 8))
    w1, w2 = n.const(np.ones((16, 8), np.float32), "w1"), n.const(np.ones((4, 16), np.float32), "w2")
    h = n.op("Relu", [n.op("MatMul", ["input", n.op("Transpose", [w1], perm=[1, 0])], name="fc1")])
    g = by_origin(analyze(n.model([n.op("MatMul", [h, n.op("Transpose", [w2], perm=[1, 0])])])), "fc1")
    assert g.prunable and g.name == "fc1"
    assert slots(g, Role.PRODUCER) == {("Transpose", w1, 0)}  # W1[16, 8]: rows are the channels
    assert slots(g, Role.CONSUMER) == {("Transpose", w2, 1)}


def test_channel_shuffle_is_declined_with_reason():
    n = Net()
    x = n.conv("input", 8, 8, name="a")
    r = n.op("Reshape", [x, n.const(np.array([1, 2, 4, 6, 6]))])
    t = n.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    y = n.op("Reshape", [t, n.const(np.array([1, 8, 6, 6]))])
    g = by_origin(analyze(n.model([n.conv(y, 8, 2)])), "a")
    assert not g.prunable and "channel shuffle" in g.declined and "Reshape" in g.declined


def test_attention_heads_reshape_is_declined():
    n = Net(shape=(1, 5, 8))
    q = n.op("MatMul", ["input", n.const(np.ones((8, 8), np.float32))], name="q")
    heads = n.op("Reshape", [q, n.const(np.array([1, 5, 2, 4]))])
    g = by_origin(analyze(n.model([heads])), "q")
    assert "splits or merges the channel axis" in g.declined


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda n, x: n.op("Softmax", [x], axis=1), "normalises across the channels"),
        (lambda n, x: n.op("LRN", [x], size=3), "consumed by LRN"),
        (lambda n, x: n.op("ReduceMean", [x], axes=[1]), "reduces the channel axis"),
        (lambda n, x: n.op("Pad", [x, n.const(np.array([0, 1, 0, 0, 0, 1, 0, 0]))]), "pads the channel axis"),
        (lambda n, x: n.op("Gather", [x, n.const(np.array([0, 2]))], axis=1), "consumed by Gather"),
    ],
)
def test_unsupported_consumers_decline(build, reason):
    n = Net()
    x = n.op("Relu", [n.conv("input", 8, 6, name="a")])
    g = by_origin(analyze(n.model([n.op("Relu", [build(n, x)])])), "a")
    assert not g.prunable and reason in g.declined


def test_shape_reading_only_the_batch_is_fine_but_channels_are_not():
    n = Net()
    x = n.op("Relu", [n.conv("input", 8, 4, name="a")])
    batch = n.op("Gather", [n.op("Shape", [x]), n.const(np.array([0]))], axis=0)
    flat = n.op("Reshape", [x, n.op("Concat", [batch, n.const(np.array([-1]))], axis=0)])
    ok = by_origin(analyze(n.model([n.gemm(flat, 144, 3)])), "a")
    assert ok.prunable
    n = Net()
    x = n.op("Relu", [n.conv("input", 8, 4, name="a")])
    count = n.op("Gather", [n.op("Shape", [x]), n.const(np.array([1]))], axis=0)
    g = by_origin(analyze(n.model([n.conv(x, 4, 2), n.op("Cast", [count], to=1)])), "a")
    assert "reads the channel count" in g.declined


def test_shared_constants_through_identity_are_constants():
    """The legacy exporter shares equal BN statistics between layers through Identity."""
    n = Net()
    zeros = n.const(np.zeros(8, np.float32), "mean")
    bns = []
    for name in ("a", "b"):
        mean = n.op("Identity", [zeros])
        ones, zeros = n.const(np.ones(8, np.float32)), n.const(np.zeros(8, np.float32))
        params = [ones, zeros, mean, n.const(np.ones(8, np.float32))]
        bns.append(n.op("BatchNormalization", [n.conv("input", 8, 8, name=name), *params]))
    out = n.conv(n.op("Concat", bns, axis=1), 16, 2)
    groups = analyze(n.model([out]))
    assert by_origin(groups, "a").prunable and by_origin(groups, "b").prunable


def test_every_group_is_either_prunable_or_has_a_reason_and_ids_are_positions():
    groups = analyze(conv_bn_relu_conv())
    assert [g.id for g in groups] == list(range(len(groups)))
    assert all(g.prunable or g.declined for g in groups)


def test_analysis_does_not_change_the_model():
    model = conv_bn_relu_conv()
    before = ir.to_proto(model).SerializeToString()
    analyze(model)
    assert ir.to_proto(model).SerializeToString() == before


def test_layers_with_computed_weights_are_reported_declined():
    n = Net()
    w = n.op("Mul", [n.const(np.ones((6, 8, 1, 1), np.float32)), n.const(np.float32(1.0))])
    x = n.op("Conv", ["input", w], name="computed")
    up = n.op("ConvTranspose", [n.op("Relu", [x]), n.const(np.ones((6, 2, 2, 2), np.float32))],
              name="up", group=2, strides=[2, 2], kernel_shape=[2, 2])
    groups = analyze(n.model([n.conv(up, 4, 2)]))
    assert "Conv 'computed' has weights computed at runtime" in by_origin(groups, "computed").declined
    assert "grouped ConvTranspose 'up' is not supported" in by_origin(groups, "up").declined
