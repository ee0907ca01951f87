"""Accuracy after compression on real tasks (issue 10's tables): every pruning criterion with
and without the refit, and INT8 alone, on real pretrained models with task metrics.

    pip download --no-deps rapidocr_onnxruntime -d /tmp/w && unzip -o -q /tmp/w/*.whl -d /tmp/rapidocr
    python bench/accuracy_bench.py --models /tmp/rapidocr            # OCR models + digits
    python bench/accuracy_bench.py --tasks digits                    # digits only (no download)

Tasks (bench/realtasks.py): PP-OCRv4 text recognizer (decoded-text agreement with the fp32
original), PP-OCRv4 text detector (text-mask IoU), PP-OCR text-direction classifier (top-1
agreement, and accuracy against the rendered ground truth), and the digits sample model
(top-1 agreement, accuracy against its held-out labels). Calibration and evaluation samples
are disjoint. Writes bench/results/accuracy.json (``--settings 6,7`` runs only those rows and
keeps the others). The taylor and distillation rows need ``onnxprune[distill]``; distillation
gets ``--distill-time`` seconds per model (90: short on purpose, the machine is shared, so a
large model gets few epochs). Timings are not the point here; what is measured is accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx_ir as ir

import realtasks
from common import ROOT, table
from onnxprune.api import prune, quantize

RESULTS = ROOT / "bench" / "results" / "accuracy.json"
DIGITS = ROOT / "models" / "digits"

# (label, prune() options, data): data None (none), "calib" (the task's calibration samples) or
# "more" (those and --more further rendered samples, what distillation needs: it trains on them).
# The fidelity guard is off in every row but the last: the rows compare settings at the same
# MACs (the guard would give groups back); the last row is what a user gets by default.
SETTINGS = [
    ("l1, no data (data-free default)", dict(criterion="l1"), None),
    ("l1 + refit", dict(criterion="l1"), "calib"),
    ("activation + refit", dict(criterion="activation"), "calib"),
    ("energy + refit", dict(criterion="energy"), "calib"),
    ("thinet + refit (default with data)", dict(criterion="thinet"), "calib"),
    ("thinet, no refit", dict(criterion="thinet", reconstruct=False), "calib"),
    # Needs onnxprune[distill] (torch + onnx2torch): gradients and training on the calibration data.
    ("taylor (Fisher, no labels) + refit", dict(criterion="taylor"), "calib"),
    ("thinet + refit + distill", dict(criterion="thinet", distill=True), "calib"),
    ("l1 + refit + distill", dict(criterion="l1", distill=True), "calib"),
    ("thinet + refit + distill, more data", dict(criterion="thinet", distill=True), "more"),
    ("taylor + refit + distill, more data", dict(criterion="taylor", distill=True), "more"),
    ("default with data, fidelity guard on", dict(guard=True), "calib"),
]
DISTILL_SECONDS = 120.0  # per pruned model: CPU, shared machine (see --distill-time)
MORE = 480  # further rendered calibration samples for the "more" rows (see --more)


def digits_task() -> realtasks.Task:
    calib, held = np.load(DIGITS / "calib.npz"), np.load(DIGITS / "eval.npz")
    return realtasks.Task("digits", DIGITS / "digits.onnx", "input", calib["input"], held["input"],
                          "top-1 agreement", realtasks._top1_score, held["labels"])


def opset_13(path: Path) -> Path:
    """The model converted to opset 17 when older than 13 (per-channel QDQ needs 13; the
    Paddle exports are 11/12): what a user is told to do by quantize's error."""
    import onnx

    model = onnx.load(path)
    if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13:
        return path
    target = realtasks.CACHE / f"{path.stem}.op17.onnx"
    onnx.save(onnx.version_converter.convert_version(model, 17), target)
    return target


def evaluate(task: realtasks.Task, model, ref: np.ndarray) -> dict:
    out = realtasks.run(model, task.heldout, task.input)
    row = {"fidelity": task.score(ref, out)}
    if task.labels is not None:
        row["accuracy"] = float(np.mean(out.argmax(-1) == task.labels))
    return row


def run_task(task: realtasks.Task, targets: list[float], settings, int8: bool, distill_time: float) -> dict:
    ref = realtasks.run(task.model, task.heldout, task.input)
    base = {"fidelity": 1.0}
    if task.labels is not None:
        base["accuracy"] = float(np.mean(ref.argmax(-1) == task.labels))
    rows = []
    calib = {task.input: task.calib}
    more = calib if task.more is None else {task.input: np.concatenate([task.calib, task.more])}
    for keep in targets:
        for label, options, data in settings:
            start = time.perf_counter()
            options = {"guard": False, **options}
            if options.get("distill"):
                options = {**options, "distill_time": distill_time}
            samples = None if data is None else more if data == "more" else calib
            try:
                result = prune(str(task.model), target_macs=keep, latency_runs=0, batch_size=8,
                               calib=samples, **options)
            except Exception as exc:  # a setting that fails is a row, not a crash
                rows.append({"setting": label, "target_macs": keep, "error": str(exc).splitlines()[0][:200]})
                continue
            row = {"setting": label, "target_macs": keep, "guard": options["guard"],
                   "calib_samples": 0 if samples is None else len(samples[task.input]),
                   "macs_removed": 1 - result.after["macs"] / result.before["macs"]}
            row.update(evaluate(task, ir.to_proto(result.model).SerializeToString(), ref))
            row["seconds"] = round(time.perf_counter() - start, 1)
            if result.distill is not None:
                d = result.distill
                row["distill"] = {"status": d.status, "reason": d.reason, "epochs": d.epochs,
                                  "seconds": round(d.seconds, 1), "samples": list(d.samples),
                                  "loss": [d.loss_before, d.loss_after]}
            rows.append(row)
            print(task.name, row, flush=True)
    if int8:
        start = time.perf_counter()
        row = {"setting": "INT8 alone (minmax, per-channel)", "target_macs": None, "macs_removed": 0.0}
        try:
            result = quantize(str(opset_13(task.model)), calib=calib, batch_size=8)
            row.update(evaluate(task, ir.to_proto(result.model).SerializeToString(), ref))
        except Exception as exc:  # e.g. an opset too old for per-channel QDQ: a row saying so
            row["error"] = str(exc).splitlines()[0][:200]
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(task.name, row, flush=True)
    return {"metric": task.metric, "baseline": base, "calib_samples": len(task.calib),
            "heldout_samples": len(task.heldout), "rows": rows}


def table_spec(results: dict) -> dict:
    """The README's table (every task, every setting), rendered by bench/readme_tables.py."""
    rows = []
    for name, data in results["tasks"].items():
        base = data["baseline"].get("accuracy")
        for r in data["rows"]:
            if "fidelity" not in r:
                continue
            acc = f"{r['accuracy']:.3f} ({base:.3f})" if r.get("accuracy") is not None else ""
            d = r.get("distill")
            trained = "" if d is None else f"{d['status']}, {d['epochs']} epochs / {d['samples'][0]} samples"
            rows.append([f"{name} ({data['metric']})", r["setting"], f"{r['macs_removed']:.0%}",
                         f"{r['fidelity']:.3f}", acc, trained])
    columns = ["model (metric vs fp32)", "setting", "MACs removed", "fidelity", "accuracy (original)", "distillation"]
    return {"columns": columns, "rows": rows, "align": "llrrrl"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="folder holding the extracted rapidocr_onnxruntime wheel")
    parser.add_argument("--tasks", default="ocr-rec,ocr-det,ocr-cls,digits")
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--heldout", type=int, default=64)
    parser.add_argument("--settings", help="comma list of setting numbers (0-based) to run")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--more", type=int, default=MORE, help="further rendered calibration samples (OCR tasks)")
    parser.add_argument("--distill-time", type=float, default=DISTILL_SECONDS, help="seconds of distillation per model")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads for distillation and taylor (on a shared machine more threads run slower)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--readme", action="store_true", help="only rewrite the JSON's README table from its rows")
    args = parser.parse_args()
    if args.readme:  # then: python bench/readme_tables.py
        results = json.loads(args.out.read_text())
        results["table"] = table_spec(results)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        return
    names = args.tasks.split(",")
    try:  # torch's threads spin while others hold the cores: one thread ran several times faster here
        import torch

        torch.set_num_threads(args.torch_threads)
    except ImportError:
        pass
    settings = SETTINGS if not args.settings else [SETTINGS[int(i)] for i in args.settings.split(",") if i != "none"]
    tasks = []
    if args.models is not None:
        more = args.more if any(data == "more" for _, _, data in settings) else 0  # rendered only when used
        tasks += realtasks.load_tasks(args.models, realtasks.CACHE, args.calib, args.heldout, names, more)
    if "digits" in names:
        tasks.append(digits_task())
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("tasks", {})
    for task in tasks:
        targets = [0.7, 0.5] if task.name == "digits" else [0.7]
        fresh = run_task(task, targets, settings, not args.no_int8, args.distill_time)
        old = results["tasks"].get(task.name)
        if old is not None:  # a partial run (--settings) replaces its own rows and keeps the others
            done = {(r["setting"], r["target_macs"]) for r in fresh["rows"]}
            fresh["rows"] = [r for r in old["rows"] if (r["setting"], r["target_macs"]) not in done] + fresh["rows"]
        results["tasks"][task.name] = fresh
        results["table"] = table_spec(results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")  # after each task: partial runs count
    for name, data in results["tasks"].items():
        rows = [(r["setting"], f"{r['macs_removed']:.0%}" if "macs_removed" in r else "",
                 f"{r['fidelity']:.3f}" if "fidelity" in r else r.get("error", ""),
                 f"{r['accuracy']:.3f}" if r.get("accuracy") is not None else "") for r in data["rows"]]
        base = data["baseline"].get("accuracy")
        print(f"\n{name}: {data['metric']} with the fp32 original on {data['heldout_samples']} held-out samples"
              + (f"; original accuracy {base:.3f}" if base is not None else ""))
        print(table(["setting", "MACs removed", "fidelity", "accuracy"], rows, align="lrrr"))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
