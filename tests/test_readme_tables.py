"""README figures come from bench/results/*.json, through bench/readme_tables.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "bench" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tables)

def test_readme_regenerates_byte_for_byte_from_bench_results():
    text = (ROOT / "README.md").read_text()
    assert readme_tables.regions(text), "README.md has no generated regions"
    assert readme_tables.render(text) == text, "README.md differs from bench/results/: run bench/readme_tables.py"


def test_a_stale_figure_is_caught(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({
        "table": {"columns": ["model", "time"], "rows": [["a", "1.0 s"]], "align": "lr"},
        "figures": {"time": "1.0 s"},
    }))
    fresh = "x\n<!-- table:t -->\n| model | time |\n|---|---:|\n| a | 1.0 s |\n<!-- /table -->\n" \
            "took <!-- figure:t.time -->1.0 s<!-- /figure -->.\n"
    assert readme_tables.render(fresh, tmp_path) == fresh
    assert readme_tables.render(fresh.replace("| a | 1.0 s |", "| a | 0.9 s |"), tmp_path) == fresh
    assert readme_tables.render(fresh.replace("1.0 s<!-- /figure", "0.5 s<!-- /figure"), tmp_path) == fresh
    foreign = "<!-- table:raw -->\n| kept |\n<!-- /table -->\n"
    (tmp_path / "raw.json").write_text(json.dumps({"rows": [{"a": 1}]}))
    assert readme_tables.render(foreign, tmp_path) == foreign
    with pytest.raises(SystemExit, match="missing.json"):
        readme_tables.render("<!-- table:missing -->\n<!-- /table -->", tmp_path)
    with pytest.raises(SystemExit, match="no figure 'nope'"):
        readme_tables.render("<!-- figure:t.nope --><!-- /figure -->", tmp_path)


def test_rows_of_another_length_are_refused():
    with pytest.raises(ValueError, match="another length"):
        readme_tables.render_table({"columns": ["a", "b"], "rows": [["1"]]})
