"""BatchNorm-statistics compensation (:mod:`onnxprune.passes.prune.moments`) on a BN whose
channels come in blocks: a depthwise Conv with a channel multiplier gives every channel of the
group two BN channels. This crashed ``moments._batchnorm`` with a shape mismatch (found by
tests/test_fuzz_prune.py with compensation on)."""

from __future__ import annotations

from math import erf, exp, pi, sqrt

import numpy as np

from onnxprune import runtime
from onnxprune.passes.prune import PruneOptions, PrunePass
from onnxprune.passes.prune.analysis import analyze
from onnxprune.passes.prune.importance import hooked_slots
from onnxprune.passes.prune.moments import batchnorm_channel_means
from tiny import Tiny, bn_params, fresh, rand


def _relu_mean(m: float, s: float) -> float:
    """E max(y, 0) for y ~ N(m, s²)."""
    return m * 0.5 * (1 + erf(m / s / sqrt(2))) + s * exp(-((m / s) ** 2) / 2) / sqrt(2 * pi)


def _multiplier_model():
    """x -> Conv(2) -> BN -> Relu -> depthwise Conv (multiplier 2: 4 channels) -> BN(4) -> Relu
    -> Conv(3). The second BN's channels 0, 1 (group channel 0) share β and γ; 2, 3 do not."""
    gamma, beta, mean, var = bn_params(4)
    gamma[1], beta[1] = gamma[0], beta[0]
    beta[3] = beta[2] + 1.0
    w1 = rand(2, 2, 1, 1)
    w1[0] *= 0.01  # the l1 criterion removes channel 0, the one with an estimate
    g = Tiny({"x": [1, 2, 5, 5]})
    y = g.op("Relu", [g.bn(g.op("Conv", ["x", g.init("w1", w1)]), 2)])
    y = g.op("Conv", [y, g.init("wd", rand(4, 1, 3, 3))], group=2, pads=[1, 1, 1, 1])
    bn = [g.init(f"bn2.{i}", a) for i, a in enumerate((gamma, beta, mean, var))]
    y = g.op("Relu", [g.op("BatchNormalization", [y, *bn])])
    return g.proto(g.op("Conv", [y, g.init("w3", rand(3, 4, 1, 1))])), gamma, beta


def test_a_bn_channel_block_is_estimated_only_where_its_channels_agree():
    proto, gamma, beta = _multiplier_model()
    model = fresh(proto)
    group = next(g for g in analyze(model) if g.prunable)
    assert {s.block for s in group.slots} == {1, 2}  # the case: BN slots with blocks of 2
    means = batchnorm_channel_means(group, hooked_slots(group))
    assert means is not None
    np.testing.assert_allclose(means, [_relu_mean(beta[0], abs(gamma[0])), 0.0], rtol=1e-4)


def test_data_free_compensation_folds_the_block_mean_into_the_next_bias():
    proto, gamma, beta = _multiplier_model()
    model = fresh(proto)
    result = PrunePass(PruneOptions("l1", 0.5, round_to=1))(model)
    assert result.report.compensation == "BatchNorm statistics (data-free)"
    assert result.plan.keep[0].tolist() == [1]
    consumer = next(n for n in model.graph if len(n.inputs) > 1 and n.inputs[1].name == "w3")
    w3 = next(init for init in proto.graph.initializer if init.name == "w3")
    w3 = np.frombuffer(w3.raw_data, dtype=np.float32).reshape(3, 4)
    bias = consumer.inputs[2].const_value.numpy()
    np.testing.assert_allclose(bias, w3[:, :2].sum(axis=1) * _relu_mean(beta[0], abs(gamma[0])), rtol=1e-4)
    out = runtime.run(model, {"x": rand(1, 2, 5, 5)})
    assert next(iter(out.values())).shape == (1, 3, 5, 5)
