"""Static checks as tests, so that every landing is gated by them: ruff and mypy.

ruff runs the rule set configured in pyproject.toml (E, F, I, B, UP: pycodestyle, pyflakes,
import order, bugbear, pyupgrade) over onnxprune/, tests/ and bench/; mypy checks the modules
pyproject.toml opts in, strictly under onnxprune/passes/.
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
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "onnxprune", "tests", "bench"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy():
    """mypy with the configuration in pyproject.toml: strict on the IR passes it checks."""
    if subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode:
        pytest.fail("mypy is not installed: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", "/dev/null"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _loaded_after(statement: str, before: str = "") -> set[str]:
    """Modules a fresh interpreter loads for ``statement`` (after ``before``)."""
    code = (f"import sys\n{before}\nbase = set(sys.modules)\n{statement}\n"
            "print('\\n'.join(sorted(set(sys.modules) - base)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_onnxprune_loads_neither_onnxruntime_nor_the_stages():
    loaded = _loaded_after("import onnxprune")
    assert not {m for m in loaded if m.split(".")[0] in ("onnxruntime", "onnxscript", "torch")}
    assert {m for m in loaded if m.startswith("onnxprune")} == {"onnxprune"}


def test_passes_base_stays_light():
    """An IR pass author pays for onnx-ir and numpy, plus a handful of our modules."""
    loaded = _loaded_after("import onnxprune.passes.base", before="import numpy, onnx_ir")
    ours = {m for m in loaded if m.startswith("onnxprune")}
    assert ours == {"onnxprune", "onnxprune.errors", "onnxprune.graphutils", "onnxprune.passes",
                    "onnxprune.passes.base"}
    assert not {m for m in loaded if m.split(".")[0] in ("onnxruntime", "onnxscript", "tqdm", "click")}


def test_lazy_names_resolve_as_before():
    import onnxprune
    from onnxprune.compress import STAGES  # loading the submodule keeps onnxprune.compress the function
    from onnxprune.passes import PASSES, FoldBatchNorm

    assert STAGES and onnxprune.compress is sys.modules["onnxprune.compress"].compress
    assert onnxprune.prune.__module__ == "onnxprune.api.prune_api"
    assert PASSES["fold-batchnorm"] is FoldBatchNorm
    for name in onnxprune.__all__:
        assert getattr(onnxprune, name) is not None
