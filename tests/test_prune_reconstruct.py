"""Least-squares reconstruction after pruning (passes/prune/reconstruct.py, refit.py, lstsq.py).

The exact cases: the removed channel is an affine combination of kept ones and the layer that
reads it is linear, so a refit recovers the original outputs while plain pruning (sliced
weights, calibration-mean compensation) cannot. On the shipped digits model: the refit keeps
the held-out accuracy that plain pruning loses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from onnxprune import load_model, runtime
from onnxprune.api import prune
from onnxprune.cli import cli
from onnxprune.errors import UsageError
from onnxprune.graphutils import const_array
from onnxprune.passes.prune import PruneOptions, PrunePass
from onnxprune.passes.prune.lstsq import FLUSH_ROWS, NormalEquations, conv_rows
from onnxprune.runtime import OrtRunner
from onnxprune.validate import check_model
from tiny import Tiny, fresh, max_error

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"
RNG = np.random.default_rng(7)


def batches_of(arrays: list[np.ndarray]):
    return lambda: ({"x": a} for a in arrays)


def dependent_rows(rows: int, cols: int, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """A weight whose last row is 0.1·row0 − 0.1·row1 (the smallest L1 norm: pruned first),
    and a bias that makes that channel an affine combination of the others (+ ``offset``)."""
    w = RNG.standard_normal((rows, cols)).astype(np.float32)
    w[-1] = 0.1 * w[0] - 0.1 * w[1]
    b = RNG.standard_normal(rows).astype(np.float32)
    b[-1] = 0.1 * b[0] - 0.1 * b[1] + offset
    return w, b


def conv_chain():
    g = Tiny({"x": ["N", 4, 6, 6]})
    w1, b1 = dependent_rows(3, 4, offset=0.0)  # a constant would differ at the zero padding
    y = g.op("Conv", ["x", g.init("w1", w1.reshape(3, 4, 1, 1)), g.init("b1", b1)], name="conv1")
    w2 = g.init("w2", RNG.standard_normal((5, 3, 3, 3)).astype(np.float32))
    y = g.op("Conv", [y, w2], name="conv2", pads=[1, 1, 1, 1])
    return g.proto(y), (4, 6, 6)


def gemm_chain():
    g = Tiny({"x": ["N", 6]})
    w1, b1 = dependent_rows(3, 6, offset=0.5)
    y = g.op("Gemm", ["x", g.init("w1", w1), g.init("b1", b1)], name="fc1", transB=1)
    w2 = RNG.standard_normal((3, 5)).astype(np.float32)
    y = g.op("Gemm", [y, g.init("w2", w2), g.init("b2", RNG.standard_normal(5).astype(np.float32))],
             name="fc2", alpha=0.5, beta=2.0)
    return g.proto(y), (6,)


def matmul_chain():
    """torch's Linear on 3-D inputs: MatMul(x, Transpose(W)) then Add(bias)."""
    g = Tiny({"x": ["N", 4, 6]})
    w1, b1 = dependent_rows(3, 6, offset=0.5)
    y = g.op("MatMul", ["x", g.op("Transpose", [g.init("w1", w1)], perm=[1, 0])], name="mm1")
    y = g.op("Add", [y, g.init("b1", b1)])
    y = g.op("MatMul", [y, g.init("w2", RNG.standard_normal((3, 5)).astype(np.float32))], name="mm2")
    return g.proto(y), (4, 6)


def pruned_error(proto, shape, reconstruct: bool, refit_inputs: str = "original"):
    # 1024 samples: the ridge (a prior worth ~RIDGE·D rows) is then negligible
    calib = [RNG.standard_normal((64, *shape)).astype(np.float32) for _ in range(16)]
    model = fresh(proto)
    options = PruneOptions("l1", 1 / 3, round_to=1, reconstruct=reconstruct, refit_inputs=refit_inputs)
    result = PrunePass(options, calibration=batches_of(calib), runner=OrtRunner())(model)
    assert result.modified and result.plan.keep[0].tolist() == [0, 1]  # the dependent channel went
    check_model(model)
    feeds = {"x": RNG.standard_normal((16, *shape)).astype(np.float32)}
    reference = runtime.run(fresh(proto), feeds)
    out = next(iter(reference))
    return max_error(reference[out], runtime.run(model, feeds)[out]), result.report


@pytest.mark.parametrize("refit_inputs", ["pruned", "original"])
@pytest.mark.parametrize("build", [conv_chain, gemm_chain, matmul_chain])
def test_refit_recovers_a_removed_channel_that_depends_on_kept_ones(build, refit_inputs):
    proto, shape = build()
    refit, report = pruned_error(proto, shape, True, refit_inputs)
    plain, _ = pruned_error(proto, shape, False)
    assert refit <= 1e-4, refit
    assert plain > 1e-2, plain  # sliced weights + mean compensation lose the channel's variation
    (fit,) = report.reconstruction
    assert fit.status == "refit" and fit.inputs == (3, 2) and fit.error_after < 1e-3 < fit.error_before


def test_grouped_consumers_keep_the_mean_compensation_and_say_so():
    g = Tiny({"x": ["N", 4, 5, 5]})
    y = g.op("Conv", ["x", g.init("w1", RNG.standard_normal((4, 4, 1, 1)).astype(np.float32))], name="conv1")
    y = g.op("Relu", [y])
    y = g.op("Conv", [y, g.init("w2", RNG.standard_normal((4, 2, 3, 3)).astype(np.float32))], name="grouped", group=2)
    proto = g.proto(y)
    model = fresh(proto)
    calib = [RNG.standard_normal((4, 4, 5, 5)).astype(np.float32)]
    result = PrunePass(PruneOptions("l1", 0.5, round_to=1), calibration=batches_of(calib), runner=OrtRunner())(model)
    check_model(model)
    (fit,) = result.report.reconstruction
    assert fit.status == "skipped" and "grouped Conv" in fit.note
    assert result.report.compensation == "calibration means"
    assert any("folded approximately" in line for line in result.report.changes)


def test_too_few_rows_keep_the_sliced_weights_with_a_recentred_bias():
    proto, shape = gemm_chain()
    model = fresh(proto)
    calib = [RNG.standard_normal((2, *shape)).astype(np.float32)]  # 2 rows for 2 inputs + bias
    result = PrunePass(PruneOptions("l1", 1 / 3, round_to=1), calibration=batches_of(calib), runner=OrtRunner())(model)
    check_model(model)
    (fit,) = result.report.reconstruction
    assert fit.status == "recentred" and "2 rows for 2 inputs" in fit.note
    w2 = const_array(fresh(proto).graph.initializers["w2"])
    np.testing.assert_allclose(const_array(model.graph.initializers["w2"]), w2[:2], rtol=1e-7)  # sliced only


def test_nothing_pruned_nothing_refit():
    proto, shape = conv_chain()
    model = fresh(proto)
    calib = [RNG.standard_normal((2, *shape)).astype(np.float32)]
    result = PrunePass(PruneOptions("l1", 0.0), calibration=batches_of(calib), runner=OrtRunner())(model)
    assert not result.modified and not result.report.reconstruction


def test_reconstruction_needs_calibration_data():
    with pytest.raises(UsageError, match="calibration"):
        PrunePass(PruneOptions("l1", 0.3, reconstruct=True))
    with pytest.raises(UsageError, match="--refit-inputs"):
        PrunePass(PruneOptions("l1", 0.3, refit_inputs="both"), calibration=batches_of([]), runner=OrtRunner())
    options = PruneOptions("l1", 0.3)
    assert not PrunePass(options).reconstruct
    assert PrunePass(options, calibration=batches_of([]), runner=OrtRunner()).reconstruct


# --- the statistics ---------------------------------------------------------------------------


def test_normal_equations_stream_two_halves_like_the_whole():
    x = RNG.standard_normal((3 * FLUSH_ROWS, 7)) + 5.0  # far from zero: the shift matters
    y = x @ RNG.standard_normal((7, 3)) + 0.1 * RNG.standard_normal((len(x), 3))
    whole, halves, rows = NormalEquations(7, 3), NormalEquations(7, 3), NormalEquations(7, 3)
    whole.update(x, y)
    halves.update(x[: len(x) // 2], y[: len(x) // 2])
    halves.update(x[len(x) // 2:], y[len(x) // 2:])
    for i in range(0, len(x), 5):  # many small batches, flushed in blocks
        rows.update(x[i:i + 5], y[i:i + 5])
    a, c = whole.solve(1e-4)
    for other in (halves, rows):
        assert other.n == len(x)
        b, d = other.solve(1e-4)
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(d, c, rtol=1e-9, atol=1e-12)
    # and the solution is the plain least-squares one (ridge 0)
    design = np.hstack([x, np.ones((len(x), 1))])
    exact = np.linalg.lstsq(design, y, rcond=None)[0]
    a, c = whole.solve(0.0)
    np.testing.assert_allclose(a, exact[:-1], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(c, exact[-1], rtol=1e-8, atol=1e-10)
    residual = np.linalg.norm(y - design @ exact) / np.linalg.norm(y - y.mean(axis=0))
    assert whole.error(a, c) == pytest.approx(residual, rel=1e-6)


def test_normal_equations_refuse_what_they_cannot_solve():
    eq = NormalEquations(4, 2)
    eq.update(RNG.standard_normal((3, 4)), RNG.standard_normal((3, 2)))
    assert "3 rows for 4 inputs" in eq.solve(1e-4)
    eq = NormalEquations(2, 1)
    eq.update(np.ones((10, 2)), RNG.standard_normal((10, 1)))
    assert "constant" in eq.solve(1e-4)


def test_refit_statistics_do_not_depend_on_the_batching():
    proto, shape = conv_chain()
    calib = RNG.standard_normal((16, *shape)).astype(np.float32)  # 16·36 rows: no subsampling
    weights = []
    for parts in ([calib], [calib[:8], calib[8:]]):
        model = fresh(proto)
        PrunePass(PruneOptions("l1", 1 / 3, round_to=1), calibration=batches_of(parts), runner=OrtRunner())(model)
        weights.append(const_array(model.graph.initializers["w2"]))
    np.testing.assert_allclose(weights[0], weights[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "attrs",
    [dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2], pads=[0, 1, 1, 0]), dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
     dict(auto_pad="SAME_UPPER", strides=[2, 2]), dict(auto_pad="SAME_LOWER"), dict(auto_pad="VALID")],
)
def test_conv_rows_reproduce_the_convolution(attrs):
    x = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    g = Tiny({"x": [2, 3, 7, 6]})
    y = g.op("Conv", ["x", g.init("w", w)], name="conv", **attrs)
    proto = g.proto(y)
    expected = runtime.run(fresh(proto), {"x": x})[y]
    node = next(iter(fresh(proto).graph))
    index = np.arange(expected.shape[0] * np.prod(expected.shape[2:]))[::3]
    rows = conv_rows(node, (3, 3), x, expected.shape, index)
    got = rows @ w.reshape(4, -1).T.astype(np.float64)
    np.testing.assert_allclose(got, np.moveaxis(expected, 1, -1).reshape(-1, 4)[index], rtol=1e-4, atol=1e-4)


# --- the shipped digits model -----------------------------------------------------------------


def accuracy(model: ir.Model) -> float:
    data = np.load(DIGITS / "eval.npz")
    return float((runtime.run(model, {"input": data["input"]})["logits"].argmax(1) == data["labels"]).mean())


def test_refit_keeps_the_digits_accuracy_that_plain_pruning_loses():
    calib = DIGITS / "calib.npz"
    plain = prune(DIGITS / "digits.onnx", criterion="l1", target_macs=0.5, calib=calib, reconstruct=False,
                  latency_runs=0, guard=False)  # the loss itself is measured here: no guard giving groups back
    refit = prune(DIGITS / "digits.onnx", criterion="l1", target_macs=0.5, calib=calib, latency_runs=0,
                  guard=False)  # on with calib
    check_model(refit.model)
    assert refit.after["macs"] <= 0.5 * refit.before["macs"]
    assert refit.after == plain.after  # the same channels removed; only the weights differ
    fits = refit.report.reconstruction
    assert {f.status for f in fits} == {"refit"} and all(f.error_after < f.error_before for f in fits)
    plain_acc, refit_acc = accuracy(plain.model), accuracy(refit.model)
    assert refit_acc > plain_acc + 0.2 and refit_acc > 0.95, (plain_acc, refit_acc)


def test_cli_reconstructs_with_calib_and_reports_each_layer(tmp_path):
    model = tmp_path / "digits.onnx"
    shutil.copy(DIGITS / "digits.onnx", model)
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    # l1 named: thinet (the default with --calib) ranks other groups first, so other layers are refit
    args = ["-q", "prune", str(model), "-o", str(out), "--ratio", "0.3", "--criterion", "l1", "--latency-runs", "0",
            "--report", str(report)]
    result = CliRunner().invoke(cli, [*args, "--calib", str(DIGITS / "calib.npz"), "--calib-limit", "64",
                                      "--refit-inputs", "pruned"])
    assert result.exit_code == 0, result.output
    assert "refit by least squares" in result.output and "/fc/Gemm" in result.output
    data = json.loads(report.read_text())
    assert {f["layer"] for f in data["reconstruction"]} >= {"/block/conv1/Conv", "/fc/Gemm"}
    check_model(load_model(out))
    result = CliRunner().invoke(cli, [*args, "--calib", str(DIGITS / "calib.npz"), "--no-reconstruct"])
    assert result.exit_code == 0 and json.loads(report.read_text())["reconstruction"] is None
    result = CliRunner().invoke(cli, [*args, "--reconstruct"])
    assert result.exit_code == 2 and "--calib" in result.output


def test_a_bad_plan_is_refused_before_any_weight_changes():
    from onnxprune.passes.prune.analysis import analyze
    from onnxprune.passes.prune.group import PrunePlan
    from onnxprune.passes.prune.reconstruct import prune_and_refit

    proto, shape = conv_chain()
    model = fresh(proto)
    groups = analyze(model)
    before = {name: const_array(v).copy() for name, v in model.graph.initializers.items()}
    with pytest.raises(UsageError, match="sorted"):
        prune_and_refit(model, groups, PrunePlan({0: np.array([1, 0])}),
                        batches_of([RNG.standard_normal((2, *shape)).astype(np.float32)]), runner=OrtRunner())
    after = {name: const_array(v) for name, v in model.graph.initializers.items()}
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)


# --- a refit that never hurts: held-out samples decide -----------------------------------------


def independent_channels(constant_weights: bool = False, rng: np.random.Generator = RNG):
    """fc1 rotates 40 inputs (independent channels, the last ones smallest: l1 removes them),
    fc2 reads them: a removed channel is noise the kept ones cannot predict, so a refit on few
    rows only fits that noise."""
    g = Tiny({"x": ["N", 40]})
    w1 = np.linalg.qr(rng.standard_normal((40, 40)))[0] * np.linspace(2, 0.5, 40)[:, None]
    w2 = rng.standard_normal((4, 40))
    add = g.const if constant_weights else g.init
    y = g.op("Gemm", ["x", add("w1", w1.astype(np.float32))], name="fc1", transB=1)
    y = g.op("Gemm", [y, add("w2", w2.astype(np.float32))], name="fc2", transB=1)
    return g.proto(y)


def test_a_refit_that_overfits_is_refused_on_held_out_samples():
    # Its own generator: the shared RNG's state depends on which tests ran before in the same
    # xdist worker, and 5 of 30 draws break an assertion (the held-out rows pick the refit, or
    # the refit ends a little worse on the test rows): the failures came and went with the order.
    rng = np.random.default_rng(0)
    proto = independent_channels(rng=rng)
    calib = [rng.standard_normal((48, 40)).astype(np.float32)]  # 36 fitted rows for 30 inputs
    feeds = {"x": rng.standard_normal((256, 40)).astype(np.float32)}
    reference = next(iter(runtime.run(fresh(proto), feeds).values()))
    errors, fits = {}, {}
    for refit in (True, False):
        model = fresh(proto)
        options = PruneOptions("l1", 0.25, round_to=1, reconstruct=refit)
        result = PrunePass(options, calibration=batches_of(calib), runner=OrtRunner())(model)
        errors[refit] = max_error(reference, next(iter(runtime.run(model, feeds).values())))
        fits[refit] = result.report.reconstruction
    (fit,) = fits[True]
    # the old rule (a fixed ridge, judged on the fitted rows) refit this layer: 60 % more error
    assert fit.status != "refit" and "held-out" in fit.note, fit
    assert fit.heldout_after <= fit.heldout_before
    assert errors[True] <= errors[False] * 1.05, errors


def test_the_held_out_choice_still_refits_what_the_kept_channels_explain():
    proto, shape = gemm_chain()
    _, report = pruned_error(proto, shape, True)
    (fit,) = report.reconstruction
    assert fit.status == "refit" and fit.ridge is not None and fit.heldout_after < 1e-3 < fit.heldout_before


def test_weights_in_constant_nodes_are_refit():
    """Paddle's exporter writes every weight as a Constant node: prune() lifts them to
    initializers, so that the refit (which writes initializers) does not skip every layer."""
    proto = independent_channels(constant_weights=True)
    calib = {"x": RNG.standard_normal((512, 40)).astype(np.float32)}
    result = prune(fresh(proto), ratio=0.25, round_to=1, calib=calib, latency_runs=0, guard=False)
    (fit,) = result.report.reconstruction
    assert fit.status != "skipped", fit


def test_normal_equations_absorb_like_one_stream_and_the_ridge_pulls_to_the_prior():
    x = RNG.standard_normal((2 * FLUSH_ROWS, 5)) + 3.0
    y = x @ RNG.standard_normal((5, 2)) + RNG.standard_normal((len(x), 2))
    whole, first, second = NormalEquations(5, 2), NormalEquations(5, 2), NormalEquations(5, 2)
    whole.update(x, y)
    first.update(x[:100], y[:100])
    second.update(x[100:] + 0.0, y[100:])
    first.absorb(second)
    assert first.n == whole.n
    for got, want in zip(first.solve_path([1e-3])[0], whole.solve_path([1e-3])[0]):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(whole.solve_path([1e-3])[0][0], whole.solve(1e-3)[0], rtol=1e-6)
    prior = RNG.standard_normal((5, 2))
    strong = whole.solve_path([1e9], prior)[0][0]
    np.testing.assert_allclose(strong, prior, rtol=1e-5, atol=1e-6)


def test_calibration_data_without_a_runner_is_a_usage_error():
    """The pass runs no model itself: data-driven work names the runner it needs."""
    with pytest.raises(UsageError, match="runner"):
        PrunePass(PruneOptions("l1", 0.3), calibration=batches_of([]))
