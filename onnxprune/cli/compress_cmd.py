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
from onnxprune.providers import label
from onnxprune.passes.prune import CRITERIA, DEFAULT_ROUND_TO
from onnxprune.report import change, table

EPILOG = """\b
Examples:
  onnxprune compress model.onnx -o model.small.onnx --calib calib.npz --target-macs 0.7
  onnxprune compress model.onnx -o model.int8.onnx --calib calib.npz --eval eval.npz --labels labels \\
      --max-accuracy-drop 0.01

\b
Stages, in order: """ + " -> ".join(STAGES) + """. Pruning runs when --ratio, --target-macs
or --target-params is given; quantization unless --no-quantize. For every option of a stage,
run it on its own (onnxprune prune / quantize / check). Exit codes: 0 parity holds, 1 the
final check failed (the output is still written, for inspection), 2 bad input or usage.
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
@click.option("--criterion", type=click.Choice(list(CRITERIA)), default="l1", show_default=True, help="Channel importance.")
@click.option("--round-to", type=int, default=DEFAULT_ROUND_TO, show_default=True, help="Kept channel counts are multiples of this.")
@click.option("--exclude", multiple=True, help="Node names or globs not to prune (repeatable or comma list).")
@click.option("--quantize/--no-quantize", "quantize_model", default=True, show_default=True, help="Static INT8 (QDQ) quantization.")
@click.option("--method", type=click.Choice(METHODS), default="minmax", show_default=True, help="Calibration method.")
@click.option("--samples", type=int, help="Calibrate on at most this many samples.")
@click.option("--max-accuracy-drop", type=float, help="Fail (exit 1) if accuracy on --labels drops more than this (0..1).")
@click.option("--providers", help="Execution providers for the check (default: every available one of cpu,cuda).")
@click.option("--target-provider", help="Provider the model is for (cpu, openvino, cuda, tensorrt...): latency is timed and the check also runs there.")
@provider_option_flags
@click.option("--latency-batch", type=int, default=32, show_default=True, help="Time ONNX Runtime before/after on a batch this big (0: skip).")
@json_option("--report")
@html_option
@executor_options
@click.pass_context
def compress_cmd(ctx, model, output, calib, eval_data, labels, preprocess, ratio, target_macs, target_params, criterion,
                 round_to, exclude, quantize_model, method, samples, max_accuracy_drop, providers,
                 target_provider, provider_option, provider_options_file, latency_batch, report_path,
                 html_path, executor) -> None:
    """Clean up, prune, quantize and check a model in one go."""
    check_side_outputs(model, output, report_path, html_path)
    result = compress(
        model, output, calib=calib, eval_data=eval_data, labels=labels, ratio=ratio,
        target_macs=target_macs, target_params=target_params, criterion=criterion,
        prune_options={"round_to": round_to, "exclude": split_lists(exclude)},
        quantize_model=quantize_model, method=method, samples=samples,
        max_accuracy_drop=max_accuracy_drop, providers=split_list(providers) or None,
        target_provider=target_provider, provider_options=provider_options(provider_option, provider_options_file),
        latency_batch=latency_batch or None, preprocess=preprocess, progress=show_progress(ctx),
        executor=executor,
    )
    rows = [("original", "", *_cells(result.before, result.before))]
    rows += [(s.name, f"{s.seconds:.2f} s", *_cells(s.summary, result.before)) for s in result.stages]
    headers = ["stage", "time", *(label for label, _ in SIZE_COLUMNS.values())]
    echo(table(headers, rows, align="lrrrrr"))
    for stage in result.stages:  # calibration's workers (the check's are in its own table)
        if stage.name == "quantize" and stage.result.calibration.get("execution"):
            echo("\ncalibration " + "\n".join(execution_lines(stage.result.calibration["execution"])))
    if result.latency_ms:
        lat = result.latency_ms
        echo(f"\nlatency (ONNX Runtime {label(lat['provider'])}, 1 thread, batch {lat['batch']}): "
                   f"{lat['before']:.2f} ms -> {lat['after']:.2f} ms ({change(lat['before'], lat['after'])})")
    echo("\n" + str(result.check))
    echo(f"\nwrote {result.output}")
    write_report(report_path, with_profile(result.to_dict()))
    write_html_report(html_path, result.to_dict(), "compress")
    result.check.raise_on_failure()


def _cells(summary: dict, before: dict) -> tuple[str, ...]:
    """The size figures after a stage, each with its change from the original."""
    cells = []
    for key, (_, show) in SIZE_COLUMNS.items():
        text = show(summary[key])
        cells.append(text if summary is before else f"{text} ({change(before[key], summary[key])})")
    return tuple(cells)
