"""`onnxprune check`: output, JSON report, exit codes (0 ok, 1 parity failed, 2 bad input)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxprune.cli import cli
from test_parity_helpers import DIGITS, DIGITS_EVAL, ROOT, conv_net, perturbed_digits

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_check")
    return {"perturbed": perturbed_digits(tmp / "perturbed.onnx"), "net": conv_net(tmp / "net.onnx"),
            "renamed": conv_net(tmp / "renamed.onnx", output_name="scores"), "tmp": tmp}


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_identical_models_exit_0_with_a_table_and_json(files):
    report = files["tmp"] / "same.json"
    result = run("check", DIGITS, DIGITS, "--data", DIGITS_EVAL, "--labels", "labels", "--providers", "cpu",
                 "--json", report)
    assert result.exit_code == 0, result.output
    assert "reference@cpu vs candidate@cpu  logits" in result.output and "parity holds" in result.output
    assert "99.33% -> 99.33%" in result.output
    data = json.loads(report.read_text())
    assert data["schema_version"] == 1 and data["passed"] is True
    assert data["comparisons"][0]["outputs"]["logits"]["accuracy_reference"] == pytest.approx(447 / 450)


def test_perturbed_model_exits_1_names_the_layer_and_still_writes_json(files):
    report = files["tmp"] / "perturbed.json"
    result = run("check", DIGITS, files["perturbed"], "--data", DIGITS_EVAL, "--providers", "cpu",
                 "--layerwise", "--json", report)
    assert result.exit_code == 1, result.output
    assert "error: parity failed: reference@cpu vs candidate@cpu: output 'logits'" in result.output
    assert "error first exceeds the tolerance at: /block/conv2/Conv_output_0 (Conv /block/conv2/Conv)" in result.output
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["layerwise"]["first_failures"] == ["/block/conv2/Conv_output_0"]


def test_tolerance_options(files):
    common = ("check", DIGITS, files["perturbed"], "--data", DIGITS_EVAL, "--labels", "labels", "--providers", "cpu")
    assert run(*common, "--atol", "logits:0.1").exit_code == 0
    assert run(*common, "--atol", "0.01", "--stat", "p99").exit_code == 1  # p99 abs error is 0.046
    assert run(*common, "--atol", "0.05", "--stat", "p99").exit_code == 0
    int8 = run(*common, "--preset", "int8", "--min-top1", "1.0", "--max-accuracy-drop", "0")
    assert int8.exit_code == 0 and "top-1 >= 1" in int8.output
    assert run(*common, "--preset", "int8", "--min-sqnr", "60").exit_code == 1  # SQNR is ~47 dB


def test_random_inputs_without_data_note_it(files):
    result = run("check", files["net"], files["net"], "--samples", "4")
    assert result.exit_code == 0 and "note: no --data: random" in result.output


@pytest.mark.parametrize("args, message", [
    (("--providers", "tpu"), "unknown execution provider 'tpu'"),
    (("--stat", "median"), "unknown error statistic 'median'"),
    (("--atol", "logits:x"), "expected a number or OUTPUT:NUMBER"),
    (("--atol", "nope:1"), "tolerance given for ['nope']"),
    (("--samples", "0"), "--samples must be at least 1"),
    (("--json", "no/such/folder/r.json"), "output folder does not exist"),
    (("--data", "missing.npz"), "missing.npz"),
])
def test_usage_errors_exit_2(files, args, message):
    result = run("check", files["net"], files["net"], *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_mismatched_models_and_data_exit_2(files):
    result = run("check", files["net"], files["renamed"])
    assert result.exit_code == 2 and "outputs differ by name: only in the reference ['logits']" in result.output
    bad = files["tmp"] / "bad.npz"
    np.savez(bad, input=np.zeros((3, 1, 5, 8), np.float32))
    result = run("check", files["net"], files["net"], "--data", bad)
    assert result.exit_code == 2 and "input 'input': expected samples of shape [1, 8, 8]" in result.output
    result = run("check", files["net"], files["tmp"] / "nope.onnx")
    assert result.exit_code == 2 and "nope.onnx: no such file" in result.output


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here: cannot test the missing-provider path")
def test_missing_provider_is_a_note_unless_required(files):
    result = run("check", files["net"], files["net"], "--providers", "cpu,cuda", "--samples", "2")
    assert result.exit_code == 0 and "CUDAExecutionProvider skipped" in result.output
    result = run("check", files["net"], files["net"], "--providers", "cpu,cuda", "--require-providers")
    assert result.exit_code == 2 and "required execution provider CUDAExecutionProvider" in result.output


def test_cuda_parity_script_runs_on_cpu(tmp_path):
    """bench/cuda_parity.sh end to end with --providers cpu (the GPU path needs a GPU)."""
    if shutil.which("bash") is None:
        pytest.skip("bash not found")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / "bench" / "cuda_parity.sh"), "--providers", "cpu", "--out", str(tmp_path),
                           "--quick"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "digits.onnx" in done.stdout and "ref@cpu vs cand@cpu" in done.stdout
    dry = subprocess.run(["bash", str(ROOT / "bench" / "cuda_parity.sh"), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "onnxprune -q check" in dry.stdout and "--providers cpu,cuda" in dry.stdout
