"""Structured pruning benchmark: onnxprune vs onnxsim's structured pruning, side by side.

For a ResNet50 (bench/common.py) and a ViT-B/16 (defined below) exported with the legacy
exporter, BatchNorm unfolded, each tool prunes the same share of channels per layer in a fresh
process (common.measure: wall time of load + prune + save, peak RSS), then every result is
checked here: ONNX checker, an ONNX Runtime run, output shapes equal to the original's; and
the share of weights actually removed.

    python bench/prune_bench.py                  # both models, ratio 0.3
    python bench/prune_bench.py --models resnet50 --ratio 0.5
    python bench/prune_bench.py --digits              # accuracy after pruning, per criterion
    python bench/prune_bench.py --activation-memory   # memory of activation statistics vs samples
    python bench/prune_bench.py --latency             # ORT CPU latency after pruning, by round_to
    python bench/prune_bench.py --refit-cost          # least-squares refit on ResNet-50: time, memory, error

onnxprune's time is split into analysis (dependency groups), scoring + planning, and rewrite;
the goal is analysis + rewrite <= 10 s on ResNet50 and zero broken models.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from common import CACHE, ROOT, measure, resnet50, table, write_result

# --- models -----------------------------------------------------------------------------

def vit_b16():
    import torch
    import torch.nn as nn

    dim, heads, depth, mlp = 768, 12, 12, 3072

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
            attn = torch.softmax(q @ k.transpose(-2, -1) * (dim // heads) ** -0.5, dim=-1)
            x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, dim))
            return x + self.mlp(self.ln2(x))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, dim, 16, 16)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, 197, dim) * 0.02)
            self.blocks = nn.Sequential(*(Block() for _ in range(depth)))
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 1000)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            return self.head(self.norm(self.blocks(x))[:, 0])

    return ViT(), (1, 3, 224, 224)


def export(name: str) -> Path:
    """The model file: ResNet50 from bench/common.py; ViT-B/16 exported once into CACHE."""
    import torch

    import zoo  # tests/zoo.py: export_module

    if name == "resnet50":
        return resnet50()
    path = CACHE / f"{name}-torch{torch.__version__}.onnx"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module, shape = vit_b16()
    tmp = path.with_suffix(".tmp.onnx")
    zoo.export_module(module, shape, tmp)
    os.replace(tmp, path)
    return path


# --- workers (each run in a fresh process) ----------------------------------------------

def work_onnxprune(src: str, dst: str, ratio: float) -> dict:
    from onnxprune.api.prune_api import PREPARE
    from onnxprune.io import load_model, save_model
    from onnxprune.passes.prune.analysis import analyze
    from onnxprune.passes.prune.importance import get_criterion, normalize
    from onnxprune.passes.prune.planner import make_candidates, plan_at
    from onnxprune.passes.prune.rewrite import apply_plan
    from onnxprune.pipeline import run_pipeline

    model = load_model(src)
    start = time.perf_counter()
    run_pipeline(model, PREPARE)  # what prune() does first: Identity/Constant clean-up
    t0 = time.perf_counter()
    groups = analyze(model)
    t1 = time.perf_counter()
    crit = get_criterion("l1")
    active = [g for g in groups if g.prunable and g.size > 1]
    # Per-layer ratio, no rounding: the same amount as onnxsim's per-layer sparsity.
    plan = plan_at(make_candidates(active, {g.id: normalize(crit(g)) for g in active}), ratio, uniform=True)
    t2 = time.perf_counter()
    apply_plan(model, groups, plan)
    t3 = time.perf_counter()
    save_model(model, dst)
    return {
        "prepare_s": t0 - start, "analysis_s": t1 - t0, "plan_s": t2 - t1, "rewrite_s": t3 - t2,
        "groups": len(groups), "prunable": sum(g.prunable for g in groups), "pruned": len(plan.keep),
    }


def work_onnxsim(src: str, dst: str, ratio: float) -> dict:
    import onnx
    import onnxsim

    proto = onnx.load(src)
    t0 = time.perf_counter()
    pruned = onnxsim.apply_structured_pruning_cpp(proto, sparsity=ratio)
    t1 = time.perf_counter()
    onnx.save(pruned, dst)
    return {"prune_s": t1 - t0}


def work_activation(src: str, _: str, samples: float) -> dict:
    """Streamed activation statistics over ``samples`` random inputs, batches of 32."""
    from onnxprune import runtime
    from onnxprune.io import load_model
    from onnxprune.passes.prune.activations import collect_channel_stats
    from onnxprune.passes.prune.analysis import analyze

    samples = int(samples)
    model = load_model(src)
    groups = analyze(model)

    def batches():
        for start in range(0, samples, 32):
            yield runtime.random_inputs(model, batch=min(32, samples - start), seed=start)

    t0 = time.perf_counter()
    stats = collect_channel_stats(model, groups, batches(), runner=runtime.OrtRunner())
    return {"collect_s": time.perf_counter() - t0, "groups": len(stats)}


WORKERS = {"onnxprune": work_onnxprune, "onnxsim": work_onnxsim, "activation": work_activation}


def activation_memory(sample_counts: list[int]) -> None:
    """Peak RSS of activation statistics vs number of samples: it must not grow."""
    import zoo  # tests/zoo.py, on sys.path through common

    rows = []
    for name in ("resnet_basic", "unet"):
        src = zoo.export(name, dynamic_batch=True)
        for n in sample_counts:
            r = run_worker("activation", src, Path(os.devnull), n)
            rows.append((name, n, f"{r.get('collect_s', float('nan')):.2f}", f"{r['peak_rss_mb']:.0f}",
                         r["error"] or ""))
    print("activation statistics (ORT, every prunable group's consumer inputs exposed), batches of 32")
    print(table(["model", "samples", "collect s", "peak RSS MB", "error"], rows, align="lrrrl"))


PRELOAD = ("numpy", "onnx", "onnx_ir", "onnxruntime", "onnxscript", "onnxprune.pipeline")


def run_worker(tool: str, src: Path, dst: Path, arg: float) -> dict:
    """Run one tool in a fresh process (common.measure): wall time, peak RSS, result."""
    m = measure(WORKERS[tool], str(src), str(dst), arg, preload=PRELOAD + (("onnxsim",) if tool == "onnxsim" else ()))
    result = {"wall_s": m.wall_s, "peak_rss_mb": m.peak_rss / 2**20, "extra_rss_mb": m.extra_rss / 2**20,
              "error": m.error}
    result.update(m.result or {})
    return result


def check(original: Path, pruned: Path) -> dict:
    """ONNX checker, ONNX Runtime run, output shapes, share of weights removed."""
    import onnx
    import onnx_ir as ir

    from onnxprune import runtime
    from onnxprune.graphutils import param_count

    removed = 1 - param_count(ir.load(pruned)) / param_count(ir.load(original))
    info = {"valid": False, "shapes_kept": False, "weights_removed": removed}
    try:
        onnx.checker.check_model(str(pruned))  # onnx's own checker: the bench judges both tools alike
        feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
        ref, got = runtime.run(original, feeds), runtime.run(pruned, feeds)
        info["valid"] = True
        info["shapes_kept"] = [a.shape for a in ref.values()] == [b.shape for b in got.values()]
    except Exception as exc:  # any failure = a broken model; say which
        info["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return info


# --- digits: accuracy after pruning, no retraining ----------------------------------------

DIGITS = ROOT / "models" / "digits"


def digits(criteria: list[str], targets: list[float]) -> None:
    """Held-out accuracy of the digits model pruned to keep each MAC share: per criterion, how
    the removed channels are compensated, and the least-squares refit (--reconstruct)."""
    from onnxprune import load_model, optimize, runtime
    from onnxprune.api import prune
    from onnxprune.graphutils import param_count
    data = np.load(DIGITS / "eval.npz")
    inputs, labels = data["input"], data["labels"]
    calib = DIGITS / "calib.npz"

    def accuracy(model) -> float:
        return float((runtime.run(model, {"input": inputs})["logits"].argmax(1) == labels).mean())

    original = load_model(DIGITS / "digits.onnx")
    rows = [("original", "", "", "100%", f"{accuracy(original):.2%}", *[""] * 4,
             f"{param_count(original):,}", "", "")]
    # columns: how the removed channels are made up for -> prune() options
    columns = {
        "none": dict(compensate=False, reconstruct=False),
        "BN stats": dict(reconstruct=False),  # data-free means (no calibration)
        "calib means": dict(calib=calib, reconstruct=False),
        "refit": dict(calib=calib),  # the default with --calib: inputs from the original model
        "refit, pruned inputs": dict(calib=calib, refit_inputs="pruned"),
    }
    variants = {"round 8 (default)": (False, 8), "round 1": (False, 1), "fold first, round 1": (True, 1)}
    base_latency = runtime.latency_ms(original, runtime.random_inputs(original), runs=200)
    for target in targets:
        for criterion in criteria:
            data_driven = criterion in ("activation", "apoz")
            for label, (fold_first, round_to) in variants.items():
                accs, result = [], None
                for options in columns.values():
                    if data_driven and "calib" not in options:
                        accs.append("")  # these criteria always have calibration data
                        continue
                    options = {**options, "calib": calib} if data_driven else options
                    # prune() works in place on an in-memory model: a fresh one each time
                    source = optimize(DIGITS / "digits.onnx").model if fold_first else DIGITS / "digits.onnx"
                    r = prune(source, criterion=criterion, target_macs=target, round_to=round_to, latency_runs=0,
                              **options)
                    accs.append(f"{accuracy(r.model):.2%}")
                    result = result or r
                latency = runtime.latency_ms(result.model, runtime.random_inputs(result.model), runs=200)
                notes = sorted({g.reason for g in result.report.groups if g.reason and g.status == "pruned"})
                rows.append((
                    criterion, f"{target:.0%}", label, f"{result.after['macs'] / result.before['macs']:.1%}",
                    *accs, f"{result.after['parameters']:,}", f"{latency / base_latency - 1:+.0%}", "; ".join(notes),
                ))
    print(f"digits: held-out accuracy ({len(labels)} images), no retraining; calibration: {calib.name};"
          " columns: how the removed channels are made up for (none; means from BatchNorm statistics or from"
          " calibration folded into the next bias; least-squares refit of the next layers, inputs from the"
          " original model (default) or from the pruned one, layer by layer); latency: ORT CPU, 1 thread, batch 1,"
          " median of 200, vs the original")
    headers = ["criterion", "keep MACs", "variant", "MACs kept", *columns, "parameters", "latency", "note"]
    print(table(headers, rows, align="lllrrrrrrrrl"))
    write_result("prune-digits", headers[:-1], [r[:-1] for r in rows], align="lllrrrrrrrr",
                 figures={"original": rows[0][4]}, data=[dict(zip(headers, r)) for r in rows])


def refit_cost(image: int, samples: int) -> None:
    """Time, memory and output error of the refit on ResNet-50 (fresh processes), by input source."""
    src = resnet50(batch=1, image=image)
    calib = CACHE / f"resnet50-calib-{image}-{samples}.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, input=rng.standard_normal((samples, 3, image, image)).astype(np.float32))
    test = CACHE / f"resnet50-test-{image}.npy"
    np.save(test, rng.standard_normal((8, 3, image, image)).astype(np.float32))
    rows = []
    for label, options in (("no refit (calib means)", {"reconstruct": False}), ("refit (original inputs)", {}),
                           ("refit, pruned inputs", {"refit_inputs": "pruned"})):
        m = measure(work_refit, str(src), str(calib), str(test), options, preload=PRELOAD)
        r = m.result or {}
        rows.append((label, f"{r['prune_s']:.1f}" if "prune_s" in r else "", f"{m.peak_rss / 2**20:.0f}",
                     r.get("refit", ""), r.get("recentred", ""),
                     f"{r['error']:.4f}" if "error" in r else "", m.error or ""))
    print(f"ResNet-50 ({image}x{image}, random weights and BN statistics), l1 keeping 60 % of the MACs, "
          f"{samples} calibration images (batch 1); output error: ‖y - y0‖ / ‖y0 - mean y0‖ on 8 other images")
    columns = ["variant", "prune() s", "peak RSS MB (process)", "layers refit", "re-centred", "output error", "error"]
    print(table(columns, rows,
                align="lrrrrrl"))


def work_refit(src: str, calib: str, test: str, options: dict) -> dict:
    from onnxprune import load_model, runtime
    from onnxprune.api import prune

    x = np.load(test)
    reference = np.concatenate([runtime.run(load_model(src), {"input": x[i:i + 1]})["output"] for i in range(len(x))])
    start = time.perf_counter()
    r = prune(src, criterion="l1", target_macs=0.6, calib=calib, batch_size=1, latency_runs=0, **options)
    seconds = time.perf_counter() - start
    out = np.concatenate([runtime.run(r.model, {"input": x[i:i + 1]})["output"] for i in range(len(x))])
    fits = r.report.reconstruction or []
    error = float(np.linalg.norm(out - reference) / np.linalg.norm(reference - reference.mean()))
    return {"prune_s": seconds, "error": error,
            "refit": sum(f.status == "refit" for f in fits), "recentred": sum(f.status == "recentred" for f in fits)}


def latency(reps: int = 5) -> None:
    """ORT CPU latency of pruned models vs the original, by round_to (best of several medians)."""
    from onnxprune import load_model, runtime
    from onnxprune.api import prune
    cases = [("digits", DIGITS / "digits.onnx", (0.7, 0.5), 300),
             ("resnet50", export("resnet50"), (0.6,), 15)]
    rows = []
    for name, src, targets, runs in cases:
        models = {("original", ""): load_model(src)}
        for target in targets:
            for round_to in (1, 8, 16):
                r = prune(src, criterion="l1", target_macs=target, round_to=round_to, latency_runs=0)
                models[(f"keep {target:.0%} MACs", round_to)] = r.model
        feeds = runtime.random_inputs(models[("original", "")])
        best = {key: min(runtime.latency_ms(m, feeds, runs=runs) for _ in range(reps)) for key, m in models.items()}
        base = best[("original", "")]
        rows += [(name, label, rt, f"{ms:.3f}", f"{ms / base - 1:+.0%}") for (label, rt), ms in best.items()]
    print(f"ORT CPU latency, 1 thread, batch 1: best of {reps} medians; l1 criterion, BatchNorm folded")
    print(table(["model", "pruned to", "round_to", "ms", "vs original"], rows, align="llrrr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,vit_b16")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--digits", action="store_true", help="accuracy study on the digits sample model")
    parser.add_argument("--activation-memory", action="store_true", help="peak RSS of activation statistics vs samples")
    parser.add_argument("--latency", action="store_true", help="ORT CPU latency of pruned models by round_to")
    parser.add_argument("--refit-cost", action="store_true", help="time/memory/error of the refit on ResNet-50")
    parser.add_argument("--image", type=int, default=112, help="--refit-cost: input size")
    parser.add_argument("--samples", type=int, default=64, help="--refit-cost: calibration images")
    args = parser.parse_args()
    if args.digits:
        digits(["l1", "l2", "bn", "activation", "apoz"], [0.7, 0.5])
        return
    if args.latency:
        latency()
        return
    if args.refit_cost:
        refit_cost(args.image, args.samples)
        return
    if args.activation_memory:
        activation_memory([64, 640, 6400])
        return
    from onnxprune import optimize

    rows = []
    for name in args.models.split(","):
        print(f"exporting {name} ...", file=sys.stderr)
        exported = export(name)
        folded = CACHE / f"{exported.stem}-folded.onnx"
        if not folded.exists():
            optimize(exported, folded)  # exact clean-up: BatchNorm and constants folded
        for form, original in (("exported", exported), ("optimized", folded)):
            for tool in ("onnxprune", "onnxsim"):
                print(f"{name} ({form}): {tool} ...", file=sys.stderr)
                dst = CACHE / f"{original.stem}-{tool}-{args.ratio}.onnx"
                dst.unlink(missing_ok=True)
                r = run_worker(tool, original, dst, args.ratio)
                r.update(check(original, dst) if r["error"] is None else {"valid": False, "error": r["error"]})
                rows.append(_row(name, form, tool, r))
    print(f"\nratio {args.ratio} of each layer's channels (l1 / L2-norm ranking), batch-1 224x224 inputs")
    headers = ["model", "input", "tool", "prune time s", "load+prune+save s", "peak RSS MB", "of which imports",
               "weights removed", "valid", "shapes kept", "groups pruned/prunable/all", "error"]
    print(table(headers, rows, align="lllrrrrrllrl"))
    write_result("prune-onnxsim", headers, rows, align="lllrrrrrllrl", data=[dict(zip(headers, r)) for r in rows])
    print("onnxprune time: prepare (Identity/Constant clean-up) + analysis + scoring/planning + rewrite;"
          " each tool runs in a fresh process (bench/common.py measure), imports preloaded.")


def _row(name: str, form: str, tool: str, r: dict) -> tuple:
    if tool == "onnxprune" and "analysis_s" in r:
        t = f"{r['prepare_s']:.2f} + {r['analysis_s']:.2f} + {r['plan_s']:.2f} + {r['rewrite_s']:.2f}"
        groups = f"{r['pruned']}/{r['prunable']}/{r['groups']}"
    else:
        t, groups = (f"{r['prune_s']:.2f}" if "prune_s" in r else ""), ""
    return (
        name, form, tool, t, f"{r['wall_s']:.1f}", f"{r['peak_rss_mb']:.0f}",
        f"{r['peak_rss_mb'] - r['extra_rss_mb']:.0f}",
        f"{r['weights_removed']:.1%}" if "weights_removed" in r else "",
        "yes" if r["valid"] else "NO", "yes" if r.get("shapes_kept") else "no", groups, r.get("error") or "",
    )


if __name__ == "__main__":
    main()
