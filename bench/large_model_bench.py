"""A model over 2 GiB through every command, next to onnxsim and onnxslim on the same file.

    python bench/large_model_bench.py                 # 2.25 GiB MLP in a temporary folder
    python bench/large_model_bench.py --gib 3 --json out.json --skip-peers

The model is ``largemodel.write_large_mlp``: float32 8192x8192 MatMul layers, weights in
``model.onnx.data`` (streamed to disk, never held in memory). Each run is a fresh process
(``common.measure``): wall time and peak RSS (VmHWM), also as a multiple of the model's
size. Goal (issue 6): exact passes with peak RSS <= 1.5x the model size. The peers load the
model with ``onnx.load`` (all weights in memory); whatever happens to them is recorded, not
hidden. Files are deleted afterwards.

Results go to bench/results/large-model.json (the README's table: bench/readme_tables.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (also puts tests/ on sys.path)
import largemodel  # noqa: E402

GOAL_MEMORY_FACTOR = 1.5


def run_inspect(src: str, dst: str) -> None:
    from onnxprune import api

    api.inspect(src)


def run_optimize(src: str, dst: str) -> None:
    from onnxprune import api

    api.optimize(src, dst)


def run_optimize_verify(src: str, dst: str) -> None:
    from onnxprune import api

    api.optimize(src, dst, verify=True)


def run_prune(src: str, dst: str) -> None:
    from onnxprune import prune

    prune(src, dst, ratio=0.5, latency_runs=0)


def run_quantize(src: str, dst: str) -> None:
    from onnxprune import quantize

    quantize(src, dst, synthetic=True, samples=4)


def run_check(src: str, dst: str) -> None:
    from onnxprune import check

    check(src, src, samples=2, providers=["cpu"])


def run_onnxsim(src: str, dst: str) -> None:
    import onnx
    import onnxsim

    model, _ = onnxsim.simplify(onnx.load(src), check_n=0)
    onnx.save(model, dst, save_as_external_data=True, location=Path(dst).name + ".data")


def run_onnxslim(src: str, dst: str) -> None:
    import onnxslim

    onnxslim.slim(src, dst)


OURS = {
    "onnxprune inspect": run_inspect,
    "onnxprune optimize": run_optimize,
    "onnxprune optimize --verify": run_optimize_verify,
    "onnxprune prune --ratio 0.5": run_prune,
    "onnxprune quantize --synthetic": run_quantize,
    "onnxprune check (model vs itself)": run_check,
}
PEERS = {"onnxsim (onnx.load + simplify)": run_onnxsim, "onnxslim": run_onnxslim}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.1, help="weights size (rounded up to whole layers)")
    parser.add_argument("--skip-peers", action="store_true",
                        help="only onnxprune (peers may need 3x+ the model in RAM)")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="onnxprune-large-"))
    try:
        src, _ = largemodel.write_large_mlp(root, total_bytes=int(args.gib * 2**30))
        size = sum(p.stat().st_size for p in root.iterdir())
        print(f"model: {src} ({common.human(size, 'B')} with external data)\n", flush=True)
        rows, results = [], {}
        tools = {**OURS, **({} if args.skip_peers else PEERS)}
        for name, tool in tools.items():
            dst = root / "out.onnx"
            m = common.measure(tool, str(src), str(dst), preload=("onnxprune", "onnx"))
            outputs = sorted(p.name for p in root.iterdir() if p.name.startswith("out."))
            for path in root.glob("out.*"):
                path.unlink()
            factor = m.peak_rss / size
            status = "ok" if m.error is None else m.error[:90]
            rows.append((name, f"{m.wall_s:.1f} s" if m.error is None else "-", common.human(m.peak_rss, "B"),
                         f"{factor:.2f}x", status))
            results[name] = {"wall_s": m.wall_s, "peak_rss": m.peak_rss, "rss_factor": factor,
                             "error": m.error, "outputs": outputs}
            print(f"  {name}: {rows[-1][1:]}", flush=True)
        print()
        print(common.table(["tool", "time", "peak RSS", "x model", "result"], rows, align="lrrrl"))
        print(f"\ngoal: exact passes within {GOAL_MEMORY_FACTOR}x the model's size ({common.human(size, 'B')})")
        common.write_result("large-model", ["command", "time", "peak RSS", "× model size", "result"], rows,
                            align="lrrrl", figures={"size": common.human(size, "B")}, data=results)
        if args.json:
            Path(args.json).write_text(json.dumps({"model_bytes": size, "tools": results}, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
