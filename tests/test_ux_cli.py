"""The command line as a user meets it: JSON that pipes, flags in errors, global flags anywhere,
``python -m onnxprune`` (issue 12, items 10 and 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxprune.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits"
MODEL, CALIB, EVAL = DIGITS / "digits.onnx", DIGITS / "calib.npz", DIGITS / "eval.npz"


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def commands(tmp: Path) -> dict[str, list]:
    return {
        "inspect": ["inspect", MODEL],
        "optimize": ["optimize", MODEL, "-o", tmp / "opt.onnx"],
        "prune": ["prune", MODEL, "--ratio", "0.25", "--dry-run", "--latency-runs", "0"],
        "quantize": ["quantize", MODEL, "-o", tmp / "q.onnx", "--calib", CALIB, "--samples", "64", "--no-latency"],
        "check": ["check", MODEL, MODEL, "--providers", "cpu"],
        "compress": ["compress", MODEL, "-o", tmp / "c.onnx", "--no-quantize", "--eval", EVAL, "--latency-batch", "0"],
    }


@pytest.mark.parametrize("name", ["inspect", "optimize", "prune", "quantize", "check", "compress"])
def test_json_dash_pipes_on_every_command(tmp_path, name):
    """`--json -`: stdout is exactly one JSON document with schema_version first; the tables go
    to stderr. `--json PATH` writes the same document to a file."""
    args = commands(tmp_path)[name]
    result = run(*args, "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data)[0] == "schema_version" and data["schema_version"] == 1
    if name != "inspect":  # inspect --json alone means JSON instead of the table
        assert result.stderr.strip(), "the tables went nowhere"
    path = tmp_path / "report.json"
    result = run(*args, "--json", path)
    assert result.exit_code == 0, result.output
    assert list(json.loads(path.read_text())) == list(data)
    assert result.stdout.strip()  # the tables, on stdout again


def test_report_to_dev_stdout_pipes_too(tmp_path):
    done = subprocess.run([sys.executable, "-m", "onnxprune", "optimize", str(MODEL), "-o", str(tmp_path / "o.onnx"),
                           "--report", "/dev/stdout"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["schema_version"] == 1 and "wrote" in done.stderr


def test_python_dash_m_onnxprune_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "onnxprune", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "Usage: onnxprune" in done.stdout, done.stderr


def test_debug_and_quiet_work_after_the_subcommand(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    quiet = run("inspect", MODEL, "-q", "--no-layers")
    assert quiet.exit_code == 0, quiet.output
    debug = run("inspect", broken, "--debug")
    assert debug.exit_code == 2 and "Traceback" in debug.stderr, debug.output


@pytest.mark.parametrize("args, flags", [
    (["compress", MODEL, "-o", "x.onnx"], ["--calib", "--no-quantize"]),
    (["prune", MODEL, "--dry-run", "--ratio", "0.2", "--target-macs", "0.5"], ["--ratio", "--target-macs"]),
    (["prune", MODEL, "--dry-run", "--ratio", "0.2", "--round-to", "0"], ["--round-to"]),
    (["prune", MODEL, "--dry-run", "--ratio", "0.2", "--min-channels", "0"], ["--min-channels"]),
    (["quantize", MODEL, "-o", "x.onnx"], ["--calib", "--table"]),
])
def test_errors_name_flags_not_python_arguments(args, flags):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert all(flag in result.stderr for flag in flags), result.stderr
    assert "_" not in result.stderr.split("error:")[1].replace(str(MODEL), ""), result.stderr
