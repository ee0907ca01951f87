"""Calibration benchmark: onnxprune's streaming calibrators vs ONNX Runtime's, side by side.

Each (tool, method, samples) runs in a fresh subprocess on the same model and data; the
table shows wall time, peak RSS of that process, tensors calibrated, and how far our ranges
are from ONNX Runtime's (max relative difference of the range width) where both finished.
ONNX Runtime's process is killed when its RSS passes --cap-gb (its histogram calibrators keep
every output of every sample until the end, so they grow with the number of samples).

    python bench/calib_bench.py                                  # cnn: minmax/percentile/entropy, 100 and 500
    python bench/calib_bench.py --models transformer --methods percentile --samples 64

Both tools get the same data in the same batches (``--batch``), the same tensor selection
(inputs/outputs of onnxprune's quantizable ops) and the same percentile (99.99, symmetric,
ONNX Runtime's default form). The transformer model has a dynamic sequence axis and the
samples vary in length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --- models ------------------------------------------------------------------------------


def cnn():
    """ResNet-18 layout at quarter width (~0.7 M parameters, 2.8 MB), 3x64x64 input."""
    from torch import nn

    def block(cin, cout, stride):
        body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride > 1 else None

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.body, self.short, self.relu = body, short, nn.ReLU()

            def forward(self, x):
                return self.relu(self.body(x) + (self.short(x) if self.short is not None else x))

        return Block()

    widths = [16, 32, 64, 128]
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for i, w in enumerate(widths):
        layers += [block(cin, w, 1 if i == 0 else 2), block(w, w, 1)]
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers), (3, 64, 64), {0: "batch"}


def transformer():
    """4 pre-LN encoder blocks, dim 128, 4 heads, MLP 512 (~0.8 M parameters), [batch, seq, 128]."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim=128, heads=4, hidden=512):
            super().__init__()
            self.heads, self.ln1, self.ln2 = heads, nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

        def forward(self, x):
            b, n, d = x.shape  # traced as Shape ops: the sequence axis stays dynamic
            q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1) @ v
            x = x + self.proj(attention.transpose(1, 2).reshape(b, n, d))
            return x + self.mlp(self.ln2(x))

    return nn.Sequential(*(Block() for _ in range(4))), (48, 128), {0: "batch", 1: "seq"}


MODELS = {"cnn": cnn, "transformer": transformer}


def export(name: str, folder: Path) -> Path:
    import torch

    torch.manual_seed(0)
    module, shape, axes = MODELS[name]()
    module.eval()
    path = folder / f"{name}.onnx"
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, *shape),), str(path), dynamo=False, do_constant_folding=False,
            opset_version=17, input_names=["input"], output_names=["output"],
            dynamic_axes={"input": axes, "output": axes},
        )  # fmt: skip
    return path


def make_data(name: str, samples: int, folder: Path) -> Path:
    """Deterministic inputs: .npz for the CNN; one .npy per sample (lengths 16..80) for text."""
    rng = np.random.default_rng(0)
    if name == "cnn":
        path = folder / f"cnn-{samples}.npz"
        np.savez(path, input=rng.standard_normal((samples, 3, 64, 64)).astype(np.float32))
        return path
    path = folder / f"text-{samples}"
    path.mkdir(exist_ok=True)
    for i in range(samples):
        length = 16 + 16 * (i % 5)
        np.save(path / f"{i:05d}.npy", rng.standard_normal((1, length, 128)).astype(np.float32))
    return path


# --- workers (one per subprocess) ------------------------------------------------------------


def worker(tool: str, model_path: str, data: str, method: str, samples: int, batch: int, out: str) -> None:
    from onnxprune.calibration import QUANTIZABLE_OPS, calibrate, open_dataset
    from onnxprune.io import load_model

    model = load_model(model_path)
    dataset = open_dataset(data, model, limit=samples)
    start = time.perf_counter()
    if tool == "onnxprune":
        table = calibrate(model, dataset, method=method, batch_size=batch, percentile=99.99,
                          symmetric=method == "percentile")
        ranges = table.as_dict()
    else:
        from onnxruntime.quantization.calibrate import (
            CalibrationMethod,
            create_calibrator,
        )

        ort_method = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}[method]
        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(
                model_path, sorted(QUANTIZABLE_OPS), augmented_model_path=f"{tmp}/augmented.onnx",
                calibrate_method=CalibrationMethod[ort_method],
                extra_options={"percentile": 99.99, "symmetric": method == "percentile"},
            )  # fmt: skip
            calibrator.collect_data(dataset.ort_reader(batch))
            result = calibrator.compute_data()
        ranges = {k: tuple(float(v) for v in np.ravel(result[k].range_value)) for k in result}
    seconds = time.perf_counter() - start
    Path(out).write_text(json.dumps({"seconds": seconds, "peak": peak_rss(), "ranges": ranges}))


def peak_rss() -> int:
    """This process's peak RSS. Linux's ru_maxrss survives exec (a child started from a big
    parent reports the parent's size), so read the memory map's own high-water mark."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_worker(args: list[str], cap_bytes: int) -> tuple[dict | None, str, int]:
    """Run one worker; kill it when its RSS passes the cap. (result, error, polled peak)."""
    import psutil

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    proc = subprocess.Popen([sys.executable, __file__, "--worker", *args, out], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    peak, killed = 0, False

    def watch():
        nonlocal peak, killed
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss
            except psutil.Error:
                break
            peak = max(peak, rss)
            if rss > cap_bytes:
                killed = True
                proc.kill()
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    _, stderr = proc.communicate()
    thread.join()
    try:
        if killed:
            return None, f"killed above {cap_bytes / 2**30:.0f} GiB", peak
        if proc.returncode != 0:
            last = [line for line in stderr.strip().splitlines() if line.strip()]
            return None, (last[-1] if last else f"exit {proc.returncode}")[:70], peak
        return json.loads(Path(out).read_text()), "", peak
    finally:
        os.unlink(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn", help="comma list of: " + ", ".join(MODELS))
    parser.add_argument("--methods", default="minmax,percentile,entropy")
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--batch", type=int, default=20, help="divide the sample counts: ORT's histogram "
                        "calibrators fail when the last batch is smaller (ragged outputs)")
    parser.add_argument("--cap-gb", type=float, default=6.0, help="kill a run whose RSS passes this")
    parser.add_argument("--tools", default="onnxprune,onnxruntime")
    args = parser.parse_args()

    from onnxprune.report import human, table

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            model_path = export(name, folder)
            size = model_path.stat().st_size
            for samples in args.samples:
                data = make_data(name, samples, folder)
                for method in args.methods.split(","):
                    results = {}
                    for tool in args.tools.split(","):
                        cmd = [tool, str(model_path), str(data), method, str(samples), str(args.batch)]
                        result, error, polled = run_worker(cmd, int(args.cap_gb * 2**30))
                        results[tool] = result
                        agreement = ""
                        ours = results.get("onnxprune")
                        if tool != "onnxprune" and result and ours:
                            agreement = _agreement(ours["ranges"], result["ranges"])
                        rows.append([
                            f"{name} ({human(size, 'B')})", method, samples, tool,
                            f"{result['seconds']:.1f}" if result else "-",
                            human(result["peak"] if result else polled, "B") + ("" if result else "+"),
                            len(result["ranges"]) if result else "-", agreement or error,
                        ])  # fmt: skip
                        columns = ["model", "method", "samples", "tool", "time s", "peak RSS", "tensors",
                                   "vs ours / error"]
                        print(table(columns, rows[-1:]), file=sys.stderr)
    print(table(["model", "method", "samples", "tool", "time s", "peak RSS", "tensors", "range width vs ours / error"],
                rows))


def _agreement(ours: dict, theirs: dict) -> str:
    common = set(ours) & set(theirs)
    if not common:
        return "no common tensors"
    diffs = []
    for name in common:
        a, b = ours[name][1] - ours[name][0], theirs[name][1] - theirs[name][0]
        diffs.append(abs(a - b) / max(a, b) if max(a, b) > 0 else 0.0)
    return f"{len(common)} common, width diff median {np.median(diffs):.1%}, max {max(diffs):.1%}"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        tool, model_path, data, method, samples, batch, out = sys.argv[2:9]
        worker(tool, model_path, data, method, int(samples), int(batch), out)
    else:
        main()
