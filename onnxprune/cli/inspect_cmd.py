"""`onnxprune inspect`."""

from __future__ import annotations

import click

from onnxprune import api
from onnxprune.cli._common import STDOUT_NAMES, echo, input_shape_option, write_report
from onnxprune.io import check_output_path
from onnxprune.report import REPORT_SCHEMA_VERSION, human, table


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option
@click.option("--json", "report_path", metavar="[PATH|-]", is_flag=False, flag_value="-",
              type=click.Path(dir_okay=False, allow_dash=True),
              help=f"Write the summary as JSON (schema_version {REPORT_SCHEMA_VERSION}) to PATH, or to "
                   "stdout ('-', or --json alone: then no table).")
@click.option("--layers/--no-layers", default=True, help="Show the per-layer MACs table.")
def inspect_cmd(model: str, report_path: str | None, layers: bool) -> None:
    """Show a model's inputs/outputs, op histogram, parameters, MACs and size."""
    if report_path and report_path not in STDOUT_NAMES:
        check_output_path(report_path, model)
    info = api.inspect(model)
    if report_path not in STDOUT_NAMES:  # the table, unless the JSON owns stdout
        echo(format_summary(info, layers))
    write_report(report_path, info)


def format_summary(info: dict, layers: bool = True) -> str:
    def sig(values):
        return [(v["name"], v["dtype"], "[" + ", ".join(map(str, v["shape"])) + "]") for v in values]

    parts = [
        f"model: {info.get('file', info['graph'])}  graph: {info['graph']}  "
        f"producer: {info['producer'] or '?'}  opsets: "
        + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in info["opsets"].items()),
        "",
        table(["input", "dtype", "shape"], sig(info["inputs"])),
        "",
        table(["output", "dtype", "shape"], sig(info["outputs"])),
        "",
        f"nodes: {info['nodes']}   parameters: {info['parameters']:,} "
        f"({human(info['weights_bytes'], 'B')})   MACs: {human(info['macs'])}"
        + (f"   file: {human(info['file_bytes'], 'B')}" if "file_bytes" in info else ""),
        "",
        table(["op", "count"], list(info["ops"].items())),
    ]
    if info.get("macs_note"):
        parts.insert(parts.index("", 6), f"note: MACs with {info['macs_note']}")
    if layers and info["layers"]:
        total = max(info["macs"], 1)
        rows = [
            (layer["node"], layer["op_type"], human(layer["macs"]), f"{layer['macs'] / total:.1%}")
            for layer in info["layers"]
        ]
        parts += ["", table(["layer", "op", "MACs", "share"], rows, align="llrr")]
    return "\n".join(parts)
