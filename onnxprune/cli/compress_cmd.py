"""`onnxprune compress`: the whole job in one command."""

from __future__ import annotations

import click

from onnxprune.calibration import METHODS
from onnxprune.cli._common import (
    SIZE_COLUMNS,
    check_side_outputs,
    echo,
    execution_lines,
    executor_options,
    html_option,
    input_shape_option,
    json_option,
    provider_option_flags,
    provider_options,
    show_progress,
    split_list,
    split_lists,
    with_profile,
    write_html_report,
    write_report,
)
from onnxprune.compress import STAGES, compress
from onnxprune.passes.prune import CRITERIA, DEFAULT_ROUND_TO, PruneOptions
from onnxprune.providers import label
from onnxprune.report import change, table

EPILOG = """\b
Examples:
  onnxprune compress model.onnx -o model.small.onnx --calib calib.npz --target-macs 0.7
  onnxprune compress model.onnx -o model.small.onnx --calib calib.npz --eval eval.npz --labels labels \\
      --max-accuracy-drop 0.01

\b
Stages, in order: """ + " -> ".join(STAGES) + """. Pruning runs when --ratio, --target-macs
or --target-params is given, or searched for a budget (--max-accuracy-drop or --min-fidelity
without them, judged after quantization on --eval); quantization unless --no-quantize. For every option of a stage,
run it on its own (onnxprune prune / quantize / check). The result is judged as the stages'
guards judge (cosine and argmax agreement >= 0.9 on --eval); below it, quantization reruns with a
stricter guard, and a miss even so is a warning. Exit codes: 0 done, 1 a --max-accuracy-drop is
exceeded, or --strict and a guard found culprits or the target is missed (the output is still
written, for inspection), 2 bad input or usage.
"""


@click.command("compress", epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the compressed model.")
@click.option("--calib", type=click.Path(), help="Calibration data (.npz keyed by input name, folder of .npy/.npz/images).")
@click.option("--eval", "eval_data", type=click.Path(), help="Data for the final check (default: --calib).")
@click.option("--labels", help="Name of the labels array in the check data: accuracy before/after (default: an array named 'labels', if any).")
@click.option("--preprocess", help="Image preprocessing for image folders, e.g. 'resize=256,crop=224,scale=1/255,mean=...,std=...'.")
@click.option("--ratio", type=float, help="Prune this share of channels.")
@click.option("--target-macs", type=float, help="Prune to keep this share of MACs, e.g. 0.7.")
@click.option("--target-params", type=float, help="Prune to keep this share of parameters.")
@click.option("--criterion", type=click.Choice(list(CRITERIA)), help="Channel importance  [default: thinet with --calib, else l1]")
@click.option("--distill", is_flag=True, help="Train the pruned weights to match the original's outputs on --calib (needs onnxprune[distill]).")
@click.option("--distill-epochs", type=int, default=PruneOptions.default("distill_epochs"), show_default=True, help="Most epochs of --distill (early stop on held-out samples).")
@click.option("--distill-time", type=float, default=PruneOptions.default("distill_time"), show_default=True, help="Most seconds of --distill (per pruned model).")
@click.option("--round-to", type=int, default=DEFAULT_ROUND_TO, show_default=True, help="Kept channel counts are multiples of this.")
@click.option("--exclude", multiple=True, help="Node names or globs not to prune (repeatable or comma list).")
@click.option("--strict", is_flag=True, help="Pruning or quantization that destroys the outputs (cosine < 0.9, top-1 < 90 %) fails (exit 1, culprits named) instead of keeping channel groups whole / nodes float.")
@click.option("--quantize/--no-quantize", "quantize_model", default=True, show_default=True, help="Static INT8 (QDQ) quantization.")
@click.option("--method", type=click.Choice(METHODS), default="minmax", show_default=True, help="Calibration method.")
@click.option("--samples", type=int, help="Calibrate on at most this many samples.")
@click.option("--max-accuracy-drop", type=float, help="Accuracy budget on --eval/--labels (0..1): without --ratio/--target-*, search the strongest pruning that, quantized, holds it; always: fail (exit 1) beyond it.")
@click.option("--min-fidelity", type=float, help="Budget without labels: search the strongest pruning keeping this top-1 agreement (cosine for other outputs) on --eval, after quantization.")
@click.option("--search/--no-search", default=None, help="Search how much to prune for the budget  [default: when a budget is given without --ratio/--target-*]")
@click.option("--providers", help="Execution providers for the check (default: every available one of cpu,cuda).")
@click.option("--target-provider", help="Provider the model is for (cpu, openvino, cuda, tensorrt...): latency is timed and the check also runs there.")
@provider_option_flags
@click.option("--latency-batch", type=int, default=32, show_default=True, help="Time ONNX Runtime before/after on a batch this big (0: skip).")
@json_option("--report")
@html_option
@executor_options
@click.pass_context
def compress_cmd(ctx, model, output, calib, eval_data, labels, preprocess, ratio, target_macs, target_params, criterion,
                 distill, distill_epochs, distill_time, round_to, exclude, strict, quantize_model, method, samples,
                 max_accuracy_drop, min_fidelity, search, providers,
                 target_provider, provider_option, provider_options_file, latency_batch, report_path,
                 html_path, executor) -> None:
    """Clean up, prune, quantize and check a model in one go."""
    check_side_outputs(model, output, report_path, html_path)
    result = compress(
        model, output, calib=calib, eval_data=eval_data, labels=labels, ratio=ratio,
        target_macs=target_macs, target_params=target_params, criterion=criterion,
        prune_options={"round_to": round_to, "exclude": split_lists(exclude), "strict": strict,
                       **({"distill": True, "distill_epochs": distill_epochs, "distill_time": distill_time}
                          if distill else {})},
        quantize_model=quantize_model, method=method, samples=samples,
        max_accuracy_drop=max_accuracy_drop, min_fidelity=min_fidelity, search=search,
        providers=split_list(providers) or None,
        target_provider=target_provider, provider_options=provider_options(provider_option, provider_options_file),
        latency_batch=latency_batch or None, preprocess=preprocess, progress=show_progress(ctx),
        executor=executor, strict=strict,
    )
    if result.search is not None:
        echo(format_search(result.search) + "\n")
    metric = any(s.metric for s in result.stages)
    rows = [("original", "", *_cells(result.before, result.before), *(["1.0"] if metric else []))]
    rows += [(s.name, f"{s.seconds:.2f} s", *_cells(s.summary, result.before), *([_metric(s.metric)] if metric else []))
             for s in result.stages]
    headers = ["stage", "time", *(label for label, _ in SIZE_COLUMNS.values()), *(["on --eval"] if metric else [])]
    echo(table(headers, rows, align="lrrrrr" + ("r" if metric else "")))
    for stage in result.stages:
        distilled = getattr(stage.result, "distill", None)
        if distilled is not None:
            from onnxprune.cli.prune_cmd import format_distill

            echo(format_distill(distilled))
    for stage in result.stages:  # prune's fidelity guard; calibration's workers (the check's are in its own table)
        if stage.name == "prune" and stage.result.fidelity is not None:
            echo("\nprune " + "\n".join(stage.result.fidelity.lines()))
        if stage.name == "quantize" and stage.result.calibration.get("execution"):
            echo("\ncalibration " + "\n".join(execution_lines(stage.result.calibration["execution"])))
    if result.latency_ms:
        lat = result.latency_ms
        echo(f"\nlatency (ONNX Runtime {label(lat['provider'])}, 1 thread, batch {lat['batch']}): "
                   f"{lat['before']:.2f} ms -> {lat['after']:.2f} ms ({change(lat['before'], lat['after'])})")
    if result.fidelity is not None:
        echo("\n" + format_fidelity(result))
    echo("\n" + str(result.check))
    echo(f"\nwrote {result.output}")
    write_report(report_path, with_profile(result.to_dict()))
    write_html_report(html_path, result.to_dict(), "compress")
    result.raise_on_failure()


def format_fidelity(result) -> str:
    """The final model against the original by the guards' measure, and whether it holds."""
    f, target = result.fidelity, result.fidelity.target
    shown = [f"'{n}' cosine {c:.4f}" + (f", agreement {f.top1[n]:.1%}" if n in f.top1 else "")
             for n, c in f.cosine.items()]
    more = f" (+{len(shown) - 4} more outputs)" if len(shown) > 4 else ""
    problem = result.fidelity_problem()
    verdict = ": holds" if problem is None else f": FAILS, {problem}" if result.strict else \
        f"\nwarning: {problem} even after the guards acted (the model is written; --strict fails instead)"
    lines = [f"fidelity to the original (the guards' measure, target cosine >= {target.cosine:g}, agreement >= "
             f"{target.agreement:g}): " + "; ".join(shown[:4]) + more + verdict]
    lines += [f"  quantize rerun with its guard at {t['guard_target']:.3f}: " + ("holds" if t["holds"] else "still below")
              for t in result.retries]
    return "\n".join(lines)


def _metric(m: dict | None) -> str:
    """The stage's fidelity to the original on --eval, and its accuracy on labels."""
    if not m:
        return ""
    return f"{m['fidelity']:.4f}" + (f", acc {m['accuracy']:.4f}" if m.get("accuracy") is not None else "")


def format_search(found: dict) -> str:
    """The probes of the accuracy-driven search (each pruned then quantized), and the choice."""
    rows = [(f"{p['keep_macs']:.3f}", f"{p['macs_removed']:.1%}", f"{p['fidelity']:.4f}",
             "" if p["accuracy"] is None else f"{p['accuracy']:.4f}", "yes" if p["passed"] else "no")
            for p in found["probes"]]
    text = table(["keep MACs", "MACs removed", "fidelity", "accuracy", "within budget"], rows, align="rrrrl")
    base = found["baseline"]
    text += f"\noriginal on --eval: {base['metric']} 1.0" + \
        (f", accuracy {base['accuracy']:.4f}" if base["accuracy"] is not None else "")
    chosen = found["chosen"]
    return text + ("\nno pruning met the budget: the stages run without it" if chosen is None
                   else f"\nchosen: keep {chosen:.3f} of the MACs")


def _cells(summary: dict, before: dict) -> tuple[str, ...]:
    """The size figures after a stage, each with its change from the original."""
    cells = []
    for key, (_, show) in SIZE_COLUMNS.items():
        text = show(summary[key])
        cells.append(text if summary is before else f"{text} ({change(before[key], summary[key])})")
    return tuple(cells)
