"""Pruning the shipped digits model with every criterion: valid models, MAC targets met, and
held-out accuracy bounded from below per criterion.

No retraining, prune()'s defaults (round_to 8; l1/l2/bn compensate with BatchNorm statistics;
activation, apoz, energy and thinet get calibration data, hence the least-squares refit). The floors sit a few
points under what ``bench/prune_bench.py --digits`` measures (chance is 10 %): a criterion that
ranks channels badly, or a lost compensation or refit, falls through them; a test below shows
that an inverted ranking does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxprune import load_model, runtime
from onnxprune.api import prune
from onnxprune.api.prune_api import PREPARE
from onnxprune.passes.prune import CRITERIA, PruneOptions, PrunePass
from onnxprune.passes.prune.importance import Magnitude
from onnxprune.pipeline import run_pipeline
from onnxprune.validate import check_model

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"
FLOORS = {
    (0.7, "l1"): 0.90, (0.7, "l2"): 0.75, (0.7, "bn"): 0.88, (0.7, "activation"): 0.97, (0.7, "apoz"): 0.97,
    (0.5, "l1"): 0.38, (0.5, "l2"): 0.20, (0.5, "bn"): 0.73, (0.5, "activation"): 0.97, (0.5, "apoz"): 0.97,
}


def accuracy(model, inputs: np.ndarray, labels: np.ndarray) -> float:
    logits = runtime.run(model, {"input": inputs})["logits"]
    return float((logits.argmax(axis=1) == labels).mean())


@pytest.fixture(scope="module")
def held_out():
    data = np.load(DIGITS / "eval.npz")
    return data["input"], data["labels"]


@pytest.mark.parametrize("keep_macs", [0.7, 0.5])
@pytest.mark.parametrize("criterion", [c for c in CRITERIA if c != "taylor"])  # taylor: tests/test_distill.py
def test_pruned_digits_model_is_valid_and_keeps_its_accuracy(criterion, keep_macs, held_out):
    inputs, labels = held_out
    calib = DIGITS / "calib.npz" if criterion in ("activation", "apoz", "energy", "thinet") else None
    result = prune(DIGITS / "digits.onnx", criterion=criterion, target_macs=keep_macs, calib=calib, latency_runs=0)
    check_model(result.model)
    assert result.after["macs"] <= keep_macs * result.before["macs"]
    acc = accuracy(result.model, inputs, labels)
    # Accuracy really comes from the predictions: it matches a recount on a shuffled copy.
    order = np.random.default_rng(0).permutation(len(labels))
    assert acc == accuracy(result.model, inputs[order], labels[order])
    original = accuracy(load_model(DIGITS / "digits.onnx"), inputs, labels)
    assert original > 0.95
    if (keep_macs, criterion) in FLOORS:
        assert FLOORS[keep_macs, criterion] <= acc <= original + 1 / len(labels), (acc, original)
    if calib is not None:  # data-aware selection + the held-out refit: within 1 pt (issue 10)
        assert acc >= original - 0.01, (criterion, keep_macs, acc, original)


class InvertedL1(Magnitude):
    """l1 the wrong way round: the weakest channels score highest."""

    def __call__(self, group):
        return 1.0 / (super().__call__(group) + 1e-6)


def test_floors_separate_a_good_ranking_from_a_bad_one(held_out):
    """Keeping the weakest channels instead of the strongest, at the same MAC share and with
    the same compensation, ends below the l1 floor."""
    inputs, labels = held_out
    model = load_model(DIGITS / "digits.onnx")
    run_pipeline(model, PREPARE)
    PrunePass(PruneOptions(target_macs=0.7), criterion=InvertedL1(1))(model)
    assert accuracy(model, inputs, labels) < FLOORS[0.7, "l1"]


def test_pruned_model_records_its_surviving_channels_for_layerwise_check():
    from onnxprune import check
    from onnxprune.passes.prune.channel_map import CHANNEL_MAP_KEY

    result = prune(DIGITS / "digits.onnx", ratio=0.3, round_to=1, latency_runs=0)
    assert CHANNEL_MAP_KEY in result.model.metadata_props
    report = check(DIGITS / "digits.onnx", result.model, DIGITS / "eval.npz", tolerances="int8",
                   layerwise=True, layerwise_samples=32).layerwise
    statuses = {t["status"] for t in report["tensors"]}
    assert "surviving-channels" in statuses and "shape-differs" not in statuses

    again = prune(result.model, ratio=0.2, round_to=1, latency_runs=0)  # maps would need composing
    assert CHANNEL_MAP_KEY not in again.model.metadata_props
