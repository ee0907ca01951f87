"""The README's examples run as written (issue 12).

A fenced block right after a ``<!-- test: run ... -->`` line is executable: its ``onnxprune``
lines (bash) or the block itself (python) run in a folder holding the sample model under the
names the README uses (model.onnx, calib.npz, eval.npz). ``check --help``'s examples run too.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxprune.cli import cli
from onnxprune.cli.check_cmd import EPILOG as CHECK_EXAMPLES

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits"
MARKER = "<!-- test: run"


def marked_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block right after a marker line."""
    return [(m.group(1), m.group(2)) for m in
            re.finditer(re.escape(MARKER) + r"[^\n]*-->\n```(\w+)\n(.*?)\n```", text, re.S)]


def command_lines(code: str) -> list[list[str]]:
    """The ``onnxprune`` command lines of a bash block (continuations joined, comments cut)."""
    joined = code.replace("\\\n", " ")
    return [shlex.split(line, comments=True)[1:] for line in joined.splitlines()
            if line.strip().startswith("onnxprune ")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("readme")
    for source, name in (("digits.onnx", "model.onnx"), ("calib.npz", "calib.npz"), ("eval.npz", "eval.npz")):
        shutil.copy(DIGITS / source, tmp / name)
    return tmp


def run_in(folder: Path, args: list[str], monkeypatch) -> None:
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, f"onnxprune {shlex.join(args)}\n{result.output}"


def test_readme_marks_the_commands_and_the_python_api_block():
    blocks = marked_blocks((ROOT / "README.md").read_text())
    assert [lang for lang, _ in blocks] == ["bash", "python"]
    assert len(command_lines(blocks[0][1])) >= 7


def test_readme_examples_run_as_written(folder, monkeypatch):
    blocks = marked_blocks((ROOT / "README.md").read_text())
    for lang, code in blocks:
        if lang == "bash":
            for args in command_lines(code):
                run_in(folder, args, monkeypatch)
        else:
            monkeypatch.chdir(folder)
            exec(compile(code, "README.md (Python API)", "exec"), {})
    for args in command_lines(CHECK_EXAMPLES):  # `check --help` examples, on what the README wrote
        if "--providers" not in args:  # those name hardware this machine may not have
            run_in(folder, args, monkeypatch)
