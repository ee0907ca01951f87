"""How much sampling moves calibrated ranges, next to how much the data itself does.

The histogram methods count a systematic sample of each tensor's values (about ``sample``
values per tensor over the dataset; see onnxprune/calibration/collect.py). For the quantize
benchmark's models and 500-sample sets, this computes ranges from every value, from samples
of several sizes, and, as a yardstick, from each half of the data (samples 0-249 vs 250-499):
a range that moves less under sampling than between two halves of the calibration data is
as good as the data can tell. Differences are max/median over tensors of
max(|d low|, |d high|) / (max - min), in % of the tensor's range width (one uint8 step is
0.39%). Counting time is the numpy histogram work of that run (summed over tensors).

    python bench/calib_sampling.py                                    # digits, resnet, transformer
    python bench/calib_sampling.py --models resnet --sizes 4194304 8388608
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table
from quantize_bench import prepare

METHODS = (("percentile", {"percentile": 99.99}), ("entropy", {}), ("mse", {}))


def statistics(model, inputs: np.ndarray, sample: int | None):
    """Statistics of the quantize pass's tensors, and the seconds spent counting."""
    from onnxprune.calibration import collect, open_dataset
    from onnxprune.calibration.histogram import TensorStats

    spent = [0.0]
    count = TensorStats._count

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        count(self, *args, **kwargs)
        spent[0] += time.perf_counter() - start

    TensorStats._count = timed
    try:
        stats = collect(model, open_dataset({"input": inputs}, model), tensors(model), batch_size=50, sample=sample)
    finally:
        TensorStats._count = count
    return stats, spent[0]


def tensors(model) -> list[str]:
    """The tensors quantize calibrates (its activation values), as in the benchmark."""
    from onnxprune.passes.quantize.config import QuantConfig
    from onnxprune.passes.quantize.quantize_pass import _ensure_types
    from onnxprune.passes.quantize.rules import activation_values

    _ensure_types(model)
    return [v.name for v in activation_values(model, QuantConfig())]


def differences(a, b, widths: dict[str, float]) -> dict[str, str]:
    out = {}
    for method, options in METHODS:
        x, y = a.compute(method, **options), b.compute(method, **options)
        moved = [max(abs(x[n].min - y[n].min), abs(x[n].max - y[n].max)) / widths[n] for n in x if widths[n] > 0]
        out[method] = f"{100 * max(moved):.2f} / {100 * np.median(moved):.2f}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,resnet,transformer")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1 << 21, 1 << 22, 1 << 23])
    args = parser.parse_args()

    from onnxprune.calibration.collect import DEFAULT_SAMPLE
    from onnxprune.io import load_model

    rows = []
    for name in args.models.split(","):
        data = prepare(name)
        model = load_model(data["model"])
        pool = np.load(data["calib"][500])["input"]
        every, seconds = statistics(model, pool, None)
        widths = {n: s.max - s.min for n, s in every.tensors.items()}
        first, _ = statistics(model, pool[:250], None)
        second, _ = statistics(model, pool[250:], None)
        moved = differences(first, second, widths)
        rows.append([name, "every value", "all", f"{seconds:.2f}", *("-" for _ in METHODS)])
        rows.append([name, "half vs half", "all", "-", *(moved[m] for m, _ in METHODS)])
        for size in args.sizes:
            sampled, seconds = statistics(model, pool, size)
            moved = differences(every, sampled, widths)
            label = f"{size:,}" + (" (default)" if size == DEFAULT_SAMPLE else "")
            rows.append([name, "sampled vs every", label, f"{seconds:.2f}", *(moved[m] for m, _ in METHODS)])
        print(table(HEADERS, rows[-len(args.sizes) - 2 :]), file=sys.stderr, flush=True)
    print(table(HEADERS, rows))


HEADERS = ["model", "ranges", "values per tensor", "counting s", *(f"{m} max/median %" for m, _ in METHODS)]


if __name__ == "__main__":
    main()
