"""apply_plan: slicing, the inputs that state channel counts, folding, plan checks.

The oracle used here and in the architecture/property tests: removing channels is the
same as zeroing the consumer weights that read them (``masked``), as long as the removed
channels are not constant (then folding adds their contribution back, and the oracle is
the unpruned model itself). A group that missed a tensor fails it: a wrong shape makes the
model invalid, a wrong slice changes the outputs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxprune import runtime
from onnxprune.errors import UsageError
from onnxprune.graphutils import attr, const_array, param_count, set_initializer
from onnxprune.passes.prune.analysis import analyze
from onnxprune.passes.prune.group import Group, PrunePlan, Role
from onnxprune.passes.prune.rewrite import apply_plan
from onnxprune.validate import check_model
from test_prune_analysis import Net, by_origin, conv_bn_relu_conv


def copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.to_proto(model))


def masked(model: ir.Model, plan: PrunePlan) -> ir.Model:
    """A copy of ``model`` whose consumers ignore the channels ``plan`` removes."""
    model = copy(model)
    groups = {g.id: g for g in analyze(model)}
    for gid in plan.keep:
        group = groups[gid]
        removed = plan.removed(group)
        for slot in group.by_role(Role.CONSUMER):
            array = const_array(slot.value).copy()
            view = np.moveaxis(array, slot.axis, 0)
            if slot.groups == 1:
                view[slot.indices(removed, group.size)] = 0
            else:  # grouped Conv: division j's channels only feed row block j
                width, rows = array.shape[1], array.shape[0] // slot.groups
                for position in slot.positions(removed, group.size):
                    j = position // width
                    view[position % width, j * rows:(j + 1) * rows] = 0
            set_initializer(slot.value, array)
    return model


def masked_by_hand(model: ir.Model, consumers: dict[str, int], removed: np.ndarray) -> ir.Model:
    """The oracle as the test states it, without the analysis: a copy of ``model`` in which the
    weight (input 1) of each named consumer node ignores channels ``removed`` along ``axis``."""
    model = copy(model)
    for node_name, axis in consumers.items():
        weight = model.graph.node(node_name).inputs[1]
        array = const_array(weight).copy()
        np.moveaxis(array, axis, 0)[removed] = 0
        set_initializer(weight, array)
    return model


def outputs(model, feeds) -> list[np.ndarray]:
    return list(runtime.run(model, feeds).values())


def assert_close(got, want, tol=1e-5):
    assert len(got) == len(want), f"{len(got)} outputs, expected {len(want)}"
    for g, w in zip(got, want):
        assert g.shape == w.shape
        scale = max(1.0, float(np.abs(w).max()))
        assert float(np.abs(g - w).max()) <= tol * scale


def random_plan(groups: list[Group], rng: np.random.Generator, share: float = 0.5) -> PrunePlan:
    """Remove a random ``share`` of every prunable group (equal per grouped-conv division)."""
    keep = {}
    for g in groups:
        per = g.size // g.divisions
        count = int(per * share)
        if g.prunable and 0 < count < per:
            keep[g.id] = np.sort(np.concatenate(
                [rng.choice(per, per - count, replace=False) + j * per for j in range(g.divisions)]))
    return PrunePlan(keep)


def check_pruned(model: ir.Model, plan_share: float = 0.5, seed: int = 0, tol: float = 1e-5) -> list[str]:
    """Prune a random plan and compare with the masked model; returns the change lines."""
    feeds = runtime.random_inputs(model, seed=seed)
    groups = analyze(model)
    plan = random_plan(groups, np.random.default_rng(seed), plan_share)
    want = outputs(masked(model, plan), feeds)
    before = param_count(model)
    lines = apply_plan(model, groups, plan)
    check_model(model, full=True)
    assert_close(outputs(model, feeds), want, tol)
    assert (param_count(model) < before) == bool(plan.keep)
    return lines


def test_empty_plan_changes_nothing():
    model = conv_bn_relu_conv()
    before = ir.to_proto(model).SerializeToString()
    groups = analyze(model)
    full = {g.id: np.arange(g.size) for g in groups}
    assert apply_plan(model, groups, PrunePlan({})) == []
    assert apply_plan(model, groups, PrunePlan(full)) == []
    assert ir.to_proto(model).SerializeToString() == before


def test_prunes_and_reanalysis_sees_the_kept_sizes():
    model = conv_bn_relu_conv()
    groups = analyze(model)
    g = by_origin(groups, "c1")
    lines = apply_plan(model, groups, PrunePlan({g.id: np.array([0, 3, 4, 7, 11])}))
    assert lines == ["c1: 12 -> 5 channels (7 tensors sliced)"]
    assert model.graph.node("c2").inputs[1].shape.dims[1] == 5
    again = analyze(model)
    assert by_origin(again, "c1").size == 5
    assert apply_plan(model, again, PrunePlan({})) == []  # idempotent: nothing more to do


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_plan_matches_masked_consumers(seed):
    """c1 -> BN -> Relu -> c2: removing c1's channels equals c2 ignoring them (oracle by hand)."""
    model = conv_bn_relu_conv()
    feeds = runtime.random_inputs(model, seed=seed)
    rng = np.random.default_rng(seed)
    removed = np.sort(rng.choice(12, 5, replace=False))
    want = outputs(masked_by_hand(model, {"c2": 1}, removed), feeds)
    groups = analyze(model)
    group = by_origin(groups, "c1")
    plan = PrunePlan({group.id: np.setdiff1d(np.arange(12), removed)})
    # the analysis-based oracle used for whole architectures agrees with the hand-made one
    assert_close(outputs(masked(model, plan), feeds), want)
    apply_plan(model, groups, plan)
    check_model(model, full=True)
    assert model.graph.node("c2").inputs[1].shape.dims[1] == 7
    assert_close(outputs(model, feeds), want)


def test_residual_plan_matches_masked_consumers():
    """Both producers of a residual Add lose the same channels; the head ignores them."""
    n = Net()
    a = n.bn(n.conv("input", 8, 8, name="a"), 8)
    b = n.conv(n.op("Relu", [n.conv("input", 8, 8, name="b0")]), 8, 8, name="b")
    model = n.model([n.conv(n.op("Relu", [n.op("Add", [a, b])]), 8, 2, name="head")])
    feeds = runtime.random_inputs(model, seed=3)
    removed = np.array([1, 2, 6])
    want = outputs(masked_by_hand(model, {"head": 1}, removed), feeds)
    groups = analyze(model)
    group = next(g for g in groups if g.prunable and any(s.node.name == "head" for s in g.by_role(Role.CONSUMER)))
    apply_plan(model, groups, PrunePlan({group.id: np.setdiff1d(np.arange(8), removed)}))
    assert_close(outputs(model, feeds), want)


def test_assert_close_refuses_missing_outputs():
    with pytest.raises(AssertionError, match="1 outputs, expected 2"):
        assert_close([np.zeros(2)], [np.zeros(2), np.zeros(2)])


@pytest.mark.parametrize(
    "keep, message",
    [
        ({99: [0]}, "did not find"),
        ({0: []}, "removes every channel"),
        ({0: [3, 1]}, "sorted, unique"),
        ({0: [0, 12]}, "sorted, unique"),
        ({0: [0.5]}, "1-D list of indices"),
        ({1: [0]}, "cannot be pruned: channels reach graph output"),
    ],
)
def test_bad_plans_are_usage_errors(keep, message):
    model = conv_bn_relu_conv()
    with pytest.raises(UsageError, match=message):
        apply_plan(model, analyze(model), PrunePlan({k: np.array(v) for k, v in keep.items()}))


def test_grouped_conv_plan_must_keep_equal_counts_per_division():
    n = Net()
    x = n.op("Relu", [n.conv("input", 8, 8, name="a")])
    model = n.model([n.conv(n.conv(x, 8, 8, k=3, group=4, name="g"), 8, 2)])
    groups = analyze(model)
    g = by_origin(groups, "a")
    with pytest.raises(UsageError, match="as many channels in each of its 4 divisions"):
        apply_plan(model, groups, PrunePlan({g.id: np.array([0, 1, 2, 4, 6])}))
    check_pruned(model)


def test_stale_or_foreign_groups_are_refused():
    model = conv_bn_relu_conv()
    groups = analyze(model)
    plan = PrunePlan({by_origin(groups, "c1").id: np.arange(6)})
    with pytest.raises(UsageError, match="belongs to another model"):
        apply_plan(conv_bn_relu_conv(), groups, plan)
    apply_plan(model, groups, plan)
    with pytest.raises(UsageError, match="pruned already"):
        apply_plan(model, groups, PrunePlan({by_origin(groups, "c1").id: np.arange(3)}))


def test_channel_constants_are_checked():
    model = conv_bn_relu_conv()
    groups = analyze(model)
    with pytest.raises(UsageError, match="one value per channel"):
        apply_plan(model, groups, PrunePlan({0: np.array([0])}), channel_constants={0: np.zeros(3)})


def test_shape_stating_inputs_are_updated():
    """Reshape targets (constant and runtime-built), Split sizes, Slice bounds, Resize sizes,
    depthwise ``group``: each would make the model invalid if left stale."""
    n = Net(shape=(1, 4, 4, 4))
    x = n.op("Relu", [n.conv("input", 4, 12, name="a")])
    dw = n.conv(x, 12, 12, k=3, group=12, name="dw")
    up = n.op("Resize", [dw, "", "", n.const(np.array([1, 12, 8, 8]))], mode="nearest")
    pooled = n.op("MaxPool", [up], kernel_shape=[2, 2], strides=[2, 2])
    p, q = n.op("Split", [pooled, n.const(np.array([5, 7]))], outputs=2, axis=1)
    r = n.op("Slice", [q, n.const(np.array([2])), n.const(np.array([7])), n.const(np.array([1]))])
    flat = n.op("Reshape", [p, n.const(np.array([1, 80]))])
    batch = n.op("Gather", [n.op("Shape", [r]), n.const(np.array([0]))], axis=0)
    flat_r = n.op("Reshape", [r, n.op("Concat", [batch, n.const(np.array([80]))], axis=0)])
    out = n.op("Add", [n.gemm(flat, 80, 3), n.gemm(flat_r, 80, 3)])
    model = n.model([out])
    check_pruned(model, plan_share=0.4)
    dw_node = model.graph.node("dw")
    assert attr(dw_node, "group") == dw_node.inputs[1].shape.dims[0] < 12


def test_shared_initializer_is_copied_when_cut_differently():
    n = Net()
    w = n.const(n.rng.standard_normal((6, 8, 1, 1)).astype(np.float32), "shared")
    a, b = n.op("Conv", ["input", w], name="a"), n.op("Conv", ["input", w], name="b")
    out = n.op("Add", [n.conv(n.op("Relu", [a]), 6, 2), n.conv(n.op("Relu", [b]), 6, 2)])
    model = n.model([out])
    check_pruned(model)
    assert model.graph.node("a").inputs[1] is not model.graph.node("b").inputs[1]


def fold_net(k: int, pad: int) -> tuple[ir.Model, Group]:
    """conv a -> BN -> Relu -> conv (k x k, pad) -> BN: channels of ``a`` zeroed below."""
    n = Net()
    x = n.op("Relu", [n.bn(n.conv("input", 8, 6, name="a"), 6)])
    model = n.model([n.bn(n.conv(x, 6, 4, k=k, pad=pad, bias=False, name="consumer"), 4)])
    return model, by_origin(analyze(model), "a")


def zero_filters(group: Group, channels: np.ndarray, bn_shift: float | None = None) -> None:
    """Zero the channels' filters (their bias stays: they become constants), optionally
    setting the BatchNorm shift so that the constant is positive after a Relu."""
    for slot in group.by_role(Role.PRODUCER):
        if not slot.bias:
            array = const_array(slot.value).copy()
            np.moveaxis(array, slot.axis, 0)[slot.indices(channels, group.size)] = 0
            set_initializer(slot.value, array)
    for slot in group.by_role(Role.PARAM):
        if bn_shift is not None and slot.node.op_type == "BatchNormalization" and slot.value is slot.node.inputs[2]:
            array = const_array(slot.value).copy()
            array[slot.indices(channels, group.size)] = bn_shift
            set_initializer(slot.value, array)


def test_constant_channels_fold_exactly_into_an_unpadded_consumer():
    model, group = fold_net(k=1, pad=0)
    zero_filters(group, np.array([1, 4]), bn_shift=1.0)
    feeds = runtime.random_inputs(model)
    want = outputs(model, feeds)
    groups = analyze(model)
    (line,) = apply_plan(model, groups, PrunePlan({group.id: np.array([0, 2, 3, 5])}))
    assert "2 constant channels folded exactly" in line
    assert model.graph.node("consumer").inputs[2] is not None  # a bias was created
    assert_close(outputs(model, feeds), want)


def test_padded_consumer_folds_only_from_calibration_means():
    model, group = fold_net(k=3, pad=1)
    zero_filters(group, np.array([1, 4]), bn_shift=1.0)
    feeds = runtime.random_inputs(model)
    want = outputs(model, feeds)[0]
    plan = PrunePlan({group.id: np.array([0, 2, 3, 5])})
    plain = copy(model)
    (line,) = apply_plan(plain, analyze(plain), plan)
    assert "2 constant channels not folded (padded consumer)" in line
    consumer_input = model.graph.node("consumer").inputs[0]
    model.graph.outputs.append(consumer_input)
    means = outputs(model, feeds)[1].mean(axis=(0, 2, 3))
    model.graph.outputs.pop()
    (line,) = apply_plan(model, analyze(model), plan, channel_constants={group.id: means})
    assert "2 folded approximately (calibration means)" in line
    unfolded_error = np.abs(outputs(plain, feeds)[0] - want)
    folded_error = np.abs(outputs(model, feeds)[0] - want)
    assert folded_error.max() < unfolded_error.max()
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # exact away from the padding
    assert folded_error[interior].max() < 1e-5 < unfolded_error[interior].max()


def test_fold_into_matmul_without_bias_inserts_an_add_and_keeps_the_output_name():
    n = Net(shape=(1, 5, 8))
    h = n.op("Relu", [n.op("MatMul", ["input", n.const(n.rng.standard_normal((8, 6)).astype(np.float32))], name="fc1")])
    h = n.op("Add", [h, n.const(np.linspace(0.1, 0.6, 6).astype(np.float32))])
    out = n.op("MatMul", [h, n.const(n.rng.standard_normal((6, 3)).astype(np.float32))], name="fc2")
    model = n.model([out])
    group = by_origin(analyze(model), "fc1")
    zero_filters(group, np.array([0, 5]))
    feeds = runtime.random_inputs(model)
    want = outputs(model, feeds)
    (line,) = apply_plan(model, analyze(model), PrunePlan({group.id: np.arange(1, 5)}))
    assert "2 constant channels folded exactly" in line
    assert [v.name for v in model.graph.outputs] == [out]
    assert model.graph.outputs[0].producer().op_type == "Add"
    check_model(model, full=True)
    assert_close(outputs(model, feeds), want)


def test_fold_into_gemm_after_global_pool_and_flatten():
    n = Net()
    x = n.op("Relu", [n.bn(n.conv("input", 8, 6, k=3, name="a"), 6)])
    flat = n.op("Flatten", [n.op("GlobalAveragePool", [x])])
    w = n.const(n.rng.standard_normal((6, 3)).astype(np.float32))
    model = n.model([n.op("Gemm", [flat, w, n.const(np.zeros(3, np.float32))], name="fc", beta=0.5, alpha=2.0)])
    group = by_origin(analyze(model), "a")
    zero_filters(group, np.array([2, 3]), bn_shift=1.0)
    feeds = runtime.random_inputs(model)
    want = outputs(model, feeds)
    (line,) = apply_plan(model, analyze(model), PrunePlan({group.id: np.array([0, 1, 4, 5])}))
    assert "2 constant channels folded exactly" in line
    assert_close(outputs(model, feeds), want)


def test_runtime_flatten_with_dynamic_batch():
    """torch's ``x.view(x.size(0), -1)`` with a dynamic batch: the -1 is resolved from the
    input dims the target copies, and it needs no update after pruning."""
    n = Net(shape=("N", 8, 4, 4))
    x = n.op("Relu", [n.conv("input", 8, 6, k=3, name="a")])
    batch = n.op("Unsqueeze", [n.op("Gather", [n.op("Shape", [x]), n.const(np.array(0))], axis=0),
                               n.const(np.array([0]))])
    flat = n.op("Reshape", [x, n.op("Concat", [batch, n.const(np.array([-1]))], axis=0)])
    model = n.model([n.gemm(flat, 96, 3, name="fc")])
    group = by_origin(analyze(model), "a")
    assert group.prunable and group.by_role(Role.CONSUMER)[0].block == 16
    check_pruned(model)


def test_carried_ops_chain():
    """Per-channel params (PRelu, InstanceNorm), spatial Pad/pooling/Softmax, Cast, Dropout,
    a Transpose to channels-last into a MatMul, Reduce/Unsqueeze/Squeeze into a Gemm."""
    n = Net(shape=(1, 8, 5, 5))
    x = n.op("PRelu", [n.conv("input", 8, 6, k=3, name="a"), n.const(np.linspace(0.1, 0.3, 6).reshape(6, 1, 1)
                                                                      .astype(np.float32))])
    x = n.op("InstanceNormalization", [x, n.const(np.linspace(1, 2, 6).astype(np.float32)),
                                       n.const(np.linspace(-1, 1, 6).astype(np.float32))])
    x = n.op("Pad", [x, n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))], mode="reflect")
    x = n.op("AveragePool", [x], kernel_shape=[3, 3])
    x = n.op("Dropout", [n.op("Cast", [n.op("Elu", [x])], to=1)])
    x = n.op("Softmax", [n.op("Tanh", [x])], axis=3)
    last = n.op("Transpose", [x], perm=[0, 2, 3, 1])
    out1 = n.op("MatMul", [last, n.const(n.rng.standard_normal((6, 3)).astype(np.float32))])
    pooled = n.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    flat = n.op("Squeeze", [n.op("Unsqueeze", [pooled, n.const(np.array([2]))]), n.const(np.array([2]))])
    model = n.model([out1, n.gemm(flat, 6, 2)])
    group = by_origin(analyze(model), "a")
    assert group.prunable and len(group.by_role(Role.PARAM)) == 3
    check_pruned(model)


def test_fold_into_a_matmul_whose_outputs_are_pruned_too():
    n = Net(shape=(1, 5, 8))
    h = n.op("Relu", [n.op("Add", [n.op("MatMul", ["input", n.const(n.rng.standard_normal((8, 6)).astype(np.float32))],
                                        name="fc1"), n.const(np.linspace(0.2, 0.7, 6).astype(np.float32))])])
    h = n.op("Relu", [n.op("MatMul", [h, n.const(n.rng.standard_normal((6, 7)).astype(np.float32))], name="fc2")])
    model = n.model([n.op("MatMul", [h, n.const(n.rng.standard_normal((7, 3)).astype(np.float32))])])
    groups = analyze(model)
    first, second = by_origin(groups, "fc1"), by_origin(groups, "fc2")
    zero_filters(first, np.array([1, 2]))
    zero_filters(second, np.array([0, 6]))
    feeds = runtime.random_inputs(model)
    want = outputs(model, feeds)
    apply_plan(model, analyze(model), PrunePlan({first.id: np.array([0, 3, 4, 5]), second.id: np.arange(1, 6)}))
    check_model(model, full=True)
    assert_close(outputs(model, feeds), want)


def _concat_twice(n):
    a = n.op("Relu", [n.conv("input", 8, 5, name="a")])
    return [n.conv(n.op("Concat", [a, a], axis=1), 10, 3)]


def _add_of_concat(n):  # the Add ties c's first 3 channels to a, the others to b
    a, b, c = n.conv("input", 8, 3, name="a"), n.conv("input", 8, 4, name="b"), n.conv("input", 8, 7, name="c")
    return [n.conv(n.op("Relu", [n.op("Add", [n.op("Concat", [a, b], axis=1), c])]), 7, 2)]


def _add_of_concat_rooted_at_c(n):
    c, a, b = n.conv("input", 8, 7, name="c"), n.conv("input", 8, 3, name="a"), n.conv("input", 8, 4, name="b")
    return [n.conv(n.op("Relu", [n.op("Add", [c, n.op("Concat", [a, b], axis=1)])]), 7, 2)]


def _split_and_swap(n):
    p, q = n.op("Split", [n.conv("input", 8, 6, name="a"), n.const(np.array([2, 4]))], outputs=2, axis=1)
    return [n.conv(n.op("Concat", [q, p], axis=1), 6, 2)]


def _slice_of_channels(n):
    x = n.op("Relu", [n.conv("input", 8, 9, name="a")])
    s = n.op("Slice", [x, n.const(np.array([2])), n.const(np.array([7])), n.const(np.array([1]))])
    return [n.op("Add", [n.conv(s, 5, 2), n.conv(x, 9, 2)])]


@pytest.mark.parametrize(
    "build", [_concat_twice, _add_of_concat, _add_of_concat_rooted_at_c, _split_and_swap, _slice_of_channels]
)
def test_concat_split_slice_patterns(build):
    n = Net()
    model = n.model(build(n))
    assert all(g.prunable for g in analyze(model) if g.origin.name in ("a", "b", "c"))
    check_pruned(model)


def test_conv_transpose_consumer_folds_approximately_from_means():
    """A constant through ConvTranspose is a per-position pattern, not a bias: never exact."""
    n = Net()
    x = n.op("Relu", [n.bn(n.conv("input", 8, 6, name="a"), 6)])
    w = n.const(n.rng.standard_normal((6, 4, 2, 2)).astype(np.float32))
    model = n.model([n.op("ConvTranspose", [x, w], name="up", kernel_shape=[2, 2], strides=[2, 2])])
    group = by_origin(analyze(model), "a")
    zero_filters(group, np.array([0, 3]), bn_shift=1.0)
    feeds = runtime.random_inputs(model)
    want = outputs(model, feeds)[0]
    plan = PrunePlan({group.id: np.array([1, 2, 4, 5])})
    plain = copy(model)
    assert "2 constant channels not folded" in apply_plan(plain, analyze(plain), plan)[0]
    means = np.ones(6)  # only the removed channels' entries are used (their constant is known)
    assert "2 folded approximately" in apply_plan(model, analyze(model), plan, channel_constants={group.id: means})[0]
    assert np.abs(outputs(model, feeds)[0] - want).mean() < np.abs(outputs(plain, feeds)[0] - want).mean()
