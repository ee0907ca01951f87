"""`onnxprune optimize`."""

from __future__ import annotations

import click

from onnxprune import api
from onnxprune.cli._common import (
    SIZE_COLUMNS,
    check_side_outputs,
    echo,
    input_shape_option,
    json_option,
    show_progress,
    size_row,
    split_list,
    write_report,
)
from onnxprune.passes import PASSES, get_pass
from onnxprune.pipeline import DEFAULT_PIPELINE
from onnxprune.report import table


def _pass_help() -> str:
    return "\n".join(f"  {name}: {cls.summary()}" for name, cls in PASSES.items())


@click.command("optimize", epilog="Passes:\n\n" + _pass_help().replace("\n", "\n\n"))
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the optimized model.")
@click.option("--passes", help=f"Comma-separated pass names (default: {','.join(DEFAULT_PIPELINE)}).")
@click.option("--verify", is_flag=True, help="After each pass: ONNX checker, ONNX Runtime load, output parity.")
@click.option("--tolerance", type=float, default=1e-5, show_default=True, help="Parity tolerance for --verify (max abs error / max |reference|); an output the original itself moves more between ONNX Runtime optimization levels (float32 rounding) may move 2x that much.")
@json_option("--report")
@click.pass_context
def optimize_cmd(ctx, model, output, passes, verify, tolerance, report_path) -> None:
    """Run the exact clean-up pipeline: outputs stay numerically equal."""
    names = split_list(passes) or list(DEFAULT_PIPELINE)
    for name in names:
        get_pass(name)  # fail on an unknown name before any work
    check_side_outputs(model, output, report_path)
    result = api.optimize(
        model, output, passes=names, verify=verify, tolerance=tolerance, progress=show_progress(ctx)
    )
    rows = [
        (
            r.name,
            "yes" if r.modified else "no",
            r.nodes_after - r.nodes_before,
            r.params_after - r.params_before,
            f"{r.seconds * 1000:.0f} ms",
            "; ".join(r.changes[:3]) + (f" (+{len(r.changes) - 3} more)" if len(r.changes) > 3 else ""),
        )
        for r in result.pipeline.records
    ]
    echo(table(["pass", "modified", "Δnodes", "Δparams", "time", "changes"], rows, align="llrrrl"))
    echo("")
    sizes = [size_row(key, result.before, result.after) for key in SIZE_COLUMNS]
    echo(table(["", "before", "after", "change"], sizes, align="lrrr"))
    if verify:
        echo("\nverify: every pass kept parity (checker, ONNX Runtime, outputs)"
             + (f" on {result.verify_note}" if result.verify_note else ""))
    echo(f"\nwrote {result.output}")
    write_report(report_path, result.to_dict())
