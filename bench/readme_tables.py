"""Rewrite the README's measured tables and figures from the JSON under bench/results/.

    python bench/readme_tables.py           # rewrite README.md in place
    python bench/readme_tables.py --check   # exit 1, naming the regions, if README.md differs

In README.md, a region ``<!-- table:NAME -->`` ... ``<!-- /table -->`` (markers on lines of
their own) is replaced by the table in ``bench/results/NAME.json``, and an inline
``<!-- figure:NAME.KEY -->`` ... ``<!-- /figure -->`` by that file's ``figures[KEY]``. The
bench scripts write those files (``common.write_result``):

    {"command": "python bench/x.py ...", "table": {"columns": [...], "rows": [[...], ...],
     "align": "lrr"}, "figures": {"KEY": "0.51 s"}, "data": {...raw measurements...}}

Cells are strings formatted by the bench script; ``align`` (optional) has one of l/r/c per
column. A region whose JSON has no ``table`` key is left as it is (a script that renders its
own table into the README). tests/test_readme_tables.py fails when README.md differs from what this script writes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"

TABLE = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)
FIGURE = re.compile(r"(<!-- figure:([\w-]+)\.([\w-]+) -->)(.*?)(<!-- /figure -->)", re.S)
RULE = {"l": "---", "r": "---:", "c": ":---:"}


def load(name: str, results: Path = RESULTS) -> dict:
    path = results / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"README refers to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}, "
                         "which does not exist: run the bench script that writes it")
    return json.loads(path.read_text())


def render_table(spec: dict) -> str:
    """A GitHub markdown table from {"columns", "rows", "align"}."""
    columns, rows = spec["columns"], spec["rows"]
    align = spec.get("align") or "l" * len(columns)
    if len(align) != len(columns) or any(len(r) != len(columns) for r in rows):
        raise ValueError(f"table with {len(columns)} columns has a row or an align of another length")
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(RULE[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render(text: str, results: Path = RESULTS) -> str:
    """``text`` with every marked region rewritten from its JSON."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = load(name, results)
        return cache[name]

    def table(m: re.Match) -> str:
        spec = get(m.group(2)).get("table")
        if spec is None:  # a JSON of another shape, rendered by its own script: left as it is
            return m.group(0)
        return m.group(1) + render_table(spec) + m.group(4)

    def figure(m: re.Match) -> str:
        figures = get(m.group(2)).get("figures", {})
        if m.group(3) not in figures:
            raise SystemExit(f"bench/results/{m.group(2)}.json has no figure '{m.group(3)}'")
        return m.group(1) + str(figures[m.group(3)]) + m.group(5)

    return FIGURE.sub(figure, TABLE.sub(table, text))


def regions(text: str) -> list[str]:
    return [m.group(2) for m in TABLE.finditer(text)] + [f"{m.group(2)}.{m.group(3)}" for m in FIGURE.finditer(text)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if README.md differs")
    args = parser.parse_args()
    text = README.read_text()
    new = render(text)
    if args.check:
        stale = [r for r in regions(text) if render_region(text, r) != render_region(new, r)]
        if new != text:
            print(f"README.md differs from bench/results/ in: {', '.join(stale) or 'marked regions'}; "
                  "run python bench/readme_tables.py", file=sys.stderr)
            sys.exit(1)
        return
    if new != text:
        README.write_text(new)
    print(f"README.md: {len(regions(text))} regions from {RESULTS.relative_to(ROOT)}/")


def render_region(text: str, region: str) -> str | None:
    """The content of one region of ``text`` (for naming what differs)."""
    for m in TABLE.finditer(text):
        if m.group(2) == region:
            return m.group(3)
    for m in FIGURE.finditer(text):
        if f"{m.group(2)}.{m.group(3)}" == region:
            return m.group(4)
    return None


if __name__ == "__main__":
    main()
