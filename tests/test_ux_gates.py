"""Gates that cannot be fooled: criteria that cannot be evaluated, labels, inputs checked first
(issue 12, items 1, 3 and 4)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.cli import cli
from onnxprune.compress import compress
from onnxprune.errors import DataError, UsageError
from onnxprune.parity import check

DIGITS = Path(__file__).resolve().parent.parent / "models" / "digits"
MODEL, CALIB, EVAL = DIGITS / "digits.onnx", DIGITS / "calib.npz", DIGITS / "eval.npz"


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gates")
    arrays = dict(np.load(EVAL))
    x, y = arrays["input"][:96], arrays["labels"][:96]
    paths = {"tmp": tmp}
    for name, extra in {
        "unlabelled": {},
        "targets": {"targets": y},
        "onehot": {"labels": np.eye(10, dtype=np.float32)[y]},
        "indices": {"labels": y},
        "probabilities": {"labels": np.full((96, 10), 0.1, dtype=np.float32)},
        "out_of_range": {"labels": y + 10},
    }.items():
        paths[name] = tmp / f"{name}.npz"
        np.savez(paths[name], input=x, **extra)
    bad = x.copy()
    bad[-1, 0, 0, 0] = np.nan  # in the last batch: found only by reading everything
    paths["nan"] = tmp / "nan.npz"
    np.savez(paths["nan"], input=bad, labels=y)
    return paths


@pytest.fixture
def no_work(monkeypatch):
    """Fail if compress starts any stage."""
    def refuse(*args, **kwargs):
        raise AssertionError("a stage ran before the inputs were checked")
    monkeypatch.setattr(importlib.import_module("onnxprune.compress"), "optimize", refuse)


def test_accuracy_gate_without_labels_is_exit_2_in_check_and_compress(data):
    result = run("check", MODEL, MODEL, "--data", data["unlabelled"], "--max-accuracy-drop", "0.001",
                 "--providers", "cpu")
    assert result.exit_code == 2, result.output
    assert "--max-accuracy-drop needs labels" in result.output
    out = data["tmp"] / "never.onnx"
    result = run("compress", MODEL, "-o", out, "--calib", CALIB, "--eval", data["unlabelled"],
                 "--max-accuracy-drop", "0.001", "--no-quantize", "--latency-batch", "0")
    assert result.exit_code == 2, result.output
    assert "--max-accuracy-drop needs labels" in result.output and not out.exists()


def test_classifier_gate_on_a_non_classifier_output_is_exit_2(data):
    import onnx_ir as ir

    import onnxprune
    model = onnxprune.load_model(MODEL)
    model.graph.outputs[0].shape = ir.Shape(["N", 2, 5])  # declared 3-D: no top-1 to judge
    with pytest.raises(UsageError, match="--min-top1 need a classifier output"):
        check(model, model.clone(), data["indices"], criteria={"min_top1": 0.9}, providers=["cpu"])


def test_labels_array_is_found_without_being_named(data):
    result = run("check", MODEL, MODEL, "--data", data["indices"], "--providers", "cpu")
    assert result.exit_code == 0, result.output
    assert "labels: the 'labels' array of the data (found without --labels)" in result.output
    assert re.search(r"\d+\.\d+% -> \d+\.\d+%", result.output)  # accuracy shown, not '-'


def test_preset_criterion_without_labels_is_marked_not_evaluated(data):
    report = data["tmp"] / "int8.json"
    result = run("check", MODEL, MODEL, "--data", data["unlabelled"], "--preset", "int8", "--providers", "cpu",
                 "--json", report)
    assert result.exit_code == 0, result.output
    assert "accuracy drop <= 0.01 (not evaluated)" in result.output
    assert json.loads(report.read_text())["unevaluated"] == ["max_accuracy_drop"]


def test_one_hot_labels_give_the_same_accuracy_as_indices(data):
    by_index = check(MODEL, MODEL, data["indices"], labels="labels", providers=["cpu"]).output("logits")
    one_hot = check(MODEL, MODEL, data["onehot"], labels="labels", providers=["cpu"]).output("logits")
    assert one_hot["accuracy_reference"] == by_index["accuracy_reference"] > 0.9
    named = check(MODEL, MODEL, data["targets"], labels="targets", providers=["cpu"]).output("logits")
    assert named["accuracy_reference"] == by_index["accuracy_reference"]


@pytest.mark.parametrize("name, message", [("probabilities", "one-hot rows"),
                                           ("out_of_range", "class index 19 but the model has 10 classes")])
def test_other_labels_are_refused_before_any_work(data, no_work, name, message):
    result = run("check", MODEL, MODEL, "--data", data[name], "--labels", "labels", "--providers", "cpu")
    assert result.exit_code == 2 and message in result.output, result.output
    with pytest.raises(DataError, match=message):
        compress(MODEL, calib=CALIB, eval_data=data[name], labels="labels", target_macs=0.7)


def test_compress_reads_every_input_before_any_work(data, no_work):
    with pytest.raises(DataError, match="NaN"):
        compress(MODEL, calib=CALIB, eval_data=data["nan"], quantize_model=False, ratio=0.2)
    with pytest.raises(DataError, match="NaN"):
        compress(MODEL, calib=data["nan"], eval_data=EVAL, ratio=0.2)


def test_compress_report_carries_the_check_results(tmp_path):
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    result = run("compress", MODEL, "-o", out, "--calib", CALIB, "--eval", EVAL, "--labels", "labels",
                 "--latency-batch", "0", "--report", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["schema_version"] == 1 and data["passed"] is True
    check_report = data["check"]
    assert check_report["tolerances"]["preset"] == "fidelity" and check_report["failures"] == []
    assert data["fidelity"]["problem"] is None and data["fidelity"]["target"] == {"cosine": 0.9, "agreement": 0.9}
    logits = check_report["comparisons"][0]["outputs"]["logits"]
    assert logits["accuracy_reference"] > 0.98 and logits["cosine"] > 0.99


def test_top_k_is_capped_by_the_class_count():
    from onnxprune.parity.metrics import OutputStats
    stats = OutputStats(top_k=5)
    scores = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    stats.update(scores, scores)
    assert stats.summary()["top_k"] == 4


@pytest.mark.parametrize("flag, value", [("--min-top1", "1.5"), ("--min-topk", "99"),
                                         ("--max-accuracy-drop", "-0.1"), ("--min-cosine", "2")])
def test_share_criteria_are_range_checked(flag, value):
    result = run("check", MODEL, MODEL, flag, value, "--providers", "cpu")
    assert result.exit_code == 2 and f"{flag} must be between" in result.output, result.output
