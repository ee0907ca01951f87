"""Readable tables and numbers for the CLI, and JSON reports."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onnxprune.io import atomic_write

# Every JSON report (`--json`) starts with this; keys are only ever added, a change of
# meaning bumps it.
REPORT_SCHEMA_VERSION = 1


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'; bytes with unit='B' -> '1.18 MiB'."""
    if unit == "B":
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(n) < 1024 or suffix == "TiB":
                return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.2f} {suffix}"
            n /= 1024
    for suffix in ("", " K", " M", " G", " T"):
        if abs(n) < 1000 or suffix == " T":
            return f"{n:.0f}{suffix}" if suffix == "" else f"{n:.2f}{suffix}"
        n /= 1000
    raise AssertionError("unreachable")


def change(before: float, after: float) -> str:
    """'-12.3%' style relative change."""
    if before == 0:
        return "" if after == 0 else "+inf"
    return f"{(after - before) / before * 100:+.1f}%"


MIN_TEXT_COLUMN = 10  # a text column is never cut narrower than this


def terminal_width() -> int | None:
    """Columns of the terminal the tables go to (``COLUMNS`` wins), None when stdout is not a
    terminal: a file or a pipe gets whole lines (and test runners set COLUMNS for no terminal)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None,
          width: int | None = None, optional: Sequence[int] = ()) -> str:
    """A plain-text table; ``align`` is one 'l'/'r' per column (default: text left, numbers right).
    Wider than ``width`` (default: the terminal's; 0: no limit), text columns are cut with '…',
    the right-most first (numbers never are), so lines do not wrap; the JSON reports keep everything.
    Still too wide, the ``optional`` columns are left out, in that order, with a line saying so."""
    limit = width if width is not None else terminal_width()
    if limit and optional:
        whole = table(headers, rows, align, width=0)
        if max(map(len, whole.splitlines())) > limit:
            dropped = []
            for column in optional:
                dropped.append(column)
                keep = [i for i in range(len(headers)) if i not in dropped]
                text = table([headers[i] for i in keep], [[r[i] for i in keep] for r in rows],
                             align and "".join(align[i] for i in keep), width=0)
                if max(map(len, text.splitlines())) <= limit:
                    break
            keep = [i for i in range(len(headers)) if i not in dropped]
            names = ", ".join(headers[i] for i in dropped)
            return (table([headers[i] for i in keep], [[r[i] for i in keep] for r in rows],
                          align and "".join(align[i] for i in keep), width=limit)
                    + f"\n({names} left out to fit the terminal: the JSON report has them)")
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if align is None:
        align = "".join(
            "r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(headers))
        )
    if limit:  # 0: whole lines
        widths = _fit(widths, align, limit)
        cells = [[_cut(c, w) for c, w in zip(row, widths)] for row in cells]
        headers = [_cut(h, w) for h, w in zip(headers, widths)]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in cells)])


def _fit(widths: list[int], align: str, limit: int) -> list[int]:
    """Narrow text ('l') columns, the right-most first (notes before names), until the table
    fits ``limit`` columns or no text column can give more."""
    widths = list(widths)
    for i in reversed([i for i, a in enumerate(align) if a == "l"]):
        excess = sum(widths) + 2 * (len(widths) - 1) - limit
        if excess <= 0:
            break
        widths[i] = max(min(MIN_TEXT_COLUMN, widths[i]), widths[i] - excess)
    return widths


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def to_json(data: object) -> str:
    return json.dumps(data, indent=2, default=_default, allow_nan=True)


def write_json(path: str | os.PathLike, data: object) -> None:
    """Write a JSON report atomically."""
    with atomic_write(path) as handle:
        handle.write(to_json(data) + "\n")


def short_repr(obj) -> str:
    """A result's repr that fits a line or two: models and long lists summarised (the default
    dataclass repr of a result printed its whole graph, 65 KB for the sample model)."""
    import dataclasses

    import onnx_ir as ir

    def show(value) -> str:
        if isinstance(value, ir.Model):
            return f"<model {value.graph.name!r}: {len(value.graph)} nodes>"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return f"{type(value).__name__}(...)"
        if isinstance(value, (list, tuple)) and len(value) > 3:
            return f"[{len(value)} items]"
        if isinstance(value, dict) and len(value) > 3:
            return f"{{{len(value)} keys}}"
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."

    fields = ", ".join(f"{f.name}={show(getattr(obj, f.name))}" for f in dataclasses.fields(obj) if f.repr)
    return f"{type(obj).__name__}({fields})"
