"""The ``onnxprune`` command: a thin click layer over the Python API."""

from __future__ import annotations

import signal

import click

from onnxprune import __version__
from onnxprune.cli._common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxprune")
@click.option("--debug", is_flag=True, help="Show tracebacks and library logs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--profile", is_flag=True,
              help="Print seconds and peak memory per phase (load, clean-up, calibration...) to stderr.")
def cli(debug: bool, quiet: bool, profile: bool) -> None:
    """Compress trained ONNX models: clean up, prune channels, quantize, check parity.

    Exit codes: 0 success, 1 parity check failed, 2 bad input or usage, 3 internal error.
    """


from onnxprune.cli.check_cmd import check_cmd  # noqa: E402
from onnxprune.cli.compress_cmd import compress_cmd  # noqa: E402
from onnxprune.cli.inspect_cmd import inspect_cmd  # noqa: E402
from onnxprune.cli.optimize_cmd import optimize_cmd  # noqa: E402
from onnxprune.cli.prune_cmd import prune_cmd  # noqa: E402
from onnxprune.cli.quantize_cmd import quantize_cmd  # noqa: E402
from onnxprune.cli.sensitivity_cmd import sensitivity_cmd  # noqa: E402

for _command in (inspect_cmd, optimize_cmd, prune_cmd, quantize_cmd, check_cmd, compress_cmd, sensitivity_cmd):
    cli.add_command(_command)


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt  # `kill`/CI timeouts clean up like Ctrl-C: no partial output, no temp files


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    cli(prog_name="onnxprune")
