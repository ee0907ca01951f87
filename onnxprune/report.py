"""Readable tables and numbers for the CLI, and JSON reports."""

from __future__ import annotations

import json
import os
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


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A plain-text table; ``align`` is one 'l'/'r' per column (default: text left, numbers right)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if align is None:
        align = "".join(
            "r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(headers))
        )

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in cells)])


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
