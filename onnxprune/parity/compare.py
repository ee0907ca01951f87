"""The comparator: one pass over the data runs the reference and the candidate on every
requested execution provider and compares them pairwise (see providers.py for the pairs).

Unlike Polygraphy's ``run``, which needs one invocation per provider set, every session is
opened once and each batch goes through all of them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from onnxprune import provider_options as po
from onnxprune import providers as eps
from onnxprune.distributed import resolve_executor
from onnxprune.errors import UsageError
from onnxprune.graphutils import named
from onnxprune.io import as_model
from onnxprune.parity import layerwise as lw
from onnxprune.parity import precision
from onnxprune.parity.comparison import compare_batches
from onnxprune.parity.inputs import Feed, make_feed
from onnxprune.parity.labels import may_classify
from onnxprune.parity.providers import (
    DEFAULT_PROVIDERS,
    select_providers,
)
from onnxprune.parity.result import CheckResult
from onnxprune.parity.sharded import compare_sharded
from onnxprune.parity.tolerances import Tolerances, is_quantized

ModelLike = ir.Model | str | os.PathLike
# Criteria judged on classifier outputs, the flag that sets each and the statistic it reads.
CLASSIFIER_CRITERIA = {
    "min_top1": ("--min-top1", "top1_agreement"),
    "min_topk": ("--min-topk", "topk_agreement"),
    "max_accuracy_drop": ("--max-accuracy-drop", "accuracy_drop"),
}
# Localising needs far fewer samples than judging parity, and costs a pass over every
# activation of both models per sample (many times the plain check).
LAYERWISE_SAMPLES = 256


def check_compatible(reference: ir.Model, candidate: ir.Model) -> list[str]:
    """Same input names/dtypes/shapes and same output names/dtypes/shapes, or a UsageError.
    Float types may differ (fp32 vs fp16, the point of such a check): the notes say so."""
    notes = []
    for kind, ref_values, cand_values in (
        ("input", _graph_inputs(reference), _graph_inputs(candidate)),
        ("output", list(reference.graph.outputs), list(candidate.graph.outputs)),
    ):
        ref = {named(v): v for v in ref_values}
        cand = {named(v): v for v in cand_values}
        if set(ref) != set(cand):
            only_ref = sorted(set(ref) - set(cand))
            only_cand = sorted(set(cand) - set(ref))
            raise UsageError(
                f"the models' {kind}s differ by name: only in the reference {only_ref}, "
                f"only in the candidate {only_cand}"
            )
        for name, r in ref.items():
            c = cand[name]
            if r.dtype is not None and c.dtype is not None and r.dtype != c.dtype:
                if not (r.dtype.is_floating_point() and c.dtype.is_floating_point()):
                    raise UsageError(f"{kind} '{name}': reference is {r.dtype}, candidate is {c.dtype}")
                notes.append(f"{kind} '{name}': reference is {r.dtype}, candidate is {c.dtype}: "
                             + ("each model gets the data in its own type" if kind == "input"
                                else "compared in float64"))
            if not _shapes_compatible(r.shape, c.shape):
                raise UsageError(
                    f"{kind} '{name}': reference shape {_fmt(r.shape)} vs candidate shape {_fmt(c.shape)}"
                )
    return notes


def _graph_inputs(model: ir.Model) -> list[ir.Value]:
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def _shapes_compatible(a: ir.Shape | None, b: ir.Shape | None) -> bool:
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    return all(not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(a, b))


def _fmt(shape: ir.Shape | None) -> str:
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def resolve_tolerances(
    tolerances: Tolerances | str, reference: ir.Model, candidate: ir.Model, criteria: Mapping | None = None
) -> Tolerances:
    """A Tolerances from a preset name (``auto``: pruned when the candidate's metadata says it
    was pruned, int8 when only the candidate is quantized, else exact), with ``criteria``
    (Tolerances fields; None values ignored) overriding it."""
    criteria = {k: v for k, v in (criteria or {}).items() if v is not None}
    if isinstance(tolerances, Tolerances):
        return dataclasses.replace(tolerances, **criteria) if criteria else tolerances
    if tolerances == "auto" and lw.CHANNEL_MAP_KEY in candidate.metadata_props \
            and lw.CHANNEL_MAP_KEY not in reference.metadata_props:
        tolerances = "pruned"
    if tolerances == "auto":
        quantized_only = is_quantized(n.op_type for n in candidate.graph.all_nodes()) and not is_quantized(
            n.op_type for n in reference.graph.all_nodes()
        )
        tolerances = "int8" if quantized_only else "exact"
    return Tolerances.from_preset(tolerances, **criteria)


def check(
    reference: ModelLike,
    candidate: ModelLike,
    data=None,
    *,
    providers: Sequence[str] | None = None,
    require_providers: bool = False,
    provider_options: Mapping[str, Mapping[str, str]] | None = None,
    tolerances: Tolerances | str = "auto",
    criteria: Mapping | None = None,
    labels: str | np.ndarray | None = None,
    samples: int | None = None,
    batch_size: int = 32,
    layerwise: bool = False,
    layerwise_samples: int | None = LAYERWISE_SAMPLES,
    channel_map: Mapping[str, tuple[int, Sequence[int]]] | None = None,
    preprocess=None,
    seed: int = 0,
    progress: bool = False,
    executor=None,
) -> CheckResult:
    """Compare ``candidate`` against ``reference`` on the same inputs; truthy when parity holds.

    ``data``: None (random inputs, exact comparisons only), a path or Dataset
    (onnxprune.calibration), ``{input: array}`` or an iterable of such batches; ``labels``:
    a key in the data or an array aligned with the samples. ``providers``: short or full
    ONNX Runtime names, plugin EPs included (default: every available one of cpu/cuda);
    ``provider_options``: {provider: {key: value}}, e.g. ``{"openvino": {"precision":
    "FP32"}}`` (recorded in the report). ``tolerances``: a
    :class:`Tolerances` or a preset name (``auto``: int8 when only the candidate is
    quantized, else exact); ``criteria``: Tolerances fields overriding it, e.g.
    ``{"min_top1": 0.99, "per_output_atol": {"logits": 1e-2}}``. ``layerwise``: also
    localise the error per intermediate tensor, on the first ``layerwise_samples`` samples
    (``channel_map`` {tensor: (axis, kept indices)} compares pruned tensors' surviving
    channels); with several providers, also the reference on each other provider against
    the first one, naming the first tensor where that provider departs. Bad input raises an
    OnnxPruneError; failing parity does not raise (see :meth:`CheckResult.raise_on_failure`).
    ``executor``: compare on several workers (a
    number of local processes, 'ray:ADDRESS' or an onnxprune.distributed Executor), each
    over a range of the samples; merged, counts, max/min and agreement figures are those of
    one pass, sums equal up to the order of addition (1e-12 relative), the p50/p99 quantiles
    too while an output has at most 65,536 elements (a uniform sample of them beyond: see
    metrics.Reservoir.merge). The layer-wise passes run here, in this process.
    """
    start = time.perf_counter()
    if layerwise_samples is not None and layerwise_samples < 1:
        raise UsageError(f"--layerwise-samples must be at least 1, got {layerwise_samples}")
    ref_model, ref_path = as_model(reference)
    cand_model, cand_path = as_model(candidate)
    type_notes = check_compatible(ref_model, cand_model)
    explicit = requested_criteria(tolerances, criteria)
    tolerances = resolve_tolerances(tolerances, ref_model, cand_model, criteria)
    _check_named_tolerances(tolerances, ref_model, layerwise)
    used, unavailable = select_providers(providers, require_providers)
    options = po.merge(provider_options)
    feed = make_feed(data, ref_model, samples=samples, batch_size=batch_size, labels=labels,
                     preprocess=preprocess, seed=seed)
    require_evaluable(explicit, ref_model, feed)
    executor = resolve_executor(executor)
    comparisons, failed, placement = _compare(ref_model, cand_model, feed, used, tolerances, require_providers,
                                              options, seed=seed, progress=progress, executor=executor)
    unavailable += failed
    working = [p for p in used if p not in {u["provider"] for u in failed}]
    summaries = [c.summary(tolerances) for c in comparisons]
    unevaluated = _unevaluated(tolerances, summaries, explicit)
    # A provider whose own drift on the reference is beyond fp32 rounding: is it a precision hint?
    drifts = [s for s in summaries if _is_reference_drift(s) and precision.beyond_fp32(s)]
    probes = [r for r in (precision.probe(ref_model, feed, working[0], s["candidate"]["provider"], options)
                          for s in drifts) if r is not None]
    failures = [f"{s['name']}: output '{name}': {reason}"
                for s in summaries if s["judged"]
                for name, o in s["outputs"].items() for reason in o["failures"]]
    layer_report, per_provider = None, None
    if layerwise:  # localise the first failing comparison (else the first one)
        target = next((s for s in summaries if s["judged"] and not s["passed"]), summaries[0])
        layer_report = lw.localise(
            ref_model, cand_model, feed, tolerances,
            target["reference"]["provider"], target["candidate"]["provider"],
            channel_map=channel_map, samples=layerwise_samples, progress=progress, provider_options=options,
        )
        per_provider = {p: lw.localise(ref_model, ref_model, feed, tolerances, working[0], p,
                                       samples=layerwise_samples, progress=progress, provider_options=options)
                        for p in working[1:]} or None
    placement_report = precision.placement_summary(placement)
    return CheckResult(
        passed=not failures,
        reference=str(ref_path) if ref_path else ref_model.graph.name or "reference",
        candidate=str(cand_path) if cand_path else cand_model.graph.name or "candidate",
        data=feed.to_dict(),
        providers={"requested": [eps.resolve(p) for p in providers or DEFAULT_PROVIDERS],
                   "used": sorted({c.candidate.provider for c in comparisons}, key=used.index),
                   "unavailable": unavailable,
                   "options": {p: options[p] for p in used if p in options},
                   "placement": placement_report,
                   "precision": probes},
        tolerances=tolerances,
        comparisons=summaries,
        failures=failures,
        notes=type_notes + _notes(feed, tolerances, summaries, unavailable)
        + [f"{CLASSIFIER_CRITERIA[k][0][2:].replace('-', ' ')} of preset '{tolerances.preset}' not evaluated: "
           + ("no labels" if k == "max_accuracy_drop" and not feed.labelled else "no classifier output")
           for k in unevaluated]
        + precision.placement_notes(placement_report) + [precision.probe_note(r) for r in probes],
        layerwise=layer_report,
        layerwise_providers=per_provider,
        seconds=time.perf_counter() - start,
        unevaluated=unevaluated,
        execution=executor.report if executor is not None else None,
    )


def prepare_check_data(reference: ir.Model, data, *, tolerances: Tolerances | str = "auto",
                       criteria: Mapping | None = None, labels=None, samples: int | None = None,
                       batch_size: int = 32, preprocess=None, seed: int = 0, validate: bool = False) -> Feed:
    """The data of a later :func:`check` against ``reference``, checked now: labels read and
    checked, the criteria asked for able to be evaluated, and with ``validate`` every batch
    streamed once (NaN/Inf, decoded shapes), so a pipeline fails before its work, not after."""
    feed = make_feed(data, reference, samples=samples, batch_size=batch_size, labels=labels,
                     preprocess=preprocess, seed=seed)
    require_evaluable(requested_criteria(tolerances, criteria), reference, feed)
    if validate and not feed.synthetic:
        for _ in feed:
            pass
    return feed


def requested_criteria(tolerances: Tolerances | str, criteria: Mapping | None) -> set[str]:
    """The classifier criteria the caller asked for by name (not those a preset brings)."""
    asked = {k for k, v in (criteria or {}).items() if v is not None}
    if isinstance(tolerances, Tolerances) and tolerances.preset == "custom":
        asked |= {k for k in CLASSIFIER_CRITERIA if getattr(tolerances, k) is not None}
    return asked & set(CLASSIFIER_CRITERIA)


def require_evaluable(asked: set[str], reference: ir.Model, feed: Feed) -> None:
    """A criterion asked for that cannot be evaluated is an error (exit 2), before any work:
    a CI gate must never pass because its condition was silently skipped."""
    if "max_accuracy_drop" in asked and not feed.labelled:
        where = "pass --data with labels" if feed.synthetic else \
            "the data has no 'labels' array; name the labels array with --labels"
        raise UsageError(f"--max-accuracy-drop needs labels: {where}")
    if asked and not may_classify(reference):
        flags = ", ".join(CLASSIFIER_CRITERIA[k][0] for k in sorted(asked))
        shapes = "; ".join(f"{v.name} {_fmt(v.shape)}" for v in reference.graph.outputs)
        raise UsageError(f"{flags} need a classifier output [batch, classes]; the model's outputs are {shapes}")


def _unevaluated(tolerances: Tolerances, summaries: list[dict], asked: set[str]) -> list[str]:
    """Classifier criteria set but evaluated on no output; an error if the caller asked for one."""
    judged = [o for s in summaries if s["judged"] for o in s["outputs"].values()]
    missing = [k for k, (_, stat) in CLASSIFIER_CRITERIA.items()
               if getattr(tolerances, k) is not None and all(o[stat] is None for o in judged)]
    for key in missing:
        if key in asked:
            raise UsageError(f"{CLASSIFIER_CRITERIA[key][0]} could not be evaluated: no output is "
                             "classifier-like ([batch, classes], float)")
    return missing


def _is_reference_drift(summary: dict) -> bool:
    return not summary["judged"] and summary["candidate"]["model"] == "reference"


def _compare(reference: ir.Model, candidate: ir.Model, feed, providers: list[str], tolerances: Tolerances,
             require_providers: bool, options: Mapping, *, seed: int, progress: bool, executor=None):
    """One pass over ``feed`` through every session (or one per worker over its part, merged);
    the comparisons, the providers that could not be initialised, and where each session's
    nodes ran."""
    if executor is not None:
        return compare_sharded(reference, candidate, feed, providers, tolerances, require_providers, options,
                               seed=seed, progress=progress, executor=executor)
    batches = tqdm(feed, total=feed.num_batches, desc="check", unit="batch", disable=not progress, leave=False)
    return compare_batches(reference, candidate, batches, providers, tolerances, require_providers, options,
                           seed=seed)


def _notes(feed, tolerances: Tolerances, summaries: list[dict], unavailable: list[dict]) -> list[str]:
    notes = list(feed.notes)
    if feed.synthetic and tolerances.atol is None:
        notes.append(f"preset '{tolerances.preset}' judges cosine/SQNR/top-1 on random inputs: pass --data")
    outputs = [o for s in summaries for o in s["outputs"].values()]
    if feed.labelled and all(o["accuracy_reference"] is None for o in outputs):
        notes.append("labels given, but no output is classifier-like ([batch, classes]): no accuracy")
    notes += [f"execution provider {u['provider']} skipped: {u['reason']}" for u in unavailable]
    return notes


def _check_named_tolerances(tolerances: Tolerances, reference: ir.Model, layerwise: bool) -> None:
    outputs = {named(v) for v in reference.graph.outputs}
    inner = {o.name for n in reference.graph.all_nodes() for o in n.outputs if o.name is not None}
    known = outputs | (inner if layerwise else set())
    unknown = sorted(tolerances.named() - known)
    if unknown:
        raise UsageError(f"tolerance given for {unknown}, which name no output of the reference "
                         f"(outputs: {sorted(outputs)})")
