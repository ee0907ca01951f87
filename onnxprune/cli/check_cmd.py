"""`onnxprune check`."""

from __future__ import annotations

import click

from onnxprune.cli._common import (
    STDOUT_NAMES,
    echo,
    executor_options,
    html_option,
    input_shape_option,
    json_option,
    provider_option_flags,
    provider_options,
    show_progress,
    split_list,
    write_html_report,
    write_report,
)
from onnxprune.io import check_output_path
from onnxprune.parity import PRESETS, check
from onnxprune.parity.tolerances import parse_tolerance_specs

EPILOG = """\b
Examples:
  onnxprune check model.onnx model.opt.onnx
  onnxprune check model.onnx model.int8.onnx --data eval.npz --labels labels --preset int8
  onnxprune check model.onnx model.opt.onnx --data eval.npz --atol 1e-3 --atol logits:1e-2 --layerwise
  onnxprune check model.onnx pruned.onnx --data eval.npz --labels labels --preset pruned
  onnxprune check model.onnx model.int8.onnx --data eval.npz --providers cpu,openvino --json -
  onnxprune check model.onnx model.onnx --data eval.npz --providers cpu,openvino \\
      --provider-option openvino:INFERENCE_PRECISION_HINT=f32

\b
Comparisons: reference vs candidate on each provider, reference on the first provider
vs candidate on each other one (e.g. CPU vs OpenVINO), and each model on the first provider
vs the same model on the others (the providers' own drift, not judged). A drift beyond fp32
rounding is rerun with the provider's fp32 hint to tell reduced precision from a bug.
Plugin EPs (pip install onnxprune[openvino]) are found and registered automatically.
Exit codes: 0 parity holds, 1 parity failed, 2 bad input or usage.
"""


@click.command("check", epilog=EPILOG)
@click.argument("reference", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False))
@input_shape_option
@click.option("--data", type=click.Path(), help="Inputs: .npz (arrays keyed by input name), folder of .npy/.npz or images. Default: random inputs (exact comparisons only).")
@click.option("--labels", help="Name of the labels array in --data: accuracy of both models.")
@click.option("--samples", type=int, help="Use at most N samples (default: all; 16 random ones without --data).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--preprocess", help="Image preprocessing for an image folder, e.g. 'resize=256,crop=224,scale=1/255'.")
@click.option("--providers", help="Comma-separated execution providers: cpu, cuda, tensorrt, openvino, dml, coreml... (default: every available one of cpu,cuda).")
@click.option("--require-providers", is_flag=True, help="Fail (exit 2) if a requested provider is unavailable.")
@click.option("--preset", type=click.Choice(["auto", *PRESETS]), default="auto", show_default=True,
              help="exact: every element within 1e-4 + 1e-4*|ref|. int8: cosine/SQNR/top-1/accuracy drop. pruned: top-1 >= 95 %, accuracy drop <= 1 point. auto: pruned if the candidate's metadata says it was pruned, int8 if only the candidate is quantized, else exact.")
@click.option("--atol", multiple=True, metavar="[OUTPUT:]X", help="Absolute tolerance, for all outputs or one (repeatable).")
@click.option("--rtol", multiple=True, metavar="[OUTPUT:]X", help="Relative tolerance, for all outputs or one (repeatable).")
@click.option("--stat", help="Which elements must be within tolerance: max (all), mean, pNN (e.g. p99: 99 %).")
@click.option("--min-cosine", type=float, help="Minimum cosine similarity per output.")
@click.option("--min-sqnr", type=float, help="Minimum SQNR per output, in dB.")
@click.option("--min-top1", type=float, help="Minimum top-1 agreement of classifier outputs (0..1).")
@click.option("--min-topk", type=float, help="Minimum top-k agreement (reference top-1 within candidate top-k).")
@click.option("--top-k", type=int, help="k for top-k agreement (default 5).")
@click.option("--max-accuracy-drop", type=float, help="Maximum accuracy drop on --labels (0..1, e.g. 0.01).")
@click.option("--layerwise", is_flag=True, help="Compare matching intermediate tensors; name the first layer that exceeds the tolerance.")
@click.option("--layerwise-samples", type=int, default=256, show_default=True,
              help="Samples for --layerwise (localising needs fewer than judging).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random inputs.")
@provider_option_flags
@json_option()
@html_option
@executor_options
@click.pass_context
def check_cmd(ctx, reference, candidate, data, labels, samples, batch_size, preprocess, providers,
              require_providers, preset, atol, rtol, stat, min_cosine, min_sqnr, min_top1, min_topk,
              top_k, max_accuracy_drop, layerwise, layerwise_samples, seed, provider_option, provider_options_file,
              report_path, html_path, executor) -> None:
    """Check that CANDIDATE keeps the accuracy of REFERENCE, on every execution provider."""
    sides = [p for p in (None if report_path in STDOUT_NAMES else report_path, html_path) if p]
    for side in sides:  # fail before the work, never onto either model
        for model in (reference, candidate):
            check_output_path(side, model)
    default_atol, per_output_atol = parse_tolerance_specs(atol, "--atol")
    default_rtol, per_output_rtol = parse_tolerance_specs(rtol, "--rtol")
    criteria = {
        "atol": default_atol, "rtol": default_rtol, "stat": stat,
        "per_output_atol": per_output_atol or None, "per_output_rtol": per_output_rtol or None,
        "min_cosine": min_cosine, "min_sqnr": min_sqnr, "min_top1": min_top1, "min_topk": min_topk,
        "top_k": top_k, "max_accuracy_drop": max_accuracy_drop,
    }
    result = check(
        reference, candidate, data,
        providers=split_list(providers) or None, require_providers=require_providers,
        provider_options=provider_options(provider_option, provider_options_file),
        tolerances=preset, criteria=criteria, labels=labels, samples=samples, batch_size=batch_size,
        preprocess=preprocess, layerwise=layerwise, layerwise_samples=layerwise_samples, seed=seed, progress=show_progress(ctx),
        executor=executor,
    )
    echo(str(result))
    write_report(report_path, result.to_dict())
    write_html_report(html_path, result.to_dict(), "check")
    result.raise_on_failure()
