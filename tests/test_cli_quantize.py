"""`onnxprune quantize`: output, report, table reuse, and exit code 2 with nothing written on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli import cli
from tiny import Tiny

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"


def invoke(*args: str):
    # placement: test_placement.py
    return CliRunner().invoke(cli, ["quantize", *map(str, args), "--no-placement"], catch_exceptions=False)


@pytest.fixture(scope="module")
def quantized_digits(tmp_path_factory):
    """One successful run, shared: the model, its report and its calibration table."""
    folder = tmp_path_factory.mktemp("digits")
    out, report, table = folder / "digits.int8.onnx", folder / "report.json", folder / "table.json"
    result = invoke(DIGITS / "digits.onnx", "-o", out, "--calib", DIGITS / "calib.npz", "--method", "entropy",
                    "--samples", 100, "--batch-size", 50, "--report", report, "--save-table", table)
    return result, out, report, table


def test_quantize_prints_the_summary_and_writes_model_report_and_table(quantized_digits):
    result, out, report, table = quantized_digits
    assert result.exit_code == 0, result.output
    expected = ("calibration: entropy on 100 samples", "tensors quantized", "weights size", "ORT CPU latency", "wrote")
    for text in expected:
        assert text in result.output
    onnx.checker.check_model(str(out))
    data = json.loads(report.read_text())
    assert data["calibration"]["method"] == "entropy" and data["calibration"]["samples"] == 100
    assert data["config"]["activation_type"] == "uint8" and data["config"]["per_channel"] is True
    assert data["nodes_int8"] >= 6 and data["size_after"] < data["size_before"] / 3
    assert data["passes"][-1]["name"] == "quantize"
    assert json.loads(table.read_text())  # a calibration table others can reuse


def test_a_saved_table_reproduces_the_model(quantized_digits, tmp_path):
    _, out, _, table = quantized_digits
    again = tmp_path / "again.onnx"
    result = invoke(DIGITS / "digits.onnx", "-o", again, "--table", table, "--no-latency")
    assert result.exit_code == 0, result.output
    assert "table" in result.output
    assert onnx.load(str(again)).SerializeToString() == onnx.load(str(out)).SerializeToString()


def test_options_reach_the_model(tmp_path):
    out = tmp_path / "q.onnx"
    result = invoke(DIGITS / "digits.onnx", "-o", out, "--calib", DIGITS / "calib.npz", "--samples", 64,
                    "--per-tensor", "--symmetric", "--activation-type", "int8", "--exclude", "Gemm", "--reduce-range",
                    "--no-latency")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    zero_points = {i.name: onnx.numpy_helper.to_array(i)
                   for i in model.graph.initializer if i.name.endswith("_zero_point")}
    assert not any(z.any() for z in zero_points.values())  # symmetric int8: every zero point is 0
    assert {z.dtype for z in zero_points.values()} == {np.dtype(np.int8), np.dtype(np.int32)}  # int32: biases
    weights = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8
               and i.dims and len(i.dims) > 1]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == 63  # 7-bit weights
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert not any(i.endswith("_dequantized") for i in gemm.input[1:])  # excluded: float weights
    assert "Relu" in {n.op_type for n in model.graph.node}  # symmetric ranges cannot absorb Relu


def bad_npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def softmax_only(tmp_path: Path) -> Path:
    g = Tiny({"x": [1, 10]})
    path = tmp_path / "softmax.onnx"
    onnx.save(g.proto(g.op("Softmax", ["x"])), path)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing model", "no such file"),
        ("wrong input name", "input"),
        ("wrong shape", "shape"),
        ("empty data", "empty"),
        ("NaN in data", "NaN"),
        ("unreadable image", "broken.png"),
        ("calib and table", "not both"),
        ("unknown exclusion", "names no node and no op type"),
        ("nothing to quantize", "nothing to quantize"),
        ("output is the input", "refusing to overwrite the input model"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, case, message):
    model, calib, extra = DIGITS / "digits.onnx", DIGITS / "calib.npz", []
    out = tmp_path / "out.onnx"
    samples = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    if case == "missing model":
        model = tmp_path / "missing.onnx"
    elif case == "wrong input name":
        calib = bad_npz(tmp_path, pixels=samples)
    elif case == "wrong shape":
        calib = bad_npz(tmp_path, input=samples[:, :, :4])
    elif case == "empty data":
        calib = bad_npz(tmp_path, input=samples[:0])
    elif case == "NaN in data":
        samples[2, 0, 3, 3] = np.nan
        calib = bad_npz(tmp_path, input=samples)
    elif case == "unreadable image":
        calib = tmp_path / "images"
        calib.mkdir()
        (calib / "broken.png").write_bytes(b"\x89PNG not really")
        extra = ["--preprocess", "resize=8"]
    elif case == "calib and table":
        extra = ["--table", tmp_path / "table.json"]
    elif case == "unknown exclusion":
        extra = ["--exclude", "NoSuchLayer"]
    elif case == "nothing to quantize":
        model = softmax_only(tmp_path)
        calib = bad_npz(tmp_path, x=samples.reshape(4, 1, 64)[:, :, :10].reshape(4, 10))
    elif case == "output is the input":
        model = tmp_path / "digits.onnx"
        model.write_bytes((DIGITS / "digits.onnx").read_bytes())
        out = model
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(model, "-o", out, "--calib", calib, "--no-latency", "--save-table", tmp_path / "t.json", *extra)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no model, no table, no temp files


def test_an_already_quantized_model_is_refused(quantized_digits, tmp_path):
    _, out, _, _ = quantized_digits
    result = invoke(out, "-o", tmp_path / "twice.onnx", "--calib", DIGITS / "calib.npz", "--no-latency")
    assert result.exit_code == 2
    assert "error: already quantized: node" in result.output
    assert not (tmp_path / "twice.onnx").exists()
