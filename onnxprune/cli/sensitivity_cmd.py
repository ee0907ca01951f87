"""`onnxprune sensitivity`."""

from __future__ import annotations

import click

from onnxprune.api.sensitivity_api import DEFAULT_RATIOS, sensitivity
from onnxprune.cli._common import (
    check_side_outputs,
    execution_lines,
    executor_options,
    html_option,
    show_progress,
    write_html_report,
)
from onnxprune.errors import UsageError
from onnxprune.passes.prune import CRITERIA
from onnxprune.report import table, write_json


def _ratios(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--ratios '{text}': expected numbers separated by commas, e.g. 0.25,0.5") from None


@click.command("sensitivity")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", required=True, type=click.Path(), help="Calibration data (pruning statistics, refit, quantization ranges).")
@click.option("--eval", "eval_data", type=click.Path(), help="Held-out data to measure on (default: the calibration data).")
@click.option("--labels", help="Name of the label array in the evaluation data: accuracy instead of fidelity alone.")
@click.option("--ratios", default=",".join(str(r) for r in DEFAULT_RATIOS), show_default=True, help="Shares of each group's channels to remove.")
@click.option("--criterion", type=click.Choice(list(CRITERIA)), help="Channel importance  [default: prune's default with --calib]")
@click.option("--quantize", "with_quantize", is_flag=True, help="Also rank the quantized nodes (each kept in float in turn).")
@click.option("--no-prune", is_flag=True, help="Only the quantization sweep.")
@click.option("--round-to", type=int, default=1, show_default=True, help="Kept channel counts are multiples of this.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--limit", type=int, help="Evaluate on at most this many samples.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), help="Write the curves as JSON (for prune --sensitivity).")
@html_option
@executor_options
@click.pass_context
def sensitivity_cmd(ctx, model, calib, eval_data, labels, ratios, criterion, with_quantize, no_prune, round_to,
                    batch_size, limit, output, html_path, executor) -> None:
    """Per channel group (and per quantized node): the output fidelity / accuracy at a few ratios.

    Every group x ratio (and every quantized node) is an independent unit: --workers N runs them
    on N local processes, --ray ADDRESS on a Ray cluster, with the same rows as one process."""
    check_side_outputs(model, None, output, html_path)
    result = sensitivity(model, calib, eval_data=eval_data, labels=labels, ratios=_ratios(ratios), criterion=criterion,
                         prune=not no_prune, quantize=with_quantize, round_to=round_to, batch_size=batch_size, limit=limit,
                         executor=executor, progress=show_progress(ctx))
    base = result.baseline
    accuracy = base.get("accuracy") is not None
    rows = []
    for r in result.rows:
        rows.append((r["kind"], r["name"] or "(all quantized)", "" if r["ratio"] is None else f"{r['ratio']:.2f}",
                     f"{r['macs_removed']:.1%}" if "macs_removed" in r else "", f"{r['fidelity']:.4f}",
                     f"{r['accuracy']:.4f}" if accuracy else ""))
    headers = ["unit", "group / node", "ratio", "MACs removed", base["metric"], "accuracy" if accuracy else ""]
    click.echo(table(headers, rows, align="llrrrr"))
    if accuracy:
        click.echo(f"original accuracy {base['accuracy']:.4f}")
    ranking = result.node_ranking()
    if ranking:
        click.echo("nodes whose float version gives back the most: "
                   + ", ".join(f"{name} (+{gain:.4f})" for name, gain in ranking[:10]))
    for line in execution_lines(result.execution):
        click.echo(line)
    if output:
        write_json(output, result.to_dict())
        click.echo(f"\nwrote {output}")
    write_html_report(html_path, result.to_dict(), "sensitivity")
