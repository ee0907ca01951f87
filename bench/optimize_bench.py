"""Clean-up benchmark: `onnxprune optimize` (default pipeline) vs onnxsim vs onnxslim.

    python bench/optimize_bench.py                       # ResNet-50 + three zoo models
    python bench/optimize_bench.py --models resnet50 --json out.json

Every tool runs on the same file, each in its own fresh process (``common.measure``), from
file to file (load, optimize, save). Reported: wall time, peak RSS and what the run added
over the interpreter with the tool imported, nodes before/after, BatchNormalization left,
and output parity against the original in ONNX Runtime (max abs error / max |ref|).

Goal (issue 2): ResNet-50-sized model (~25 M parameters, ~100 MB) cleaned up in <= 10 s with
peak memory <= 3x the model size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL_SECONDS, GOAL_MEMORY_FACTOR = 10.0, 3.0
ZOO_MODELS = ("mobilenet_v2", "densenet", "transformer")


def run_onnxprune(src: str, dst: str) -> None:
    from onnxprune import api

    api.optimize(src, dst)


def run_onnxsim(src: str, dst: str) -> None:
    import onnx
    import onnxsim

    model, _ = onnxsim.simplify(onnx.load(src), check_n=0)
    onnx.save(model, dst)


def run_onnxslim(src: str, dst: str) -> None:
    import onnxslim

    onnxslim.slim(src, dst)


TOOLS = {
    "onnxprune": (run_onnxprune, ("onnxprune.api",)),
    "onnxsim": (run_onnxsim, ("onnx", "onnxsim")),
    "onnxslim": (run_onnxslim, ("onnxslim",)),
}


def model_path(name: str) -> Path:
    if name == "resnet50":
        return common.resnet50()
    if name == "conv_bn_stack":
        return common.conv_bn_stack()
    import zoo

    return zoo.export(name)


def bench(models: list[str], tools: list[str], workdir: Path) -> list[dict]:
    rows = []
    for name in models:
        src = model_path(name)
        size, nodes = src.stat().st_size, common.op_counts(src).total()
        for tool in tools:
            fn, preload = TOOLS[tool]
            dst = workdir / f"{name}.{tool}.onnx"
            m = common.measure(fn, str(src), str(dst), preload=preload)
            row = {"model": name, "tool": tool, "model_bytes": size, "nodes_before": nodes,
                   "wall_s": m.wall_s, "peak_rss": m.peak_rss, "extra_rss": m.extra_rss, "error": m.error}
            if m.error is None:
                ops = common.op_counts(dst)
                row.update(nodes_after=ops.total(), bn_left=ops["BatchNormalization"], parity=common.parity(src, dst))
            rows.append(row)
            print(f"  {name} / {tool}: {m.wall_s:.2f} s" + (f" ({m.error})" if m.error else ""), file=sys.stderr)
    return rows


HEADERS = ["model", "size", "tool", "time", "peak RSS", "added RSS", "added/size", "nodes", "BN left", "parity"]


def render(rows: list[dict]) -> list[tuple]:
    body = []
    for r in rows:
        ok = r["error"] is None
        body.append((
            r["model"], common.human(r["model_bytes"], "B"), r["tool"],
            f"{r['wall_s']:.2f} s" if ok else "failed",
            common.human(r["peak_rss"], "B") if ok else "",
            common.human(r["extra_rss"], "B") if ok else "",
            f"{r['extra_rss'] / r['model_bytes']:.2f}x" if ok else "",
            f"{r['nodes_before']} -> {r['nodes_after']}" if ok else "",
            r.get("bn_left", ""),
            f"{r['parity']:.1e}" if ok else r["error"][:40],
        ))
    return body


def figures(rows: list[dict]) -> dict:
    """The ResNet-50 numbers the README's prose quotes."""
    ours = [r for r in rows if r["model"] == "resnet50" and r["tool"] == "onnxprune" and not r["error"]]
    if not ours:
        return {}
    r = ours[0]
    return {"resnet50_time": f"{r['wall_s']:.2f} s", "resnet50_added": f"{r['extra_rss'] / r['model_bytes']:.2f}×",
            "resnet50_process": f"{r['peak_rss'] / r['model_bytes']:.2f}×"}


def goal_lines(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        if r["model"] != "resnet50" or r["tool"] != "onnxprune" or r["error"]:
            continue
        fast = r["wall_s"] <= GOAL_SECONDS
        lean = r["extra_rss"] <= GOAL_MEMORY_FACTOR * r["model_bytes"]
        lines.append(
            f"goal (ResNet-50, onnxprune): time {r['wall_s']:.2f} s <= {GOAL_SECONDS:.0f} s: "
            f"{'met' if fast else 'MISSED'}; added memory {r['extra_rss'] / r['model_bytes']:.2f}x "
            f"<= {GOAL_MEMORY_FACTOR:.0f}x the model: {'met' if lean else 'MISSED'} "
            f"(whole process {r['peak_rss'] / r['model_bytes']:.2f}x, imports included)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", *ZOO_MODELS],
                        help="resnet50, conv_bn_stack or zoo architecture names")
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnxprune-optimize-bench-") as tmp:
        rows = bench(args.models, args.tools, Path(tmp))
    body = render(rows)
    print(common.table(HEADERS, body, align="llllrrrrrr"))
    for line in goal_lines(rows):
        print(line)
    common.write_result("optimize", HEADERS, body, align="lllrrrrlrr", figures=figures(rows), data=rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
