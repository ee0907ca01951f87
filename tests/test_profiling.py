"""The timing block: phases, their nesting, their own peaks; `--profile` and the JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from onnxprune import profiling
from onnxprune.cli import cli

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"


def test_phases_nest_add_up_and_see_their_own_peak():
    with profiling.record() as profile:
        with profiling.phase("outer"):
            with profiling.phase("small"):
                pass
            with profiling.phase("big"):
                block = np.ones(64 << 20, np.uint8)  # 64 MB, touched, alive when the phase ends
            del block
        for _ in range(3):  # consecutive runs of one phase: one row
            with profiling.phase("again"):
                pass
    data = profile.to_dict()
    rows = {p["name"]: p for p in data["phases"]}
    assert [p["name"] for p in data["phases"]] == ["outer", "small", "big", "again"]
    assert rows["small"]["depth"] == rows["big"]["depth"] == 1 and rows["outer"]["depth"] == 0
    assert rows["big"]["peak_mb"] - rows["small"]["peak_mb"] > 48  # its own peak, not an earlier one
    assert rows["outer"]["peak_mb"] >= rows["big"]["peak_mb"]
    assert rows["outer"]["seconds"] >= rows["big"]["seconds"]
    assert data["peak_mb"] >= rows["big"]["peak_mb"]
    assert profiling.current() is None


def test_no_recording_costs_nothing_and_records_nothing():
    with profiling.phase("anything"):
        assert profiling.current() is None


def test_quantize_profile_block_and_report(tmp_path):
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["--profile", "quantize", str(DIGITS / "digits.onnx"), "-o", str(out), "--calib",
                                      str(DIGITS / "calib.npz"), "--samples", "32", "--no-latency",
                                      "--report", str(report)], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("load", "clean-up", "calibration session", "calibration", "emit", "save", "peak RSS"):
        assert name in result.output  # CliRunner mixes stderr in
    profile = json.loads(report.read_text())["profile"]
    names = [p["name"] for p in profile["phases"]]
    assert names[:2] == ["load", "clean-up"] and {"calibration", "calibration session", "emit"} <= set(names)
    for name in ("fidelity guard", "float outputs", "compare", "save", "self-check session"):
        assert name in names  # every phase of the command is on the clock
    top = sum(p["seconds"] for p in profile["phases"] if p["depth"] == 0)
    assert 0.6 * profile["total_s"] <= top <= profile["total_s"]  # the phases are where the time went
