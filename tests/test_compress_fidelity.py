"""compress and its stages' guards hold one contract (issue 9): the final model is judged by the
guards' measure and target (cosine, argmax agreement >= 0.9), not by a stricter preset the
guards never aimed at (cosine 0.99, top-1 98 %: PP-OCR and VAD models failed with the task
intact); below the target quantize reruns with a stricter guard, and a miss even so is a warning;
exit 1 only for a budget the user named or with --strict."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.api import compress_fidelity
from onnxprune.api.fidelity_metric import Fidelity, Target
from onnxprune.cli import cli
from onnxprune.compress import compress
from onnxprune.errors import ParityError
from tiny import offset_classifier as offset_model


@pytest.fixture(scope="module")
def offset_classifier(tmp_path_factory):
    """Class logits as a tiny signal on an offset of 1000 (magika's quirk in small): INT8
    loses the argmax unless the Add stays float (tests/test_fidelity_guard.py)."""
    tmp = tmp_path_factory.mktemp("offset")
    rng = np.random.default_rng(0)
    onnx.save(offset_model(rng), tmp / "m.onnx")
    np.savez(tmp / "calib.npz", x=rng.standard_normal((128, 16)).astype(np.float32))
    np.savez(tmp / "eval.npz", x=rng.standard_normal((64, 16)).astype(np.float32))
    return tmp / "m.onnx", tmp / "calib.npz", tmp / "eval.npz"


def test_compress_passes_what_its_guard_made_good(offset_classifier):
    model, calib, held = offset_classifier
    result = compress(model, calib=calib, eval_data=held, samples=64)
    assert result.stages[-1].result.fidelity["kept_float"]  # the guard kept the offset Add float
    assert result.fidelity.target == Target() and result.fidelity.problem() is None and result
    # the old final check (int8 preset: top-1 >= 98 %) is not the guards' contract
    assert result.check.tolerances.min_top1 is None and result.to_dict()["fidelity"]["problem"] is None


def test_below_target_quantize_reruns_then_warns_or_with_strict_fails(offset_classifier, tmp_path):
    model, calib, held = offset_classifier
    result = compress(model, calib=calib, eval_data=held, samples=64, quantize_options={"guard": False})
    assert result.fidelity.top1["p"] < 0.9 and result.fidelity_problem()
    assert [round(t["guard_target"], 3) for t in result.retries] == [0.95, 0.975]  # no guard: nothing helps
    assert result and result.raise_on_failure() is result  # a warning, as quantize alone reports it
    result = compress(model, calib=calib, eval_data=held, samples=64, quantize_options={"guard": False}, strict=True)
    assert not result and not result.retries
    with pytest.raises(ParityError, match="misses the fidelity target even after its guards acted: output 'p'"):
        result.raise_on_failure()


def test_strict_fails_at_the_guard(offset_classifier, tmp_path):
    model, calib, held = offset_classifier
    res = CliRunner().invoke(cli, ["compress", str(model), "-o", str(tmp_path / "c.onnx"), "--calib", str(calib),
                                   "--eval", str(held), "--samples", "64", "--latency-batch", "0", "--strict"])
    assert res.exit_code == 1 and "culprits: offset" in res.output, res.output
    res = CliRunner().invoke(cli, ["compress", str(model), "-o", str(tmp_path / "c.onnx"), "--calib", str(calib),
                                   "--eval", str(held), "--samples", "64", "--latency-batch", "0"])
    assert res.exit_code == 0 and "fidelity to the original (the guards' measure" in res.output, res.output


def test_hold_keeps_the_most_faithful_rerun_and_stops_when_it_holds():
    target = Target()
    first = Fidelity({"y": 0.80}, {}, target)
    seen = []

    def requantize(aim):
        seen.append(aim)
        return f"run {len(seen)}", Fidelity({"y": 0.84 + 0.05 * len(seen)}, {}, target)

    better, fidelity, tries = compress_fidelity.hold(first, requantize, target)
    assert seen == [0.95, 0.975] and better == "run 2" and fidelity.cosine["y"] == pytest.approx(0.94)
    assert [t["holds"] for t in tries] == [False, True]
    seen.clear()
    assert compress_fidelity.hold(Fidelity({"y": 0.95}, {}, target), requantize, target)[0] is None and not seen
