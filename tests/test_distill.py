"""Distillation and the taylor criterion through onnx2torch (the ``distill`` extra).

Kept short on purpose (a few epochs on the digits model): the accuracy goals on real models
live in ``bench/accuracy_bench.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxprune import load_model, runtime
from onnxprune.api import prune, torch_bridge
from onnxprune.errors import UsageError
from tiny import Tiny, fresh, rand

pytestmark = pytest.mark.skipif(not torch_bridge.available(), reason="needs onnxprune[distill] (torch, onnx2torch)")

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"
CALIB = str(DIGITS / "calib.npz")


@pytest.fixture(scope="module")
def held_out():
    data = np.load(DIGITS / "eval.npz")
    reference = runtime.run(load_model(DIGITS / "digits.onnx"), {"input": data["input"]})["logits"].argmax(1)
    return data["input"], reference


def agreement(model, held_out) -> float:
    inputs, reference = held_out
    return float((runtime.run(model, {"input": inputs})["logits"].argmax(1) == reference).mean())


def structure(model) -> list:
    """Everything but the weights' values: nodes, their wiring and attributes, tensor shapes."""
    nodes = [(n.name, n.op_type, [v.name if v else None for v in n.inputs], [v.name for v in n.outputs],
              sorted((k, str(a.value)) for k, a in n.attributes.items())) for n in model.graph]
    tensors = sorted((name, tuple(v.const_value.shape.numpy())) for name, v in model.graph.initializers.items())
    return [nodes, tensors, [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]]


def test_distillation_recovers_fidelity_on_held_out_data_and_keeps_the_graph(held_out):
    """l1 without data at -50 % MACs loses most of the digits model; a few epochs of
    distillation on unlabelled calibration samples bring the held-out agreement back, and
    only the values of initializers changed (the graph is ours, never re-exported)."""
    from onnxprune.api.distill_api import distill

    pruned = prune(DIGITS / "digits.onnx", criterion="l1", target_macs=0.5, latency_runs=0).model
    before, shape = agreement(pruned, held_out), structure(pruned)
    weights = {k: v.const_value.numpy().copy() for k, v in pruned.graph.initializers.items()}
    result = distill(pruned, load_model(DIGITS / "digits.onnx"), CALIB, epochs=6, seconds=40, batch_size=32)
    after = agreement(pruned, held_out)
    assert result.status == "trained", result.reason
    assert result.loss_after < result.loss_before and result.samples[1] > 0
    assert before < 0.8 and after > before + 0.15 and after >= 0.9, (before, after)
    assert structure(pruned) == shape
    changed = [k for k, v in pruned.graph.initializers.items() if not np.array_equal(v.const_value.numpy(), weights[k])]
    assert len(changed) == result.tensors > 0


def test_weights_are_bound_by_name_through_gemm_transposes():
    """A Gemm with transB=0 and alpha/beta becomes an nn.Linear holding alpha·Bᵀ: writing
    back undoes that, so unchanged torch weights give back the ONNX tensors exactly."""
    g = Tiny({"x": [2, 6]})
    y = g.op("Gemm", ["x", g.init("b", rand(6, 4)), g.init("c", rand(4))], alpha=0.5, beta=2.0, transB=0)
    model = fresh(g.proto(y))
    original = {k: v.const_value.numpy().copy() for k, v in model.graph.initializers.items()}
    graph = torch_bridge.to_torch(model)
    assert sorted(b.name for b in graph.bindings) == ["b", "c"]
    graph.write_back(model)
    for name, array in original.items():
        np.testing.assert_allclose(model.graph.initializers[name].const_value.numpy(), array, rtol=1e-6)


def _useless_channel_model():
    """Conv(1→4) → Relu → Conv(4→3) → GlobalAveragePool → Flatten: channel 0 has by far the
    largest weights of the first Conv, but the second Conv reads it with zero weights."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    w1[0] *= 20.0
    w2 = rng.normal(size=(3, 4, 3, 3)).astype(np.float32)
    w2[:, 0] = 0.0
    g = Tiny({"input": ["N", 1, 8, 8]})
    h = g.op("Relu", [g.op("Conv", ["input", g.init("w1", w1), g.init("b1", np.full(4, 0.1, np.float32))],
                           name="conv1", pads=[1, 1, 1, 1])])
    h = g.op("Conv", [h, g.init("w2", w2), g.init("b2", np.zeros(3, np.float32))], name="conv2", pads=[1, 1, 1, 1])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [h])])
    return g.proto(y)


@pytest.mark.parametrize("with_labels", [True, False])
def test_taylor_ranks_a_useless_channel_last(with_labels):
    from onnxprune.api.taylor import Taylor
    from onnxprune.calibration import open_dataset
    from onnxprune.passes.prune.analysis import analyze
    from onnxprune.passes.prune.importance import Magnitude

    model = fresh(_useless_channel_model())
    rng = np.random.default_rng(0)
    data = {"input": rng.normal(size=(24, 1, 8, 8)).astype(np.float32), "labels": rng.integers(0, 3, 24)}
    dataset = open_dataset(data, model, labels="labels" if with_labels else None)
    group = next(g for g in analyze(model) if g.prunable and g.root.name == "conv1")
    taylor = Taylor(dataset, 8, dataset.labels)
    taylor.prepare(model, [group])
    scores = taylor(group)
    assert scores[0] == pytest.approx(0.0, abs=1e-9) and np.all(scores[1:] > 1e-6), scores
    assert np.argmax(Magnitude(1)(group)) == 0  # l1 would keep it first


def test_taylor_ranks_the_digits_model_better_than_l1(held_out):
    """Without the refit (the ranking alone, the removed channels' means folded into the next
    biases) at -30 % MACs: l1 keeps 94 % agreement, taylor on the labels 98 %."""
    options = dict(calib=CALIB, target_macs=0.7, reconstruct=False, latency_runs=0, guard=False)  # rankings compared
    taylor = prune(DIGITS / "digits.onnx", criterion="taylor", calib_labels="labels", **options)
    l1 = prune(DIGITS / "digits.onnx", criterion="l1", **options)
    assert taylor.report.criterion == "taylor"
    assert agreement(taylor.model, held_out) >= max(0.97, agreement(l1.model, held_out) + 0.02)


def test_a_graph_the_converter_cannot_take_is_declined_with_the_reason():
    from onnxprune.api.distill_api import distill

    g = Tiny({"input": ["N", 6]})
    y = g.op("Hardmax", [g.op("MatMul", ["input", g.init("w", rand(6, 5))])])
    model = fresh(g.proto(y))
    data = {"input": rand(8, 6)}
    result = distill(model, fresh(g.proto(y)), data, epochs=1)
    assert result.status == "declined" and "onnx2torch cannot convert" in result.reason
    with pytest.raises(UsageError, match="criterion 'taylor': onnx2torch cannot convert"):
        prune(model, criterion="taylor", calib=data, ratio=0.4, round_to=1, latency_runs=0)


def test_without_the_extra_every_entry_point_says_how_to_install(monkeypatch):
    monkeypatch.setattr(torch_bridge, "available", lambda: False)
    for options in ({"distill": True}, {"criterion": "taylor"}):
        with pytest.raises(UsageError, match=r"onnxprune\[distill\]"):
            prune(DIGITS / "digits.onnx", calib=CALIB, target_macs=0.5, latency_runs=0, **options)


def test_cli_distill_needs_calibration_data(tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli import cli

    out = tmp_path / "x.onnx"
    res = CliRunner().invoke(cli, ["prune", str(DIGITS / "digits.onnx"), "-o", str(out), "--ratio", "0.3", "--distill"])
    assert res.exit_code == 2 and "--calib" in res.output and not out.exists(), res.output


def test_hints_match_only_tensors_whose_channels_were_kept():
    """Pruning one group leaves the tensors before it whole: those (same name, same shape in
    the folded original) are matched as hints, a pruned one never."""
    result = prune(DIGITS / "digits.onnx", group_ratios={"/down/conv/Conv": 0.5}, round_to=1, calib=CALIB,
                   reconstruct=False, latency_runs=0, distill=True, distill_epochs=1, distill_hints=2)
    notes = " ".join(result.distill.notes)
    assert result.distill.status in ("trained", "unchanged") and "also matched 2 intermediate tensors" in notes
    assert "/down/conv/Conv_output_0" not in notes and "/down/relu" not in notes
