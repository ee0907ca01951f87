"""The committed digits sample model: accurate on held-out data, and the graph the README promises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from onnxprune.io import load_model
from onnxprune.runtime import session

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((DIGITS / "metrics.json").read_text())


@pytest.fixture(scope="module")
def model() -> ir.Model:
    return load_model(DIGITS / "digits.onnx")


@pytest.mark.parametrize("split", ["calib", "eval"])
def test_data_files_have_the_documented_layout(split, metrics):
    with np.load(DIGITS / f"{split}.npz") as data:
        images, labels = data["input"], data["labels"]
    assert images.dtype == np.float32 and images.shape == (metrics["samples"][split], 1, 8, 8)
    assert labels.dtype == np.int64 and labels.shape == (len(images),)
    assert 0.0 <= images.min() and images.max() <= 1.0  # pixels / 16
    assert set(np.unique(labels)) == set(range(10))  # stratified: every class present


def test_held_out_accuracy_matches_metrics(metrics):
    with np.load(DIGITS / "eval.npz") as data:
        images, labels = data["input"], data["labels"]
    with session(DIGITS / "digits.onnx") as sess:
        logits = sess.run(["logits"], {"input": images})[0]
    assert logits.shape == (len(labels), 10)
    correct = int((logits.argmax(axis=1) == labels).sum())
    # One sample of slack: other CPUs' kernels may round a near-tie the other way.
    assert abs(correct - metrics["eval_correct"]) <= 1
    assert correct / len(labels) == pytest.approx(metrics["accuracy"]["eval"], abs=1.5 / len(labels))
    assert correct / len(labels) >= 0.95
    assert sum(metrics["samples"].values()) == 1797  # all of sklearn's digits, split once


def test_graph_has_the_promised_structure(model):
    ops = [node.op_type for node in model.graph]
    assert ops.count("BatchNormalization") == 5  # unfolded, one per conv
    assert ops.count("Conv") == 5
    for op in ("GlobalAveragePool", "Flatten", "Gemm"):
        assert op in ops
    (add,) = [node for node in model.graph if node.op_type == "Add"]
    # Residual: both addends are computed activations, one of them the block input.
    producers = {value.producer().op_type for value in add.inputs}
    assert producers == {"BatchNormalization", "Relu"}
    assert model.opset_imports[""] == 17


def test_io_signature_has_a_dynamic_batch(model):
    (x,), (y,) = model.graph.inputs, model.graph.outputs
    assert x.name == "input" and x.dtype == ir.DataType.FLOAT
    assert isinstance(x.shape[0], ir.SymbolicDim) and x.shape[0].value == "batch"
    assert list(x.shape[1:]) == [1, 8, 8]
    assert y.name == "logits" and y.shape[0].value == "batch" and y.shape[1] == 10
    assert "pixels (0..16) / 16" in model.metadata_props["preprocessing"]
