"""What every command shares: error handling, exit codes, output helpers."""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from onnxprune import profiling, shapes
from onnxprune.distributed import make_executor, report_lines
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.io import check_output_path, same_file
from onnxprune.report import REPORT_SCHEMA_VERSION, change, human, to_json, write_json

EXIT_INTERNAL = 3  # a bug in onnxprune; user errors exit with their OnnxPruneError.exit_code


class Group(click.Group):
    """A click group that turns our errors into one line on stderr and an exit code.

    User errors exit 2 (parity failures 1) without a traceback; a bug exits 3 and points at
    ``--debug``, which shows the traceback instead.
    """

    GLOBAL_FLAGS = ("--debug", "-q", "--quiet")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``--debug`` / ``-q`` work anywhere on the line, not only before the subcommand."""
        if "--" in args:  # everything after '--' is an argument
            cut = args.index("--")
            head, tail = args[:cut], args[cut:]
        else:
            head, tail = args, []
        flags = [a for a in head if a in self.GLOBAL_FLAGS]
        rest = [a for a in head if a not in self.GLOBAL_FLAGS]
        return super().parse_args(ctx, flags + rest + tail)

    def invoke(self, ctx: click.Context):
        debug = ctx.params.get("debug", False)
        _quiet_libraries(debug)
        try:
            with profiling.record() as profile:
                try:
                    return super().invoke(ctx)
                finally:
                    if ctx.params.get("profile"):
                        click.echo(profile.render(), err=True)
        except OnnxPruneError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `onnxprune inspect m.onnx | head`: the reader left; stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug: say so plainly
            if debug:
                raise
            click.echo(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)


def _quiet_libraries(debug: bool) -> None:
    level = logging.DEBUG if debug else logging.ERROR
    for name in ("onnx_ir", "onnxscript", "onnxruntime"):
        logging.getLogger(name).setLevel(level)
    if debug:  # our own debug lines (why a pass left a node alone) go to stderr
        logging.basicConfig(format="%(name)s: %(message)s", stream=sys.stderr)
        logging.getLogger("onnxprune").setLevel(logging.DEBUG)
    else:
        warnings.filterwarnings("ignore")


STDOUT_NAMES = ("-", "/dev/stdout")
_JSON_TO_STDOUT = "onnxprune.json_to_stdout"


def _route_tables(ctx: click.Context, param, value):
    if value in STDOUT_NAMES:  # the JSON owns stdout: tables and notes go to stderr
        ctx.find_root().meta[_JSON_TO_STDOUT] = True
    return value


def json_option(*aliases: str):
    """``--json PATH|-``, one convention for every command (``-``: stdout, tables to stderr)."""
    return click.option(
        "--json", *aliases, "report_path", metavar="PATH|-", callback=_route_tables,
        type=click.Path(dir_okay=False, allow_dash=True), expose_value=True,
        help=f"Write the JSON report (schema_version {REPORT_SCHEMA_VERSION}) to PATH; '-' writes it "
             "to stdout and the tables to stderr.")


def echo(text: str = "") -> None:
    """Print a table or message: stdout, or stderr when the JSON report goes to stdout."""
    ctx = click.get_current_context(silent=True)
    click.echo(text, err=bool(ctx and ctx.find_root().meta.get(_JSON_TO_STDOUT)))


def write_report(path: str | None, data: Mapping) -> None:
    """The JSON report to ``path`` (atomically) or to stdout, with ``schema_version`` first."""
    if not path:
        return
    data = {"schema_version": REPORT_SCHEMA_VERSION, **data}
    if path in STDOUT_NAMES:
        click.echo(to_json(data))
    else:
        write_json(path, data)


def html_option(command):
    """``--html PATH``: the report as one self-contained page with plots."""
    return click.option("--html", "html_path", type=click.Path(dir_okay=False),
                        help="Also write the report as one self-contained HTML page with plots.")(command)


def write_html_report(path: str | None, report: dict, kind: str) -> None:
    if path:
        from onnxprune.htmlreport import write_html  # only when asked for

        write_html(path, report, kind)


def _enter_input_shapes(ctx: click.Context, param, value) -> None:
    if value:  # active while the command runs (ctx closes after it)
        ctx.with_resource(shapes.input_shapes(shapes.parse(value)))


input_shape_option = click.option(
    "--input-shape", multiple=True, metavar="NAME:D0,D1,...", expose_value=False, callback=_enter_input_shapes,
    help="Shape of an input with dynamic dims, for runs without data (repeatable).",
)


def check_side_outputs(model: str, output: str | None, *paths: str | None) -> None:
    """Reports and tables: never onto the input model, the output model or each other (checked
    before any work, so a clash costs nothing)."""
    taken = [Path(output)] if output else []
    for path in (p for p in paths if p and p not in STDOUT_NAMES):
        check_output_path(path, model)
        if any(same_file(Path(path), other) for other in taken):
            raise UsageError(f"{path} is given for two outputs; choose distinct paths")
        taken.append(Path(path))


def executor_options(command):
    """--workers N / --ray ADDRESS, handed to the command as one ``executor`` argument (None:
    the single-process path). Connecting to Ray happens here, before any work."""

    @functools.wraps(command)
    def wrapper(*args, workers=None, ray=None, **kwargs):
        return command(*args, executor=make_executor(workers, ray), **kwargs)

    wrapper = click.option("--ray", metavar="ADDRESS",
                           help="Run on a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (pip install 'onnxprune[ray]').")(wrapper)
    return click.option("--workers", type=int, metavar="N",
                        help="Worker processes (with --ray: units running at once; default: the cluster's CPUs).")(wrapper)


execution_lines = report_lines


def show_progress(ctx: click.Context) -> bool:
    """Progress bars go to stderr, only on a terminal and unless --quiet."""
    root = ctx.find_root()
    return not root.params.get("quiet", False) and sys.stderr.isatty()


def with_profile(report: dict) -> dict:
    """A JSON report with the command's timing block so far (seconds and peak MB per phase)."""
    profile = profiling.current()
    return {**report, "profile": profile.to_dict()} if profile is not None else report


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def split_lists(texts: Iterable[str]) -> list[str]:
    """A repeatable option whose values may each be a comma list, as one flat list."""
    return [part for text in texts for part in split_list(text)]


# How the commands name and show the figures of stats.size_summary, in table order.
SIZE_COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "nodes": ("nodes", str),
    "parameters": ("parameters", "{:,}".format),
    "macs": ("MACs", human),
    "weights_bytes": ("weights", lambda n: human(n, "B")),
}


def size_row(key: str, before: Mapping, after: Mapping) -> tuple[str, str, str, str]:
    """A (figure, before, after, change) table row for one figure of stats.size_summary."""
    label, show = SIZE_COLUMNS[key]
    return label, show(before[key]), show(after[key]), change(before[key], after[key])


def provider_option_flags(command):
    """``--provider-option PROVIDER:KEY=VALUE`` (repeatable) and ``--provider-options FILE``."""
    command = click.option("--provider-options", "provider_options_file", type=click.Path(dir_okay=False),
                           help="Provider options file, JSON or TOML: {provider: {key: value}}.")(command)
    return click.option("--provider-option", "provider_option", multiple=True, metavar="PROVIDER:KEY=VALUE",
                        help="An execution provider option, e.g. openvino:PRECISION=FP32 or "
                             "openvino:INFERENCE_PRECISION_HINT=f32 (repeatable; wins over the file).")(command)


def provider_options(specs: Iterable[str], file: str | None) -> dict:
    """{full provider name: {key: value}} from the flags of :func:`provider_option_flags`."""
    from onnxprune import provider_options as po

    return po.merge(po.load_file(file) if file else None, po.parse_specs(specs))
