"""Every architecture of the test zoo through the prune analysis, pruning and INT8 quantization.

    python bench/prune_zoo.py

For each architecture of ``tests/zoo.py`` (defined in PyTorch, exported with BatchNorm
unfolded): the channel groups the analysis finds, how many are prunable, the reasons of the
declined ones (counted); then ``prune`` at ratio 0.5 (l1, round_to 1): ONNX checker, an ONNX
Runtime run and output shapes equal to the original's; then ``quantize --synthetic``: how many
integer kernels (QLinear*, QGemm, *Integer) ONNX Runtime's CPU provider made of the QDQ graph
when it optimized it, and how many DequantizeLinear it left. Writes bench/results/prune-zoo.json.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

from common import table, write_result

INTEGER_OPS = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantize")


def one(name: str) -> tuple[list[str], dict]:
    import onnxprune
    import zoo
    from onnxprune import runtime
    from onnxprune.api.prune_api import PREPARE
    from onnxprune.passes.prune.analysis import analyze
    from onnxprune.pipeline import run_pipeline
    from onnxprune.validate import check_model

    path = zoo.export(name)
    model = onnxprune.load_model(path)
    run_pipeline(model, PREPARE)
    groups = analyze(model)
    prunable = [g for g in groups if g.prunable]
    reasons = collections.Counter(g.declined.split(":")[0].split("(")[0].strip() for g in groups if not g.prunable)
    feeds = runtime.random_inputs(model)
    shapes = {k: v.shape for k, v in runtime.run(model, feeds).items()}
    pruned = onnxprune.prune(path, ratio=0.5, round_to=1, latency_runs=0).model
    check_model(pruned)
    kept = {k: v.shape for k, v in runtime.run(pruned, feeds).items()} == shapes
    quantized = onnxprune.quantize(path, synthetic=True, samples=8).model
    ops = runtime.optimized_op_counts(quantized)
    integer = sum(n for op, n in ops.items() if op.startswith(INTEGER_OPS))
    row = [name, str(len(groups)), str(len(prunable)),
           "; ".join(f"{r} ×{n}" if n > 1 else r for r, n in sorted(reasons.items())) or "-",
           "yes" if kept else "NO", str(integer), str(ops["DequantizeLinear"])]
    return row, {"groups": len(groups), "prunable": len(prunable), "declined": dict(reasons),
                 "pruned_valid_shapes_kept": kept, "ort_integer_kernels": integer,
                 "ort_dequantize_left": ops["DequantizeLinear"]}


def main() -> None:
    import zoo

    rows, data = [], {}
    for name in zoo.ARCHITECTURES:
        row, data[name] = one(name)
        rows.append(row)
        print(" | ".join(row), flush=True)
    columns = ["architecture", "channel groups", "prunable", "declined, with the stated reason",
               "pruned 50 %: valid, shapes kept", "INT8: ORT integer kernels", "DequantizeLinear left"]
    print(table(columns, rows))
    figures = {"architectures": str(len(rows)),
               "fused": str(sum(1 for d in data.values() if d["ort_integer_kernels"] > 0))}
    write_result("prune-zoo", columns, rows, align="lrrlrrr", figures=figures, data=data)


if __name__ == "__main__":
    Path(tempfile.gettempdir()).mkdir(exist_ok=True)
    main()
