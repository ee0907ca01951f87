"""Static checks as tests, so that every landing is gated by them: ruff and mypy.

The gate runs ruff's pyflakes and syntax rules (F, E9: undefined names, unused imports...) over
onnxprune/, tests/ and bench/. The full rule set in pyproject.toml (E, F, I, B, UP) is clean at
the commit that introduced it; branches in flight at that time still add long lines and
unsorted imports, so it becomes the gate (drop ``--select``) once they have landed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff():
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F,E9",
                             "onnxprune", "tests", "bench"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy():
    """mypy with the configuration in pyproject.toml: strict on the IR passes it checks."""
    if subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode:
        pytest.fail("mypy is not installed: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", "/dev/null"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
