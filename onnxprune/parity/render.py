"""The human-readable report of a parity check (what ``onnxprune check`` prints)."""

from __future__ import annotations

import math

from onnxprune.distributed import report_lines
from onnxprune.report import table

LAYER_ROWS = 40  # layer-wise rows printed; the JSON report has them all


def _num(value, fmt: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, fmt)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _accuracy(o: dict) -> str:
    if o["accuracy_reference"] is None:
        return "-"
    return f"{o['accuracy_reference']:.2%} -> {o['accuracy_candidate']:.2%}"


def render(result) -> str:
    t = result.tolerances
    criteria = [f"preset {t.preset}"]
    if t.atol is not None or t.per_output_atol:
        criteria.append(f"atol {_num(t.atol, 'g')} rtol {t.rtol:g} stat {t.stat}")
    skipped = set(getattr(result, "unevaluated", ()))
    for key, label, value in (("min_cosine", "cosine >=", t.min_cosine), ("min_sqnr", "SQNR dB >=", t.min_sqnr),
                              ("min_top1", "top-1 >=", t.min_top1), ("min_topk", f"top-{t.top_k} >=", t.min_topk),
                              ("max_accuracy_drop", "accuracy drop <=", t.max_accuracy_drop)):
        if value is not None:
            criteria.append(f"{label} {value:g}" + (" (not evaluated)" if key in skipped else ""))
    d = result.data
    lines = [
        f"reference: {result.reference}",
        f"candidate: {result.candidate}",
        f"data: {d['source']}, {d['samples']} samples, batch {d['batch_size']}"
        + (", labelled" if d["labels"] else ""),
        f"providers: {_providers(result.providers)}",
        f"criteria: {'; '.join(criteria)}",
        "",
    ]
    rows = []
    for c in result.comparisons:
        for name, o in c["outputs"].items():
            status = ("ok" if o["passed"] else "FAIL") if c["judged"] else "(drift)"
            topk = "-" if o["top_k"] is None else f"{_pct(o['topk_agreement'])} (k={o['top_k']})"
            rows.append((c["name"], name, _num(o["max_abs"]), _num(o["mean_abs"]), _num(o["p99_abs"]),
                         _num(o["cosine"], ".6f"), _num(o["sqnr_db"], ".1f"), _pct(o["top1_agreement"]),
                         topk, _accuracy(o), status))
    lines.append(table(["comparison", "output", "max abs", "mean abs", "p99 abs", "cosine", "SQNR dB",
                        "top-1", "top-k", "accuracy", "status"], rows, align="llrrrrrrrll",
                       optional=[4, 3, 8, 7]))  # a narrow terminal keeps max abs, cosine, SQNR, accuracy
    if result.execution is not None:
        lines += ["", *report_lines(result.execution)]
    if result.layerwise is not None:
        lines += ["", *_layerwise(result.layerwise)]
    for provider, report in (result.layerwise_providers or {}).items():
        first = ", ".join(_where(r) for r in report["tensors"] if r["name"] in set(report["first_failures"]))
        lines.append(f"{provider} departs from {report['reference_provider']} (reference model, layer-wise) first at: "
                     + (first or "nowhere within the tolerance"))
    if result.notes:
        lines += ["", *(f"note: {n}" for n in result.notes)]
    lines.append("")
    if result.passed:
        lines.append("parity holds")
    else:
        lines += ["parity FAILED:", *(f"  {f}" for f in result.failures)]
    return "\n".join(lines)


def _providers(providers: dict) -> str:
    """'CPUExecutionProvider, OpenVINOExecutionProvider (93% of nodes; precision=FP32)'."""
    parts = []
    for name in providers["used"]:
        extra = []
        share = (providers.get("placement") or {}).get(name, {}).get("share")
        if share is not None and name != "CPUExecutionProvider":
            extra.append(f"{share:.0%} of nodes")
        options = (providers.get("options") or {}).get(name)
        if options:
            extra.append(", ".join(f"{k}={v}" for k, v in options.items()))
        parts.append(name + (f" ({'; '.join(extra)})" if extra else ""))
    return ", ".join(parts)


def _layerwise(report: dict) -> list[str]:
    first = set(report["first_failures"])
    rows = []
    for r in report["tensors"]:
        if r["status"] == "shape-differs":
            status = f"pruned {r['reference_shape']} -> {r['candidate_shape']}"
        else:
            status = "ok" if r["passed"] else ("FIRST FAIL" if r["name"] in first else "fail")
        rows.append((r["name"], r["op_type"], _num(r["max_abs"]), _num(r["cosine"], ".6f"),
                     _num(r["sqnr_db"], ".1f"), status))
    shown = rows
    if len(rows) > LAYER_ROWS:  # keep the first failures visible
        index = next((i for i, r in enumerate(report["tensors"]) if r["name"] in first), 0)
        start = max(0, min(index - LAYER_ROWS // 4, len(rows) - LAYER_ROWS))
        shown = rows[start : start + LAYER_ROWS]
    header = (f"layer-wise ({report['reference_provider']} vs {report['candidate_provider']}; "
              f"{report['matched']} tensors matched, {report['unmatched']} not found in the candidate):")
    out = [header, table(["tensor", "op", "max abs", "cosine", "SQNR dB", "status"], shown, align="llrrrl")]
    if len(shown) < len(rows):
        out.append(f"({len(rows) - len(shown)} more rows in the JSON report)")
    if first:
        names = ", ".join(_where(r) for r in report["tensors"] if r["name"] in first)
        out.append(f"error first exceeds the tolerance at: {names}")
    else:
        out.append("no intermediate tensor exceeds the tolerance")
    return out


def _where(row: dict) -> str:
    """'tensor (Op node)', plus the candidate's producer when a rewrite changed it."""
    text = f"{row['name']} ({row['op_type']} {row['node']}"
    if row["candidate_node"] and row["candidate_node"] != row["node"]:
        text += f"; in the candidate: {row['candidate_node']}"
    return text + ")"
