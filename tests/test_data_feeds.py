"""Data as users have it: complete feeds (ONNX Runtime's CalibrationDataReader convention),
recurrent states whose batch axis is not the first, scalar inputs, fixed batch 1."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.calibration import open_dataset
from onnxprune.calibration.validation import InputSpec, batch_axes
from onnxprune.cli import cli
from onnxprune.errors import DataError

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def vad_like(batch="batch", seq="seq", state_batch=None):
    """Silero-like: output = MatMul(input, W) * sr, stateN = state + output (state [2, batch, 4])."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["mm"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=F),
        helper.make_node("Div", ["srf", "k"], ["srs"]),
        helper.make_node("Mul", ["mm", "srs"], ["output"]),
        helper.make_node("Unsqueeze", ["output", "axes"], ["o3"]),
        helper.make_node("Add", ["state", "o3"], ["stateN"]),
    ]
    inits = [w, numpy_helper.from_array(np.array(16000, np.float32), "k"),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]
    sb = batch if state_batch is None else state_batch
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", F, [batch, 8]), helper.make_tensor_value_info("state", F, [2, sb, 4]),
         helper.make_tensor_value_info("sr", I64, [])],
        [helper.make_tensor_value_info("output", F, [batch, 4]),
         helper.make_tensor_value_info("stateN", F, [2, sb, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds(n, batch=1, seed=0, sr=16000):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((batch, 8)).astype(np.float32),
             "state": rng.standard_normal((2, batch, 4)).astype(np.float32),
             "sr": np.array(sr, np.int64)} for _ in range(n)]


def test_batch_axes_of_states_and_scalars():
    spec = lambda shape: InputSpec("x", shape, np.dtype(np.float32))  # noqa: E731
    assert batch_axes({"input": spec(("batch", "seq")), "state": spec((2, "batch", 128)), "sr": spec(())}) == {
        "input": 0, "state": 1, "sr": None}
    assert batch_axes({"input": spec((None, None)), "state": spec((2, None, 128))})["state"] == 1  # unnamed dims
    assert batch_axes({"input": spec((1, 576)), "state": spec((2, 1, 128))})["state"] == 1  # batch fixed to 1
    assert batch_axes({"a": spec(("N", 3)), "b": spec(("N", 5))}) == {"a": 0, "b": 0}  # ordinary inputs


def test_list_of_complete_feeds_batches_along_each_batch_axis():
    model = ir.from_proto(vad_like())
    items = feeds(5)
    ds = open_dataset(items, model)
    assert len(ds) == 5 and ds.batch_axes == {"input": 0, "state": 1, "sr": None} and ds.fixed_batch is None
    batches = list(ds.batches(2))
    assert [b["state"].shape for b in batches] == [(2, 2, 4), (2, 2, 4), (2, 1, 4)]
    assert all(b["sr"].shape == () for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["state"] for b in batches], 1),
                                  np.concatenate([f["state"] for f in items], 1))
    session = ort.InferenceSession(vad_like().SerializeToString())
    for batch in batches:  # every batch is a feed ONNX Runtime runs
        out, state = session.run(None, batch)
        assert out.shape == (ds.batch_len(batch), 4) and state.shape == batch["state"].shape


def test_folder_of_feed_files_and_stacked_npz_agree(tmp_path):
    model = ir.from_proto(vad_like())
    items = feeds(4, seed=1)
    for i, feed in enumerate(items):
        np.savez(tmp_path / f"{i}.npz", **feed)
    stacked = tmp_path / "stacked"
    stacked.mkdir()
    np.savez(stacked / "all.npz", input=np.concatenate([f["input"] for f in items]),
             state=np.concatenate([f["state"] for f in items], 1), sr=np.array(16000, np.int64))
    from_files = list(open_dataset(tmp_path, model).batches(4))
    from_stack = list(open_dataset(stacked / "all.npz", model).batches(4))
    assert len(from_files) == len(from_stack) == 1
    for key in ("input", "state", "sr"):
        np.testing.assert_array_equal(from_files[0][key], from_stack[0][key])


def test_batch_fixed_to_one_means_batches_of_one():
    model = ir.from_proto(vad_like(batch=1))
    ds = open_dataset(feeds(3), model)
    assert ds.fixed_batch == 1 and [b["state"].shape for b in ds.batches(8)] == [(2, 1, 4)] * 3
    assert len(ds.ort_reader(8)) == 3 and ds.ort_reader(8).get_next()["input"].shape == (1, 8)


def test_feeds_with_batches_of_several_and_different_scalars():
    model = ir.from_proto(vad_like(batch=None, state_batch=None))
    items = feeds(2, batch=3) + feeds(1, batch=3, sr=8000)
    ds = open_dataset(items, model)
    assert len(ds) == 9 and ds.batch_axes["state"] == 1
    # samples with a different scalar input never share a batch
    assert [(b["state"].shape[1], int(b["sr"])) for b in ds.batches(32)] == [(6, 16000), (3, 8000)]
    assert [ds.batch_len(b) for b in ds.batches(4)] == [4, 2, 2, 1]  # the 2nd batch of 4 splits at the sr change


def test_feed_of_the_wrong_shape_is_named():
    model = ir.from_proto(vad_like())
    bad = feeds(1)
    bad[0]["state"] = np.zeros((3, 1, 4), np.float32)
    with pytest.raises(DataError, match="input 'state'.*per-sample|input 'state'"):
        list(open_dataset(bad, model).batches(1))
    worse = feeds(1)
    worse[0]["state"] = np.zeros((2, 2, 4), np.float32)
    with pytest.raises(DataError, match="different numbers of samples"):
        open_dataset(worse, model)


def vad_and_feed_folder(tmp_path, samples: int):
    """The VAD-like model saved, and a folder of ``samples`` complete feeds (one .npz each)."""
    path = tmp_path / "vad.onnx"
    path.write_bytes(vad_like().SerializeToString())
    data = tmp_path / "feeds"
    data.mkdir()
    for i, feed in enumerate(feeds(samples)):
        np.savez(data / f"{i:03d}.npz", **feed)
    return path, data


def test_cli_quantize_and_check_read_a_folder_of_feeds(tmp_path):
    path, data = vad_and_feed_folder(tmp_path, 16)
    runner = CliRunner()
    done = runner.invoke(cli, ["quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--calib", str(data),
                               "--no-latency"])
    assert done.exit_code == 0, done.output
    session = ort.InferenceSession(str(tmp_path / "q.onnx"))
    out, state = session.run(None, feeds(1, seed=5)[0])
    assert out.shape == (1, 4) and state.shape == (2, 1, 4)
    done = runner.invoke(cli, ["check", str(path), str(path), "--data", str(data), "--providers", "cpu"])
    assert done.exit_code == 0, done.output


def test_cli_prune_reads_a_folder_of_feeds(tmp_path):
    """Its self-check and timing cut samples along each input's batch axis (a 0-d sr crashed them)."""
    path, data = vad_and_feed_folder(tmp_path, 8)
    done = CliRunner().invoke(cli, ["prune", str(path), "-o", str(tmp_path / "p.onnx"), "--ratio", "0.25",
                                    "--calib", str(data), "--latency-runs", "1"])
    assert done.exit_code in (0, 2), done.output  # 2: nothing prunable here is a fair answer; 3 was the crash
    assert "internal error" not in done.output
