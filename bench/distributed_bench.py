"""Calibration, parity checks and sensitivity sweeps on 1 vs 2 workers: wall time and peak
memory per worker.

    python3 bench/distributed_bench.py [--samples 128] [--image 160] [--no-ray] [--tasks calibration,check,sensitivity]

ResNet-50 (25.6 M parameters, bench/common.resnet50) calibrated with entropy (histograms)
on ``--samples`` inputs, then ``check`` of the INT8 model against it on the same inputs; and a
sensitivity sweep of the digits sample model (models/digits: every group at 25/50/75 % and
every quantized node kept in float, on its held-out labelled data), in each mode: one process
(the default path; also with OMP_NUM_THREADS=1, as Ray runs its workers), ``--workers 2``
(local processes) and a local Ray cluster (started here on
loopback, stopped at the end) with 1 and 2 workers. Every measured run happens in a fresh
process (common.measure): its wall time and the coordinator's peak memory; the workers' peak
memory and busy time come from the run's execution report. Results must equal the
single-process ones (asserted: table bit for bit, check verdict, sweep rows bit for bit).
``--tasks`` measures only some tasks: the others' rows are kept from the previous JSON.
Writes bench/results/distributed.json (table for the README: bench/readme_tables.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import CACHE, ROOT, measure, resnet50, table, write_result

RESULTS = Path(__file__).resolve().parent / "results" / "distributed.json"
DIGITS = ROOT / "models" / "digits"
TASKS = {"calibration": "calibration (entropy)", "check": "check", "sensitivity": "sensitivity sweep (digits)"}
MODES = ["1 process", "1 process, OMP_NUM_THREADS=1", "--workers 2", "--ray, 1 worker", "--ray, 2 workers"]
ONE_THREAD = "OMP_NUM_THREADS"  # Ray sets it to 1 in its workers: BLAS single-threaded
COLUMNS = ["task", "mode", "wall", "busy per worker", "peak memory per worker", "coordinator peak"]


def run_calibration(model: str, data: str, executor) -> dict:
    from onnxprune.calibration import calibrate, open_dataset
    from onnxprune.io import load_model

    loaded = load_model(model)
    result = calibrate(loaded, open_dataset(data, loaded), method="entropy", batch_size=8, executor=executor)
    return {"ranges": result.as_dict(), "execution": result.execution}


def run_check(reference: str, candidate: str, data: str, executor) -> dict:
    from onnxprune.parity import check

    result = check(reference, candidate, data, batch_size=8, executor=executor, providers=["cpu"])
    return {"passed": result.passed, "execution": result.execution}


def run_sensitivity(executor) -> dict:
    from onnxprune.api.sensitivity_api import sensitivity

    result = sensitivity(DIGITS / "digits.onnx", str(DIGITS / "calib.npz"), eval_data=str(DIGITS / "eval.npz"),
                         labels="labels", ratios=(0.25, 0.5, 0.75), quantize=True, executor=executor)
    return {"rows": result.rows, "execution": result.execution}


def start_ray() -> tuple[str, str, int]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    temp = tempfile.mkdtemp(prefix="oprb", dir="/tmp")
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(ports[0]),
                    "--num-cpus", "2", "--include-dashboard", "false", "--dashboard-port", str(ports[1]),
                    "--ray-client-server-port", str(ports[2]), "--disable-usage-stats", "--temp-dir", temp],
                   check=True, capture_output=True, timeout=180)
    return f"127.0.0.1:{ports[0]}", temp, ports[0]


def stop_ray(temp: str, port: int) -> None:
    import psutil

    ours = [p for p in psutil.process_iter(["cmdline"])
            if temp in " ".join(p.info["cmdline"] or []) or f":{port}" in " ".join(p.info["cmdline"] or [])]
    for proc in [c for p in ours for c in p.children(recursive=True)] + ours:
        try:
            proc.kill()
        except psutil.Error:
            pass
    shutil.rmtree(temp, ignore_errors=True)


def make_executor(mode: str, address: str | None):
    """Made inside the measured process (a Ray connection does not pickle)."""
    from onnxprune.distributed import make_executor as make

    if mode.startswith("1 process"):
        return None
    if mode == "--workers 2":
        return make(workers=2)
    return make(workers=int(mode.split(", ")[1][0]), ray=address)


def calibration_in(mode, address, model, data):
    return run_calibration(model, data, make_executor(mode, address))


def check_in(mode, address, reference, candidate, data):
    return run_check(reference, candidate, data, make_executor(mode, address))


def sensitivity_in(mode, address):
    return run_sensitivity(make_executor(mode, address))


def mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def row_of(record: dict) -> list[str]:
    """The README row of one measured run (one process: its own wall time and peak)."""
    workers = record["workers"]
    peaks = " / ".join(mib(w["peak_rss"]) for w in workers) or mib(record["coordinator_peak_rss"])
    busy = " / ".join(f"{w['seconds']:.1f} s" for w in workers) or f"{record['wall_s']:.1f} s"
    return [record["task"], f"`{record['mode']}`", f"{record['wall_s']:.1f} s", busy, peaks,
            mib(record["coordinator_peak_rss"])]


def previous_runs() -> list[dict]:
    if not RESULTS.is_file():
        return []
    data = json.loads(RESULTS.read_text())
    return (data.get("data") or data).get("runs", [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--image", type=int, default=160)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: " + ", ".join(TASKS))
    args = parser.parse_args()
    chosen = [TASKS[t] for t in args.tasks.split(",")]

    model = str(resnet50(batch=1, image=args.image))
    data = CACHE / f"distributed-{args.samples}-{args.image}.npz"
    if not data.exists():
        x = np.random.default_rng(0).standard_normal((args.samples, 3, args.image, args.image), np.float32)
        np.savez(data, input=x)
    from onnxprune.api import quantize
    from onnxprune.io import load_model

    int8 = CACHE / f"distributed-int8-{args.image}.onnx"
    if not int8.exists():
        quantize(model, int8, calib=str(data), samples=16, latency=False)
    name = load_model(model).graph.inputs[0].name
    if name != "input":
        raise SystemExit(f"unexpected input name {name}")

    modes = MODES[:3]
    address = temp = port = None
    try:
        import ray  # noqa: F401

        if not args.no_ray:
            address, temp, port = start_ray()
            modes = MODES
    except ImportError:
        print("ray not installed: local modes only")
    jobs = {TASKS["calibration"]: (calibration_in, (model, str(data)), "ranges", args.samples),
            TASKS["check"]: (check_in, (model, str(int8), str(data)), "passed", args.samples),
            TASKS["sensitivity"]: (sensitivity_in, (), "rows", None)}
    records = []
    try:
        baseline = {}
        for mode in modes:
            for task in chosen:
                fn, call, key, samples = jobs[task]
                saved = os.environ.get(ONE_THREAD)
                if ONE_THREAD in mode:  # read by BLAS when the fresh process imports numpy
                    os.environ[ONE_THREAD] = "1"
                try:
                    m = measure(fn, mode, address, *call, preload=("onnxprune.calibration", "onnxprune.parity",
                                                                       "onnxprune.api.sensitivity_api"))
                finally:
                    os.environ.pop(ONE_THREAD, None)
                    if saved is not None:
                        os.environ[ONE_THREAD] = saved
                if m.error:
                    raise SystemExit(f"{mode} {task}: {m.error}")
                result = m.result
                if mode == "1 process":
                    baseline[task] = result[key]
                elif result[key] != baseline[task]:
                    raise SystemExit(f"{mode} {task}: result differs from the single process")
                execution = result["execution"] or {}
                record = {"mode": mode, "task": task, "samples": samples, "units": execution.get("units"),
                          "wall_s": m.wall_s, "coordinator_peak_rss": m.peak_rss,
                          "workers": [{k: w[k] for k in ("units", "samples", "seconds", "load_seconds", "peak_rss")}
                                      for w in execution.get("per_worker", [])],
                          "retries": execution.get("retries", 0)}
                records.append(record)
                print(row_of(record), flush=True)
    finally:
        if temp:
            stop_ray(temp, port)
    kept = [r for r in previous_runs() if r["task"] not in chosen]
    order = {task: i for i, task in enumerate(TASKS.values())}
    records = sorted(kept + records, key=lambda r: (order.get(r["task"], 9), MODES.index(r["mode"])))
    rows = [row_of(r) for r in records]
    print(table(COLUMNS, rows, align="llrrrr"))
    write_result("distributed", COLUMNS, rows, align="llrrrr", data={
        "model": f"ResNet-50, {args.image}x{args.image}, batch 1 (calibration, check); digits (sensitivity)",
        "samples": args.samples, "cpus": os.cpu_count(),
        "note": "2-core machine shared with other jobs: timings under contention", "runs": records})


if __name__ == "__main__":
    main()
