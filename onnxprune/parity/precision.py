"""Why a provider differs from the CPU provider: reduced precision or partial placement.

* Precision: some providers compute below fp32 by default (OpenVINO in bf16 on CPUs with
  AMX, CUDA in TF32 on Ampere+). When the reference's drift between the base provider and
  another one is beyond fp32 rounding, :func:`probe` runs the reference on that provider a
  second time with its fp32 hint (onnxprune.provider_options.FP32_HINTS) on the same samples:
  if the drift collapses, the difference was the provider's precision, not a bug.
* Placement: ONNX Runtime records which provider took each node; a provider that left some
  to the CPU provider is named with its share.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

import onnx_ir as ir

from onnxprune import provider_options as po
from onnxprune.errors import UnsupportedError
from onnxprune.parity.metrics import OutputStats
from onnxprune.parity.providers import Endpoint, open_session, run_session, short_name

# Beyond this, a drift is more than fp32 rounding (which stays near 1e-6 relative).
FP32_REL_NOISE = 1e-4
# The fp32 rerun "collapses" the drift when it is this many times smaller.
COLLAPSE_FACTOR = 10.0
PROBE_SAMPLES = 256


def beyond_fp32(drift: Mapping) -> bool:
    """Is a reference-vs-reference drift more than fp32 rounding?"""
    outputs = drift["outputs"].values()
    return any(o["max_abs"] is not None and o["max_abs"] > FP32_REL_NOISE * max(1.0, o["mean_abs_reference"] or 0)
               for o in outputs)


def probe(reference: ir.Model, feed, base: str, provider: str, options: Mapping[str, Mapping[str, str]],
          samples: int = PROBE_SAMPLES) -> dict | None:
    """Drift of the reference between ``base`` and ``provider`` with the given options and with
    the provider's fp32 hint, on the first ``samples`` samples; None without a hint."""
    given = dict(options.get(provider, {}))
    hinted = po.fp32_hint(provider, given)
    if hinted is None:
        return None
    try:
        return _probe(reference, feed, base, provider, options, given, hinted, samples)
    except UnsupportedError as exc:  # the provider rejects its own fp32 hint (an older version)
        return {"provider": provider, "base": base, "options": given, "fp32_options": hinted, "error": str(exc)}


def _probe(reference, feed, base, provider, options, given, hinted, samples) -> dict:
    names = [o.name for o in reference.graph.outputs]
    stats = {label: {n: OutputStats(None, 0.0) for n in names} for label in ("default", "fp32")}
    seen = 0
    with contextlib.ExitStack() as stack:
        base_sess = open_session(stack, reference, base, options)
        default_sess = open_session(stack, reference, provider, options)
        fp32_sess = open_session(stack, reference, provider, {provider: hinted})
        endpoint = Endpoint("reference", provider)
        for feeds, _ in feed:
            if seen >= samples:
                break
            ref = run_session(base_sess, feeds, Endpoint("reference", base), names)
            for label, sess in (("default", default_sess), ("fp32", fp32_sess)):
                out = run_session(sess, feeds, endpoint, names)
                for n in names:
                    stats[label][n].update(ref[n], out[n])
            seen += len(next(iter(feeds.values())))
    summary = {label: {n: s.summary() for n, s in per.items()} for label, per in stats.items()}
    worst = {label: max(o["max_abs"] for o in per.values()) for label, per in summary.items()}
    return {
        "provider": provider,
        "base": base,
        "samples": seen,
        "options": given,
        "fp32_options": hinted,
        "max_abs": worst["default"],
        "max_abs_fp32": worst["fp32"],
        "sqnr_db": min(o["sqnr_db"] for o in summary["default"].values()),
        "sqnr_db_fp32": min(o["sqnr_db"] for o in summary["fp32"].values()),
        "collapsed": worst["default"] > 0 and worst["fp32"] * COLLAPSE_FACTOR <= worst["default"],
    }


def _db(value: float) -> str:
    return "inf" if value is None or math.isinf(value) else f"{value:.1f}"


def probe_note(result: dict) -> str:
    p, base = short_name(result["provider"]), short_name(result["base"])
    if "error" in result:
        return (f"{result['provider']} differs from {base} beyond fp32 rounding; "
                f"its fp32 rerun failed: {result['error']}")
    asked = ", ".join(f"{k}={v}" for k, v in po.precision_asked(result["options"]).items())
    hint = ", ".join(f"{k}={v}" for k, v in po.FP32_HINTS[result["provider"]].items())
    head = (f"{result['provider']} differs from {base} on the reference itself by up to {result['max_abs']:.3g} "
            f"(SQNR {_db(result['sqnr_db'])} dB, {result['samples']} samples) "
            + (f"with {asked}" if asked else "with its default options"))
    if result["collapsed"]:
        why = f"the options given ({asked}) make {p}" if asked else f"by default {p}"
        return (f"{head}; with {hint} the difference falls to {result['max_abs_fp32']:.3g} "
                f"(SQNR {_db(result['sqnr_db_fp32'])} dB): {why} compute below fp32 (bf16/fp16/TF32 on this "
                f"hardware) — a precision hint, not a bug; --provider-option {p}:{hint.split(',')[0]} "
                "checks fp32 parity")
    return (f"{head}; with {hint} it is still {result['max_abs_fp32']:.3g}: not (only) a precision hint — "
            f"--layerwise names the first tensor where {p} departs")


def placement_summary(placement: Mapping[Endpoint, Mapping[str, int]]) -> dict:
    """{provider: {model: {provider that ran nodes: count}, "share": of all nodes the provider
    took itself}} for the report."""
    result: dict[str, dict] = {}
    for endpoint, counts in placement.items():
        entry = result.setdefault(endpoint.provider, {})
        entry[endpoint.model] = dict(counts)
    for provider, entry in result.items():
        total = sum(sum(v.values()) for k, v in entry.items() if isinstance(v, dict))
        own = sum(v.get(provider, 0) for k, v in entry.items() if isinstance(v, dict))
        entry["share"] = own / total if total else None
    return result


def placement_notes(summary: Mapping[str, Mapping]) -> list[str]:
    notes = []
    for provider, entry in summary.items():
        if entry["share"] is None or entry["share"] >= 1.0:
            continue
        parts = []
        for model in ("reference", "candidate"):
            counts = entry.get(model) or {}
            total = sum(counts.values())
            if total:
                others = ", ".join(f"{n} {short_name(p)}" for p, n in counts.items() if p != provider)
                parts.append(f"{model} {counts.get(provider, 0)}/{total} nodes" + (f" ({others})" if others else ""))
        notes.append(f"{provider} ran {entry['share']:.0%} of the nodes itself, the rest fell back: "
                     + "; ".join(parts))
    return notes
