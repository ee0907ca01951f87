"""`onnxprune quantize`."""

from __future__ import annotations

import click

from onnxprune.api.quantize_api import quantize
from onnxprune.calibration import METHODS
from onnxprune.cli._common import (
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
    split_lists,
    with_profile,
    write_html_report,
    write_report,
)
from onnxprune.providers import label
from onnxprune.report import change, human, table

EPILOG = """\b
Examples:
  onnxprune quantize model.onnx -o model.int8.onnx --calib calib.npz --method entropy --samples 500
  onnxprune quantize model.onnx -o model.int8.onnx --calib images/ --preprocess "resize=256,crop=224,scale=1/255"
  onnxprune quantize model.onnx -o model.int8.onnx --table ranges.json --exclude Softmax,/head/Gemm

Defaults suit ONNX Runtime's CPU execution provider (uint8 asymmetric activations, per-channel
int8 weights). For TensorRT use --activation-type int8 --symmetric; on x86 CPUs without VNNI
add --reduce-range.
"""


@click.command("quantize", epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the INT8 model.")
@click.option("--calib", help="Calibration data: .npz, folder of .npy/.npz or images.")
@click.option("--table", "table_path", type=click.Path(dir_okay=False), help="Reuse a saved calibration table (JSON) instead of --calib.")
@click.option("--synthetic", is_flag=True, help="Calibrate on random inputs (ranges will be wrong; for smoke tests only).")
@click.option("--method", type=click.Choice(METHODS), default="minmax", show_default=True, help="How ranges are chosen from the observed values.")
@click.option("--percentile", type=float, default=99.99, show_default=True, help="For --method percentile.")
@click.option("--samples", type=int, help="Calibrate on at most this many samples.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Samples per ONNX Runtime run during calibration.")
@click.option("--preprocess", help="Image preprocessing, e.g. 'resize=256,crop=224,scale=1/255,mean=...,std=...'.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="One weight scale per output channel, or per tensor.")
@click.option("--symmetric/--asymmetric", default=False, show_default=True, help="Activation ranges centred on 0, or min..max.")
@click.option("--activation-type", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True, help="8-bit type of activations.")
@click.option("--reduce-range", is_flag=True, help="7-bit weights (x86 CPUs without VNNI can saturate with 8).")
@click.option("--exclude", multiple=True, help="Node names or op types to keep float (comma list, repeatable).")
@click.option("--save-table", type=click.Path(dir_okay=False), help="Save the calibration table (JSON) for reuse with --table.")
@click.option("--no-clean", is_flag=True, help="Skip the exact clean-up (BatchNorm folding...) before quantizing.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) naming the nodes that destroy the outputs, instead of keeping them float.")
@click.option("--min-fidelity", type=float, help="Keep float the fewest nodes (ranked by the error they add) that hold this cosine / argmax agreement with float on held-out calibration samples [default: 0.9, which catches destruction, not loss].")
@click.option("--bias-correction", is_flag=True, help="Add back into each Conv/Gemm bias the output mean its int8 weight rounding removes (measured on --calib); kept only if held-out fidelity does not drop.")
@click.option("--equalize", is_flag=True, help="Move per-channel activation ranges into the weights of the layers reading them, where exact in float (measured on --calib).")
@click.option("--no-latency", is_flag=True, help="Skip timing ONNX Runtime before and after.")
@click.option("--placement/--no-placement", default=True, show_default=True,
              help="Measure float vs INT8 kernels on ONNX Runtime; keep float what INT8 does not make faster.")
@click.option("--target-provider", help="Time latency and judge placement on this provider (cpu, openvino, cuda, tensorrt...; default cpu).")
@provider_option_flags
@json_option("--report")
@html_option
@executor_options
@click.pass_context
def quantize_cmd(ctx, model, output, calib, table_path, synthetic, method, percentile, samples, batch_size,
                 preprocess, per_channel, symmetric, activation_type, reduce_range, exclude, save_table,
                 no_clean, strict, min_fidelity, bias_correction, equalize, no_latency, placement, target_provider, provider_option, provider_options_file,
                 report_path, html_path, executor) -> None:
    """Static INT8 quantization (QDQ format), calibrated on sample data."""
    check_side_outputs(model, output, report_path, save_table, html_path)
    result = quantize(
        model, output, calib=calib, table=table_path, method=method, samples=samples, batch_size=batch_size,
        percentile=percentile, preprocess=preprocess, synthetic=synthetic, activation_type=activation_type,
        symmetric=symmetric, per_channel=per_channel, reduce_range=reduce_range,
        exclude=split_lists(exclude), clean=not no_clean,
        save_table=save_table, strict=strict, min_fidelity=min_fidelity, bias_correction=bias_correction, equalize=equalize, latency=not no_latency, placement=placement,
        target_provider=target_provider, provider_options=provider_options(provider_option, provider_options_file),
        progress=show_progress(ctx), executor=executor,
    )
    echo(summary(result))
    write_report(report_path, with_profile(result.to_dict()))
    write_html_report(html_path, result.to_dict(), "quantize")


def summary(result) -> str:
    """What `onnxprune quantize` prints: calibration, a before/after table, nodes left float."""
    calib = result.calibration
    source = (f"{calib.get('method')} on {calib.get('samples')} samples of {calib.get('source')}"
              if "method" in calib else f"table {calib.get('source')} ({calib.get('tensors')} tensors)")
    rows = [
        ("nodes in INT8", 0, result.nodes_int8, f"{len(result.declined)} left float" if result.declined else ""),
        ("tensors quantized", 0, result.activations, f"{result.absorbed} Relu/Clip folded" if result.absorbed else ""),
        ("int8 weights / int32 biases", "0 / 0", f"{result.weights} / {result.biases}", ""),
        ("weights size", human(result.size_before, "B"), human(result.size_after, "B"),
         change(result.size_before, result.size_after)),
    ]
    if result.latency_before_ms is not None:
        rows.append((f"ORT {label(result.target_provider)} latency (1 thread)", f"{result.latency_before_ms:.2f} ms",
                     f"{result.latency_after_ms:.2f} ms", change(result.latency_before_ms, result.latency_after_ms)))
    lines = [*([f"opset: {result.converted}"] if result.converted else []), f"calibration: {source}", *execution_lines(calib.get("execution")),
             *(f"note: {n}" for n in calib.get("notes", [])), "", table(["", "before", "after", "change / note"], rows, align="lrrl")]
    if result.placement:
        placed = result.placement
        lines.append(f"placement (ONNX Runtime kernel time, 1 thread): float {placed['fp32_ms']:.2f} ms, "
                     f"INT8 {placed['int8_ms']:.2f} ms; {placed['kept_float']} nodes kept float "
                     "where INT8 was not faster")
        if placed["int8_ms"] >= placed["fp32_ms"]:
            lines.append("warning: INT8 is not faster than float for this model on the target provider")
    if result.declined:
        shown = list(result.declined.items())[:5]
        lines.append("left float: " + "; ".join(f"{node} ({why})" for node, why in shown)
                     + (f" (+{len(result.declined) - 5} more)" if len(result.declined) > 5 else ""))
    if result.recovery and "equalize" in result.recovery:
        lines.append(f"equalization: {result.recovery['equalize']['regions']} channel groups equalized (exact in float)")
    if result.recovery and "bias_correction" in result.recovery:
        lines.append(_recovery_line(result.recovery["bias_correction"]))
    if result.fidelity:
        lines.append(_fidelity_line(result.fidelity))
    if result.output:
        lines += ["", f"wrote {result.output}"]
    return "\n".join(lines)


def _recovery_line(done: dict) -> str:
    """Bias correction: how many layers, and whether held-out fidelity kept it."""
    if "fidelity_with" not in done:
        return f"bias correction: {done['nodes']} layers corrected (not measured: no held-out check)"
    worst = {k: min([*done[k]["cosine"].values(), *done[k]["top1"].values()], default=1.0)
             for k in ("fidelity_with", "fidelity_without")}
    verdict = "kept" if done["kept"] else "dropped"
    return (f"bias correction: {done['nodes']} layers corrected, {verdict} (held-out worst fidelity "
            f"{worst['fidelity_with']:.4f} with, {worst['fidelity_without']:.4f} without)")


def _fidelity_line(fidelity: dict) -> str:
    """The guard's verdict: fidelity to the float model, and the nodes it kept float."""
    def shown(f):
        worst = min(f["cosine"].values(), default=1.0)
        top1 = min(f["top1"].values(), default=None)
        return f"cosine {worst:.3f}" + (f", agreement {top1:.1%}" if top1 is not None else "")
    kept = fidelity["kept_float"]
    after, target = fidelity["after"], fidelity.get("target", {"cosine": 0.9, "agreement": 0.9})
    short = (min(after["cosine"].values(), default=1.0) < target["cosine"]
             or min(after["top1"].values(), default=1.0) < target["agreement"])
    if short:
        return (f"warning: the INT8 outputs still differ from float ({shown(after)} on held-out samples, target "
                f"{target['cosine']}) after keeping {len(kept)} nodes float; check accuracy")
    wide = fidelity.get("widened") or {}
    if wide:  # clipped ranges given back (the nodes stay INT8)
        names = ", ".join(list(wide)[:3]) + (f" (+{len(wide) - 3} more)" if len(wide) > 3 else "")
        widened = f"; {len(wide)} ranges the calibration method cut given their observed min/max: {names}"
    else:
        widened = ""
    if not kept:
        if wide:
            return f"fidelity vs float (held-out samples): {shown(fidelity['before'])} -> {shown(after)}{widened}"
        return f"fidelity vs float (held-out samples): {shown(fidelity['after'])}"
    names = "; ".join(f"{n} ({why})" for n, why in list(kept.items())[:3]) + (f" (+{len(kept) - 3} more)" if len(kept) > 3 else "")
    return (f"fidelity vs float (held-out samples): {shown(fidelity['before'])} -> {shown(fidelity['after'])} "
            f"after keeping {len(kept)} nodes float: {names}{widened}")
