"""Importance criteria on a small hand-built graph with hand-made groups."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime
from onnxprune.errors import DataError, UsageError
from onnxprune.passes.prune.group import Group, Role, Slot
from onnxprune.passes.prune.importance import (
    Activation,
    BatchNormScale,
    Magnitude,
    collect_channel_stats,
    get_criterion,
    normalize,
)
from onnxprune.runtime import OrtRunner


def toy_model(seed: int = 0) -> ir.Model:
    """x → c1 → bn1 → relu ─→ c2 ─┐
    x → c3 ───────────────────────→ add → relu2 → gap → flatten → fc → y
    """
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = {
        "W1": rng.standard_normal((4, 3, 3, 3)).astype(f),
        "B1": rng.standard_normal(4).astype(f),
        "gamma": np.array([2.0, -0.5, 1.0, 0.1], f),
        "beta": rng.standard_normal(4).astype(f),
        "mean": rng.standard_normal(4).astype(f),
        "var": np.array([1.0, 4.0, 0.25, 1.0], f),
        "W2": rng.standard_normal((4, 4, 1, 1)).astype(f),
        "W3": rng.standard_normal((4, 3, 1, 1)).astype(f),
        "Wf": rng.standard_normal((2, 4)).astype(f),
        "Bf": rng.standard_normal(2).astype(f),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn1"], name="bn1",
                         epsilon=0.0),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="c2"),
        helper.make_node("Conv", ["x", "W3"], ["c3"], name="c3"),
        helper.make_node("Add", ["c2", "c3"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "Wf", "Bf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def toy_groups(model: ir.Model) -> list[Group]:
    """The groups the analysis would find: c1's channels, and the residual channels."""
    nodes = {n.name: n for n in model.graph}
    v = {val.name: val for n in model.graph for val in (*n.inputs, *n.outputs) if val is not None}

    def slot(role, node, value, axis, **kw):
        return Slot(role, nodes[node], v[value], axis, **kw)

    g0 = Group(0, 4, [
        slot(Role.PRODUCER, "c1", "W1", 0), slot(Role.PRODUCER, "c1", "B1", 0, bias=True),
        *(slot(Role.PARAM, "bn1", p, 0) for p in ("gamma", "beta", "mean", "var")),
        slot(Role.ACTIVATION, "c1", "c1", 1), slot(Role.ACTIVATION, "bn1", "bn1", 1),
        slot(Role.ACTIVATION, "relu1", "r1", 1), slot(Role.CONSUMER, "c2", "W2", 1),
    ])
    g1 = Group(1, 4, [
        slot(Role.PRODUCER, "c2", "W2", 0), slot(Role.PRODUCER, "c3", "W3", 0),
        slot(Role.ACTIVATION, "add", "s", 1), slot(Role.ACTIVATION, "relu2", "r2", 1),
        slot(Role.ACTIVATION, "gap", "g", 1), slot(Role.ACTIVATION, "flatten", "flat", 1),
        slot(Role.CONSUMER, "fc", "Wf", 1),
    ])
    return [g0, g1]


def array(model, name):
    return model.graph.initializers[name].const_value.numpy().astype(np.float64)


def test_l1_l2_are_bn_aware_norms_of_the_producer_filters():
    model = toy_model()
    g0, _ = toy_groups(model)
    w = array(model, "W1").reshape(4, -1)
    scale = np.abs(array(model, "gamma")) / np.sqrt(array(model, "var"))
    np.testing.assert_allclose(Magnitude(1)(g0), np.abs(w).sum(1) * scale)
    np.testing.assert_allclose(Magnitude(2)(g0), np.sqrt((w**2).sum(1)) * scale)


def test_l1_averages_over_the_producers_of_a_residual_group():
    model = toy_model()
    _, g1 = toy_groups(model)
    w2, w3 = (np.abs(array(model, n)).reshape(4, -1).sum(1) for n in ("W2", "W3"))
    np.testing.assert_allclose(Magnitude(1)(g1), (w2 + w3) / 2)


def test_l1_covers_a_split_group_piece_by_piece():
    model = toy_model()
    nodes = {n.name: n for n in model.graph}
    w1 = model.graph.initializers["W1"]
    w3 = model.graph.initializers["W3"]
    # Channels 0-1 created by the first half of W1, channels 2-5 by all of W3.
    group = Group(7, 6, [
        Slot(Role.PRODUCER, nodes["c1"], w1, 0, hi=2),
        Slot(Role.PRODUCER, nodes["c3"], w3, 0, lo=2),
    ])
    scores = Magnitude(1)(group)
    expected_w3 = np.abs(array(model, "W3")).reshape(4, -1).sum(1)
    np.testing.assert_allclose(scores[2:], expected_w3)
    assert scores.shape == (6,)


def test_bn_criterion_scores_abs_gamma_and_falls_back_with_a_note():
    model = toy_model()
    g0, g1 = toy_groups(model)
    crit = BatchNormScale()
    np.testing.assert_allclose(crit(g0), [2.0, 0.5, 1.0, 0.1], rtol=1e-6)
    assert g0.id not in crit.notes
    np.testing.assert_allclose(crit(g1), Magnitude(1)(g1))
    assert "l1" in crit.notes[g1.id]


def test_normalize_divides_by_the_group_mean():
    np.testing.assert_allclose(normalize(np.array([1.0, 3.0])), [0.5, 1.5])
    np.testing.assert_array_equal(normalize(np.zeros(3)), np.zeros(3))


def reference_activations(model: ir.Model, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    proto = ir.to_proto(model)
    proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feeds)))


def test_streamed_activation_statistics_equal_one_shot_numpy():
    model = toy_model()
    groups = toy_groups(model)
    rng = np.random.default_rng(1)
    data = rng.standard_normal((7, 3, 8, 8)).astype(np.float32)
    batches = [{"x": data[i : i + 3]} for i in range(0, 7, 3)]  # uneven last batch
    stats = collect_channel_stats(model, groups, batches, runner=OrtRunner())
    ref = reference_activations(model, {"x": data}, ["r1", "flat"])
    r1 = ref["r1"].transpose(1, 0, 2, 3).reshape(4, -1).astype(np.float64)
    np.testing.assert_allclose(stats[0].mean_abs, np.abs(r1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(stats[0].mean, r1.mean(1), rtol=1e-5)
    np.testing.assert_allclose(stats[0].nonzero, (r1 != 0).mean(1))
    # The residual group's consumer (fc) reads the flattened tensor.
    np.testing.assert_allclose(stats[1].mean_abs, np.abs(ref["flat"]).mean(0), rtol=1e-5)
    assert stats[0].samples == 7
    # The model's outputs are restored.
    assert [o.name for o in model.graph.outputs] == ["y"]


def test_activation_criteria_rank_by_mean_abs_and_by_nonzero_share():
    """The scores equal an independent recount (ONNX Runtime on a copy exposing the tensor the
    consumer reads, then numpy), and rank the channels in that order."""
    model = toy_model()
    groups = toy_groups(model)
    data = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)
    r1 = reference_activations(toy_model(), {"x": data}, ["r1"])["r1"].astype(np.float64)
    per_channel = r1.transpose(1, 0, 2, 3).reshape(4, -1)
    expected = {"activation": np.abs(per_channel).mean(1), "apoz": (per_channel != 0).mean(1)}
    for name, oracle in expected.items():
        crit = get_criterion(name, data=lambda: [{"x": data}], runner=OrtRunner())
        crit.prepare(model, groups)
        scores = np.asarray(crit(groups[0]), dtype=np.float64)
        np.testing.assert_allclose(scores, oracle, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(np.argsort(scores, kind="stable"), np.argsort(oracle, kind="stable"))
    # apoz scores the share of non-zero values: after the ReLU some channels are mostly zero.
    assert expected["apoz"].min() < 1.0


def test_activation_criterion_without_data_or_with_bad_data_is_a_clear_error():
    model = toy_model()
    groups = toy_groups(model)
    with pytest.raises(UsageError, match="calibration data"):
        Activation(None).prepare(model, groups)
    with pytest.raises(DataError, match="does not run"):
        collect_channel_stats(model, groups, [{"x": np.zeros((1, 3, 5, 5), np.float32)}], runner=OrtRunner())
    with pytest.raises(DataError, match="empty"):
        collect_channel_stats(model, groups, [], runner=OrtRunner())
    assert [o.name for o in model.graph.outputs] == ["y"]


def test_unknown_criterion_names_the_choices():
    with pytest.raises(UsageError, match="l1, l2, bn, activation, apoz"):
        get_criterion("hessian")


def test_toy_model_runs():
    model = toy_model()
    out = runtime.run(model, {"x": np.zeros((2, 3, 8, 8), np.float32)})
    assert out["y"].shape == (2, 2)


def test_batchnorm_moments_give_beta_and_the_gaussian_relu_mean():
    """BN output ~ N(β, γ²); after ReLU, E = μΦ(μ/σ) + σφ(μ/σ) (closed form)."""
    from math import erf, exp, pi, sqrt

    from onnxprune.passes.prune.moments import batchnorm_channel_means

    model = toy_model()
    g0, _ = toy_groups(model)
    slots = {s.value.name: s for s in g0.by_role(Role.ACTIVATION)}
    gamma, beta = np.abs(array(model, "gamma")), array(model, "beta")
    np.testing.assert_allclose(batchnorm_channel_means(g0, [slots["bn1"]]), beta)
    expected = [
        m * 0.5 * (1 + erf(m / s / sqrt(2))) + s * exp(-((m / s) ** 2) / 2) / sqrt(2 * pi)
        for m, s in zip(beta, gamma)
    ]
    np.testing.assert_allclose(batchnorm_channel_means(g0, [slots["r1"]]), expected, rtol=1e-4, atol=1e-9)
    # The conv output before BN is not a BN statistic: no estimate.
    assert batchnorm_channel_means(g0, [slots["c1"]]) is None


def test_batchnorm_moments_track_calibration_means_on_the_trained_digits_model():
    from pathlib import Path

    from onnxprune import load_model
    from onnxprune.passes.prune.analysis import analyze
    from onnxprune.passes.prune.importance import hooked_slots
    from onnxprune.passes.prune.moments import batchnorm_channel_means

    digits = Path(__file__).resolve().parents[1] / "models" / "digits"
    model = load_model(digits / "digits.onnx")
    groups = [g for g in analyze(model) if g.prunable]
    data = np.load(digits / "calib.npz")["input"]
    measured = collect_channel_stats(model, groups, [{"input": data}], runner=OrtRunner())
    for g in groups:
        estimate = batchnorm_channel_means(g, hooked_slots(g))
        assert estimate is not None
        # A trained network's BN statistics predict its channel means to within ~10 % (not
        # exactly: the Gaussian assumption and independent residual branches approximate).
        mean = measured[g.id].mean
        assert np.abs(estimate - mean).mean() < 0.15 * np.abs(mean).mean()
