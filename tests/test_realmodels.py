"""Every command on the real-model corpus (issue 9): the committed exports of tests/realmodels/
and a few pretrained models from PyPI wheels (skipped, with the reason, when the wheel is not
installed or cached; ``.ci/run`` downloads them).

Rules checked: no exit 3 (a crash); exit 0, or 2 with a one-line reason; every written model
loads and runs in ONNX Runtime with the original's output shapes; optimize exact (<= 1e-5
relative) and never larger in weights. Cases main still fails are strict xfails, each naming
the bug, so fixing it turns them into failures to unmark.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.cli import cli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import realmodels as rm  # noqa: E402
from realmodels_bench import weights  # noqa: E402

COMMANDS = ("inspect", "optimize", "optimize --verify", "prune", "quantize", "check", "compress")
XFAIL: dict[tuple[str, str], str] = {}


def args_for(command: str, model: Path, out: Path, data: Path) -> list[str]:
    if command == "inspect":
        return ["inspect", str(model)]
    if command.startswith("optimize"):
        return ["optimize", str(model), "-o", str(out), *(["--verify"] if "verify" in command else [])]
    if command == "prune":
        return ["prune", str(model), "-o", str(out), "--ratio", "0.25", "--calib", str(data), "--latency-runs", "0"]
    if command == "quantize":
        return ["quantize", str(model), "-o", str(out), "--calib", str(data), "--no-latency", "--samples", "32"]
    if command == "check":
        return ["check", str(model), str(model), "--data", str(data), "--providers", "cpu", "--samples", "32"]
    return ["compress", str(model), "-o", str(out), "--calib", str(data), "--providers", "cpu",
            "--latency-batch", "0", "--samples", "32"]


def run_command(command: str, model: rm.Model, path: Path, tmp: Path, samples: rm.Data) -> Path | None:
    """Run one command in process; assert the exit rules; return the written model, if any."""
    data = rm.write_data(samples, tmp / "data")
    out = tmp / "out.onnx"
    done = CliRunner().invoke(cli, args_for(command, path, out, data))
    lines = [line for line in done.output.strip().splitlines() if line.startswith(("error", "internal error"))]
    assert done.exit_code in (0, 2), f"exit {done.exit_code}: {done.output.strip()[-500:]}"
    if done.exit_code == 2:
        assert len(lines) == 1, done.output
        assert "malformed" not in lines[0], f"ONNX Runtime runs this model: {lines[0]}"
    # every model here is an ordinary float model ONNX Runtime runs: nothing to refuse
    assert done.exit_code == 0, f"needless refusal: {lines[0]}"
    return out if out.exists() else None


def assert_valid(model: rm.Model, original: Path, written: Path, samples: rm.Data) -> tuple[list, list]:
    ref, cand = rm.run(model, original, samples), rm.run(model, written, samples)
    assert [r.shape for r in ref] == [c.shape for c in cand]
    return ref, cand


def assert_exact(ref: list[np.ndarray], cand: list[np.ndarray]) -> None:
    for r, c in zip(ref, cand):
        if r.dtype.kind == "f":
            assert np.abs(r.astype(np.float64) - c).max() <= 1e-5 * max(np.abs(r).max(), 1e-12)
        else:
            np.testing.assert_array_equal(r, c)


def case(name: str, command: str):
    reason = XFAIL.get((name, command))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(name, command, marks=marks, id=f"{name}-{command.replace(' --', '-')}")


# -- committed exports ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "command"), [case(n, c) for n in rm.EXPORTS for c in COMMANDS])
def test_command_on_committed_export(name, command, tmp_path):
    model = rm.EXPORTS[name]
    path = rm.locate(model)
    samples = rm.data(model, path, "calib")
    written = run_command(command, model, path, tmp_path, samples)
    if command == "inspect" or command == "check":
        return
    assert written is not None, f"{command} exited 0 but wrote nothing"
    ref, cand = assert_valid(model, path, written, samples)
    if command.startswith("optimize"):
        assert_exact(ref, cand)
        assert weights(written) <= weights(path)


def test_committed_exports_are_small_and_have_their_scripts():
    folder = rm.EXPORTS_DIR
    exporters = {m.exporter.split(" (")[0] for m in rm.EXPORTS.values()}
    assert len({e.split()[0] for e in exporters}) >= 4  # torch.onnx, tf2onnx, skl2onnx, Paddle-style
    for model in rm.EXPORTS.values():
        path = rm.locate(model)
        assert path.exists() and rm.eval_file(path).exists()
        assert sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) < 1 << 20
    assert {p.name for p in folder.glob("make_*.py")} >= {"make_torch.py", "make_keras.py", "make_skl.py",
                                                         "make_paddle_style.py"}


def test_committed_exports_are_trained():
    """The task metric means something only if the originals solve their task."""
    for model in rm.EXPORTS.values():
        path = rm.locate(model)
        samples = rm.data(model, path, "eval")
        assert rm.accuracy(model, rm.run(model, path, samples), samples) > 0.85, model.name


# -- pretrained models from PyPI wheels (light: optimize, quantize, check) ---------------------

LIGHT = ("ppocr_cls", "magika", "silero_vad_op15")
LIGHT_COMMANDS = ("optimize", "quantize", "check")


@pytest.fixture(scope="module")
def real_paths():
    return {name: rm.locate(rm.REAL[name], download=False) for name in LIGHT}


@pytest.mark.parametrize(("name", "command"), [case(n, c) for n in LIGHT for c in LIGHT_COMMANDS])
def test_command_on_pretrained_model(name, command, tmp_path, real_paths):
    model, path = rm.REAL[name], real_paths[name]
    if path is None:
        pytest.skip(f"wheel {model.package}=={model.version} not installed or cached "
                    f"(.ci/run downloads it; or set ONNXPRUNE_WHEELS)")
    samples = rm.data(model, path, "calib", n=16)
    written = run_command(command, model, path, tmp_path, samples)
    if written is None:
        return
    ref, cand = assert_valid(model, path, written, samples)
    if command == "optimize":
        assert_exact(ref, cand)
        assert weights(written) <= weights(path)
    else:  # quantize: the task must survive
        assert min(rm.fidelity(model, ref, cand, samples).values()) >= 0.9
