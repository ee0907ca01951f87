"""Parity and INT8 accuracy on the digits sample model; memory of `check` as samples grow.

    python bench/parity_bench.py

Three tables, each written to bench/results/ for the README (bench/readme_tables.py):

* parity: the float model against (a) ``optimize`` (exact), (b) ONNX Runtime's
  ``quantize_static`` (per-channel int8 weights), (c) ``onnxprune quantize`` with defaults,
  each checked by ``onnxprune.check`` on the 450 held-out images with labels;
* quantize-digits: held-out accuracy of ``onnxprune quantize`` for every calibration method,
  per-channel and per-tensor weights;
* check-memory: peak RSS of a ``check`` of the model against itself (fresh process each) on
  the held-out images repeated to 450 / 4,500 / 45,000 samples: streaming keeps it flat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import ROOT, human, measure, table, write_result

DIGITS = ROOT / "models" / "digits"
MODEL, CALIB, EVAL = DIGITS / "digits.onnx", DIGITS / "calib.npz", DIGITS / "eval.npz"


def ort_quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter({"input": x[None]} for x in np.load(CALIB)["input"])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def parity(work: Path) -> None:
    import onnxprune

    candidates = {
        "`optimize` (exact)": (work / "optimized.onnx", lambda p: onnxprune.optimize(MODEL, p)),
        "ORT `quantize_static`, per-channel int8": (work / "ort.onnx", lambda p: ort_quantize(MODEL, p)),
        "`onnxprune quantize` (defaults)": (work / "int8.onnx", lambda p: onnxprune.quantize(MODEL, p, calib=CALIB)),
    }
    rows, data = [], {}
    for label, (path, make) in candidates.items():
        make(path)
        result = onnxprune.check(MODEL, path, EVAL, labels="labels")
        stats = result.output("logits")
        data[label] = {"passed": result.passed, "preset": result.tolerances.preset, **stats}
        rows.append((
            label, f"{stats['max_abs']:.2g}", f"{stats['sqnr_db']:.1f} dB" if stats["sqnr_db"] else "∞",
            f"{stats['top1_agreement']:.2%}",
            f"{stats['accuracy_reference']:.2%} → {stats['accuracy_candidate']:.2%}",
            f"{'passes' if result.passed else 'fails'} `{result.tolerances.preset}`",
        ))
    columns = ["candidate (digits, 450 held-out images)", "max abs", "SQNR", "top-1 agreement", "accuracy", "verdict"]
    print(table(columns, rows))
    write_result("parity", columns, rows, data=data)


def quantize_digits() -> None:
    import onnxprune
    from onnxprune import runtime
    from onnxprune.calibration import METHODS

    held = np.load(EVAL)
    rows, data = [], {}
    base = float((runtime.run(MODEL, {"input": held["input"]})["logits"].argmax(1) == held["labels"]).mean())
    for method in METHODS:
        cells = []
        for per_channel in (True, False):
            q = onnxprune.quantize(MODEL, calib=CALIB, method=method, per_channel=per_channel)
            acc = float((runtime.run(q.model, {"input": held["input"]})["logits"].argmax(1) == held["labels"]).mean())
            data[f"{method}/{'per-channel' if per_channel else 'per-tensor'}"] = acc
            cells.append(f"{acc:.2%}")
        rows.append((method, *cells))
    columns = ["method", "INT8, per-channel weights", "INT8, per-tensor weights"]
    print(f"digits fp32 held-out accuracy {base:.2%}")
    print(table(columns, rows))
    write_result("quantize-digits", columns, rows, align="lrr", figures={"fp32": f"{base:.2%}"},
                 data={"fp32": base, **data})


def check_itself(data: str) -> bool:
    import onnxprune

    return bool(onnxprune.check(MODEL, MODEL, data, labels="labels", batch_size=256))


def check_memory(work: Path, repeats: tuple[int, ...] = (1, 10, 100)) -> None:
    held = np.load(EVAL)
    rows, data = [], {}
    for k in repeats:
        path = work / f"eval-x{k}.npz"
        np.savez(path, input=np.tile(held["input"], (k, 1, 1, 1)), labels=np.tile(held["labels"], k))
        m = measure(check_itself, str(path), preload=("onnxprune",))
        samples = k * len(held["labels"])
        data[samples] = {"peak_rss": m.peak_rss, "wall_s": m.wall_s, "error": m.error}
        rows.append((f"{samples:,}", human(m.peak_rss, "B") if not m.error else m.error, f"{m.wall_s:.1f} s"))
    columns = ["samples", "peak RSS", "time"]
    print(table(columns, rows))
    write_result("check-memory", columns, rows, align="rrr", data=data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["parity", "quantize-digits", "check-memory"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnxprune-parity-bench-") as tmp:
        if args.only in (None, "parity"):
            parity(Path(tmp))
        if args.only in (None, "quantize-digits"):
            quantize_digits()
        if args.only in (None, "check-memory"):
            check_memory(Path(tmp))
    print("timings on a shared machine vary with its load", file=sys.stderr)


if __name__ == "__main__":
    main()
