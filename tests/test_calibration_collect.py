"""Collection with ONNX Runtime on real (PyTorch-exported) graphs, and the calibration table."""

from __future__ import annotations

import warnings

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxprune.calibration import (
    CalibrationTable,
    calibrate,
    collect,
    default_tensors,
    open_dataset,
)
from onnxprune.errors import DataError, UsageError
from onnxprune.io import load_model


@pytest.fixture(scope="module")
def resnet(zoo):
    path = zoo.export("resnet_basic", dynamic_batch=True)
    return path, load_model(path)


@pytest.fixture(scope="module")
def images(zoo):
    return {"input": zoo.sample_input("resnet_basic", batch=16, seed=1)}


def equal_stats(a, b) -> bool:
    assert a.tensors.keys() == b.tensors.keys()
    return all(
        (x.min, x.max, x.count, x.exponent, x.first) == (y.min, y.max, y.count, y.exponent, y.first)
        and np.array_equal(x.counts, y.counts)
        for x, y in zip(a.tensors.values(), (b.tensors[k] for k in a.tensors))
    )


def test_default_tensors_are_activations_of_quantizable_ops(resnet):
    _, model = resnet
    names = default_tensors(model)
    ops = {node.outputs[0].name: node.op_type for node in model.graph}
    assert names[0] == "input" and "output" in names
    assert {"Conv", "Relu", "Add", "Gemm"} <= {ops[n] for n in names if n in ops}
    assert not set(names) & set(model.graph.initializers)  # weights are not calibrated
    producers = {o.name: node for node in model.graph for o in node.outputs}
    for name in names:  # nor weights aliased through Identity by the exporter
        node = producers.get(name)
        assert node is None or not all(v.name in model.graph.initializers for v in node.inputs if v)


def test_weights_aliased_through_identity_are_not_calibrated():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])
    nodes = [
        helper.make_node("Identity", ["w"], ["w_alias"]),  # what the legacy exporter emits
        helper.make_node("MatMul", ["x", "w_alias"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [weight],
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert default_tensors(model) == ["x", "h", "y"]


def test_minmax_in_graph_equals_exposed_tensors_and_model_is_restored(resnet, images):
    _, model = resnet
    before = ir.to_proto(model).SerializeToString()
    ds = open_dataset(images, model)
    reduced = calibrate(model, ds, method="minmax", batch_size=5)
    exposed = collect(model, ds, batch_size=5)  # histogram path: whole tensors come back
    assert len(reduced) == len(default_tensors(model))
    for name, r in reduced.items():
        assert (r.min, r.max) == (exposed.tensors[name].min, exposed.tensors[name].max)
        assert reduced.summary[name]["count"] == exposed.tensors[name].count
    assert ir.to_proto(model).SerializeToString() == before  # extra outputs/nodes removed


def test_minmax_agrees_with_onnxruntime_calibrator(resnet, images, tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    path, model = resnet
    ours = calibrate(model, open_dataset(images, model), method="minmax")
    calibrator = create_calibrator(
        path, augmented_model_path=str(tmp_path / "aug.onnx"), calibrate_method=CalibrationMethod.MinMax
    )
    calibrator.collect_data(open_dataset(images, model).ort_reader(batch_size=1))
    theirs = calibrator.compute_data()
    common = set(ours) & set(theirs.keys())
    assert len(common) >= len(ours) - 1
    for name in common:
        np.testing.assert_allclose(ours[name], np.ravel(theirs[name].range_value), rtol=1e-5, atol=1e-6)


def test_chunked_equals_unchunked(resnet, images):
    """Each pass probes other tensors, so ONNX Runtime's optimiser fuses other nodes and a
    tensor's values can differ in the last bits (a few values cross a bin edge): equal up to
    float32 rounding. The histograms themselves are exact (see test_calibration.py)."""
    _, model = resnet
    ds = open_dataset(images, model)
    whole = collect(model, ds, batch_size=1)
    with pytest.warns(UserWarning, match="passes over the data"):
        chunked = collect(model, ds, batch_size=1, memory_limit=20_000)  # a few tensors per pass
    assert chunked.tensors.keys() == whole.tensors.keys()
    for name, a in whole.tensors.items():
        b = chunked.tensors[name]
        assert (a.count, a.exponent, a.first, len(a.counts)) == (b.count, b.exponent, b.first, len(b.counts))
        assert (a.min, a.max) == pytest.approx((b.min, b.max), rel=1e-6, abs=1e-6)
        assert np.abs(a.counts - b.counts).sum() <= 1e-3 * a.counts.sum()


def test_merge_equals_union_and_streaming_matches_one_shot(resnet, images):
    _, model = resnet
    x = images["input"]
    union = collect(model, open_dataset({"input": x}, model), batch_size=4)
    first = collect(model, open_dataset({"input": x[:8]}, model), batch_size=4)
    second = collect(model, open_dataset({"input": x[8:]}, model), batch_size=4)
    assert equal_stats(first.merge(second), union)
    assert first.samples == 16
    # batch 1 vs 16: ONNX Runtime's own results differ in the last bits between batch sizes
    one_shot = calibrate(model, open_dataset({"input": x}, model), method="percentile", batch_size=16)
    streaming = calibrate(model, open_dataset({"input": x}, model), method="percentile", batch_size=1)
    for name in one_shot:
        np.testing.assert_allclose(streaming[name], one_shot[name], rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def token_mlp(zoo, tmp_path_factory):
    """The zoo's transformer MLP exported with dynamic batch and sequence axes."""
    import torch

    module, _ = zoo.ARCHITECTURES["transformer_mlp"]()
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, 16, 32),), str(path), dynamo=False, do_constant_folding=False,
            opset_version=17, input_names=["tokens"], output_names=["out"],
            dynamic_axes={"tokens": {0: "batch", 1: "seq"}, "out": {0: "batch", 1: "seq"}},
        )  # fmt: skip
    return load_model(path)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_variable_sequence_lengths(token_mlp, method):
    rng = np.random.default_rng(2)
    items = [{"tokens": rng.standard_normal((1, n, 32)).astype(np.float32)} for n in (3, 9, 9, 17, 3)]
    table = calibrate(token_mlp, open_dataset(items, token_mlp), method=method, batch_size=4)
    assert table["tokens"].min >= min(i["tokens"].min() for i in items)
    assert table["tokens"].max <= max(i["tokens"].max() for i in items)
    assert table.samples == 5 and all(r.min <= r.max for r in table.values())
    if method == "minmax":
        assert table["tokens"] == (min(i["tokens"].min() for i in items), max(i["tokens"].max() for i in items))


def test_table_json_round_trip_and_bad_files(resnet, images, tmp_path):
    _, model = resnet
    table = calibrate(model, open_dataset(images, model), method="entropy")
    path = table.save(tmp_path / "table.json")
    loaded = CalibrationTable.load(path)
    assert loaded.as_dict() == table.as_dict()
    assert (loaded.method, loaded.samples) == ("entropy", 16)
    assert loaded.summary["input"]["count"] == images["input"].size
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="invalid JSON"):
        CalibrationTable.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="not an onnxprune calibration table"):
        CalibrationTable.load(tmp_path / "other.json")
    (tmp_path / "inverted.json").write_text(
        '{"format": "onnxprune-calibration", "version": 1, "tensors": {"t": {"min": 2, "max": 1}}}'
    )
    with pytest.raises(DataError, match="tensor 't' has an invalid range"):
        CalibrationTable.load(tmp_path / "inverted.json")


def test_ort_cache_is_used_by_quantize_static(resnet, images, tmp_path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    path, model = resnet
    table = calibrate(model, open_dataset(images, model), method="percentile", percentile=99.9)
    cache = table.save_ort_cache(tmp_path / "cache.json")
    theirs = load_tensors_data(cache)
    assert theirs.calibration_method == CalibrationMethod.Percentile
    assert set(theirs.keys()) == set(table)
    reloaded = CalibrationTable.load(cache)
    for name, r in table.items():
        np.testing.assert_allclose(np.ravel(theirs[name].range_value), r, rtol=1e-6)
        np.testing.assert_allclose(reloaded[name], r, rtol=1e-6)
    out = tmp_path / "q.onnx"
    quantize_static(
        str(path), str(out), None, quant_format=QuantFormat.QDQ,
        calibrate_method=CalibrationMethod.Percentile, calibration_cache_path=str(cache),
    )  # fmt: skip
    quantized = load_model(out)
    scales = {
        node.inputs[0].name: node.inputs[1].const_value.numpy()
        for node in quantized.graph
        if node.op_type == "QuantizeLinear" and node.inputs[1].const_value is not None
    }
    low, high = table["input"]
    assert float(scales["input"]) == pytest.approx((max(high, 0) - min(low, 0)) / 255, rel=1e-5)  # our range


def test_data_opened_without_the_model(resnet, images):
    _, model = resnet
    loose = open_dataset({**images, "labels": np.arange(16)})  # labels are not fed to the model
    assert calibrate(model, loose, method="minmax").as_dict() == calibrate(model, open_dataset(images, model)).as_dict()
    with pytest.raises(DataError, match="the data has no input 'input'"):
        calibrate(model, open_dataset({"pixels": images["input"]}))


def test_bad_tensor_requests(resnet, images):
    _, model = resnet
    ds = open_dataset(images, model, limit=2)
    with pytest.raises(UsageError, match="tensor 'nope' is not a value"):
        calibrate(model, ds, tensors=["nope"])
    weight = next(iter(model.graph.initializers))
    with pytest.raises(UsageError, match=f"tensor '{weight}' is a weight"):
        calibrate(model, ds, tensors=[weight])
    with pytest.raises(UsageError, match="unknown calibration method"):
        calibrate(model, ds, method="kl")


def test_non_float_and_nan_tensors_are_left_out_with_a_reason():
    nodes = [
        helper.make_node("Log", ["x"], ["log"]),  # NaN for negative inputs
        helper.make_node("Relu", ["log"], ["y"]),
        helper.make_node("Shape", ["x"], ["shape"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.array([[1.0, 2.0, -1.0, 4.0], [0.5, 3.0, 2.0, 1.0]], np.float32)
    ds = open_dataset({"x": x}, model)
    with pytest.warns(UserWarning, match="tensor 'log', 'y' produced NaN/Inf"):
        table = calibrate(model, ds, method="percentile", tensors=["x", "log", "y", "shape"])
    assert "shape" in table.skipped and "shape" not in table
    assert table["log"].max == pytest.approx(np.log(4.0))
    assert np.isfinite([r for pair in table.values() for r in pair]).all()


def test_sampled_histograms_keep_exact_ranges_and_restore_the_model(resnet, images):
    _, model = resnet
    before = ir.to_proto(model).SerializeToString()
    ds = open_dataset(images, model)
    every = collect(model, ds, batch_size=4, sample=None)
    sampled = collect(model, ds, batch_size=4, sample=16 * 1000)  # about 1000 values per sample
    assert ir.to_proto(model).SerializeToString() == before
    assert sampled.tensors.keys() == every.tensors.keys()
    for name, a in every.tensors.items():
        b = sampled.tensors[name]
        assert a.count == b.count and (a.min, a.max) == pytest.approx((b.min, b.max), rel=1e-6, abs=1e-6)
        assert abs(b.counts.sum() - a.count) <= 0.1 * a.count  # each sampled value counts k times
    # 1000 of 16384 values per sample: a quantile moves by about 1% of the width (KL and MSE
    # optima of 16 000 values move more; bench/calib_bench.py --sampling measures real sizes)
    exact, estimated = every.compute("percentile", percentile=99.0), sampled.compute("percentile", percentile=99.0)
    for name, r in exact.items():
        assert estimated[name] == pytest.approx(r, abs=0.03 * (r.max - r.min) + 1e-6), name


def test_nan_behind_the_first_value_is_found_and_left_out():
    """ORT's ReduceMin/Max skip a NaN unless it comes first: the in-graph ReduceSum catches it,
    and the batch is read again whole so that only the NaN values are dropped."""
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["log"]), helper.make_node("Relu", ["log"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])],
    )  # fmt: skip
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.random.default_rng(0).uniform(0.5, 3.0, (8, 256)).astype(np.float32)
    x[3, 100] = -1.0  # NaN in the middle of the tensor
    finite = np.log(np.delete(x.ravel(), 3 * 256 + 100))
    for method in ("minmax", "percentile"):
        with pytest.warns(UserWarning, match="tensor 'log', 'y' produced NaN/Inf"):
            stats = collect(model, open_dataset({"x": x}, model), ["x", "log", "y"], histogram=method != "minmax",
                            batch_size=4, sample=8 * 16)  # fmt: skip
        log = stats.tensors["log"]
        assert (log.min, log.max, log.count, log.nonfinite) == pytest.approx((finite.min(), finite.max(), 2047, 1))


def test_entropy_levels_follow_the_symmetric_option(resnet, images):
    _, model = resnet
    ds = open_dataset(images, model)
    stats = collect(model, ds, batch_size=8)
    for symmetric in (False, True):
        table = calibrate(model, ds, method="entropy", symmetric=symmetric, batch_size=8)
        assert table.options == {"symmetric": symmetric}
        assert table.as_dict() == stats.compute("entropy", symmetric=symmetric).as_dict()
    relu = [n for n in stats.tensors if n.endswith("Relu_output_0")]
    one, other = stats.compute("entropy"), stats.compute("entropy", symmetric=True)
    assert any(one[n] != other[n] for n in relu)  # 256 levels over [0, t], or 128


def test_probes_run_right_after_their_tensor():
    """ORT appends the nodes its optimiser adds (a ReorderOutput before a probe of an NCHWc
    convolution): re-sorted, they and the probes run before the graph goes on."""
    from onnxprune.calibration.probes import _probes_first

    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
        helper.make_node("Relu", ["b"], ["c"], name="third"),
        helper.make_node("Identity", ["a"], ["a_nchw"], name="reorder"),  # added by the optimiser
        helper.make_node("ReduceMax", ["a_nchw"], ["a_max"], name="a__onnxprune_ReduceMax"),
        helper.make_node("ReduceMax", ["c"], ["c_max"], name="c__onnxprune_ReduceMax"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("c", "a_max", "c_max")])
    _probes_first(graph)
    assert [n.name for n in graph.node] == [
        "first", "reorder", "a__onnxprune_ReduceMax", "second", "third", "c__onnxprune_ReduceMax"]


def test_unoptimised_when_the_optimised_graph_cannot_be_saved(resnet, images, monkeypatch):
    from onnxprune.calibration import probes

    _, model = resnet
    ds = open_dataset(images, model)
    optimised = calibrate(model, ds, method="minmax")

    def unsaved(*args, **kwargs):
        raise OSError("no optimised model")  # as when an execution provider compiles nodes

    monkeypatch.setattr(probes.onnx, "load", unsaved)
    unoptimised = calibrate(model, ds, method="minmax")
    for name, r in optimised.items():
        assert unoptimised[name] == pytest.approx(r, rel=1e-5, abs=1e-6)
