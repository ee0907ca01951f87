"""`onnxprune sensitivity` and the budgets it feeds (api/sensitivity_api.py).

On the digits sample model (real data, labels): the sweep's units are independent (any
order, any process gives the same rows), the curves it measures are real (a group pruned
harder loses more), and prune's non-uniform allocation from them meets the MAC target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.api.sensitivity_api import (
    SensitivityResult,
    SensitivitySpec,
    allocate,
    evaluate_unit,
    plan_units,
    score,
    sensitivity,
)
from onnxprune.cli import cli

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"


@pytest.fixture(scope="module")
def digits_sweep():
    return sensitivity(DIGITS / "digits.onnx", str(DIGITS / "calib.npz"), eval_data=str(DIGITS / "eval.npz"),
                       labels="labels", ratios=(0.5, 0.9), criterion="l1")


def test_units_are_independent_and_pure(digits_sweep):
    spec = SensitivitySpec(str(DIGITS / "digits.onnx"), str(DIGITS / "calib.npz"), str(DIGITS / "eval.npz"),
                           "labels", "l1")
    units = plan_units(spec, (0.5, 0.9))
    assert len(units) == len(digits_sweep.rows) and all(u.kind == "prune" for u in units)
    last = units[-1]
    again = evaluate_unit(spec, last)  # alone, out of order, in a fresh spec
    row = next(r for r in digits_sweep.rows if r["name"] == last.name and r["ratio"] == last.ratio)
    assert again["fidelity"] == row["fidelity"] and again["macs_removed"] == row["macs_removed"]


def test_curves_lose_more_at_higher_ratios(digits_sweep):
    base = digits_sweep.baseline
    assert base["fidelity"] == 1.0 and base["accuracy"] == pytest.approx(0.9933, abs=1e-3)
    curves = digits_sweep.curves()
    assert len(curves) >= 2
    for points in curves.values():
        (r1, _, macs1, _), (r2, _, macs2, _) = points
        assert r1 < r2 and macs1 < macs2
    # 90 % of a layer's channels costs more, summed over the layers, than 50 %
    assert sum(p[1][1] for p in curves.values()) > sum(p[0][1] for p in curves.values())


def test_allocation_spends_the_budget_where_it_is_cheapest():
    curves = {"a": [(0.5, 0.001, 0.10, 0.1), (0.9, 0.002, 0.18, 0.2)],
              "b": [(0.5, 0.2, 0.10, 0.1), (0.9, 0.5, 0.18, 0.2)]}
    assert allocate(curves, 0.15) == {"a": 0.9}
    assert allocate(curves, 0.25) == {"a": 0.9, "b": 0.5}


def test_score_is_agreement_for_classifiers_and_cosine_otherwise():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert score(ref, ref[::-1], np.array([0, 1])) == {"accuracy": 0.0, "cosine": 0.0, "metric": "top-1 agreement",
                                                       "fidelity": 0.0}
    maps = np.ones((2, 1, 3, 3))
    assert score(maps, -maps)["fidelity"] == pytest.approx(-1.0)


def test_cli_writes_curves_that_prune_uses(tmp_path, digits_sweep):
    out = tmp_path / "sens.json"
    result = CliRunner().invoke(cli, ["sensitivity", str(DIGITS / "digits.onnx"), "--calib", str(DIGITS / "calib.npz"),
                                      "--eval", str(DIGITS / "eval.npz"), "--labels", "labels", "--ratios", "0.5,0.9",
                                      "--criterion", "l1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" in result.output and "original accuracy" in result.output
    loaded = SensitivityResult.load(out)
    assert loaded.curves() == digits_sweep.curves()
    bad = CliRunner().invoke(cli, ["sensitivity", str(DIGITS / "digits.onnx"), "--calib", str(DIGITS / "calib.npz"),
                                   "--ratios", "1.5"])
    assert bad.exit_code == 2 and "(0, 1)" in bad.output


def test_prune_allocates_a_mac_target_from_the_curves(digits_sweep):
    from onnxprune.api import prune

    result = prune(DIGITS / "digits.onnx", criterion="l1", target_macs=0.6, sensitivity=digits_sweep,
                   calib=str(DIGITS / "calib.npz"), round_to=1, latency_runs=0)
    removed = 1 - result.after["macs"] / result.before["macs"]
    assert 0.395 <= removed <= 0.6, removed
    shares = {g.name: 1 - g.kept / g.channels for g in result.report.groups if g.status == "pruned"}
    curves = digits_sweep.curves()
    for name, share in shares.items():  # each group at one of its measured ratios
        assert any(abs(share - point[0]) < 0.05 for point in curves[name]), (name, share)


def test_the_default_criterion_is_data_aware_with_calibration_data():
    from onnxprune.api import prune

    with_data = prune(DIGITS / "digits.onnx", ratio=0.2, calib=str(DIGITS / "calib.npz"), latency_runs=0)
    without = prune(DIGITS / "digits.onnx", ratio=0.2, latency_runs=0)
    assert with_data.report.criterion == "thinet" and without.report.criterion == "l1"


def test_accuracy_search_holds_the_budget_on_held_out_labels(tmp_path):
    from onnxprune import load_model, runtime
    from onnxprune.api.search_api import prune_within

    out = tmp_path / "searched.onnx"
    found = prune_within(DIGITS / "digits.onnx", out, calib=str(DIGITS / "calib.npz"),
                         eval_data=str(DIGITS / "eval.npz"), labels="labels", max_accuracy_drop=0.01,
                         criterion="l1", lowest=0.3, tolerance=0.1)
    best, base = found.best, found.baseline
    assert best is not None and base["accuracy"] - best.accuracy <= 0.01
    assert best.macs_removed >= 0.4  # l1 with the refit keeps 99.1 % at -50 % MACs
    assert all(p.passed == (base["accuracy"] - p.accuracy <= 0.01 + 1e-12) for p in found.probes)
    held = np.load(DIGITS / "eval.npz")
    logits = next(iter(runtime.run(load_model(out), {"input": held["input"]}).values()))
    assert abs(float(np.mean(logits.argmax(1) == held["labels"])) - best.accuracy) < 1e-9


def test_accuracy_search_needs_held_out_data_and_one_budget(tmp_path):
    args = ["prune", str(DIGITS / "digits.onnx"), "-o", str(tmp_path / "o.onnx"), "--calib", str(DIGITS / "calib.npz")]
    result = CliRunner().invoke(cli, args + ["--max-accuracy-drop", "0.01"])
    assert result.exit_code == 2 and "labels" in result.output
    result = CliRunner().invoke(cli, args + ["--min-fidelity", "0.99"])
    assert result.exit_code == 2 and "held-out" in result.output
