"""Tables that fit the terminal, progress that tells how far (issue 12, item 13)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune import report
from onnxprune.cli import cli
from onnxprune.report import table

DIGITS = Path(__file__).resolve().parent.parent / "models" / "digits"
MODEL, CALIB, EVAL = DIGITS / "digits.onnx", DIGITS / "calib.npz", DIGITS / "eval.npz"


def table_lines(text: str) -> list[str]:
    """Every line of every table (header, rule, rows) in a command's output."""
    lines, found = text.splitlines(), []
    for i, line in enumerate(lines):
        if line and set(line) <= {"-", " "} and i > 0:
            end = next((j for j in range(i + 1, len(lines))
                        if not lines[j].strip() or lines[j].startswith(("note:", "(", "layers reading"))), len(lines))
            found += lines[i - 1 : end]
    return found


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("args", [
    ["prune", MODEL, "--dry-run", "--ratio", "0.3", "--group-ratio", "/block/conv2/Conv=0.5", "--all-groups"],
    ["check", MODEL, MODEL, "--data", EVAL, "--providers", "cpu", "--layerwise"],
    ["inspect", MODEL],
])
def test_tables_fit_the_terminal_width(args, columns, monkeypatch):
    monkeypatch.setattr(report, "terminal_width", lambda: columns)  # CliRunner's stdout is no terminal
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    lines = table_lines(result.output)
    assert lines and max(len(line) for line in lines) <= columns, "\n".join(lines)


def test_tables_cut_text_not_numbers_and_keep_whole_lines_off_a_terminal():
    rows = [("a-rather-long-layer-name", 123456789, "a long note that does not fit at all")]
    cut = table(["layer", "MACs", "note"], rows, width=50)
    assert max(map(len, cut.splitlines())) <= 50 and "123456789" in cut and "…" in cut
    assert cut.splitlines()[2].startswith("a-rather-long-layer-name  ")  # the right-most text goes first
    narrow = table(["layer", "MACs", "note"], rows, width=34)
    assert max(map(len, narrow.splitlines())) <= 34 and "123456789" in narrow
    whole = table(["layer", "MACs", "note"], rows, width=1000)
    assert "a long note that does not fit at all" in whole


def test_terminal_width_only_for_a_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # pytest-xdist sets it in its workers: not a terminal
    assert report.terminal_width() is None


def test_prune_progress_counts_steps_and_reconstruct_batches(capsys):
    onnxprune.prune(MODEL, ratio=0.3, calib=CALIB, calib_limit=64, progress=True, latency_runs=0)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "prune: step 3/4, rewrite" in err and "%" not in "".join(re.findall(r"prune: [^\n]*", err))
    assert re.search(r"reconstruct: +\d+%\|[^\n]*\| \d+/2 ", err), err  # 64 samples, batches of 32
