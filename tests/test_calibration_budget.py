"""Calibration batches sized by memory: the largest activation and what a run returns."""

from __future__ import annotations

import numpy as np

from onnxprune.calibration import calibrate, open_dataset
from onnxprune.calibration.collect import ACTIVATION_BUDGET, activation_batch
from tiny import Tiny, fresh, rand


def wide_model(channels: int):
    """x [N, 4, 64, 64] -> Conv to ``channels`` -> Relu: the Conv output is the largest tensor."""
    g = Tiny({"x": ["N", 4, 64, 64]})
    y = g.op("Relu", [g.op("Conv", ["x", g.init("w", rand(channels, 4, 3, 3))], pads=[1, 1, 1, 1])])
    return fresh(g.proto(y))


def test_the_batch_keeps_eight_copies_of_the_largest_activation_in_budget():
    small, large = wide_model(4), wide_model(256)  # 64 KB and 4 MB per sample
    assert activation_batch(small) == ACTIVATION_BUDGET // (8 * 4 * 64 * 64 * 4)
    assert activation_batch(large) == 1  # never below one sample
    assert activation_batch(small, budget=10**12) > 32  # the caller's batch_size caps it


def test_ranges_do_not_depend_on_the_batch_the_budget_chose():
    model = wide_model(64)
    data = {"x": rand(12, 4, 64, 64)}
    tight = calibrate(model, open_dataset(data, model), batch_size=12).as_dict()
    loose = calibrate(model, open_dataset(data, model), batch_size=1).as_dict()
    assert tight.keys() == loose.keys()
    for name in tight:
        np.testing.assert_allclose(tight[name], loose[name], rtol=1e-6)
