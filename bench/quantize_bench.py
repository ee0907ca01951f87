"""Static INT8 quantization: onnxprune vs ONNX Runtime's quantize_static, side by side.

For each model, calibration method and sample count, each tool quantizes the same float model
(BatchNorm already folded by ``onnxprune optimize``, so both see the same graph) from the same
data in the same batches, in its own fresh process (bench/common.measure): wall time of the
whole quantization and peak RSS of that process, best of ``--repeat`` interleaved runs. Then, in
this process, every INT8 model is
scored against the float model on held-out inputs: top-1 agreement, mean cosine of the
outputs, held-out accuracy (digits), and ONNX Runtime CPU latency (1 thread, batch 32).

Tools: ``onnxprune`` (defaults: uint8 asymmetric activations, per-channel int8 weights);
``ort-matched`` (quantize_static with the same choices: QUInt8 activations, per_channel=True);
``ort-default`` (quantize_static as it ships: QInt8 activations, per-tensor weights).

    python bench/quantize_bench.py                       # digits, resnet, transformer; minmax/entropy; 100/500
    python bench/quantize_bench.py --models resnet --methods minmax --samples 500

Digits has 269 calibration images; the 500-sample set adds 231 copies of them shifted by one
pixel (the same set for both tools). The ResNet-style model (ResNet-18 layout at half width,
3x64x64, random weights with randomized BatchNorm statistics) is calibrated and scored on
low-pass filtered noise images; the transformer (two pre-LN encoder layers and a classifier
head, random weights) on standard-normal [32, 128] token sequences.
"""

from __future__ import annotations

import _thread
import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, human, measure, table, write_result

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits"
WORK = CACHE / "quantize"
PRELOAD = ("numpy", "onnx", "onnxruntime", "onnxruntime.quantization", "onnx_ir", "onnxprune")
TOOLS = ("onnxprune", "ort-matched", "ort-default")
BATCH = 50  # divides 100 and 500: ORT's histogram calibrators fail on a ragged last batch


# -- models and data ---------------------------------------------------------------------------


def resnet_module():
    """ResNet-18 layout (basic blocks, projection shortcuts) at half width for 3x64x64 inputs."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
            )  # fmt: skip
            self.shortcut = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout else nn.Identity()
            )  # fmt: skip
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.shortcut(x))

    torch.manual_seed(0)
    layers, cin = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()], 32
    for width, stride in ((32, 1), (64, 2), (128, 2), (256, 2)):
        layers += [Block(cin, width, stride), Block(width, width, 1)]
        cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 100)).eval()


def transformer_module():
    """Two pre-LN encoder layers (dim 128, 4 heads, MLP 512), mean-pooled, a 10-class head."""
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.encoder(x).mean(dim=1))

    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)  # the fused fast path does not export
    return Classifier().eval()


def smooth_images(n: int, seed: int) -> np.ndarray:
    """Low-pass filtered noise: spatially correlated like photos, roughly unit variance."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, 16, 16)).astype(np.float32)
    noise = 0.1 * rng.standard_normal((n, 3, 64, 64)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3) + noise


def prepare(name: str) -> dict:
    """Float model (clean-up pipeline applied), calibration sets, held-out set."""
    from onnxprune import optimize

    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "float.onnx"
    if name == "digits":
        calib = np.load(DIGITS / "calib.npz")["input"]
        shifted = np.roll(calib, shift=1, axis=3)[: 500 - len(calib)]
        pool = np.concatenate([calib, shifted])
        held = np.load(DIGITS / "eval.npz")
        held_inputs, labels = held["input"], held["labels"]
        source = DIGITS / "digits.onnx"
    elif name == "resnet":
        pool, held_inputs, labels = smooth_images(500, seed=1), smooth_images(256, seed=2), None
        source = folder / "exported.onnx"
        if not source.exists():
            import zlib

            import torch

            import zoo  # tests/zoo.py (on sys.path via common)

            module = resnet_module()
            zoo.randomize_norms(module, torch.Generator().manual_seed(zlib.crc32(b"resnet-half")))
            zoo.export_module(module, (1, 3, 64, 64), source, dynamic_batch=True)
    else:
        rng = np.random.default_rng(1)
        pool = rng.standard_normal((500, 32, 128), np.float32)
        held_inputs = rng.standard_normal((256, 32, 128), np.float32)
        labels = None
        source = folder / "exported.onnx"
        if not source.exists():
            import zoo

            zoo.export_module(transformer_module(), (1, 32, 128), source, dynamic_batch=True)
    if not model.exists():
        optimize(source, model)
    sets = {}
    for samples in (100, 500):
        path = folder / f"calib-{samples}.npz"
        np.savez(path, input=pool[:samples])
        sets[samples] = path
    return {"model": model, "calib": sets, "held": held_inputs, "labels": labels}


# -- workers (each in a fresh process) -----------------------------------------------------------


def capped(cap_bytes: int, fn, *args):
    """Run ``fn`` but interrupt it once this process's RSS passes ``cap_bytes`` (shared machine)."""
    fired = threading.Event()

    def watch() -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not done.is_set():
            with open("/proc/self/statm") as handle:
                if int(handle.read().split()[1]) * page > cap_bytes:
                    fired.set()
                    _thread.interrupt_main()
                    return
            time.sleep(0.02)

    done = threading.Event()
    threading.Thread(target=watch, daemon=True).start()
    try:
        return fn(*args)
    except KeyboardInterrupt:
        if fired.is_set():
            raise MemoryError(f"RSS passed the {cap_bytes / 2**30:.0f} GiB cap") from None
        raise
    finally:
        done.set()


def run_onnxprune(model: str, calib: str, method: str, out: str) -> None:
    from onnxprune import quantize

    quantize(model, out, calib=calib, method=method, batch_size=BATCH, clean=False)


def run_ort(model: str, calib: str, method: str, out: str, matched: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static

    from onnxprune.calibration import open_dataset

    reader = open_dataset(calib).ort_reader(BATCH)  # the arrays as they are: no model to load
    quantize_static(
        model, out, reader,
        per_channel=matched,
        activation_type=QuantType.QUInt8 if matched else QuantType.QInt8,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}[method],
    )  # fmt: skip


def worker(tool: str, model: str, calib: str, method: str, out: str, cap_bytes: int) -> None:
    if tool == "onnxprune":
        capped(cap_bytes, run_onnxprune, model, calib, method, out)
    else:
        capped(cap_bytes, run_ort, model, calib, method, out, tool == "ort-matched")


# -- scoring ---------------------------------------------------------------------------------------


def outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    from onnxprune import runtime

    with runtime.session(path, intra_op_threads=1) as sess:
        return np.concatenate([sess.run(None, {"input": inputs[i : i + 64]})[0] for i in range(0, len(inputs), 64)])


def score(path: Path, reference: np.ndarray, data: dict) -> dict:
    from onnxprune import runtime

    got = outputs(path, data["held"])
    cosine = np.sum(got * reference, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    result = {
        "top1": float(np.mean(got.argmax(1) == reference.argmax(1))),
        "cosine": float(np.mean(cosine)),
        "latency": runtime.latency_ms(path, {"input": data["held"][:32]}, runs=20, threads=1),
    }
    if data["labels"] is not None:
        result["accuracy"] = float(np.mean(got.argmax(1) == data["labels"]))
    return result


def best(runs: list) -> object:
    """The least disturbed of repeated runs: best time, lowest peak (or the first error)."""
    from dataclasses import replace

    good = [m for m in runs if m.error is None]
    if not good:
        return runs[0]
    fastest = min(good, key=lambda m: m.wall_s)
    leanest = min(good, key=lambda m: m.extra_rss)
    return replace(fastest, peak_rss=leanest.peak_rss, baseline_rss=leanest.baseline_rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,resnet,transformer")
    parser.add_argument("--methods", default="minmax,entropy")
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--cap-gb", type=float, default=8.0, help="interrupt a run whose RSS passes this")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool (interleaved); the best time and "
                        "peak are shown (shared machines: the best is the least disturbed)")
    args = parser.parse_args()

    rows, summary = [], []
    for name in args.models.split(","):
        data = prepare(name)
        reference = outputs(data["model"], data["held"])
        fp32 = score(data["model"], reference, data)
        accuracy = f"{fp32['accuracy']:.2%}" if "accuracy" in fp32 else "-"
        rows.append([name, "fp32", "-", "-", "-", "-", "-", "-", accuracy, f"{fp32['latency']:.2f}"])
        for method in args.methods.split(","):
            for samples in args.samples:
                runs = {tool: [] for tool in args.tools.split(",")}
                for _ in range(args.repeat):
                    for tool in runs:
                        out = WORK / name / f"{tool}-{method}-{samples}.onnx"
                        runs[tool].append(measure(worker, tool, str(data["model"]), str(data["calib"][samples]),
                                                  method, str(out), int(args.cap_gb * 2**30), preload=PRELOAD))
                measured = {tool: best(ms) for tool, ms in runs.items()}
                for tool, m in measured.items():
                    out = WORK / name / f"{tool}-{method}-{samples}.onnx"
                    scores = score(out, reference, data) if m.error is None else {}
                    rows.append([
                        name, tool, method, samples,
                        f"{m.wall_s:.2f}" if m.error is None else "-",
                        human(m.peak_rss, "B") + ("" if m.error is None else "+"),
                        f"{scores['top1']:.2%}" if scores else m.error[:40],
                        f"{scores['cosine']:.4f}" if scores else "-",
                        f"{scores['accuracy']:.2%}" if "accuracy" in scores else "-",
                        f"{scores['latency']:.2f}" if scores else "-",
                    ])  # fmt: skip
                    print(table(HEADERS, rows[-1:]), file=sys.stderr, flush=True)
                ours, theirs = measured.get("onnxprune"), measured.get("ort-matched")
                if ours and theirs and ours.error is None and theirs.error is None:
                    summary.append([name, method, samples, f"{theirs.wall_s / ours.wall_s:.1f}x",
                                    f"{theirs.extra_rss / max(ours.extra_rss, 1):.1f}x",
                                    human(ours.extra_rss, "B"), human(theirs.extra_rss, "B")])
    print(table(HEADERS, rows, align="lllrrrrrrr"))
    write_result("quantize", HEADERS, rows, align="lllrrrrrrr")
    if summary:
        print("\nonnxprune vs ort-matched (same settings): speed-up and memory ratio of the quantization call")
        columns = ["model", "method", "samples", "faster", "less memory", "onnxprune +RSS", "ORT +RSS"]
        print(table(columns, summary))
        write_result("quantize-vs-ort", columns, summary, align="llrrrrr")


HEADERS = ["model", "tool", "method", "samples", "time s", "peak RSS", "top-1 vs fp32", "cosine", "accuracy",
           "int8 ms (b32, 1 thr)"]


if __name__ == "__main__":
    main()
