"""Latency and fidelity per execution provider, fp32 and INT8, on the sample and real models.

    python3 bench/providers_bench.py [--providers cpu,openvino] [--models digits,...] [--quick]

For every model: the fp32 model and its INT8 (QDQ) version from ``onnxprune.quantize`` run
on every usable provider; fidelity is judged against the fp32 model on the CPU provider
(``onnxprune.parity.check``: max |diff|, cosine, top-1 agreement, accuracy where labelled),
latency is the median of ``runtime.latency_ms`` on one batch with one thread (OpenVINO:
``num_of_threads=1``). OpenVINO runs twice more with an explicit inference precision
(``f32`` and ``bf16``: the latter is its default on Intel CPUs with AMX, which explains
logits that differ by ~0.04 from the CPU provider on the digits model).

Models: ``digits`` (models/digits, labelled) and, when ``bench/realmodels.py`` is there, its
committed exports and wheel models with stacked inputs. Writes bench/results/providers.json.
CUDA/TensorRT run through the same code on a GPU machine (bench/cuda_parity.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from onnxprune import providers as eps  # noqa: E402
from onnxprune import quantize, runtime  # noqa: E402
from onnxprune.parity import check  # noqa: E402
from onnxprune.report import table  # noqa: E402

OUT = ROOT / "bench" / "results" / "providers.json"
DIGITS = ROOT / "models" / "digits"
ONE_THREAD = {"OpenVINOExecutionProvider": {"num_of_threads": "1"}}
# (label, provider, extra options): OpenVINO also with each inference precision pinned.
REAL_BATCH, REAL_EVAL = 4, 16
VARIANTS = {
    "OpenVINOExecutionProvider": [("openvino", {}), ("openvino f32", {"INFERENCE_PRECISION_HINT": "f32"}),
                                  ("openvino bf16", {"INFERENCE_PRECISION_HINT": "bf16"})],
}


def models(names: set[str] | None, quick: bool) -> list[dict]:
    """[{name, exporter, path, calib: {input: array}, eval: {input: array}, labels}]"""
    digits_eval = dict(np.load(DIGITS / "eval.npz"))
    found = [{"name": "digits", "exporter": "torch.onnx (sample)", "path": DIGITS / "digits.onnx",
              "calib": dict(np.load(DIGITS / "calib.npz")), "labels": digits_eval.pop("labels"),
              "eval": digits_eval}]
    try:
        import realmodels as rm
    except ImportError:
        rm = None
    if rm is not None and not quick:
        for name, model in {**rm.EXPORTS, **rm.REAL}.items():
            if names and name not in names:
                continue
            path = rm.locate(model, download=False)
            if path is None:
                continue
            try:
                calib, held = rm.data(model, path, "calib"), rm.data(model, path, "eval")
            except Exception as exc:  # a model whose data cannot be made here
                print(f"skip {name}: {exc}", file=sys.stderr)
                continue
            if calib.inputs is None:  # sequential feeds (VAD state): not a batch to time
                continue
            labels = held.truth if model.task in ("digits", "label", "linecls", "orientation") else None
            found.append({"name": name, "exporter": model.exporter, "path": path, "calib": calib.inputs,
                          "eval": held.inputs, "labels": None if labels is None else np.asarray(labels)})
    return [m for m in found if not names or m["name"] in names]


def variants(providers: list[str]) -> list[tuple[str, str, dict]]:
    out = []
    for p in providers:
        for label, extra in VARIANTS.get(p, [(eps.short_name(p), {})]):
            out.append((label, p, {**ONE_THREAD.get(p, {}), **extra}))
    return out


def fidelity(ref_path, cand_path, data: dict, labels, provider: str, options: dict) -> dict:
    feeds = dict(data, labels=labels) if labels is not None else data
    result = check(str(ref_path), str(cand_path), feeds, providers=["cpu", provider],
                   provider_options={provider: options}, labels="labels" if labels is not None else None,
                   tolerances="int8")
    wanted = f"reference@cpu vs candidate@{eps.short_name(provider)}"
    comparison = next(c for c in result.comparisons if c["name"] == wanted)
    name, o = next(iter(comparison["outputs"].items()))
    share = result.providers["placement"].get(provider, {}).get("share")
    return {"output": name, "max_abs": o["max_abs"], "cosine": o["cosine"], "sqnr_db": o["sqnr_db"],
            "top1": o["top1_agreement"], "accuracy": o["accuracy_candidate"],
            "accuracy_reference": o["accuracy_reference"], "node_share": share}


def batch_of(data: dict, n: int) -> dict:
    return {k: v[:n] for k, v in data.items()}


def loadable(path: Path, tmp: Path) -> Path:
    """``path``, or a copy stamped with the newest IR version this onnxruntime reads (an older
    build, e.g. onnxruntime-openvino 1.24, refuses IR 14 files that onnx 1.23 writes)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    if proto.ir_version <= 10:
        return path
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return path
    except Exception as exc:
        if "IR version" not in str(exc):
            return path
    proto = onnx.load(str(path))
    proto.ir_version = 10
    out = tmp / f"{path.stem}.ir10.onnx"
    onnx.save(proto, str(out))
    return out


def bench_model(model: dict, providers: list[str], runs: int, batch: int, tmp: Path) -> list[dict]:
    model = dict(model, path=loadable(Path(model["path"]), tmp))
    if model["name"] != "digits":  # real models: fewer, smaller batches (seconds per run on 2 cores)
        batch = min(batch, REAL_BATCH)
        model = dict(model, eval=batch_of(model["eval"], REAL_EVAL),
                     labels=None if model["labels"] is None else model["labels"][:REAL_EVAL])
    int8 = tmp / f"{model['name']}.int8.onnx"
    versions = [("fp32", model["path"])]
    try:
        quantize(str(model["path"]), int8, calib=model["calib"])
        versions.append(("int8", int8))
    except Exception as exc:  # e.g. nothing quantizable: the fp32 rows still say something
        print(f"{model['name']}: no INT8 version: {exc}", file=sys.stderr)
    feeds = batch_of(model["eval"], batch)
    rows = []
    for precision, path in versions:
        for label, provider, options in variants(providers):
            row = {"model": model["name"], "exporter": model["exporter"], "precision": precision,
                   "provider": label, "provider_name": provider, "options": options,
                   "batch": len(next(iter(feeds.values())))}
            try:
                # best of 3 medians: on a shared machine, load only ever adds time
                row["latency_ms"] = min(runtime.latency_ms(path, feeds, runs=runs, providers=[provider, eps.CPU],
                                                           provider_options={provider: options}) for _ in range(3))
                row.update(fidelity(model["path"], path, model["eval"], model["labels"], provider, options))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            print(f"{model['name']:<16} {precision} {label:<14} {row.get('latency_ms', float('nan')):8.3f} ms "
                  f"max|d| {row.get('max_abs', float('nan')):.3g} {row.get('error', '')}", file=sys.stderr)
    return rows


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    plugins = {m: p.providers for m, p in eps.plugins().items()}
    routes = {p: ("compiled into onnxruntime" if p in ort.get_available_providers() else "plugin EP")
              for p in eps.available()}
    return {"cpu": cpu, "cores": os.cpu_count(), "onnxruntime": ort.__version__, "routes": routes,
            "compiled_in": ort.get_available_providers(), "plugins": plugins,
            "unavailable": {p: eps.why_unavailable(p)
                            for p in ("OpenVINOExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
                            if p not in eps.available()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", default="cpu,openvino,cuda,tensorrt")
    parser.add_argument("--models", help="comma list (default: all found)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="digits only")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--readme", action="store_true", help="only rewrite README's providers table from --out")
    args = parser.parse_args()
    if args.readme:
        write_readme(json.loads(args.out.read_text()))
        return
    wanted = [eps.resolve(p) for p in args.providers.split(",") if p.strip()]
    usable = [p for p in wanted if p in eps.available()]
    skipped = {p: eps.why_unavailable(p) for p in wanted if p not in usable}
    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models(set(args.models.split(",")) if args.models else None, args.quick):
            rows += bench_model(model, usable, args.runs, args.batch, Path(tmp))
    result = {"machine": machine(), "providers": usable, "skipped": skipped, "runs": args.runs,
              "threads": 1, "seconds": round(time.time() - start, 1), "rows": rows,
              "note": "timings on a shared 2-core machine under contention; medians of --runs runs"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(render(result))


def _f(value, fmt):
    return "-" if value is None else format(value, fmt)


def render(result: dict) -> str:
    rows = [(r["model"], r["precision"], r["provider"], _f(r.get("latency_ms"), ".3f"), _f(r.get("max_abs"), ".3g"),
             _f(r.get("cosine"), ".6f"), _f(r.get("top1"), ".2%"), _f(r.get("accuracy"), ".2%"),
             _f(r.get("node_share"), ".0%"), r.get("error", "")[:60]) for r in result["rows"]]
    lines = [table(["model", "precision", "provider", "latency ms", "max |diff| vs fp32@cpu", "cosine", "top-1",
                    "accuracy", "nodes on provider", "error"], rows, align="lllrrrrrrl")]
    lines += [f"skipped {p}: {why}" for p, why in result["skipped"].items()]
    return "\n".join(lines)


README_SHOWN = ("cpu", "openvino", "openvino bf16")  # on this machine "openvino f32" equals the default


def markdown(result: dict) -> str:
    """One row per model and provider: fp32 and INT8 latency and fidelity side by side."""
    cells: dict[tuple, dict] = {}
    failed = {}
    for r in result["rows"]:
        if "error" in r:
            failed[r["model"]] = r["error"].split(":")[0] + ": " + r["error"].split(":", 1)[1].strip()[:80]
            continue
        if r["provider"] in README_SHOWN:
            cells.setdefault((r["model"], r["exporter"], r["provider"]), {})[r["precision"]] = r

    def fmt(row, key, spec):
        return "–" if row is None or row.get(key) is None else format(row[key], spec)

    lines = ["| model (exporter) | provider | fp32 ms | fp32 max \\|Δ\\| | fp32 top-1 | INT8 ms | INT8 max \\|Δ\\| "
             "| INT8 top-1 | nodes on provider |", "|---|---|---|---|---|---|---|---|---|"]
    for (model, exporter, provider), by in cells.items():
        f, q = by.get("fp32"), by.get("int8")
        share = (f or q or {}).get("node_share")
        lines.append(f"| {model} ({exporter}) | {provider} | {fmt(f, 'latency_ms', '.3f')} "
                     f"| {fmt(f, 'max_abs', '.2g')} | {fmt(f, 'top1', '.1%')} | {fmt(q, 'latency_ms', '.3f')} "
                     f"| {fmt(q, 'max_abs', '.2g')} "
                     f"| {fmt(q, 'top1', '.1%')} | {'–' if share is None else format(share, '.0%')} |")
    m = result["machine"]
    known = m.get("routes") or {p: "compiled into onnxruntime" for p in m["compiled_in"]}
    routes = ", ".join(f"{eps.short_name(p)} {how}" for p, how in known.items() if p != eps.CPU)
    lines += ["", f"{m['cpu']}, {m['cores']} cores shared with other jobs (timings noisy: best of 3 medians of "
              f"{result['runs']} runs, 1 thread, batch 32 for digits and 4 for the others); onnxruntime "
              f"{m['onnxruntime']} ({routes}). max |Δ| and top-1 agreement are against the fp32 model on the CPU "
              "provider; INT8 is `onnxprune quantize` with default settings."]
    if failed:
        lines.append("Not measured: " + "; ".join(f"{k} ({v})" for k, v in failed.items()) + ".")
    return "\n".join(lines)


def write_readme(result: dict) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- table:providers -->", "<!-- /table -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{markdown(result)}\n{end}{tail}")


if __name__ == "__main__":
    main()
