"""Streaming statistics and tolerance judgement, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxprune.errors import UsageError
from onnxprune.parity.metrics import OutputStats, Reservoir
from onnxprune.parity.tolerances import Tolerances, is_quantized, parse_tolerance_specs


def test_error_statistics_match_hand_computed_values():
    ref = np.array([1.0, 2.0, 0.0, -4.0], dtype=np.float32)
    cand = np.array([1.5, 2.0, 0.5, -4.0], dtype=np.float32)
    stats = OutputStats(atol=0.1, rtol=0.1)
    stats.update(ref, cand)
    s = stats.summary()
    assert s["elements"] == 4 and s["samples"] == 4
    assert s["max_abs"] == pytest.approx(0.5) and s["mean_abs"] == pytest.approx(0.25)
    # relative error over the non-zero references: 0.5/1, 0/2, 0/4
    assert s["max_rel"] == pytest.approx(0.5) and s["mean_rel"] == pytest.approx(1 / 6)
    assert s["sqnr_db"] == pytest.approx(10 * math.log10(21 / 0.5))
    assert s["cosine"] == pytest.approx(21.5 / math.sqrt(21 * 22.5))
    assert s["mismatches"] == 2  # 0.5 > 0.1 + 0.1*1 and 0.5 > 0.1 + 0.1*0
    assert s["top1_agreement"] is None and s["accuracy_reference"] is None  # 1-D: no classes


def test_classifier_outputs_get_topk_and_accuracy():
    ref = np.array([[3, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 5], [1, 2, 3, 4]], dtype=np.float32)
    cand = np.array([[2.9, 1, 0, 0], [0, 1, 2, 0], [5, 0, 0, 1], [4, 3, 2, 1]], dtype=np.float32)
    labels = np.array([0, 2, 3, 0])
    stats = OutputStats(top_k=2)
    stats.update(ref[:2], cand[:2], labels[:2])  # two batches: streaming
    stats.update(ref[2:], cand[2:], labels[2:])
    s = stats.summary()
    # argmax: reference 0,1,3,3; candidate 0,2,0,0 -> one agreement
    assert s["top1_agreement"] == pytest.approx(1 / 4)
    # reference top-1 within the candidate's 2 best: yes, yes (1 is 2nd), yes (3 is 2nd), no
    assert s["topk_agreement"] == pytest.approx(3 / 4) and s["top_k"] == 2
    assert s["accuracy_reference"] == pytest.approx(2 / 4)  # samples 0 and 2
    assert s["accuracy_candidate"] == pytest.approx(3 / 4)  # samples 0, 1 and 3
    assert s["accuracy_drop"] == pytest.approx(-1 / 4)


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((30, 5, 7)).astype(np.float32)
    cand = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
    whole, parts = OutputStats(1e-3, 1e-3), OutputStats(1e-3, 1e-3)
    whole.update(ref, cand)
    for start in range(0, 30, 7):
        parts.update(ref[start : start + 7], cand[start : start + 7])
    a, b = whole.summary(), parts.summary()
    for key in ("max_abs", "mean_abs", "max_rel", "mean_rel", "cosine", "cosine_min", "sqnr_db", "mismatches",
                "p50_abs", "p99_abs"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
    assert a["samples"] == b["samples"] == 30


def test_reservoir_is_exact_below_its_size_and_bounded_above():
    values = np.random.default_rng(0).random(1000)
    small = Reservoir(size=4096)
    small.add(values[:300])
    small.add(values[300:])
    assert small.quantile(0.99) == pytest.approx(np.quantile(values, 0.99))
    big = Reservoir(size=4096)
    for _ in range(50):
        big.add(np.random.default_rng(_).random(4000))
    assert big.data.size == 4096 and big.seen == 200_000
    assert big.quantile(0.99) == pytest.approx(0.99, abs=0.01)


def test_nan_and_inf_count_only_when_the_models_disagree():
    ref = np.array([np.nan, 1.0, np.inf, 2.0])
    stats = OutputStats()
    stats.update(ref, np.array([np.nan, 1.0, 1.0, 2.0]))
    s = stats.summary()
    assert s["nonfinite_mismatches"] == 1 and s["mismatches"] == 1 and s["max_abs"] == 0
    assert Tolerances().judge("y", s)  # exact preset fails on it


def test_statistic_max_mean_and_quantile():
    ref = np.ones(1000)
    cand = ref.copy()
    cand[:5] += 1.0  # 0.5 % of elements far off
    stats = OutputStats(atol=1e-3, rtol=0.0)
    stats.update(ref, cand)
    s = stats.summary()
    assert Tolerances(atol=1e-3, rtol=0, stat="max").judge("y", s)
    assert not Tolerances(atol=1e-3, rtol=0, stat="p99").judge("y", s)  # 99.5 % within
    assert Tolerances(atol=1e-3, rtol=0, stat="p99.9").judge("y", s)
    assert Tolerances(atol=1e-3, rtol=0, stat="mean").judge("y", s)  # mean error 5e-3
    assert not Tolerances(atol=1e-2, rtol=0, stat="mean").judge("y", s)


def test_model_level_criteria_and_presets():
    int8 = Tolerances.from_preset("int8")
    assert int8.atol is None and int8.min_top1 == 0.98
    stats = {"nonfinite_mismatches": 0, "cosine": 0.95, "sqnr_db": 12.0, "top1_agreement": 0.9,
             "topk_agreement": 1.0, "top_k": 5, "accuracy_drop": 0.05, "accuracy_reference": 0.99,
             "accuracy_candidate": 0.94}
    failures = int8.judge("logits", stats)
    assert len(failures) == 4 and any("top-1 agreement 90.00%" in f for f in failures)
    assert len(int8.judge("hidden", stats, model_level=False)) == 2  # cosine and SQNR only
    exact = Tolerances.from_preset("exact", atol=1e-2)
    assert exact.atol == 1e-2 and exact.rtol == 1e-4 and exact.preset == "exact"


def test_per_output_tolerances_and_parsing():
    default, per_output = parse_tolerance_specs(["1e-4", "logits:1e-2", "in:0:3"], "--atol")
    assert default == 1e-4 and per_output == {"logits": 0.01, "in:0": 3.0}
    t = Tolerances(atol=default, per_output_atol=per_output)
    assert t.atol_for("logits") == 0.01 and t.atol_for("other") == 1e-4
    with pytest.raises(UsageError, match="OUTPUT:NUMBER"):
        parse_tolerance_specs(["logits:abc"], "--atol")


@pytest.mark.parametrize("bad", [{"stat": "median"}, {"stat": "p100"}, {"atol": -1.0}, {"top_k": 0},
                                 {"per_output_rtol": {"y": float("nan")}}])
def test_invalid_tolerances_are_usage_errors(bad):
    with pytest.raises(UsageError):
        Tolerances(**bad)
    with pytest.raises(UsageError, match="unknown preset"):
        Tolerances.from_preset("fp16")


def test_quantized_op_detection():
    assert is_quantized(["Conv", "DequantizeLinear"]) and not is_quantized(["Conv", "Relu"])
