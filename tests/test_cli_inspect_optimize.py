"""`onnxprune inspect` and `onnxprune optimize` through click's CliRunner, good and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import zoo
from onnxprune import runtime
from onnxprune.cli import cli
from onnxprune.pipeline import DEFAULT_PIPELINE
from tiny import max_error, rand


def run(*args: object):
    return CliRunner().invoke(cli, ["-q", *(str(a) for a in args)])


@pytest.fixture()
def resnet(tmp_path):
    path = tmp_path / "resnet.onnx"
    shutil.copy(zoo.export("resnet_basic"), path)
    return path


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_inspect_table(resnet):
    result = run("inspect", resnet)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "input  FLOAT  [1, 3, 32, 32]" in out and "output  FLOAT  [1, 10]" in out
    assert "nodes: 22" in out and "MACs: 8.83 M" in out
    assert "BatchNormalization      6" in out
    assert "/1/body/body.0/body.0.0/Conv  Conv    2.36 M  26.7%" in out  # the per-layer table
    assert "share" not in run("inspect", resnet, "--no-layers").stdout


def test_inspect_json(resnet):
    result = run("inspect", resnet, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["ops"]["BatchNormalization"] == 6 and info["file"] == str(resnet)
    assert info["macs"] == sum(layer["macs"] for layer in info["layers"]) > 0
    assert info["parameters"] > 0 and info["inputs"][0]["shape"] == [1, 3, 32, 32]


def test_optimize_default_pipeline(resnet, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = run("optimize", resnet, "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    for name in DEFAULT_PIPELINE:
        assert name in result.stdout
    assert "folded into Conv" in result.stdout and f"wrote {out}" in result.stdout
    optimized = onnx.load(str(out))
    assert "BatchNormalization" not in {n.op_type for n in optimized.graph.node}
    x = {"input": zoo.sample_input("resnet_basic")}
    assert max_error(runtime.run(resnet, x)["output"], runtime.run(out, x)["output"]) <= 1e-5
    data = json.loads(report.read_text())
    assert [p["name"] for p in data["passes"]] == list(DEFAULT_PIPELINE)
    assert data["before"]["ops"]["BatchNormalization"] == 6 and "BatchNormalization" not in data["after"]["ops"]
    assert data["after"]["nodes"] < data["before"]["nodes"] and data["output"] == str(out)


def test_optimize_selected_passes_with_verify(resnet, tmp_path):
    out = tmp_path / "out.onnx"
    result = run("optimize", resnet, "-o", out, "--passes", "fold-batchnorm, remove-unused", "--verify")
    assert result.exit_code == 0, result.output
    assert "fold-batchnorm" in result.stdout and "fold-constants" not in result.stdout
    assert "every pass kept parity" in result.stdout and out.exists()


def test_help_lists_the_passes():
    result = run("optimize", "--help")
    assert result.exit_code == 0
    for name in ("fold-batchnorm", "fold-affine", "batchnorm-to-affine"):
        assert name in result.stdout


# -- bad inputs: one clear line, exit code 2, nothing written ---------------------------------


def _unknown_domain_model(path):
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="com.example")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


def _external_data_model(folder):
    w = numpy_helper.from_array(rand(64, 64), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w],
    )
    path = folder / "ext.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    (folder / "ext.onnx.data").unlink()
    return path


def bad_inputs(tmp_path, resnet):
    (tmp_path / "notes.onnx").write_text("this is not a model\n" * 20)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(resnet.read_bytes()[: resnet.stat().st_size // 2])
    return {
        "missing file": (tmp_path / "nope.onnx", ("nope.onnx", "no such file")),
        "not onnx": (tmp_path / "notes.onnx", ("notes.onnx", "not")),
        "truncated": (truncated, ("truncated.onnx",)),
        "external data missing": (_external_data_model(tmp_path), ("ext.onnx.data", "missing")),
        "unknown domain": (_unknown_domain_model(tmp_path / "domain.onnx"), ("Frobnicate", "com.example")),
    }


CASES = ["missing file", "not onnx", "truncated", "external data missing", "unknown domain"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", ["inspect", "optimize"])
def test_bad_model(case, command, tmp_path, resnet):
    path, fragments = bad_inputs(tmp_path, resnet)[case]
    out = tmp_path / "out.onnx"
    args = ("inspect", path) if command == "inspect" else ("optimize", path, "-o", out)
    assert_user_error(run(*args), *fragments)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxprune-")]  # no staging left


def test_unknown_pass_name(resnet, tmp_path):
    out = tmp_path / "out.onnx"
    assert_user_error(run("optimize", resnet, "-o", out, "--passes", "fold-batchnorm,fold-everything"),
                      "unknown pass 'fold-everything'", "fold-affine")
    assert not out.exists()


def test_refuses_to_overwrite_the_input(resnet):
    before = resnet.read_bytes()
    assert_user_error(run("optimize", resnet, "-o", resnet), "overwrite the input")
    assert resnet.read_bytes() == before


def test_report_path_in_missing_folder_fails_before_writing(resnet, tmp_path):
    out = tmp_path / "missing" / "out.onnx"
    assert_user_error(run("optimize", resnet, "-o", out), "does not exist")


@pytest.mark.parametrize("command", ["optimize", "prune", "quantize", "compress"])
def test_report_onto_the_output_model_is_refused_before_any_work(tmp_path, command):
    from onnxprune.cli import cli as main

    digits = Path(__file__).resolve().parents[1] / "models" / "digits"
    out = tmp_path / "out.onnx"
    extra = {"prune": ["--ratio", "0.3"], "quantize": ["--calib", str(digits / "calib.npz")],
             "compress": ["--calib", str(digits / "calib.npz")]}.get(command, [])
    res = CliRunner().invoke(main, [command, str(digits / "digits.onnx"), "-o", str(out), "--report", str(out), *extra])
    assert res.exit_code == 2 and "two outputs" in res.output, res.output
    assert not out.exists()
