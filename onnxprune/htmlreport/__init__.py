"""`--html`: one self-contained page (no network, no external files) drawn from a JSON report.

Every command's report is a dictionary; :func:`render` draws each section whose keys the
report has (pruning groups, refits, parity and layer-wise error, calibration ranges, stages,
sensitivity curves) as inline SVG plots with their tables, so the same function renders a live
run and a report saved earlier.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from html import escape

from onnxprune.htmlreport import sections
from onnxprune.io import atomic_write

KINDS = ("prune", "quantize", "check", "compress", "sensitivity")

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
.meta{color:#666;font-size:13px} table{border-collapse:collapse;font-size:12px;margin:8px 0;display:block;overflow-x:auto}
th,td{border:1px solid #e3e3e3;padding:3px 7px;text-align:left;vertical-align:top} th{background:#f6f6f6}
td.num{text-align:right;font-variant-numeric:tabular-nums} svg.chart{display:block;max-width:100%;height:auto;margin:8px 0}
.verdict{font-weight:600;font-size:15px}.ok{color:#1a7f37}.bad{color:#c62828}
"""

# Marks the page once the browser has laid out the charts: the count of charts with a drawn
# (non-empty) mark. The browser test reads it; a person never sees it.
_SCRIPT = """
window.addEventListener('load',function(){var n=0;document.querySelectorAll('svg.chart').forEach(function(s){
var b=s.getBBox(),m=s.querySelectorAll('.mark');var drawn=0;m.forEach(function(e){var r=e.getBBox();if(r.width>0||r.height>0)drawn++;});
if(b.width>0&&b.height>0&&drawn>0)n++;});document.body.setAttribute('data-charts-rendered',String(n));});
"""


def render(report: Mapping, kind: str, title: str | None = None) -> str:
    """The whole page for a ``kind`` report (one of KINDS)."""
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}; expected one of {', '.join(KINDS)}")
    parts = [part for part in _sections(report, kind) if part]
    if not parts:
        parts = ["<p>This report has nothing to plot.</p>"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subject = report.get("output") or report.get("candidate") or report.get("model") or ""
    heading = title or f"onnxprune {kind}"
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width\"><title>{escape(heading)}</title>"
        f"<style>{_CSS}</style></head><body data-charts-rendered=\"\"><h1>{escape(heading)}</h1>"
        f"<p class=\"meta\">{escape(str(subject))} · generated {stamp}</p>"
        + "".join(parts) + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def _sections(report: Mapping, kind: str) -> list[str]:
    if kind == "compress":
        check = report.get("check") or {}
        return [sections.stages(report), sections.summary(report.get("before"), _last_after(report), report.get("latency_ms")),
                sections.comparisons(check), sections.layerwise(check),
                *(part for stage in report.get("stages") or [] for part in _stage_details(stage))]
    if kind == "prune":
        return [sections.summary(report.get("before"), report.get("after"), report.get("latency_ms")),
                sections.prune_groups(report), sections.reconstruction(report)]
    if kind == "quantize":
        return [sections.quantize_summary(report), sections.calibration_ranges(report)]
    if kind == "check":
        return [sections.comparisons(report), sections.layerwise(report)]
    return [sections.sensitivity(report)]


def _stage_details(stage: Mapping) -> list[str]:
    """compress: the prune and quantize details (their size summaries are in the stage chart)."""
    details = stage.get("report") or {}
    if stage.get("name") == "prune":
        return [sections.prune_groups(details), sections.reconstruction(details)]
    if stage.get("name") == "quantize":
        return [sections.calibration_ranges(details)]
    return []


def _last_after(report: Mapping) -> Mapping | None:
    stages = report.get("stages") or []
    return stages[-1].get("after") if stages else None


def write_html(path: str | os.PathLike, report: Mapping, kind: str, title: str | None = None) -> None:
    """Render and write atomically (never a half-written page)."""
    page = render(report, kind, title)
    with atomic_write(path) as handle:
        handle.write(page)
