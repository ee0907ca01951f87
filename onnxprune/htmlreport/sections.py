"""One function per kind of content in a JSON report, each returning HTML (plots and tables).

They read the same dictionaries the commands write with ``--report``/``--json``, so a saved
report renders the same as a live run, and a key a report lacks is simply a section not drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

from onnxprune.htmlreport.svg import bar_chart, line_chart


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            text = "n/a" if not math.isfinite(value) else f"{value:.4g}"
            return f'<td class="num">{text}</td>'
        if isinstance(value, int) and not isinstance(value, bool):
            return f'<td class="num">{value:,}</td>'
        return f"<td>{escape('' if value is None else str(value))}</td>"

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{''.join(p for p in parts if p)}</section>"


def _num(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def summary(before: Mapping | None, after: Mapping | None, latency: Mapping | None = None) -> str:
    """Size, MACs, parameters and latency before → after, as bars and a table."""
    if not before or not after:
        return ""
    keys = [k for k in ("weights_bytes", "parameters", "macs", "nodes") if k in before and k in after]
    rows = [[k, before[k], after[k], _change(before[k], after[k])] for k in keys]
    if latency and latency.get("before") is not None and latency.get("after") is not None:
        rows.append(["latency ms", float(latency["before"]), float(latency["after"]),
                     _change(latency["before"], latency["after"])])
    shares = {"after / before": [_num(r[2]) / _num(r[1]) if _num(r[1]) else math.nan for r in rows]}
    chart = bar_chart("What is left (after / before)", [r[0] for r in rows], shares, "share")
    return section("Size and speed", chart, html_table(["", "before", "after", "change"], rows))


def _change(before: float, after: float) -> str:
    return f"{(after - before) / before * 100:+.1f}%" if before else ""


def prune_groups(report: Mapping) -> str:
    groups = report.get("groups") or []
    if not groups:
        return ""
    pruned = [g for g in groups if g.get("status") == "pruned"] or groups
    labels = [str(g.get("name") or f"group{g.get('id')}") for g in pruned]
    chart = bar_chart("Channels per group: before and after", labels,
                      {"before": [_num(g.get("channels")) for g in pruned],
                       "after": [_num(g.get("kept")) for g in pruned]}, "channels")
    rows = []
    for g in groups:
        rows.append([
            g.get("name") or f"group{g.get('id')}", g.get("channels"), g.get("kept"), g.get("status"),
            g.get("reason") or "", ", ".join(map(str, g.get("members") or [])),
            ", ".join(map(str, g.get("readers") or [])), _indices(g.get("removed") or []),
        ])
    table = html_table(["group", "channels", "kept", "status", "reason", "members", "readers", "removed channels"], rows)
    return section("Pruning: channels per group", chart, table)


def _indices(values: Sequence[int]) -> str:
    values = list(values)
    text = ", ".join(str(v) for v in values[:64])
    return text + (f" … ({len(values)} in all)" if len(values) > 64 else "")


def reconstruction(report: Mapping) -> str:
    refits = report.get("reconstruction") or []
    if not refits:
        return ""
    labels = [str(r.get("layer")) for r in refits]
    chart = bar_chart("Relative output error of each refit layer", labels,
                      {"before refit": [_num(r.get("error_before")) for r in refits],
                       "after refit": [_num(r.get("error_after")) for r in refits]}, "error")
    rows = [[r.get("layer"), r.get("op"), r.get("status"), _num(r.get("error_before")),
             _num(r.get("error_after")), r.get("note") or ""] for r in refits]
    return section("Refit of the next layers", chart,
                   html_table(["layer", "op", "status", "error before", "error after", "note"], rows))


def comparisons(result: Mapping) -> str:
    """Parity: one row per (comparison, output), with the judged statistics."""
    rows = []
    for comp in result.get("comparisons") or []:
        for output, stats in (comp.get("outputs") or {}).items():
            rows.append([comp.get("name"), output, "pass" if stats.get("passed") else "FAIL",
                         _num(stats.get("max_abs")), _num(stats.get("cosine")), _num(stats.get("sqnr_db")),
                         _num(stats.get("top1_agreement")), _num(stats.get("accuracy_reference")),
                         _num(stats.get("accuracy_candidate")), "; ".join(stats.get("failures") or [])])
    if not rows:
        return ""
    verdict = "parity holds" if result.get("passed") else "parity FAILED"
    headline = f'<p class="verdict {"ok" if result.get("passed") else "bad"}">{verdict}</p>'
    failures = "".join(f"<li>{escape(str(f))}</li>" for f in result.get("failures") or [])
    table = html_table(["comparison", "output", "result", "max abs", "cosine", "SQNR dB", "top-1 agree",
                        "acc. ref", "acc. cand", "failures"], rows)
    return section("Parity", headline, f"<ul>{failures}</ul>" if failures else "", table)


def _by_x(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """A curve's points sorted by x (a stable sort: equal x keep their order)."""
    points = sorted(zip(xs, ys), key=lambda p: p[0])
    return [x for x, _ in points], [y for _, y in points]


def layerwise(result: Mapping) -> str:
    lw = result.get("layerwise") or {}
    tensors = [t for t in lw.get("tensors", []) if t.get("status") == "compared"]
    if not tensors:
        return ""
    names = [str(t.get("name")) for t in tensors]
    xs = list(range(len(tensors)))
    sqnr = line_chart("SQNR per tensor, in graph order", {"SQNR dB": (xs, [_num(t.get("sqnr_db")) for t in tensors])},
                      y_label="dB", x_names=names)
    cosine = line_chart("Cosine similarity per tensor", {"cosine": (xs, [_num(t.get("cosine")) for t in tensors])},
                        y_label="cosine", x_names=names)
    rows = [[t.get("name"), t.get("op_type"), "pass" if t.get("passed") else "FAIL", _num(t.get("max_abs")),
             _num(t.get("cosine")), _num(t.get("sqnr_db"))] for t in tensors]
    first = lw.get("first_failures") or []
    note = f"<p>first tensors out of tolerance: {escape(', '.join(map(str, first)))}</p>" if first else ""
    return section("Layer-wise error", note, sqnr, cosine,
                   html_table(["tensor", "op", "result", "max abs", "cosine", "SQNR dB"], rows))


def calibration_ranges(report: Mapping) -> str:
    ranges = report.get("ranges") or {}
    if not ranges:
        return ""
    names = list(ranges)
    xs = list(range(len(names)))
    chart = line_chart("Calibrated range per tensor", {
        "min": (xs, [_num(ranges[n][0]) for n in names]), "max": (xs, [_num(ranges[n][1]) for n in names])},
        y_label="value", x_names=names)
    rows = [[n, _num(ranges[n][0]), _num(ranges[n][1])] for n in names]
    return section("Calibration ranges", chart, html_table(["tensor", "min", "max"], rows))


def quantize_summary(report: Mapping) -> str:
    if "nodes_int8" not in report:
        return ""
    config = report.get("config") or {}
    calib = report.get("calibration") or {}
    rows: list[list[object]] = [["method", calib.get("method")], ["samples", calib.get("samples")],
            ["activation type", config.get("activation_type")], ["per-channel weights", config.get("per_channel")],
            ["nodes in INT8", report.get("nodes_int8")]]
    rows += [[f"left in float: {op}", str(why)] for op, why in (report.get("declined") or {}).items()]
    size = {"before": report.get("size_before"), "after": report.get("size_after")}
    latency = {"before": report.get("latency_before_ms"), "after": report.get("latency_after_ms")}
    return section("Quantization", html_table(["", ""], rows)) + summary(
        {"weights_bytes": size["before"]}, {"weights_bytes": size["after"]}, latency)


def stages(report: Mapping) -> str:
    """compress: what each stage left, and the check at the end."""
    items = report.get("stages") or []
    if not items or not report.get("before"):
        return ""
    labels = ["original", *[str(s.get("name")) for s in items]]
    points = [report["before"], *[s.get("after") or {} for s in items]]
    series = {k: [_num(p.get(k)) / _num(points[0].get(k)) if _num(points[0].get(k)) else math.nan for p in points]
              for k in ("weights_bytes", "parameters", "macs")}
    chart = bar_chart("Share of the original after each stage", labels, series, "share")
    rows = [[label, p.get("weights_bytes"), p.get("parameters"), p.get("macs"), _num(s.get("seconds")) if s else math.nan]
            for label, p, s in zip(labels, points, [None, *items], strict=True)]
    metric_rows = [[str(s.get("name")), *(_num((s.get("metric") or {}).get(k)) for k in ("accuracy", "top1_agreement", "cosine"))]
                   for s in items if s.get("metric")]
    metrics = html_table(["stage", "accuracy", "top-1 agreement", "cosine"], metric_rows) if metric_rows else ""
    return section("Stages", chart, html_table(["stage", "weights bytes", "parameters", "MACs", "seconds"], rows), metrics)


def sensitivity(report: Mapping) -> str:
    """`onnxprune sensitivity`: per group, the metric against the share of channels removed;
    per quantized node, the metric with that node kept in float."""
    units = report.get("units") or []
    baseline = report.get("baseline") or {}
    key = "accuracy" if baseline.get("accuracy") is not None else "fidelity"
    label = "accuracy" if key == "accuracy" else str(baseline.get("metric", "fidelity"))
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for unit in units:
        if unit.get("kind") == "prune":
            xs, ys = curves.setdefault(str(unit.get("name")), ([0.0], [_num(baseline.get(key))]))
            xs.append(_num(unit.get("ratio")))
            ys.append(_num(unit.get(key)))
    parts = []
    if curves:
        ordered = {name: _by_x(*xy) for name, xy in curves.items()}
        parts.append(line_chart(f"Sensitivity: {label} against the share of a group's channels removed",
                                dict(list(ordered.items())[:24]), x_label="share of channels removed", y_label=label))
    nodes = [u for u in units if u.get("kind") == "quantize" and u.get("name")]
    if nodes:
        parts.append(bar_chart(f"{label} of the INT8 model with one node kept in float", [str(u["name"]) for u in nodes],
                               {label: [_num(u.get(key)) for u in nodes]}, label))
    if not parts:
        return ""
    rows = [[u.get("kind"), u.get("name") or "(all quantized)", _num(u.get("ratio")), _num(u.get("macs_removed")),
             _num(u.get("fidelity")), _num(u.get("accuracy"))] for u in units]
    return section("Sensitivity", *parts,
                   html_table(["unit", "group / node", "ratio", "MACs removed", "fidelity", "accuracy"], rows))
