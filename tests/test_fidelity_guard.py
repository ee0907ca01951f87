"""Never silently destroy: quantize compares with the float model on held-out samples and keeps
float the nodes that wreck the outputs (magika's byte classifier: top-1 agreement 0 % -> 97 %).

The quirk in small: class logits are a tiny signal on a large common offset (Add 1000). An
INT8 Add output has steps of ~0.08, so every class gets the same logit and the argmax is lost,
while the cosine stays 1.0: only top-1 agreement sees it.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import runtime
from onnxprune.api import fidelity_guard, fidelity_metric
from onnxprune.cli import cli
from onnxprune.io import load_model
from tiny import offset_classifier as offset_model


@pytest.fixture
def offset_classifier(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "m.onnx"
    onnx.save(offset_model(rng), path)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((128, 16)).astype(np.float32))
    return path, tmp_path / "calib.npz"


def top1(reference, candidate, x):
    a, b = runtime.run(load_model(reference), {"x": x})["p"], runtime.run(load_model(candidate), {"x": x})["p"]
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def test_without_the_guard_the_classifier_is_destroyed(offset_classifier, tmp_path):
    model, calib = offset_classifier
    onnxprune.quantize(model, tmp_path / "q.onnx", calib=calib, samples=64, guard=False, clean=False)
    assert top1(model, tmp_path / "q.onnx", np.load(calib)["x"][64:]) < 0.5


def test_the_guard_keeps_the_culprit_float_and_says_why(offset_classifier, tmp_path):
    model, calib = offset_classifier
    result = onnxprune.quantize(model, tmp_path / "q.onnx", calib=calib, samples=64, clean=False)
    assert "offset" in result.fidelity["kept_float"] and "agreement" in result.fidelity["kept_float"]["offset"]
    assert result.fidelity["before"]["top1"]["p"] < 0.5 <= 0.9 <= result.fidelity["after"]["top1"]["p"]
    assert top1(model, tmp_path / "q.onnx", np.load(calib)["x"][64:]) >= 0.9
    assert result.nodes_int8 >= 1  # the MatMul stays INT8
    assert result.declined["offset"].startswith("fidelity guard: ")  # why, not just "excluded"
    assert "kept_float" in str(result.to_dict()["fidelity"])
    shown = CliRunner().invoke(cli, ["-q", "quantize", str(model), "-o", str(tmp_path / "q2.onnx"),
                                     "--calib", str(calib), "--samples", "64", "--no-clean", "--no-latency"])
    assert shown.exit_code == 0 and "keeping 1 nodes float: offset" in shown.output, shown.output


def test_strict_fails_naming_the_culprits(offset_classifier, tmp_path):
    model, calib = offset_classifier
    result = CliRunner().invoke(cli, ["-q", "quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib",
                                      str(calib), "--samples", "64", "--no-clean", "--no-latency", "--strict"])
    assert result.exit_code == 1 and "culprits: offset" in result.output, result.output
    assert not (tmp_path / "q.onnx").exists()


def test_fidelity_is_measured_per_sample():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    assert fidelity_guard.Fidelity({"p": 0.99}, {"p": 0.5}).problem().startswith("output 'p' agreement")
    assert fidelity_guard.Fidelity({"p": 0.5}, {}).problem().startswith("output 'p' cosine")
    assert fidelity_guard.Fidelity({"p": 0.99}, {"p": 1.0}).problem() is None
    held = fidelity_guard.held_out([{"x": a}, {"x": a + 1}], skip=2, count=2)
    assert np.array_equal(held["x"], a + 1)


def test_held_out_samples_are_streamed():
    """Only the rows it may return are kept from the batches (not every calibration sample):
    after the calibrated ones when enough follow them, else the first ones."""
    def batches(n):
        for i in range(n):
            batch = {"x": np.full((1, 4), i, np.float32)}
            yield batch
            batch["x"][:] = -1  # a batch reused by the reader: what was kept must be a copy
    assert fidelity_guard.held_out(batches(1000), skip=100, count=32)["x"][:, 0].tolist() == list(range(100, 132))
    assert fidelity_guard.held_out(batches(110), skip=100, count=32)["x"][:, 0].tolist() == list(range(32))
    assert fidelity_guard.held_out(batches(120), skip=100, count=32)["x"][:, 0].tolist() == list(range(100, 120))


def _noisy(scale: float) -> onnxprune.io.ir.Model:
    """y = x + scale * cos(x): the float model when scale is 0, a lossy copy otherwise."""
    nodes = [helper.make_node("Cos", ["x"], ["s"], name="cos"), helper.make_node("Mul", ["s", "k"], ["n"], name="k"),
             helper.make_node("Add", ["x", "n"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "noisy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [numpy_helper.from_array(np.array(scale, np.float32), "k")])
    return onnxprune.io.ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_the_search_keeps_the_fewest_ranked_nodes_that_reach_the_target(monkeypatch):
    """Ranked n1..n8; the target holds once n1..n3 are float: tries 1, 2, 4 nodes, then bisects to 3."""
    ranked = [(f"n{i}", "measured") for i in range(1, 9)]
    monkeypatch.setattr(fidelity_guard, "ranking", lambda *args, **kwargs: ranked)
    tried = []

    def requantize(kept):
        tried.append(len(kept))
        return _noisy(0.0 if {"n1", "n2", "n3"} <= kept else 5.0)

    x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    result = fidelity_guard.guard(_noisy(0.0), _noisy(5.0), {"x": x}, requantize, int8=set())
    assert tried == [1, 2, 4, 3]
    assert set(result.kept_float) == {"n1", "n2", "n3"} and "rank 1 of 8" in result.kept_float["n1"]
    assert result.before.problem() is not None and result.after.problem() is None and result.tries == 4


def test_kept_nodes_that_save_most_time_are_given_back_to_int8_when_the_target_holds(monkeypatch):
    """The target needs n1 and n3 float; the prefix search keeps n1..n3, n2 (a large MatMul,
    say) with them. With per-node savings, the kept nodes that save time are tried back in
    INT8, most first (n2, n3, n1): only n2 stays there; n4 saves nothing and is not tried."""
    ranked = [(f"n{i}", "measured") for i in range(1, 5)]
    monkeypatch.setattr(fidelity_guard, "ranking", lambda *args, **kwargs: ranked)
    tried = []

    def requantize(kept):
        tried.append(set(kept))
        return _noisy(0.0 if {"n1", "n3"} <= kept else 5.0)

    x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    savings = {"n1": 1.0, "n2": 900.0, "n3": 5.0, "n4": -3.0}
    result = fidelity_guard.guard(_noisy(0.0), _noisy(5.0), {"x": x}, requantize, int8=set(), savings=lambda: savings)
    assert set(result.kept_float) == {"n1", "n3"} and result.after.problem() is None
    assert tried[-3:] == [{"n1", "n3"}, {"n1"}, {"n3"}]  # n2 back, then n3 and n1 tried (each fails)
    plain = fidelity_guard.guard(_noisy(0.0), _noisy(5.0), {"x": x}, requantize, int8=set())
    assert set(plain.kept_float) == {"n1", "n2", "n3"}  # without savings: the count-only search


def test_the_search_never_returns_a_worse_model(monkeypatch):
    """No prefix helps (each try is worse): the first quantization is kept, nothing float."""
    monkeypatch.setattr(fidelity_guard, "ranking", lambda *args, **kwargs: [("n1", "measured"), ("n2", "measured")])
    x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    result = fidelity_guard.guard(_noisy(0.0), _noisy(5.0), {"x": x}, lambda kept: _noisy(9.0), int8=set())
    assert result.kept_float == {} and result.after == result.before


def test_sequence_outputs_are_judged_per_position():
    """A CTC-like [N, T, C] output: argmax agreement per position (what a greedy decoder reads)."""
    ref = np.zeros((2, 4, 3), np.float32)
    ref[..., 1] = 1.0  # softmax rows
    cand = ref.copy()
    cand[0, 0] = [0.0, 0.4, 0.6]  # one position of eight flips; the cosine hardly moves
    assert fidelity_metric.agreement(ref, cand) == 7 / 8
    assert fidelity_metric.agreement(ref[:, 0, :1], cand[:, 0, :1]) is None  # one class: no argmax
    scores = np.full((2, 4, 3), 0.01, np.float32)  # sigmoid scores per anchor, not a distribution
    assert fidelity_metric.agreement(scores, scores[..., ::-1]) is None
    maps = np.array([[0.9, 0.8, 0.1, 0.0]], np.float32)  # scores: judged by decisions above 0.5
    assert fidelity_metric.decisions(maps, np.array([[0.9, 0.4, 0.6, 0.0]], np.float32)) == 1 / 3
    assert fidelity_metric.decisions(maps * 0, maps * 0) == 1.0
    assert fidelity_metric.Target.of(0.9) == fidelity_metric.Target(0.9, 0.9)
    assert fidelity_metric.Target.of(None) == fidelity_metric.Target()


def test_min_fidelity_is_checked(offset_classifier, tmp_path):
    model, calib = offset_classifier
    shown = CliRunner().invoke(cli, ["-q", "quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--calib",
                                     str(calib), "--min-fidelity", "1.5", "--no-latency"])
    assert shown.exit_code == 2 and "min_fidelity" in shown.output, shown.output


def test_the_guard_gives_back_ranges_an_entropy_threshold_cut(tmp_path):
    """A classifier whose class lives in rare large inputs (the tail of the histogram): entropy's
    threshold cuts it (as it cut PP-OCR's text-direction classifier to 41 % top-1 agreement,
    worse than chance). Keeping the only node float is no quantization; the guard gives the
    input back its observed range, the node stays INT8 (regression: it returned the 66 % model)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((160, 1024)) * 0.1).astype(np.float32)
    x[np.arange(160), rng.integers(0, 2, 160)] += 4.0  # the class: which of x[0], x[1] is hot
    w = (rng.standard_normal((1024, 2)) * 0.2).astype(np.float32)
    w[0, 0] = w[1, 1] = 1.0
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["p"], name="fc")], "tail",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=x)
    options = dict(calib=tmp_path / "calib.npz", samples=96, method="entropy", clean=False)
    onnxprune.quantize(tmp_path / "m.onnx", tmp_path / "plain.onnx", guard=False, **options)
    result = onnxprune.quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", save_table=tmp_path / "t.json", **options)
    held = {"x": x[96:]}
    reference = runtime.run(load_model(tmp_path / "m.onnx"), held)["p"].argmax(1)
    plain, guarded = (runtime.run(load_model(tmp_path / p), held)["p"].argmax(1) for p in ("plain.onnx", "q.onnx"))
    assert np.mean(plain == reference) < 0.8 and np.mean(guarded == reference) >= 0.95
    assert "entropy range" in result.fidelity["widened"]["x"]
    assert result.fidelity["kept_float"] == {} and result.nodes_int8 == 1
    assert result.table["x"].max > 4 and json.loads((tmp_path / "t.json").read_text())["tensors"]["x"]["max"] > 4
    shown = CliRunner().invoke(cli, ["-q", "quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q2.onnx"),
                                     "--calib", str(tmp_path / "calib.npz"), "--samples", "96", "--method", "entropy",
                                     "--no-clean", "--no-latency"])
    assert shown.exit_code == 0 and "ranges the calibration method cut" in shown.output, shown.output


@pytest.fixture
def chain(tmp_path):
    """fc1 -> Reshape -> fc2 -> Add: keeping fc1 float leaves the Reshape float, so fc2's
    input needs a range of its own (while fc1 is INT8 it shares fc1's output's)."""
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
               for n, s in (("W1", (16, 16)), ("W2", (16, 10)), ("b", (10,)))]
    shape = numpy_helper.from_array(np.array([-1, 16], np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Reshape", ["h", "shape"], ["r"], name="rs"),
             helper.make_node("MatMul", ["r", "W2"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", "b"], ["p"], name="add")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 10])],
                              [*weights, shape])
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((96, 16)).astype(np.float32))
    return path, tmp_path / "calib.npz"


@pytest.mark.parametrize(("method", "passes"), [("minmax", 1), ("entropy", 2)])
def test_the_guards_tries_calibrate_once_and_the_table_keeps_every_range(chain, tmp_path, monkeypatch, method,
                                                                          passes):
    """Tries that keep nodes float may need new ranges: minmax ranges them in the first pass
    (a reduction more each), a histogram method in one more pass for every try; the table
    saved and reported holds them all (a try's calibration once replaced it)."""
    from onnxprune.api import quantize_api

    model, calib = chain
    calls = []
    real = quantize_api.calibrate
    monkeypatch.setattr(quantize_api, "calibrate", lambda *a, **k: calls.append(k["tensors"]) or real(*a, **k))

    def tries(reference, quantized, feeds, requantize, **kwargs):
        made = [requantize(frozenset(kept)) for kept in ({"fc1"}, {"fc1", "add"}, {"add"})]
        fidelity = fidelity_metric.measure(reference, made[0], feeds)
        return fidelity_guard.GuardResult(made[0], fidelity, fidelity, {"fc1": "kept by the test"}, len(made))

    monkeypatch.setattr(quantize_api.fidelity_guard, "guard", tries)
    result = onnxprune.quantize(model, tmp_path / "q.onnx", calib=calib, samples=64, clean=False, method=method,
                                save_table=tmp_path / "t.json")
    assert len(calls) == passes
    saved = onnxprune.calibration.CalibrationTable.load(tmp_path / "t.json")
    assert {"x", "h", "r", "m"} <= set(saved) and set(saved) == set(result.table)
    assert result.calibration["tensors"] == len(saved) and result.calibration["method"] == method
    dequantized = {n.outputs[0].name for n in load_model(tmp_path / "q.onnx").graph if n.op_type == "DequantizeLinear"}
    assert any(name.startswith("r") for name in dequantized)  # fc2 reads r through its own Q/DQ


def test_large_activations_are_ranked_in_groups(offset_classifier, tmp_path, monkeypatch):
    """Past GROUP_BYTES a sample, the layer-wise ranking compares the tensors a group at a
    time (a detector's 840 MB of maps per sample and model are never all returned at once)."""
    from onnxprune.parity import layerwise

    model, calib = offset_classifier
    groups = []
    real = layerwise.localise
    monkeypatch.setattr(fidelity_guard, "GROUP_BYTES", 64)  # bytes: a tensor or two of [1, 16] floats
    monkeypatch.setattr(fidelity_guard, "localise", lambda *a, **k: groups.append(k["only"]) or real(*a, **k))
    result = onnxprune.quantize(model, tmp_path / "q.onnx", calib=calib, samples=64, clean=False)
    assert len(groups) > 1 and all(groups) and not set.intersection(*groups)
    assert "offset" in result.fidelity["kept_float"]  # the culprit found all the same
