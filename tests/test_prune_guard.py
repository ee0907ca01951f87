"""Prune's fidelity guard (onnxprune/api/prune_guard.py) on a committed real export: the
Paddle-style digits classifier pruned at 0.8 loses its outputs without the guard; with it,
the culprit groups stay whole and the held-out agreement comes back; --strict fails instead."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import onnxprune
from onnxprune.api import prune_guard
from onnxprune.cli import cli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import realmodels as rm  # noqa: E402

MODEL = rm.EXPORTS["paddle_cls_op11"]


def _setup(tmp_path):
    path = rm.locate(MODEL)
    calib = rm.write_data(rm.data(MODEL, path, "calib"), tmp_path / "calib")
    return path, calib, rm.data(MODEL, path, "eval")


def _agreement(path, written, held) -> float:
    return rm.fidelity(MODEL, rm.run(MODEL, path, held), rm.run(MODEL, written, held), held)["top-1 agreement"]


def test_guard_keeps_culprits_whole_and_the_outputs_come_back(tmp_path):
    path, calib, held = _setup(tmp_path)
    common = ["prune", str(path), "--ratio", "0.8", "--calib", str(calib), "--latency-runs", "0"]
    free = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "free.onnx"), "--no-guard"])
    assert free.exit_code == 0 and "fidelity" not in free.output
    report_path = tmp_path / "r.json"
    guarded = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "kept.onnx"), "--report", str(report_path)])
    assert guarded.exit_code == 0, guarded.output
    assert "warning: pruning destroys the outputs" in guarded.output and "fidelity guard: kept" in guarded.output
    report = json.loads(report_path.read_text())["fidelity"]
    assert report["acted"] and report["kept_whole"] and report["problem"]
    assert report["source"].startswith("calibration data")
    # judged on the held-out half, which the guard never saw
    assert _agreement(path, tmp_path / "free.onnx", held) < 0.9
    assert _agreement(path, tmp_path / "kept.onnx", held) >= 0.9


def test_strict_fails_naming_the_culprits_and_writes_nothing(tmp_path):
    path, calib, _ = _setup(tmp_path)
    out = tmp_path / "p.onnx"
    done = CliRunner().invoke(cli, ["prune", str(path), "-o", str(out), "--ratio", "0.8", "--calib", str(calib),
                                    "--latency-runs", "0", "--strict"])
    assert done.exit_code == 1, done.output
    line = [text for text in done.output.splitlines() if text.startswith("error")]
    assert len(line) == 1 and "destroys the outputs" in line[0] and "culprits" in line[0] and "p2o." in line[0]
    assert not out.exists()


def test_without_data_the_check_is_weaker_and_only_warns():
    path = rm.locate(MODEL)
    result = onnxprune.prune(str(path), ratio=0.8, latency_runs=0)
    assert result.fidelity is not None and result.fidelity.source == "random inputs" and result.fidelity.weak
    assert not result.fidelity.acted and not result.fidelity.kept_whole


def test_class_scores_per_position_catch_what_the_cosine_misses():
    """A CTC-like [N, T, C] softmax dominated by one class (the blank): the cosine and the
    per-step agreement stay high while the steps that are not blank (the text) change."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 20, 50))
    logits[..., 0] += 6  # blank wins most steps
    flipped = logits.copy()
    steps = rng.random((4, 20)) < 0.06
    flipped[..., 1][steps] = logits[..., 0][steps] + 0.5  # class 1 overtakes the blank at a few steps
    assert np.mean(logits.argmax(-1) == flipped.argmax(-1)) > 0.9  # per position, the change hides

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)

    measured = prune_guard.measure({"p": softmax(logits)}, {"p": softmax(flipped)})
    assert measured.top1["p"] < prune_guard.MIN_TOP1 and measured.problem().startswith("output 'p' top-1")
    # a sigmoid map (no sums of 1 on the last axis) is judged by its cosine only
    assert "m" not in prune_guard.measure({"m": rng.random((2, 1, 8, 8))}, {"m": rng.random((2, 1, 8, 8))}).top1
