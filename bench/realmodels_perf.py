"""onnxprune vs ONNX Runtime's quantize_static on real pretrained models, side by side.

    python bench/realmodels_perf.py --root /path/to/extracted/wheels            # everything
    python bench/realmodels_perf.py --models magika --methods minmax --reps 2

For each model (see realmodels_data.py) and calibration method, each tool quantizes the same
float model on the same 100 samples, each run in a fresh process (whole process: imports,
load, calibration, QDQ, save; wall time, and peak RSS from the kernel's rusage): onnxprune's
CLI (`onnxprune quantize --no-latency`), and ORT's `quantize_static` (QDQ, per-channel int8
weights, uint8 activations: the same scheme) fed one sample at a time, its lean setting (a
batched reader makes its MinMax keep every batch's outputs: 10x the memory). Then every model
(fp32, ours, ORT's) is timed in a fresh process on the CPU provider (one thread, median of
--runs) and its outputs on held-out samples compared with fp32's: top-1 agreement for the
classifiers, SQNR (dB) for the detector. Repetitions are interleaved (rep 1 of everything,
then rep 2, ...) so that load changes on a shared machine hit every tool alike; medians and
min-max spreads are reported, with the load average seen. JSON: bench/results/realmodels_perf.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from realmodels_data import MODELS, prepare  # noqa: E402

ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
RESULTS = HERE / "results" / "realmodels_perf.json"


# --- one run, in a fresh process ----------------------------------------------------------


def run_measured(cmd: list[str], cap_bytes: int) -> dict:
    """Run ``cmd``; wall seconds, peak RSS (rusage of that child), ok/error; killed above the cap."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    killed, done = threading.Event(), threading.Event()

    def watch():  # never reaps the child (poll() would): wait4 below must get its rusage
        try:
            ps = psutil.Process(proc.pid)
            while not done.wait(0.05):
                if ps.memory_info().rss > cap_bytes:
                    killed.set()
                    proc.kill()
        except psutil.Error:
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    error = None
    if killed.is_set():
        error = f"killed above {cap_bytes / 2**30:.0f} GiB"
    elif proc.returncode:
        lines = [line for line in stderr.splitlines() if line.strip()]
        error = (lines[-1] if lines else f"exit {proc.returncode}")[:120]
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "error": error}


def quantize_cmd(tool: str, model: Path, data: Path, method: str, out: Path, samples: int, provider: str) -> list[str]:
    if tool == "onnxprune":
        return [
            sys.executable,
            "-c",
            "from onnxprune.cli import main; main()",
            "-q",
            "quantize",
            str(model),
            "-o",
            str(out),
            "--calib",
            str(data),
            "--method",
            method,
            "--samples",
            str(samples),
            "--no-latency",
            "--report",
            str(out.with_suffix(".report.json")),
        ]
    return [sys.executable, __file__, "--ort-worker", str(model), str(data), method, str(out), str(samples)]


def ort_worker(model: str, data: str, method: str, out: str, samples: int) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    arrays = np.load(data, mmap_mode="r")
    name = _input_name(model)

    class Reader(CalibrationDataReader):  # one sample at a time: ORT's lean setting
        def __init__(self):
            self.index = 0

        def get_next(self):
            if self.index >= min(samples, len(arrays)):
                return None
            self.index += 1
            return {name: np.array(arrays[self.index - 1 : self.index])}

    quantize_static(
        model,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod[ORT_METHODS[method]],
        extra_options={"CalibTensorRangeSymmetric": False},
    )


def _input_name(model: str) -> str:
    import onnxruntime as ort

    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].name


def latency_worker(
    model: str, data: str, batch: int, runs: int, provider: str, kind: str, reference: str, out: str
) -> None:
    """Median latency (one thread) on the first ``batch`` eval samples; outputs on all of them
    saved (fp32: as the ``reference``) or compared with the reference's (see ``fidelity``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, options, providers=[provider])
    name = sess.get_inputs()[0].name
    arrays = np.load(data)
    feeds = {name: arrays[:batch]}
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    outputs = [sess.run(None, {name: arrays[i : i + batch]}) for i in range(0, len(arrays) - batch + 1, batch)]
    outputs = {f"out{k}": np.concatenate([o[k] for o in outputs]) for k in range(len(outputs[0]))}
    result = {"latency_ms": float(np.median(times) * 1000)}
    if Path(reference).exists():
        with np.load(reference) as ref:
            result["fidelity"] = fidelity(kind, {k: ref[k] for k in ref.files}, outputs)
    else:
        np.savez(reference, **outputs)
    Path(out).write_text(json.dumps(result))


def float_model(path: Path, out: Path) -> Path:
    """The float model both tools get: as shipped, or converted to opset 13 when older
    (per-channel QDQ needs 13; onnxprune refuses older opsets, ORT would quantize per tensor),
    with Paddle's -1 input/output dims named (onnxprune took -1 for a fixed batch)."""
    import onnx

    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    dims = [d for v in [*model.graph.input, *model.graph.output] for d in v.type.tensor_type.shape.dim]
    negative = [d for d in dims if d.HasField("dim_value") and d.dim_value < 0]
    if opset >= 13 and not negative:
        return path
    if not out.exists():
        for i, d in enumerate(negative):
            d.dim_param = f"dim{i}" if i else "batch"
        onnx.save(onnx.version_converter.convert_version(model, 13) if opset < 13 else model, str(out))
    return out


# --- the benchmark ------------------------------------------------------------------------


def fidelity(kind: str, reference: dict, candidate: dict) -> float:
    """Top-1 agreement with fp32 (classifiers, %) or output SQNR (detector, dB)."""
    if kind == "classifier":
        return float(np.mean(reference["out0"].argmax(-1) == candidate["out0"].argmax(-1)) * 100)
    ref = np.concatenate([reference[k].ravel() for k in sorted(reference) if k.startswith("out")])
    got = np.concatenate([candidate[k].ravel() for k in sorted(candidate) if k.startswith("out")])
    return float(
        10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref - got).astype(np.float64) ** 2), 1e-30))
    )


def phases(profile: dict) -> dict:
    """Seconds and peak MB of the top-level phases of one run (imports first)."""
    top = {"imports": {"seconds": profile["imports_s"], "peak_mb": None}}
    for phase in profile["phases"]:
        if phase["depth"] == 0:
            row = top.setdefault(phase["name"], {"seconds": 0.0, "peak_mb": 0.0})
            row["seconds"] = round(row["seconds"] + phase["seconds"], 3)
            row["peak_mb"] = max(row["peak_mb"] or 0.0, phase["peak_mb"] or 0.0)
    return top


def summary(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values)), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("ONNXPRUNE_REALMODELS"), help="extracted wheels (package/...)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default="minmax,entropy")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every run")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per latency measurement")
    parser.add_argument("--provider", default="CPUExecutionProvider")
    parser.add_argument("--cap-gb", type=float, default=8.0, help="kill a run whose RSS passes this")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "onnxprune-realmodels-bench"))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    work = Path(args.work)
    models = {}
    for name in args.models.split(","):
        path = MODELS[name].locate(args.root)
        if path is None:
            print(f"skipping {name}: {MODELS[name].package} not found (give --root)", file=sys.stderr)
            continue
        # in a child: the kernel carries this process's peak RSS over into every child it starts
        subprocess.run(
            [
                sys.executable,
                str(HERE / "realmodels_data.py"),
                "--prepare",
                name,
                str(work / "data"),
                str(args.samples),
                str(args.eval_samples),
            ],
            check=True,
        )
        models[name] = (
            float_model(path, work / f"{name}.fp32.onnx"),
            *prepare(name, work / "data", args.samples, args.eval_samples),
        )
    methods, tools = args.methods.split(","), ("onnxprune", "onnxruntime")
    load = [os.getloadavg()[0]]
    calib: dict = {}
    for rep in range(args.reps):  # interleaved: every (model, method, tool) once per rep
        for name, (path, data, _) in models.items():
            for method in methods:
                for tool in tools:
                    out = work / f"{name}.{method}.{tool}.onnx"
                    got = run_measured(
                        quantize_cmd(tool, path, data, method, out, args.samples, args.provider),
                        int(args.cap_gb * 2**30),
                    )
                    if tool == "onnxprune" and got["error"] is None:  # where its time went (--profile's block)
                        got["profile"] = phases(json.loads(out.with_suffix(".report.json").read_text())["profile"])
                    calib.setdefault((name, method, tool), []).append(got)
                    print(f"rep {rep} {name} {method} {tool}: {got}", file=sys.stderr)
                    load.append(os.getloadavg()[0])
    pruned = {}  # onnxprune only: prune to 70 % of the MACs, then quantize (minmax): not timed
    for name, (path, data, _) in models.items():
        steps = [
            [
                sys.executable,
                "-c",
                "from onnxprune.cli import main; main()",
                "-q",
                "prune",
                str(path),
                "-o",
                str(work / f"{name}.pruned.onnx"),
                "--target-macs",
                "0.7",
                "--calib",
                str(data),
                "--latency-runs",
                "0",
            ],
            quantize_cmd(
                "onnxprune",
                work / f"{name}.pruned.onnx",
                data,
                "minmax",
                work / f"{name}.pruned-minmax.onnxprune.onnx",
                args.samples,
                args.provider,
            ),
        ]
        for step in steps:
            got = run_measured(step, int(args.cap_gb * 2**30))
            if got["error"]:
                break
        pruned[name] = got
        print(f"pruned {name}: {got}", file=sys.stderr)
    latency: dict = {}
    variants = [("fp32", None)] + [(f"{tool}:{m}", m) for m in [*methods, "pruned-minmax"] for tool in tools]
    for rep in range(args.reps):
        for name, (path, _, eval_data) in models.items():
            for variant, method in variants:
                model = path if method is None else work / f"{name}.{method}.{variant.split(':')[0]}.onnx"
                runs = pruned[name] if method == "pruned-minmax" else calib.get((name, method, variant.split(":")[0]))
                if not model.exists() or (
                    method and (not runs or (runs[-1] if isinstance(runs, list) else runs)["error"])
                ):
                    continue
                out, reference = work / f"{name}.{variant.replace(':', '.')}.json", work / f"{name}.reference.npz"
                if method is None and rep == 0:
                    reference.unlink(missing_ok=True)  # fp32 runs first and writes it
                cmd = [
                    sys.executable,
                    __file__,
                    "--latency-worker",
                    str(model),
                    str(eval_data),
                    str(MODELS[name].latency_batch),
                    str(args.runs),
                    args.provider,
                    MODELS[name].kind,
                    str(reference),
                    str(out),
                ]
                got = run_measured(cmd, int(args.cap_gb * 2**30))
                if got["error"] is None:
                    got.update(json.loads(out.read_text()))
                    if method is None:
                        got["fidelity"] = 100.0 if MODELS[name].kind == "classifier" else None
                latency.setdefault((name, variant), []).append(got)
                print(
                    f"rep {rep} latency {name} {variant}: {got.get('latency_ms')} {got['error'] or ''}", file=sys.stderr
                )
                load.append(os.getloadavg()[0])
    report = build_report(args, models, methods, tools, calib, latency, load, pruned)
    write(Path(args.out), report, "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))


def write(out: Path, report: dict, command: str) -> None:
    """Write the JSON (table, note, raw data), keeping the rows of models not in ``report``
    (each row says how many repetitions and what load it was measured under)."""
    if out.exists():
        previous = json.loads(out.read_text())
        names = {r["model"] for r in report["rows"]}
        report["rows"] = [r for r in previous["data"]["rows"] if r["model"] not in names] + report["rows"]
        command = f"{previous['command']}; {command}"
    columns, rows, note = table(report)
    result = {
        "command": command,
        "machine": f"{os.cpu_count()} CPUs, shared with other jobs (see the load averages)",
        "table": {"columns": columns, "rows": rows, "align": "llllrlll"},
        "figures": {"note": note},
        "data": report,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".tmp").replace(out)
    print(markdown(result))


def build_report(args, models, methods, tools, calib, latency, load, pruned) -> dict:
    import onnxruntime

    rows = []
    for name in models:
        fp32 = [r["latency_ms"] for r in latency.get((name, "fp32"), []) if r["error"] is None]
        for method in methods:
            row = {
                "model": name,
                "kind": MODELS[name].kind,
                "method": method,
                "reps": args.reps,
                "load_average": summary(load),
                "onnxruntime": onnxruntime.__version__,
                "latency_batch": MODELS[name].latency_batch,
                "fp32_ms": summary(fp32),
            }
            for tool in tools:
                runs = calib[(name, method, tool)]
                timed = latency.get((name, f"{tool}:{method}"), [])
                ok = [r for r in timed if r["error"] is None]
                row[tool] = {
                    **({"phases": runs[-1]["profile"]} if "profile" in runs[-1] else {}),  # the last repetition's
                    "seconds": summary([r["seconds"] for r in runs if r["error"] is None]),
                    "peak_mb": summary([r["peak_mb"] for r in runs if r["error"] is None]),
                    "errors": sorted({r["error"] for r in runs if r["error"]}),
                    "int8_ms": summary([r["latency_ms"] for r in ok]),
                    "fidelity": summary([r["fidelity"] for r in ok]),
                }
            if method == "minmax":
                timed = [r for r in latency.get((name, "onnxprune:pruned-minmax"), []) if r["error"] is None]
                row["pruned"] = {
                    "int8_ms": summary([r["latency_ms"] for r in timed]),
                    "fidelity": summary([r["fidelity"] for r in timed]),
                    "error": pruned.get(name, {}).get("error"),
                }
            rows.append(row)
    return {
        "bench": "realmodels_perf",
        "samples": args.samples,
        "eval_samples": args.eval_samples,
        "reps": args.reps,
        "provider": args.provider,
        "threads": 1,
        "onnxruntime": onnxruntime.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average": summary(load),
        "rows": rows,
    }


def table(report: dict) -> tuple[list[str], list[list[str]], str]:
    """The README table (medians, min-max spreads over the interleaved repetitions) and its note."""

    def cell(s, fmt, unit=""):
        if s["median"] is None:
            return "—"
        spread = f" ({fmt.format(s['min'])}–{fmt.format(s['max'])})" if s["n"] > 1 else ""
        return f"{fmt.format(s['median'])}{unit}{spread}"

    def pruned_cell(p, unit):
        if p is None:
            return ""
        if p["error"] and not p["int8_ms"]["n"]:
            return p["error"][:80]
        return f"{cell(p['int8_ms'], '{:.1f}')} / {cell(p['fidelity'], '{:.1f}', unit)}"

    def calib_cell(t):
        if t["errors"] and not t["seconds"]["n"]:
            return "; ".join(t["errors"])
        return f"{cell(t['seconds'], '{:.1f}')} s / {cell(t['peak_mb'], '{:.0f}')} MB"

    columns = [
        "model",
        "method",
        "onnxprune: time / peak RSS",
        "ORT quantize_static: time / peak RSS",
        "fp32 ms",
        "INT8 ms: ours / ORT",
        "fidelity vs fp32: ours / ORT",
        "ours pruned to 70 % MACs + INT8: ms / fidelity",
    ]
    rows = []
    for row in report["rows"]:
        ours, ort = row["onnxprune"], row["onnxruntime"]
        unit = " %" if row["kind"] == "classifier" else " dB"
        rows.append(
            [
                f"{row['model']} (batch {row['latency_batch']})",
                row["method"],
                calib_cell(ours),
                calib_cell(ort),
                cell(row["fp32_ms"], "{:.1f}"),
                f"{cell(ours['int8_ms'], '{:.1f}')} / {cell(ort['int8_ms'], '{:.1f}')}",
                f"{cell(ours['fidelity'], '{:.1f}', unit)} / {cell(ort['fidelity'], '{:.1f}', unit)}",
                pruned_cell(row.get("pruned"), unit),
            ]
        )
    loads = [r["load_average"] for r in report["rows"]]
    reps = sorted({r["reps"] for r in report["rows"]})
    note = (
        f"{'/'.join(map(str, reps))} interleaved repetitions per row, median (min–max); {report['cpus']} CPUs "
        f"shared with other jobs, load average {min(x['min'] for x in loads):.1f}–{max(x['max'] for x in loads):.1f} "
        f"during the runs; latency: {report['provider']}, 1 thread, ONNX Runtime {report['onnxruntime']}"
    )
    return columns, rows, note


def markdown(result: dict) -> str:
    columns, rows = result["table"]["columns"], result["table"]["rows"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + f"\n\n{result['figures']['note']}."


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--ort-worker":
        ort_worker(*sys.argv[2:6], int(sys.argv[6]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--latency-worker":
        model, data, batch, runs, provider, kind, reference, out = sys.argv[2:10]
        latency_worker(model, data, int(batch), int(runs), provider, kind, reference, out)
    elif len(sys.argv) > 1 and sys.argv[1] == "--merge":  # --merge PART.json [OUT.json]: rows of a separate run
        part = json.loads(Path(sys.argv[2]).read_text())
        write(Path(sys.argv[3]) if len(sys.argv) > 3 else RESULTS, part["data"], part["command"])
    elif len(sys.argv) > 1 and sys.argv[1] == "--markdown":
        print(markdown(json.loads(Path(sys.argv[2] if len(sys.argv) > 2 else RESULTS).read_text())))
    else:
        main()
