"""Benchmark helpers: isolated measurements, big models, parity, tables.

    from common import measure, resnet50, table
    m = measure(my_tool, str(src), str(dst), preload=("onnx",))   # fresh process
    print(m.wall_s, m.peak_rss, m.peak_rss - m.baseline_rss)

Each measured call runs in a fresh *spawned* interpreter, so one tool's caches, imports and
freed-but-kept memory never count against another. ``preload`` modules are imported before
the clock starts (import time is not the tool's work); ``baseline_rss`` is the process size
right after, ``peak_rss`` its high-water mark at the end (VmHWM), child stdout silenced.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "onnxprune-bench"
RESULTS = ROOT / "bench" / "results"  # JSON the README tables are generated from (readme_tables.py)
sys.path.insert(0, str(ROOT / "tests"))  # the test zoo (tests/zoo.py) doubles as bench models

from onnxprune.errors import first_line  # noqa: E402
from onnxprune.report import human, table  # noqa: E402  (re-exported for the scripts)

__all__ = ["CACHE", "RESULTS", "Measurement", "conv_bn_stack", "human", "measure", "op_counts", "parity", "resnet50",
           "table", "write_result"]


# -- isolated measurement -----------------------------------------------------------------


@dataclasses.dataclass
class Measurement:
    wall_s: float = float("nan")
    peak_rss: int = 0  # bytes, whole process high-water mark
    baseline_rss: int = 0  # bytes, after the preloaded imports, before the call
    result: object = None
    error: str | None = None

    @property
    def extra_rss(self) -> int:
        """Peak memory the call itself added over the interpreter with its imports."""
        return self.peak_rss - self.baseline_rss


def _memory(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in bytes. Not ``ru_maxrss``: Linux carries
    that over from the parent across fork + exec, so a fresh child would report the parent's."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(conn, fn, args, kwargs, preload) -> None:
    out = Measurement()
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # tools that print their own reports (onnxslim) would flood the table
    try:
        for name in preload:
            importlib.import_module(name)
        out.baseline_rss = _memory("VmRSS")
        start = time.perf_counter()
        out.result = fn(*args, **kwargs)
        out.wall_s = time.perf_counter() - start
    except BaseException as exc:  # report, do not hang the parent
        out.error = first_line(exc, with_type=True)[:300]
        traceback.print_exc()
    out.peak_rss = _memory("VmHWM")
    conn.send(out)
    conn.close()


def measure(
    fn: Callable, *args, preload: Sequence[str] = (), timeout: float = 1800, **kwargs
) -> Measurement:
    """Run ``fn(*args, **kwargs)`` in a fresh spawned process; wall time and peak RSS.

    ``fn`` must be importable (module level). Its return value must pickle.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child, fn, args, kwargs, tuple(preload)))
    process.start()
    child.close()
    if not parent.poll(timeout):
        process.kill()
        process.join()
        return Measurement(error=f"timed out after {timeout:.0f} s")
    out = parent.recv()
    process.join()
    return out


# -- models --------------------------------------------------------------------------------


def resnet50(batch: int = 1, image: int = 224) -> Path:
    """torchvision's ResNet-50 (25.6 M parameters), BatchNorm unfolded, statistics randomized.

    Defined here (torchvision is not a dependency) and exported once with the legacy exporter
    (``do_constant_folding=False`` keeps every BN); cached under ``CACHE``.
    """
    path = CACHE / f"resnet50-b{batch}-{image}.onnx"
    if not path.exists():
        import torch

        import zoo  # tests/zoo.py: randomize_norms, export_module

        torch.manual_seed(0)
        model = _resnet50_module()
        zoo.randomize_norms(model, torch.Generator().manual_seed(zlib.crc32(b"resnet50")))
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        zoo.export_module(model, (batch, 3, image, image), tmp)
        os.replace(tmp, path)
    return path


def _resnet50_module():
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )
            self.shortcut = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout else nn.Identity()
            )
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.shortcut(x))

    layers, cin = [], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000),
    ).eval()


def conv_bn_stack(channels: int = 256, blocks: int = 48, image: int = 16, seed: int = 0) -> Path:
    """A synthetic Conv3x3-BN-ReLU stack built with onnx.helper (no torch): ``blocks`` x
    ``channels**2 * 9`` weights (the defaults give 28 M parameters), cached under ``CACHE``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = CACHE / f"conv_bn_stack-c{channels}-b{blocks}-s{image}-{seed}.onnx"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i in range(blocks):
        w = rng.standard_normal((channels, channels, 3, 3), dtype=np.float32) * np.float32((2 / (9 * channels)) ** 0.5)
        params = [rng.uniform(0.5, 1.5, channels), 0.2 * rng.standard_normal(channels),
                  0.2 * rng.standard_normal(channels), rng.uniform(0.5, 2.0, channels)]
        inits.append(numpy_helper.from_array(w, f"conv{i}.weight"))
        names = ("weight", "bias", "running_mean", "running_var")
        inits += [numpy_helper.from_array(p.astype(np.float32), f"bn{i}.{n}") for p, n in zip(params, names)]
        nodes += [
            helper.make_node("Conv", [x, f"conv{i}.weight"], [f"conv{i}"], name=f"conv{i}", pads=[1] * 4),
            helper.make_node("BatchNormalization", [f"conv{i}", *(f"bn{i}.{n}" for n in names)], [f"bn{i}"],
                             name=f"bn{i}"),
            helper.make_node("Relu", [f"bn{i}"], [f"relu{i}" if i < blocks - 1 else "output"], name=f"relu{i}"),
        ]
        x = f"relu{i}"
    graph = helper.make_graph(
        nodes, "conv_bn_stack",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, image, image])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, image, image])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


# -- comparing results ---------------------------------------------------------------------


def parity(reference: str | os.PathLike, candidate: str | os.PathLike, seed: int = 0) -> float:
    """Worst max|candidate - reference| / max|reference| over the outputs, on random inputs."""
    import onnx_ir as ir

    from onnxprune import runtime

    feeds = runtime.random_inputs(ir.load(reference), seed=seed)
    expected, got = runtime.run(reference, feeds), runtime.run(candidate, feeds)
    worst = 0.0
    for name, ref in expected.items():
        if name not in got or got[name].shape != ref.shape:
            return float("inf")
        scale = max(float(np.abs(ref).max()), 1e-12)
        worst = max(worst, float(np.abs(ref.astype(np.float64) - got[name]).max()) / scale)
    return worst


def op_counts(path: str | os.PathLike) -> collections.Counter:
    """Nodes of the main graph per op type (read without the weights)."""
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


# -- results for the README ----------------------------------------------------------------


def write_result(name: str, columns: Sequence[str], rows: Sequence[Sequence], *, align: str | None = None,
                 figures: dict | None = None, data: object = None) -> Path:
    """Write ``bench/results/NAME.json``: the table (cells as printed), single figures quoted in
    the README's prose, and the raw measurements; ``python bench/readme_tables.py`` puts them
    into README.md. The command line that produced it is recorded with it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    result = {
        "command": command,
        "machine": f"{os.cpu_count()} CPUs visible; timings vary with the load of a shared machine",
        "table": {"columns": list(columns), "rows": [[str(c) for c in r] for r in rows],
                  **({"align": align} if align else {})},
        "figures": figures or {},
        "data": data,
    }
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return path
